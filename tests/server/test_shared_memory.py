"""System shared memory (Triton's extension, docs/shared-memory.md) against a real server on loopback.

NVIDIA's tritonclient does the client side unchanged (tritonclient.utils.shared_memory, set_shared_memory on
inputs and requested outputs, the register / status / unregister calls). Hostile cases each get a clear
status and leave the server serving: bad keys, a symlink in /dev/shm, bounds, sizes, unregistering and
shrinking (ftruncate) a region while requests use it, and a seeded fuzz run of the tensor parameters.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from models import ADD_SUB_CONFIG, add_sub_model, identity_model, write_model
from onnx import TensorProto
from serving import start_server
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from tensorwire import proto as pb

LIMITS = ("--limit-shared-memory-regions", "6", "--limit-shared-memory-mb", "1")
SHM_DIR = Path("/dev/shm")
PREFIX = f"tw_test_{os.getpid()}_"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shm") / "models"
    write_model(root, "add_sub", add_sub_model(), ADD_SUB_CONFIG)
    write_model(root, "identity_bytes", identity_model(TensorProto.STRING), "max_batch_size: 8\n")
    return root


@pytest.fixture(scope="module")
def served(repo):
    with start_server(repo, "--allow-shared-memory", *LIMITS) as s:
        yield s


@pytest.fixture
def client(served):
    """tritonclient on the shared-memory server; every region registered or created is gone afterwards."""
    c = grpcclient.InferenceServerClient(served.address)
    handles: list = []
    c.handles = handles
    yield c
    c.unregister_system_shared_memory()
    for h in handles:
        shm.destroy_shared_memory_region(h)
    c.close()
    assert served.process.poll() is None, served.log()


def _region(c, name: str, size: int, register: bool = True, offset: int = 0, object_size: int | None = None):
    key = "/" + PREFIX + name
    h = shm.create_shared_memory_region(name, key, object_size or size + offset)
    c.handles.append(h)
    if register:
        c.register_system_shared_memory(name, key, size, offset=offset)
    return h, key


def _refused(call, status: str) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    assert err.value.status() == f"StatusCode.{status}", err.value.message()
    return err.value.message()


def _plain(c, a, b) -> tuple[np.ndarray, np.ndarray]:
    ins = [grpcclient.InferInput(n, list(a.shape), "FP32") for n in ("INPUT0", "INPUT1")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    r = c.infer("add_sub", ins)
    return r.as_numpy("OUTPUT0"), r.as_numpy("OUTPUT1")


def _shm_request(rows: int = 2, out: str = "out"):
    """Inputs at offsets 0 and n of region 'in', outputs at 0 and n of region ``out`` (n = one tensor)."""
    n = rows * 16 * 4
    ins = [grpcclient.InferInput(name, [rows, 16], "FP32") for name in ("INPUT0", "INPUT1")]
    ins[0].set_shared_memory("in", n)
    ins[1].set_shared_memory("in", n, offset=n)
    outs = [grpcclient.InferRequestedOutput(name) for name in ("OUTPUT0", "OUTPUT1")]
    outs[0].set_shared_memory(out, n)
    outs[1].set_shared_memory(out, n, offset=n)
    return ins, outs


def _send_until(address: str, stop: threading.Event, outcomes: list[str], classify) -> None:
    """Send the shared-memory add_sub request until ``stop``; record "ok" or ``classify(error)`` for each."""
    c = grpcclient.InferenceServerClient(address)
    ins, outs = _shm_request()
    while not stop.is_set():
        try:
            c.infer("add_sub", ins, outputs=outs)
            outcomes.append("ok")
        except InferenceServerException as exc:
            outcomes.append(classify(exc))
    c.close()

def _data(rows: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, 16)).astype(np.float32), rng.standard_normal((rows, 16)).astype(np.float32)


# -- the protocol, with tritonclient --------------------------------------------------------------------
def test_tritonclient_round_trip_matches_the_plain_path(client):
    a, b = _data()
    h_in, key_in = _region(client, "in", 256)
    h_out, key_out = _region(client, "out", 256, offset=64, object_size=512)
    shm.set_shared_memory_region(h_in, [a, b])
    ins, outs = _shm_request()
    result = client.infer("add_sub", ins, outputs=outs)
    response = result.get_response()
    # Triton's answer: each output's metadata, one empty raw_output_contents entry per output in shared memory
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "FP32", [2, 16]), ("OUTPUT1", "FP32", [2, 16])]
    assert list(response.raw_output_contents) == [b"", b""]
    want0, want1 = _plain(client, a, b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.float32, [2, 16], offset=64), want0)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.float32, [2, 16], offset=64 + 128), want1)
    assert "system_shared_memory" in client.get_server_metadata(as_json=True)["extensions"]

    status = client.get_system_shared_memory_status()
    assert {n: (r.name, r.key, r.offset, r.byte_size) for n, r in status.regions.items()} == {
        "in": ("in", key_in, 0, 256), "out": ("out", key_out, 64, 256)}
    one = client.get_system_shared_memory_status("out")
    assert list(one.regions) == ["out"] and one.regions["out"].offset == 64
    client.unregister_system_shared_memory("in")
    assert list(client.get_system_shared_memory_status().regions) == ["out"]
    assert _refused(lambda: client.get_system_shared_memory_status("in"), "NOT_FOUND") == \
        "Unable to find system shared memory region: 'in'"
    client.unregister_system_shared_memory("in")  # an unknown name is not an error, as in Triton
    client.unregister_system_shared_memory()
    assert not client.get_system_shared_memory_status().regions
    assert "Unable to find shared memory region: 'in'" in _refused(
        lambda: client.infer("add_sub", ins, outputs=outs), "NOT_FOUND")


def test_mixed_shared_memory_and_raw_inputs_and_outputs(client):
    """raw_input_contents hold one entry per input not in shared memory (Triton's indexing), and the
    response's raw entries stay in output order."""
    a, b = _data(3, seed=1)
    h_in, _ = _region(client, "in", 3 * 64)
    h_out, _ = _region(client, "out", 3 * 64)
    shm.set_shared_memory_region(h_in, [b])
    i0 = grpcclient.InferInput("INPUT0", [3, 16], "FP32")
    i0.set_data_from_numpy(a)
    i1 = grpcclient.InferInput("INPUT1", [3, 16], "FP32")
    i1.set_shared_memory("in", 3 * 64)
    o0 = grpcclient.InferRequestedOutput("OUTPUT0")
    o1 = grpcclient.InferRequestedOutput("OUTPUT1")
    o1.set_shared_memory("out", 3 * 64)
    r = client.infer("add_sub", [i0, i1], outputs=[o0, o1])
    want0, want1 = _plain(client, a, b)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), want0)
    assert list(r.get_response().raw_output_contents)[1] == b""
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.float32, [3, 16]), want1)


