"""deploy/: what can be verified without a cluster or a container runtime (none exists here).

Every manifest parses; every tensorwire container's arguments are accepted by `tensorwire serve` (or
`check`); ports, probe services, Prometheus annotations and the termination grace agree with what the
server opens; a server started with the Deployment's arguments answers each probe's health service;
and the Dockerfile's pip steps, run in order in a plain virtual environment, give a `tensorwire serve`
that starts with the image's ENTRYPOINT and CMD.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import ADD_SUB_CONFIG, add_sub_model, write_model

from tensorwire import proto as pb
from tensorwire.cli import build_parser
from tensorwire.launcher import launch
from tensorwire.server.flags import settings_from_args
from tensorwire.server.grpc_methods import LIVENESS_SERVICE

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROBE_SERVICES = {"", pb.SERVICE_NAME, LIVENESS_SERVICE}
PROBE_PATHS = {"/v2/health/live", "/v2/health/ready"}


def _documents() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _kind(kind: str) -> list[dict]:
    return [d for d in _documents() if d["kind"] == kind]


def _serve_settings(args: list[str]):
    return settings_from_args(build_parser().parse_args(["serve", *args]))


def _check_container(container: dict, grace_s: float | None = None, annotations: dict | None = None) -> None:
    """A serving container against `tensorwire serve`: flags, ports, probes, drain time, scrape port."""
    s = _serve_settings(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert s.allow_http and (ports.get("http") or ports.get("http1")) == s.http_port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["port"] == s.http_port, probe
            assert container[probe]["httpGet"]["path"] in PROBE_PATHS, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"  # strict readiness
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"  # a failed model is no restart
    if annotations is not None:
        port_key = next(k for k in annotations if k.endswith("/port"))
        assert int(annotations[port_key]) == s.metrics_port and s.allow_metrics
    if grace_s is not None:
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        sleep_s = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
        assert grace_s >= sleep_s + s.shutdown_grace_s + 1, "terminationGracePeriodSeconds < preStop + --shutdown-grace"


def test_deployment_and_service_agree_with_the_cli():
    (deployment,) = _kind("Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    _check_container(container, pod["spec"]["terminationGracePeriodSeconds"], pod["metadata"]["annotations"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for init in pod["spec"].get("initContainers", []):
        command = init["command"]
        assert command[0] == "tensorwire"
        build_parser().parse_args(command[1:])  # exits 2 on an unknown flag
    (service,) = _kind("Service")
    names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_kserve_runtime_and_inference_service_agree_with_the_cli():
    (runtime,) = _kind("ServingRuntime")
    spec = runtime["spec"]
    assert {"name": "onnx"}.items() <= spec["supportedModelFormats"][0].items()
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    (container,) = spec["containers"]
    assert [p["name"] for p in container["ports"]] == ["http1"]  # KServe's name for a REST (HTTP/1.1) port
    _check_container(container, annotations=spec["annotations"])
    assert _serve_settings(container["args"]).grpc_port == 9000  # grpc-v2: KServe's h2c port
    assert _serve_settings(container["args"]).model_repository == Path("/mnt/models")  # KServe's mount
    (isvc,) = _kind("InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["modelFormat"]["name"] == "onnx"
    assert model["protocolVersion"] in spec["protocolVersions"]


def test_dockerfile_command_parses_and_runs_as_non_root():
    lines = _dockerfile_instructions()
    entry = json.loads(next(a for i, a in lines if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in lines if i == "CMD"))
    assert entry[:2] == ["tensorwire", "serve"]
    s = _serve_settings(cmd)
    exposed = {int(p) for i, a in lines if i == "EXPOSE" for p in a.split()}
    assert {s.http_port, s.grpc_port, s.metrics_port} == exposed
    user = [a for i, a in lines if i == "USER"][-1]
    assert user.isdigit() and int(user) != 0


def test_each_probe_answers_on_a_server_started_with_the_deployment_args(tmp_path):
    """Each probe's HTTP path answers 200 on a server started as the Deployment starts it; the gRPC health
    services (for probes that use them) too."""
    (deployment,) = _kind("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    args = ["-m", "tensorwire", "serve", *container["args"], "--model-repository", str(repo), "--host", "127.0.0.1",
            "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0"]  # last wins: loopback and free ports
    with launch(args) as s, grpc.insecure_channel(s.address) as channel:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            url = f"{s.http_url}{container[probe]['httpGet']['path']}"
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == 200, (probe, url)
        stub = health_pb2_grpc.HealthStub(channel)
        for service in PROBE_SERVICES:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def _copy_source(dest: Path) -> None:
    """The build context (COPY . /src) without local build outputs and environments."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "*.so", "_wire.c", "inference.binpb", "results",
        ".pytest_cache", ".ruff_cache"))


@pytest.mark.slow
def test_dockerfile_pip_steps_build_and_run_in_a_plain_venv(tmp_path):
    """Each RUN step that calls pip, in Dockerfile order, with /src, /wheels and /models mapped into tmp_path
    (apt-get, useradd and COPY are the base image's business). Added test time: 13.5 min here at load
    average 10 (every dependency's wheel downloaded and tensorwire's extension compiled, as in the image)."""
    src, wheels, env_dir = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv"
    _copy_source(src)
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    steps = [a for i, a in _dockerfile_instructions() if i == "RUN" and "pip " in a]
    assert len(steps) == 2, steps  # build: pip wheel; run: pip install from the wheels
    for step in steps:
        step = step.replace("/src", str(src)).replace("/wheels", str(wheels))
        command = " && ".join(
            str(bin_dir / "python") + " -m " + part.strip() if part.strip().startswith("pip ") else part
            for part in step.split("&&"))
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    lines = _dockerfile_instructions()
    entry = json.loads(next(a for i, a in lines if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in lines if i == "CMD"))
    repo = tmp_path / "models"
    write_model(repo, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    port_file = tmp_path / "port"
    argv = [str(bin_dir / entry[0]), *entry[1:], *[str(repo) if a == "/models" else a for a in cmd],
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
            "--port-file", str(port_file)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, f"{shlex.join(argv)}: {proc.stdout.read()}"
            time.sleep(0.1)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port_file.read_text().strip()}")
        assert client.is_server_ready() and client.is_model_ready("add_sub")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert sys.executable not in argv[0]  # the image's interpreter, not the test's
