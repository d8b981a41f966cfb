"""Safe to put on a network: model control modes, repository requests held inside the repository and its
bounds, model names, TLS and mutual TLS, restricted protocols. Real servers, NVIDIA's tritonclient, and
certificates the tests make (tests/certs.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from certs import CertificateAuthority
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import ADD_SUB_CONFIG, add_sub_model, write_model
from serving import start_server
from tritonclient.utils import InferenceServerException

from tensorwire.client import TLS, InferenceClient

EXPLICIT = ("--model-control-mode", "explicit", "--load-model", "*")
CONTROL_REFUSED = "explicit model load / unload is not allowed if polling is enabled"


def _inputs(value: float = 1.0) -> list:
    ins = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for t in ins:
        t.set_data_from_numpy(np.full((1, 16), value, np.float32))
    return ins


def _refused(call, status: str = "StatusCode.INVALID_ARGUMENT") -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    assert err.value.status() == status, err.value.message()
    return err.value.message()


def _rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1))


def _threads(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


@pytest.fixture
def repo(tmp_path) -> Path:
    return write_model(tmp_path / "models", "add_sub", add_sub_model(), ADD_SUB_CONFIG).parent


# -- model control -----------------------------------------------------------------------------------
def test_default_mode_refuses_load_and_unload_and_serves_the_rest(triton):
    assert _refused(lambda: triton.load_model("add_sub"), "StatusCode.UNAVAILABLE") == CONTROL_REFUSED
    assert _refused(lambda: triton.unload_model("add_sub"), "StatusCode.UNAVAILABLE") == CONTROL_REFUSED
    assert triton.is_model_ready("add_sub") and triton.is_server_live() and triton.is_server_ready()
    assert triton.get_model_metadata("add_sub", as_json=True)["name"] == "add_sub"
    assert triton.infer("add_sub", _inputs(2.0)).as_numpy("OUTPUT0")[0, 0] == 4.0


@pytest.mark.parametrize("args, message", [
    (("--model-control-mode", "poll", "--repository-poll-secs", "0"), "--repository-poll-secs must be positive"),
    (("--load-model", "add_sub"), "--load-model needs --model-control-mode explicit"),
    (("--model-control-mode", "explicit", "--workers", "2"), "cannot be used with --workers 2"),
])
def test_model_control_settings_that_cannot_work_exit_2(repo, args, message):
    out = subprocess.run([sys.executable, "-m", "tensorwire", "serve", "--model-repository", str(repo),
                          "--grpc-port", "0", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr, out.stderr


# -- the repository's walls ----------------------------------------------------------------------------
def _outside(tmp_path: Path) -> dict[str, Path]:
    """A valid ONNX file and a FIFO outside the repository: opening the FIFO would block the load forever,
    so a load that returns at all never opened it."""
    outside = tmp_path / "outside"
    write_model(outside, "evil", add_sub_model(offset=666.0))
    fifo = outside / "fifo.onnx"
    os.mkfifo(fifo)
    return {"onnx": outside / "evil" / "1" / "model.onnx", "fifo": fifo}


def _without_name(message: str) -> str:
    return re.sub(r"default_model_filename (['\"]).*?\1 ", "default_model_filename X ", message)


def test_config_overrides_cannot_leave_the_repository(repo, tmp_path):
    outside = _outside(tmp_path)
    (repo / "add_sub" / "1" / "link.onnx").symlink_to(outside["onnx"])  # a link that leaves the repository
    (repo / "add_sub" / "1" / "fifo_link.onnx").symlink_to(outside["fifo"])
    with start_server(repo, *EXPLICIT) as s:
        c = grpcclient.InferenceServerClient(s.address)
        messages = {}
        for name in (str(outside["onnx"]), str(outside["fifo"]), str(tmp_path / "nowhere.onnx"),
                     "../../../outside/evil/1/model.onnx", "../1/model.onnx", "sub/model.onnx", "link.onnx",
                     "fifo_link.onnx", ".."):
            config = json.dumps({"default_model_filename": name})
            messages[name] = _refused(lambda cfg=config: c.load_model("add_sub", config=cfg, client_timeout=60))
            assert str(tmp_path) not in messages[name], messages[name]
        # an existing file and a missing one outside get the same answer: no oracle for the host's files
        assert _without_name(messages[str(outside["onnx"])]) == _without_name(messages[str(tmp_path / "nowhere.onnx")])
        assert "resolves outside its version directory" in messages["link.onnx"]
        # the refusals left the serving model alone, and it never served the outside file
        assert c.infer("add_sub", _inputs(0.0)).as_numpy("OUTPUT0")[0, 0] == 0.0
        # nor logged a figure of it (a timestamp's ",666" milliseconds or a port's digits are not one)
        assert not re.search(r"(?<![,:\d])666", s.log())


def test_operator_links_keep_working(tmp_path):
    """A version directory linked to a model store (the symlink-flip recipe) loads, from disk and with an
    override naming a plain file."""
    store = write_model(tmp_path / "store", "add_sub", add_sub_model(offset=5.0), ADD_SUB_CONFIG).parent
    repo = tmp_path / "models"
    (repo / "add_sub").mkdir(parents=True)
    (repo / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    (repo / "add_sub" / "1").symlink_to(store / "add_sub" / "1", target_is_directory=True)
    with start_server(repo, *EXPLICIT) as s:
        c = grpcclient.InferenceServerClient(s.address)
        assert c.infer("add_sub", _inputs(0.0)).as_numpy("OUTPUT0")[0, 0] == 5.0
        c.load_model("add_sub", config=json.dumps({"default_model_filename": "model.onnx", "max_batch_size": 8}))
        assert c.infer("add_sub", _inputs(0.0)).as_numpy("OUTPUT0")[0, 0] == 5.0


COSTLY = [
    ("--limit-instance-count", {"instance_group": [{"count": 150, "kind": "KIND_CPU"}]}),
    # a count below 1 opens one instance (Triton's rule): the bound counts what opens, not the sum
    ("--limit-instance-count", {"instance_group": [{"count": 100}, {"count": -99}]}),
    ("--limit-instance-count", {"instance_group": [{"count": 300}, {"count": -300}]}),
    ("--limit-instance-count", {"instance_group": [{"kind": "KIND_CPU"}] * 100}),
    ("--limit-thread-count", {"parameters": {"intra_op_thread_count": {"string_value": "2000"}}}),
    # each within its own bound, their product is not
    ("--limit-load-threads", {"instance_group": [{"count": 64}],
                              "parameters": {"intra_op_thread_count": {"string_value": "256"}}}),
    ("--limit-warmup-mb", {"model_warmup": [{"name": "w", "batch_size": 1, "inputs": {"INPUT0": {
        "data_type": "TYPE_FP32", "dims": [250_000_000], "zero_data": True}}}]}),
    ("--limit-queue-delay-us", {"dynamic_batching": {"max_queue_delay_microseconds": str(2**64 - 1)}}),
    ("--limit-queue-size", {"dynamic_batching": {"default_queue_policy": {"max_queue_size": 2**31 - 1}}}),
    ("--limit-max-batch-size", {"max_batch_size": 2**31 - 1}),
]


def test_costly_overrides_are_refused_before_they_cost_anything(repo):
    with start_server(repo, *EXPLICIT) as s:
        c = grpcclient.InferenceServerClient(s.address)
        assert c.infer("add_sub", _inputs()).as_numpy("OUTPUT0")[0, 0] == 2.0
        rss, threads = _rss_kib(s.process.pid), _threads(s.process.pid)
        for flag, override in COSTLY:
            for _ in range(2):
                message = _refused(lambda o=override: c.load_model("add_sub", config=json.dumps(o)))
                assert flag in message and "add_sub" in message, message
        assert _rss_kib(s.process.pid) - rss < 50 * 1024
        assert _threads(s.process.pid) <= threads + 2
        assert c.is_model_ready("add_sub") and c.infer("add_sub", _inputs()).as_numpy("OUTPUT0")[0, 0] == 2.0
        assert c.is_server_live()


def test_instance_groups_are_normalised_as_triton_does(repo):
    """A group without a count (or below 1) is two instances on CPU (Triton's default for ONNX Runtime), a
    group without a kind runs on CPU where no GPU provider is installed, and ModelConfig reports what opened."""
    import onnxruntime

    from tensorwire.server.providers import gpu_possible

    cpu_count = 1 if gpu_possible(onnxruntime.get_available_providers(), []) else 2
    with start_server(repo, *EXPLICIT) as s:
        c = grpcclient.InferenceServerClient(s.address)
        c.load_model("add_sub", config=json.dumps({"instance_group": [{"kind": "KIND_CPU"}, {"count": -3}]}))
        groups = c.get_model_config("add_sub", as_json=True)["config"]["instance_group"]
        assert [int(g["count"]) for g in groups] == [2, cpu_count]
        assert c.infer("add_sub", _inputs()).as_numpy("OUTPUT0")[0, 0] == 2.0
        c.load_model("add_sub", config=json.dumps({"max_batch_size": 8}))
        groups = c.get_model_config("add_sub", as_json=True)["config"]["instance_group"]
        assert [(int(g["count"]), g["kind"]) for g in groups] == (
            [(2, "KIND_CPU")] if cpu_count == 2 else [(1, "KIND_AUTO")])
        assert c.infer("add_sub", _inputs()).as_numpy("OUTPUT0")[0, 0] == 2.0


@pytest.mark.parametrize("group, gpu, expected", [
    ({}, False, (2, "KIND_CPU")), ({}, True, (1, "KIND_AUTO")),
    ({"kind": "KIND_CPU"}, True, (2, "KIND_CPU")), ({"kind": "KIND_GPU"}, True, (1, "KIND_GPU")),
    ({"kind": "KIND_GPU"}, False, (1, "KIND_GPU")), ({"count": 3}, False, (3, "KIND_CPU")),
    ({"count": 3, "kind": "KIND_GPU"}, True, (3, "KIND_GPU"))])
def test_the_default_instance_count_is_tritons(group, gpu, expected):
    """Triton's SetDefaultInstanceCount for the onnxruntime backend: 2 on CPU, 1 on a GPU, a count kept."""
    from google.protobuf import json_format

    from tensorwire import proto as pb
    from tensorwire.server.limits import normalise_instance_groups

    cfg = json_format.ParseDict({"instance_group": [group]}, pb.ModelConfig())
    normalise_instance_groups(cfg, gpu)
    (only,) = cfg.instance_group
    assert (only.count, pb.ModelInstanceGroup.Kind.Name(only.kind)) == expected
    bare = pb.ModelConfig()
    normalise_instance_groups(bare, gpu)
    assert [(g.count, g.kind) for g in bare.instance_group] == [
        (1, pb.ModelInstanceGroup.KIND_AUTO) if gpu else (2, pb.ModelInstanceGroup.KIND_CPU)]


def test_a_costly_config_on_disk_is_refused_too(tmp_path):
    repo = write_model(tmp_path / "models", "add_sub", add_sub_model(),
                       ADD_SUB_CONFIG.replace("count: 1", "count: 150")).parent
    with start_server(repo, "--model-control-mode", "explicit", "--load-model", "add_sub") as s:
        c = grpcclient.InferenceServerClient(s.address)
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        assert index["add_sub"]["state"] == "UNAVAILABLE" and "--limit-instance-count" in index["add_sub"]["reason"]
    with start_server(repo, "--model-control-mode", "explicit", "--load-model", "add_sub",
                      "--limit-instance-count", "200") as s:
        assert grpcclient.InferenceServerClient(s.address).is_model_ready("add_sub")


def _special_config_files(repo: Path) -> dict[str, str]:
    """Models whose config.pbtxt is a FIFO, a link to /dev/zero, 100,000 dims, and 2 MiB of comment:
    {model: what its reason must say}."""
    for name in ("fifo", "zero", "dims", "big"):
        write_model(repo, name, add_sub_model(), ADD_SUB_CONFIG)
        (repo / name / "config.pbtxt").unlink()
    os.mkfifo(repo / "fifo" / "config.pbtxt")
    (repo / "zero" / "config.pbtxt").symlink_to("/dev/zero")
    many = ADD_SUB_CONFIG.replace('name: "add_sub"', "").replace(
        "dims: [ 16 ]", "dims: [ " + ", ".join(["1"] * 100_000) + " ]", 1)
    assert len(many) > 200_000
    (repo / "dims" / "config.pbtxt").write_text(many)
    (repo / "big" / "config.pbtxt").write_text("# " + "x" * (2 << 20) + "\nmax_batch_size: 8\n")
    return {"fifo": "not a regular file", "zero": "not a regular file", "dims": "characters cut",
            "big": "larger than the 1048576-byte bound of a config file"}


def test_special_or_huge_config_files_are_refused_without_blocking(repo):
    """A FIFO would block the poller forever and a link to /dev/zero be read without end; a 100k-dims config
    would be echoed back whole. Each is refused with a short message, and the server polls and stops."""
    from clients import wait_until

    expected = _special_config_files(repo)
    with start_server(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.5",
                      "--no-strict-readiness", "--no-exit-on-error") as s:
        c = grpcclient.InferenceServerClient(s.address)
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        for name, says in expected.items():
            assert index[name]["state"] == "UNAVAILABLE" and says in index[name]["reason"], index[name]
            assert len(index[name]["reason"]) < 2200, len(index[name]["reason"])
        assert c.infer("add_sub", _inputs()).as_numpy("OUTPUT0")[0, 0] == 2.0
        staging = write_model(repo.parent / "staging", "later", add_sub_model(offset=7.0),
                              ADD_SUB_CONFIG.replace('name: "add_sub"', ""))
        os.rename(staging, repo / "later")  # polling goes on
        wait_until(lambda: c.is_model_ready("later"), "a model added after the special files is loaded")
    assert "Traceback" not in s.log()


def test_deeply_nested_config_json_is_refused_without_a_traceback(repo):
    with start_server(repo, *EXPLICIT) as s:
        c = grpcclient.InferenceServerClient(s.address)
        for nested in ('{"parameters":' * 100_000 + "{}" + "}" * 100_000, "[" * 100_000 + "]" * 100_000):
            message = _refused(lambda n=nested: c.load_model("add_sub", config=n[:1_000_000]))
            assert "nested too deeply" in message or "not a ModelConfig" in message, message[:300]
            assert len(message) < 2200
        assert c.infer("add_sub", _inputs()).as_numpy("OUTPUT0")[0, 0] == 2.0
    assert "Traceback" not in s.log() and "RecursionError" not in s.log()


def test_model_names_are_checked_before_the_file_system(repo):
    long_name = "m" * 300
    with start_server(repo, *EXPLICIT) as s:
        c = grpcclient.InferenceServerClient(s.address)
        for call in (lambda: c.load_model(long_name), lambda: c.unload_model(long_name),
                     lambda: c.infer(long_name, _inputs()), lambda: c.load_model("bad name\n")):
            message = _refused(call)
            assert "is not valid" in message and long_name not in message
        unknown = _refused(lambda: c.infer("not_there", _inputs()), "StatusCode.NOT_FOUND")
        assert "add_sub" not in unknown  # no list of what else is loaded
        assert c.is_server_live()
    assert long_name not in s.log() and "Errno" not in s.log()


# -- TLS ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(root / "ca"), CertificateAuthority(root / "other", "other CA")
    return {"ca": ca.pem.cert, "server": ca.issue("server", server=True), "client": ca.issue("client", server=False),
            "stranger": other.issue("stranger", server=False)}


def _tls_args(pki, mutual: bool = False) -> tuple[str, ...]:
    """TLS (or mutual TLS) on gRPC and, as the server requires, on HTTP too."""
    args = ("--grpc-use-ssl", "--http-use-ssl", "--grpc-server-cert", str(pki["server"].cert), "--grpc-server-key",
            str(pki["server"].key))
    return args + ("--grpc-use-ssl-mutual", "--http-use-ssl-mutual", "--grpc-root-cert", str(pki["ca"])) \
        if mutual else args


def _https_status(s, pki, client=None) -> int:
    """GET /v2/health/ready over HTTPS with the CA (and a client certificate when given)."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    with urllib.request.urlopen(f"https://localhost:{s.http_port}/v2/health/ready", context=context,
                                timeout=30) as resp:
        return resp.status


def test_tls_with_tritonclient(repo, pki, frontend):
    with start_server(repo, "--grpc-frontend", frontend, *_tls_args(pki), tls=TLS(pki["ca"])) as s:
        c = grpcclient.InferenceServerClient(s.address, ssl=True, root_certificates=str(pki["ca"]))
        assert c.infer("add_sub", _inputs(3.0)).as_numpy("OUTPUT0")[0, 0] == 6.0
        with InferenceClient(s.address, tls=TLS(pki["ca"])) as ours:
            assert ours.infer("add_sub", {"INPUT0": np.ones((1, 16), np.float32),
                                          "INPUT1": np.ones((1, 16), np.float32)})["OUTPUT1"][0, 0] == 0.0
        plain = grpcclient.InferenceServerClient(s.address)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=10)
        assert _https_status(s, pki) == 200
        with pytest.raises(OSError):  # plaintext HTTP gets no answer from the TLS port
            urllib_plain(s.http_port)


def urllib_plain(port: int) -> None:
    import urllib.request

    urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10).close()


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_root(repo, pki, frontend):
    client = pki["client"]
    with start_server(repo, "--grpc-frontend", frontend, *_tls_args(pki, mutual=True),
                      tls=TLS(pki["ca"], client.key, client.cert)) as s:
        ok = grpcclient.InferenceServerClient(s.address, ssl=True, root_certificates=str(pki["ca"]),
                                              private_key=str(client.key), certificate_chain=str(client.cert))
        assert ok.infer("add_sub", _inputs(1.0)).as_numpy("OUTPUT0")[0, 0] == 2.0
        anonymous = grpcclient.InferenceServerClient(s.address, ssl=True, root_certificates=str(pki["ca"]))
        stranger = grpcclient.InferenceServerClient(
            s.address, ssl=True, root_certificates=str(pki["ca"]), private_key=str(pki["stranger"].key),
            certificate_chain=str(pki["stranger"].cert))
        for refused in (anonymous, stranger):
            with pytest.raises(InferenceServerException):
                refused.is_server_live(client_timeout=10)
        assert ok.is_server_live()
        assert _https_status(s, pki, client) == 200
        for who in (None, pki["stranger"]):
            with pytest.raises(OSError):
                _https_status(s, pki, who)


def _serve_fails(repo: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "tensorwire", "serve", "--model-repository", str(repo),
                          "--grpc-port", "0", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    return out.stderr


def test_bad_tls_files_stop_the_start_naming_the_file(repo, pki, tmp_path):
    missing = tmp_path / "missing.crt"
    assert f"--grpc-server-cert {missing}: cannot be read" in _serve_fails(
        repo, "--grpc-use-ssl", "--grpc-server-cert", str(missing), "--grpc-server-key", str(pki["server"].key))
    mismatch = _serve_fails(repo, "--grpc-use-ssl", "--grpc-server-cert", str(pki["server"].cert),
                            "--grpc-server-key", str(pki["client"].key))
    assert f"--grpc-server-key {pki['client'].key} is not the key of the certificate" in mismatch
    assert "not a PEM certificate" in _serve_fails(
        repo, "--grpc-use-ssl", "--grpc-server-cert", str(pki["server"].key), "--grpc-server-key",
        str(pki["server"].key))
    assert "--grpc-root-cert" in _serve_fails(repo, *_tls_args(pki), "--grpc-use-ssl-mutual")


# -- restricted protocols -----------------------------------------------------------------------------
RESTRICTED = ("--grpc-restricted-protocol=inference,model-repository,trace:admin-key=s3cret",
              "--grpc-restricted-protocol=health:probe-key=p",
              "--http-restricted-api=inference,model-repository,trace:admin-key=s3cret",
              "--http-restricted-api=health:probe-key=p")
ADMIN = {"triton-grpc-protocol-admin-key": "s3cret"}
PROBE = {"triton-grpc-protocol-probe-key": "p"}


def test_restricted_protocols_with_tritonclient_headers(repo, frontend):
    with start_server(repo, "--grpc-frontend", frontend, *RESTRICTED, headers=PROBE) as s:
        c = grpcclient.InferenceServerClient(s.address)
        expected = "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
        for headers in (None, {"triton-grpc-protocol-admin-key": "wrong"}, PROBE):
            assert expected in _refused(lambda h=headers: c.infer("add_sub", _inputs(), headers=h),
                                        "StatusCode.UNAVAILABLE")
            assert expected in _refused(lambda h=headers: c.get_model_repository_index(headers=h),
                                        "StatusCode.UNAVAILABLE")
        assert c.infer("add_sub", _inputs(2.0), headers=ADMIN).as_numpy("OUTPUT0")[0, 0] == 4.0
        assert c.get_model_metadata("add_sub", as_json=True)["name"] == "add_sub"  # metadata is open
        assert "triton-grpc-protocol-probe-key" in _refused(lambda: c.is_server_live(), "StatusCode.UNAVAILABLE")
        assert c.is_server_live(headers=PROBE)
        # the header passes the gate; the mode still refuses load (as Triton: restriction first, then mode)
        assert _refused(lambda: c.unload_model("add_sub", headers=ADMIN), "StatusCode.UNAVAILABLE") == CONTROL_REFUSED
        with grpc.insecure_channel(s.address) as channel:  # Kubernetes' probe: grpc.health.v1, no headers
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10, metadata=tuple(PROBE.items())).status == \
                health_pb2.HealthCheckResponse.SERVING
            # a Watch that sends no request (it half-closes at once) is answered as grpcio answers it
            watch = channel.stream_stream("/grpc.health.v1.Health/Watch")(iter(()), timeout=10,
                                                                           metadata=tuple(PROBE.items()))
            with pytest.raises(grpc.RpcError) as err:
                next(watch)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # a restricted category's method this server does not serve is refused for the header first
            trace = channel.unary_unary("/inference.GRPCInferenceService/TraceSetting")
            with pytest.raises(grpc.RpcError) as err:
                trace(b"", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        with InferenceClient(s.address, headers=ADMIN) as ours:
            assert ours.infer("add_sub", {"INPUT0": np.ones((1, 16), np.float32),
                                          "INPUT1": np.ones((1, 16), np.float32)})["OUTPUT0"][0, 0] == 2.0


@pytest.mark.parametrize("flag, message", [
    ("--grpc-restricted-protocol=inference:a=1", None),
    ("--grpc-restricted-protocol=inference", "expected <protocol>"),
    ("--grpc-restricted-protocol=inferense:a=1", "unknown protocol(s) inferense"),
])
def test_restricted_protocol_flag_is_checked(repo, flag, message):
    if message is None:  # a protocol in two groups
        assert "is in two groups" in _serve_fails(repo, flag, "--grpc-restricted-protocol=inference,health:b=2")
    else:
        assert message in _serve_fails(repo, flag)


def test_bench_load_speaks_tls_and_headers(repo, pki):
    """Our own load generator reaches a TLS server whose inference is restricted (perf_analyzer's flag names)."""
    with start_server(repo, *_tls_args(pki), RESTRICTED[0], RESTRICTED[2], tls=TLS(pki["ca"])) as s:
        base = [sys.executable, "-m", "tensorwire", "bench", "load", "--target", s.address, "--model", "add_sub",
                "--concurrency", "1", "--quick", "--processes", "1", "--ssl-grpc-use-ssl",
                "--ssl-grpc-root-certifications-file", str(pki["ca"])]
        ok = subprocess.run([*base, "-H", "triton-grpc-protocol-admin-key:s3cret"], capture_output=True, text=True,
                            timeout=300)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        refused = subprocess.run(base, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and "This protocol is restricted" in refused.stderr, refused.stderr