def test_streaming_with_shared_memory(client):
    a, b = _data(seed=2)
    h_in, _ = _region(client, "in", 256)
    h_out, _ = _region(client, "out", 256)
    shm.set_shared_memory_region(h_in, [a, b])
    answers: list = []
    done = threading.Semaphore(0)
    client.start_stream(callback=lambda result, error: (answers.append((result, error)), done.release()))
    try:
        ins, outs = _shm_request()
        for _ in range(3):
            client.async_stream_infer("add_sub", ins, outputs=outs)
        for _ in range(3):
            assert done.acquire(timeout=60)
    finally:
        client.stop_stream()
    assert all(error is None for _, error in answers), answers
    want0, want1 = _plain(client, a, b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.float32, [2, 16]), want0)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.float32, [2, 16], offset=128), want1)


def test_bytes_tensors_travel_serialized_and_dynamic_outputs_are_checked_after_the_run(client):
    data = np.array([[b"a", b"", "ü".encode()]], dtype=object)
    serialized = serialize_byte_tensor(data)  # what tritonclient's shared-memory examples put in a region
    size = len(serialized.item())
    h_in, _ = _region(client, "in", size)
    h_out, _ = _region(client, "out", 64)
    shm.set_shared_memory_region(h_in, [serialized])
    i = grpcclient.InferInput("INPUT", [1, 3], "BYTES")
    i.set_shared_memory("in", size)
    o = grpcclient.InferRequestedOutput("OUTPUT")
    o.set_shared_memory("out", 64)
    client.infer("identity_bytes", [i], outputs=[o])
    got = shm.get_contents_as_numpy(h_out, np.object_, [1, 3])
    assert [bytes(x) for x in got.reshape(-1)] == [b"a", b"", "ü".encode()]
    o.set_shared_memory("out", size - 1)  # the output's size is known only after the run
    assert _refused(lambda: client.infer("identity_bytes", [i], outputs=[o]), "INVALID_ARGUMENT") == (
        f"shared memory size specified with the request for output 'OUTPUT' ({size - 1} bytes) should be at least "
        f"{size} bytes to hold the results")
    i.set_shared_memory("in", size - 1)  # a cut BYTES tensor: the raw form's own check
    assert _refused(lambda: client.infer("identity_bytes", [i]), "INVALID_ARGUMENT") == \
        "input 'INPUT': BYTES element 2 declares 2 bytes but only 1 remain in the raw data"


# -- refused -----------------------------------------------------------------------------------------------
def test_disabled_by_default(triton):
    """The shared test server runs with default flags: every system RPC and any request naming a region is
    refused with how to turn it on; CUDA shared memory is not implemented at all."""
    for call in (lambda: triton.register_system_shared_memory("r", "/k", 8),
                 lambda: triton.get_system_shared_memory_status(),
                 lambda: triton.unregister_system_shared_memory()):
        message = _refused(call, "UNAVAILABLE")
        assert "--allow-shared-memory" in message and "docs/shared-memory.md" in message
    ins, outs = _shm_request()
    assert "--allow-shared-memory" in _refused(lambda: triton.infer("add_sub", ins, outputs=outs), "UNAVAILABLE")
    o = grpcclient.InferRequestedOutput("OUTPUT0")
    o.set_shared_memory("out", 128)
    plain = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for t in plain:
        t.set_data_from_numpy(np.ones((1, 16), np.float32))
    assert "--allow-shared-memory" in _refused(lambda: triton.infer("add_sub", plain, outputs=[o]), "UNAVAILABLE")
    assert "system_shared_memory" not in triton.get_server_metadata(as_json=True)["extensions"]
    assert "CUDA shared memory is not supported" in _refused(
        lambda: triton.register_cuda_shared_memory("c", b"\0" * 64, 0, 8), "UNIMPLEMENTED")
    # no CUDA region can exist: an empty status, and unregistering nothing succeeds (Triton's CPU build)
    assert not triton.get_cuda_shared_memory_status().regions
    assert "Unable to find cuda shared memory region" in _refused(
        lambda: triton.get_cuda_shared_memory_status("c"), "NOT_FOUND")
    triton.unregister_cuda_shared_memory()
    triton.unregister_cuda_shared_memory("c")
    assert triton.infer("add_sub", plain).as_numpy("OUTPUT0")[0, 0] == 2.0


def test_hostile_registrations(client, tmp_path):
    _, key = _region(client, "ok", 64, register=False)
    elsewhere = tmp_path / "secret"
    elsewhere.write_bytes(b"s" * 4096)
    link = SHM_DIR / (PREFIX + "link")
    link.symlink_to(elsewhere)
    try:
        for bad in ("../x", "/../x", "a/b", "/a/b", "..", "/.", "", "x" * 256, "/tw\0x", "ü"):
            message = _refused(lambda k=bad: client.register_system_shared_memory("r", k, 8), "INVALID_ARGUMENT")
            assert "is not a POSIX shared memory name" in message and "/dev/shm" not in message
        assert _refused(lambda: client.register_system_shared_memory("r", "/" + link.name, 8), "INVALID_ARGUMENT") \
            == f"Unable to open shared memory region: '/{link.name}'"
    finally:
        link.unlink()
    assert _refused(lambda: client.register_system_shared_memory("r", "/" + PREFIX + "missing", 8),
                    "INVALID_ARGUMENT") == f"Unable to open shared memory region: '/{PREFIX}missing'"
    for size, offset in ((65, 0), (64, 1), (1, 64), (2**64 - 1, 0), (0, 0)):
        assert "failed to register shared memory region 'r': invalid args" in _refused(
            lambda s=size, o=offset: client.register_system_shared_memory("r", key, s, offset=o), "INVALID_ARGUMENT")
    client.register_system_shared_memory("r", key, 64)
    assert _refused(lambda: client.register_system_shared_memory("r", key, 8), "ALREADY_EXISTS") == \
        "shared memory region 'r' already in manager"
    for i in range(5):  # the same object may back several regions: 6 in all, the bound
        client.register_system_shared_memory(f"r{i}", key, 8)
    assert "--limit-shared-memory-regions" in _refused(
        lambda: client.register_system_shared_memory("r6", key, 8), "RESOURCE_EXHAUSTED")
    # at the bound nothing is opened: a missing object is refused for the bound, not for the missing file
    assert "--limit-shared-memory-regions" in _refused(
        lambda: client.register_system_shared_memory("r6", f"/{PREFIX}missing", 8), "RESOURCE_EXHAUSTED")
    client.unregister_system_shared_memory()
    _, big = _region(client, "big", 1 << 20, register=False)
    client.register_system_shared_memory("big", big, (1 << 20) - 8)
    assert "--limit-shared-memory-mb" in _refused(
        lambda: client.register_system_shared_memory("more", big, 16), "RESOURCE_EXHAUSTED")
    client.register_system_shared_memory("more", big, 8)  # exactly at the bound


def test_hostile_requests(client):
    a, b = _data()
    h_in, _ = _region(client, "in", 256)
    _region(client, "small", 100)
    shm.set_shared_memory_region(h_in, [a, b])
    ins, _ = _shm_request()
    outs = [grpcclient.InferRequestedOutput("OUTPUT0")]  # static output dims: refused before the model runs
    outs[0].set_shared_memory("small", 100)
    assert _refused(lambda: client.infer("add_sub", ins, outputs=outs), "INVALID_ARGUMENT") == (
        "shared memory size specified with the request for output 'OUTPUT0' (100 bytes) should be at least 128 "
        "bytes to hold the results")
    ins[0].set_shared_memory("in", 124)
    assert "shared_memory_byte_size is 124, but shape [2,16] of FP32 needs 128 bytes" in _refused(
        lambda: client.infer("add_sub", ins), "INVALID_ARGUMENT")
    ins[0].set_shared_memory("in", 128, offset=256)
    assert _refused(lambda: client.infer("add_sub", ins), "INVALID_ARGUMENT") == \
        "Invalid offset for shared memory region: 'in'"
    ins[0].set_shared_memory("in", 128, offset=200)
    assert _refused(lambda: client.infer("add_sub", ins), "INVALID_ARGUMENT") == \
        "Invalid offset + byte size for shared memory region: 'in'"
    ins[0].set_shared_memory("nope", 128)
    assert _refused(lambda: client.infer("add_sub", ins), "NOT_FOUND") == \
        "Unable to find shared memory region: 'nope'"
    np.testing.assert_array_equal(_plain(client, a, b)[0], a + b)


def _shm_fds(pid: int) -> int:
    """Descriptors the server holds on this test's /dev/shm objects."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += PREFIX in os.readlink(f"/proc/{pid}/fd/{fd}")
    return count


def _shm_maps(pid: int) -> int:
    """Mappings the server holds of this test's /dev/shm objects (one per registered region)."""
    with open(f"/proc/{pid}/maps") as f:
        return sum(PREFIX in line for line in f)


def test_unregister_while_requests_use_the_region(client, served):
    """Requests race unregister / re-register: each is answered right or NOT_FOUND, none fails otherwise,
    and once everything is unregistered every descriptor the regions held is closed (leases counted)."""
    a, b = _data()
    h_in, key_in = _region(client, "in", 256, register=False)
    h_out, key_out = _region(client, "out", 256, register=False)
    shm.set_shared_memory_region(h_in, [a, b])
    client.register_system_shared_memory("in", key_in, 256)
    client.register_system_shared_memory("out", key_out, 256)
    assert _shm_fds(served.process.pid) == 2 and _shm_maps(served.process.pid) == 2
    want0 = a + b
    outcomes: list[str] = []
    stop = threading.Event()

    def classify(exc: InferenceServerException) -> str:
        return exc.status() if "Unable to find shared memory region" in exc.message() else exc.message()

    threads = [threading.Thread(target=_send_until, args=(served.address, stop, outcomes, classify))
               for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(40):
            client.unregister_system_shared_memory("in" if _ % 2 else "")
            client.register_system_shared_memory("in", key_in, 256)
            if "out" not in client.get_system_shared_memory_status().regions:
                client.register_system_shared_memory("out", key_out, 256)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert set(outcomes) <= {"ok", "StatusCode.NOT_FOUND"} and "ok" in outcomes, set(outcomes)
    np.testing.assert_allclose(shm.get_contents_as_numpy(h_out, np.float32, [2, 16]), want0, rtol=1e-6)
    client.unregister_system_shared_memory()
    assert _shm_fds(served.process.pid) == 0 and _shm_maps(served.process.pid) == 0


def test_shrinking_a_region_under_requests_is_an_error_not_a_crash(client, served):
    """A client cuts the object behind its registered regions (ftruncate) while requests use them: the
    server, which copies only through its SIGBUS-guarded mapping, answers those requests with a clear error and
    keeps serving."""
    a, b = _data()
    h_in, key_in = _region(client, "in", 256)
    h_out, key_out = _region(client, "out", 256)
    shm.set_shared_memory_region(h_in, [a, b])
    outcomes: list[str] = []
    stop = threading.Event()

    def classify(exc: InferenceServerException) -> str:
        shrunk = (exc.status() == "StatusCode.INVALID_ARGUMENT"
                  and "was made smaller after registration" in exc.message())
        return "shrunk" if shrunk else f"{exc.status()}: {exc.message()}"

    def answered(more: int) -> None:  # let the sender get ``more`` answers in (no timing is asserted)
        target = len(outcomes) + more
        for _ in range(30_000):
            if len(outcomes) >= target or not thread.is_alive():
                return
            time.sleep(0.001)

    thread = threading.Thread(target=_send_until, args=(served.address, stop, outcomes, classify))
    thread.start()
    try:
        for i in range(16):
            path = SHM_DIR / (key_in if i % 2 else key_out).lstrip("/")
            answered(2)
            os.truncate(path, 0)
            answered(2)
            os.truncate(path, 256)
            if i % 2:
                shm.set_shared_memory_region(h_in, [a, b])
        os.truncate(SHM_DIR / key_in.lstrip("/"), 0)
        ins, outs = _shm_request()
        assert "was made smaller" in _refused(lambda: client.infer("add_sub", ins, outputs=outs), "INVALID_ARGUMENT")
    finally:
        stop.set()
        thread.join(60)
    assert served.process.poll() is None, served.log()
    assert set(outcomes) == {"ok", "shrunk"}, set(outcomes)
    np.testing.assert_array_equal(_plain(client, a, b)[0], a + b)


# -- fuzz ----------------------------------------------------------------------------------------------
FUZZ_REQUESTS = 300
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}


def _fuzz_value(rng: random.Random, good):
    return rng.choice([good, good, rng.randint(-(2**63), 2**63 - 1), rng.randint(-300, 300), 2**64 - 1,
                       True, 1.5, "128", -1, 0])


def _fuzz_params(rng: random.Random, pmap, names: list[str], n: int) -> None:
    params = {}
    if rng.random() < 0.9:
        params["shared_memory_region"] = rng.choice(names + ["", "x" * 300, 7, False, 2.0])
    if rng.random() < 0.8:
        params["shared_memory_byte_size"] = _fuzz_value(rng, n)
    if rng.random() < 0.6:
        params["shared_memory_offset"] = _fuzz_value(rng, rng.choice([0, n, 64]))
    for key, value in params.items():
        p = pmap[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            if value > 2**63 - 1:
                p.uint64_param = value
            else:
                p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = value


def test_fuzz_shared_memory_parameters(client, served):
    """Seeded random region names, offsets, sizes and parameter types on inputs and outputs: every answer
    is a request-level status, and nothing is written outside an output region's span."""
    a, b = _data()
    h_in, _ = _region(client, "in", 256)
    h_out, key_out = _region(client, "out", 128, register=False, object_size=512)
    client.register_system_shared_memory("out", key_out, 128, offset=192)
    shm.set_shared_memory_region(h_in, [a, b])
    sentinel = np.full(512, 0xAB, np.uint8)
    shm.set_shared_memory_region(h_out, [sentinel])
    rng = random.Random(12)
    codes: dict = {}
    with grpc.insecure_channel(served.address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(FUZZ_REQUESTS):
            req = pb.ModelInferRequest(model_name="add_sub")
            raws = []
            for name, data in (("INPUT0", a), ("INPUT1", b)):
                t = req.inputs.add(name=name, datatype="FP32", shape=[2, 16])
                if rng.random() < 0.6:
                    _fuzz_params(rng, t.parameters, ["in", "out", "nope"], 128)
                elif rng.random() < 0.8:
                    raws.append(data.tobytes())
            req.raw_input_contents.extend(raws)
            for name in rng.sample(["OUTPUT0", "OUTPUT1"], rng.randint(0, 2)):
                o = req.outputs.add(name=name)
                if rng.random() < 0.7:
                    _fuzz_params(rng, o.parameters, ["out", "in", "nope"], 64)
            try:
                infer(req.SerializeToString(), timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
            codes[code] = codes.get(code, 0) + 1
    assert set(codes) <= ALLOWED, codes
    assert codes.get(grpc.StatusCode.OK) and codes.get(grpc.StatusCode.INVALID_ARGUMENT), codes  # both ways taken
    assert served.process.poll() is None, served.log()
    after = shm.get_contents_as_numpy(h_out, np.uint8, [512])
    assert (after[:192] == 0xAB).all() and (after[320:] == 0xAB).all()
    np.testing.assert_array_equal(_plain(client, a, b)[0], a + b)
    # Every refused request gave back the regions it leased: once unregistered, nothing stays open or mapped.
    client.unregister_system_shared_memory()
    assert _shm_fds(served.process.pid) == 0 and _shm_maps(served.process.pid) == 0


# -- flags and the restricted category ---------------------------------------------------------------------
def test_restricted_category_covers_every_shared_memory_rpc(repo):
    header = {"triton-grpc-protocol-shm-key": "k"}
    with start_server(repo, "--allow-shared-memory", "--grpc-restricted-protocol=shared-memory:shm-key=k",
                      "--http-restricted-api=shared-memory:shm-key=k") as s:
        c = grpcclient.InferenceServerClient(s.address)
        expected = "This protocol is restricted, expecting header 'triton-grpc-protocol-shm-key'"
        for call in (lambda **h: c.get_system_shared_memory_status(**h),
                     lambda **h: c.register_system_shared_memory("r", "/" + PREFIX + "absent", 8, **h),
                     lambda **h: c.unregister_system_shared_memory(**h),
                     lambda **h: c.get_cuda_shared_memory_status(**h),
                     lambda **h: c.register_cuda_shared_memory("c", b"\0" * 64, 0, 8, **h),
                     lambda **h: c.unregister_cuda_shared_memory(**h)):
            assert expected in _refused(call, "UNAVAILABLE")
        assert not c.get_system_shared_memory_status(headers=header).regions
        assert "CUDA shared memory is not supported" in _refused(
            lambda: c.register_cuda_shared_memory("c", b"\0" * 64, 0, 8, headers=header), "UNIMPLEMENTED")
        a, b = _data()
        np.testing.assert_array_equal(_plain(c, a, b)[0], a + b)  # inference is not in the category
        c.close()


def test_workers_are_refused_with_shared_memory(repo):
    out = subprocess.run([sys.executable, "-m", "tensorwire", "serve", "--model-repository", str(repo),
                          "--grpc-port", "0", "--allow-shared-memory", "--workers", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "--allow-shared-memory cannot be used with --workers 2" in out.stderr
    assert "registrations live in one process" in out.stderr


# -- the token rule (--shared-memory-require-token) -----------------------------------------------------
def test_a_region_is_usable_only_with_its_registration_token(repo, frontend):
    """With the token rule, a region registered with one token is invisible to every call without it:
    status does not list it, a request naming it gets what an unknown region gets, unregister leaves it,
    and a registration without a token is refused with the header's name; on both gRPC front ends and
    over HTTP, where the same header carries the same token."""
    alpha, beta = {"tensorwire-shm-token": "alpha-secret"}, {"tensorwire-shm-token": "beta-secret"}
    a, b = _data()
    with start_server(repo, "--grpc-frontend", frontend, "--allow-shared-memory", "--shared-memory-require-token") as s:
        c = grpcclient.InferenceServerClient(s.address)
        c.handles = []
        try:
            h_in, key_in = _region(c, "in", 2 * a.nbytes, register=False)
            h_out, key_out = _region(c, "out", 2 * a.nbytes, register=False)
            message = _refused(lambda: c.register_system_shared_memory("in", key_in, 2 * a.nbytes), "INVALID_ARGUMENT")
            assert "tensorwire-shm-token" in message and "--shared-memory-require-token" in message
            c.register_system_shared_memory("in", key_in, 2 * a.nbytes, headers=alpha)
            c.register_system_shared_memory("out", key_out, 2 * a.nbytes, headers=alpha)
            shm.set_shared_memory_region(h_in, [a, b])
            ins, outs = _shm_request()
            # another client's token (or none) sees nothing, reads nothing, removes nothing
            for other in (beta, None):
                assert not c.get_system_shared_memory_status(headers=other).regions
                _refused(lambda o=other: c.get_system_shared_memory_status("in", headers=o), "NOT_FOUND")
                unknown = _refused(lambda o=other: c.infer("add_sub", ins, outputs=outs, headers=o), "NOT_FOUND")
                assert "Unable to find shared memory region" in unknown
                c.unregister_system_shared_memory("in", headers=other)
                c.unregister_system_shared_memory(headers=other)
            assert sorted(c.get_system_shared_memory_status(headers=alpha).regions) == ["in", "out"]
            _token_rule_over_http(s.http_address, key_in, 2 * a.nbytes, alpha, beta)
            c.infer("add_sub", ins, outputs=outs, headers=alpha)
            got = shm.get_contents_as_numpy(h_out, np.float32, [2, 16])
            np.testing.assert_array_equal(got, a + b)
            c.unregister_system_shared_memory(headers=alpha)
            assert not c.get_system_shared_memory_status(headers=alpha).regions
        finally:
            for h in c.handles:
                shm.destroy_shared_memory_region(h)


def _token_rule_over_http(address: str, key: str, size: int, alpha: dict, beta: dict) -> None:
    """The regions gRPC registered with ``alpha``, seen over HTTP: only with ``alpha``; a registration
    without a token is refused naming the header."""
    import tritonclient.http as httpclient

    rest = httpclient.InferenceServerClient(address)
    try:
        with pytest.raises(InferenceServerException) as err:
            rest.register_system_shared_memory("h", key, size)
        assert "tensorwire-shm-token" in err.value.message()
        assert sorted(r["name"] for r in rest.get_system_shared_memory_status(headers=alpha)) == ["in", "out"]
        assert rest.get_system_shared_memory_status(headers=beta) == []
        rest.unregister_system_shared_memory(headers=beta)  # leaves alpha's regions
        rest.register_system_shared_memory("h", key, size, headers=beta)
        assert [r["name"] for r in rest.get_system_shared_memory_status(headers=beta)] == ["h"]
        rest.unregister_system_shared_memory("h", headers=beta)
    finally:
        rest.close()
