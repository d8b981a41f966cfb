"""Bounded memory per request: the amplification cases against a real server, real ONNX Runtime.

Each case goes to a fresh `tensorwire serve` on loopback (fresh, so memory a previous case left in the
allocator cannot hide this one's cost); its peak is the server's VmHWM, reset through /proc/PID/clear_refs
just before the request, minus its VmRSS then. The bound is the issue's: what the bare grpcio echo server
peaks at when it receives the same bytes (measured here, per case), plus 1x the wire size plus a fixed
allowance (plus, for a request that runs, what the model produced and the answer encoded from it), or, for
an unknown model, grpcio's receive plus 64 MiB. Every case must also get its status,
with a message that says what was wrong, and the server must answer a small inference afterwards.
No timing is asserted (the small-request p99 figures come from `tensorwire bench memory --p99`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from serving import start_server

from tensorwire import proto as pb
from tensorwire.bench import memory

pytestmark = [
    pytest.mark.slow,  # ~8 server starts and ~60 MB requests: about a minute on 2 cores
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status and clear_refs"),
]

# What each refusal's message must say: the bound, its flag or the sizes.
MESSAGES = {
    "raw_bytes_1e7": ["10000000 BYTES elements", "--max-bytes-elements"],
    "typed_bytes_1e7": ["10000000 BYTES elements", "--max-bytes-elements"],
    "unknown_model_int64_6e7": ["no_such_model"],
    "typed_int64_6e7": ["int64_contents of 60000000 elements", "480000000 bytes", "--max-typed-contents-mb"],
    "response_over_limit": ["16000000 bytes", "--max-message-mb"],
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return memory.write_repository(tmp_path_factory.mktemp("memory") / "repo")


def _still_serves(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        answer = channel.unary_unary(memory.INFER)(memory.small_request(), timeout=60)
    resp = pb.ModelInferResponse.FromString(answer)
    assert resp.model_name == memory.SMALL_MODEL
    np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], np.float32), np.zeros(16, np.float32))


@pytest.mark.parametrize("case", memory.CASES, ids=[c.name for c in memory.CASES])
def test_request_memory_is_bounded(case, repo):
    request = case.build()
    with start_server(repo, *case.server_args) as server:
        memory.warm(server, case.model)
        sent = memory.send_measured(server, request)
        _still_serves(server)
    assert sent.status == case.expect, sent.message
    for words in MESSAGES.get(case.name, []):
        assert words in sent.message, sent.message
    wire = len(request) / memory.MiB
    if wire > 10:  # the measured process did receive the request (grpcio holds it whole): not a vacuous pass
        assert sent.peak_mib >= 0.9 * wire, f"{case.name}: peak {sent.peak_mib} MiB below the {wire:.1f} MiB received"
    floor = memory.grpcio_floor(request, sent.response_bytes)
    bound = memory.bound_for(case, wire, floor, sent.response_bytes)
    assert sent.peak_mib <= bound, (
        f"{case.name}: server peaked {sent.peak_mib} MiB above its resting RSS; bare grpcio {floor} MiB for the "
        f"same {wire:.1f} MiB, bound {bound} MiB")


# -- memory given back after a burst -------------------------------------------------------------------
BURST_ELEMENTS = 4 << 20  # 16 MiB of FP32 per request


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def _row_sum_request(region: str | None) -> bytes:
    """ModelInferRequest for row_sum [1, 4Mi] FP32: raw bytes of ones, or a reference to ``region``."""
    req = pb.ModelInferRequest(model_name="row_sum")
    tensor = req.inputs.add(name="X", datatype="FP32", shape=[1, BURST_ELEMENTS])
    if region is None:
        req.raw_input_contents.append(np.ones(BURST_ELEMENTS, np.float32).tobytes())
    else:
        tensor.parameters["shared_memory_region"].string_param = region
        tensor.parameters["shared_memory_byte_size"].int64_param = BURST_ELEMENTS * 4
    return req.SerializeToString()


def _burst(address: str, request: bytes, total: int, concurrent: int) -> list[float]:
    """Row sums of ``total`` requests sent ``concurrent`` at a time over up to 8 connections (grpcio's server
    refuses streams that arrive faster than it accepts calls, and a 16 MiB request is past the client's
    transparent-retry buffer)."""
    from concurrent.futures import ThreadPoolExecutor

    channels = [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(min(8, concurrent))]
    calls = [channel.unary_unary(memory.INFER) for channel in channels]
    try:
        with ThreadPoolExecutor(concurrent) as pool:
            answers = list(pool.map(lambda i: calls[i % len(calls)](request, timeout=300), range(total)))
    finally:
        for channel in channels:
            channel.close()
    return [float(np.frombuffer(pb.ModelInferResponse.FromString(a).raw_output_contents[0], np.float32)[0])
            for a in answers]


def test_scratch_memory_is_given_back_after_a_burst(tmp_path):
    """480 shared-memory requests of 16 MiB (120 at once) and 120 raw ones at once, at default flags: RSS 5 s
    later is within 256 MiB of where it was before the burst (the scratch pool's ceiling, its idle sweep and
    the allocator's trim after a burst; docs/resilience.md)."""
    import time

    import tritonclient.grpc as grpcclient
    import tritonclient.utils.shared_memory as shm
    from models import row_sum_model, write_model

    repo = write_model(tmp_path / "models", "row_sum", row_sum_model(), "max_batch_size: 0\n").parent
    handle = shm.create_shared_memory_region("burst", "/tensorwire-burst-test", BURST_ELEMENTS * 4)
    try:
        shm.set_shared_memory_region(handle, [np.ones(BURST_ELEMENTS, np.float32)])
        with start_server(repo, "--allow-shared-memory") as server:
            grpcclient.InferenceServerClient(server.address).register_system_shared_memory(
                "burst", "/tensorwire-burst-test", BURST_ELEMENTS * 4)
            _burst(server.address, _row_sum_request(None), 2, 1)  # warm: sessions, arenas
            before = _rss_mib(server.process.pid)
            sums = _burst(server.address, _row_sum_request("burst"), 480, 120)
            sums += _burst(server.address, _row_sum_request(None), 120, 120)
            peak = _rss_mib(server.process.pid)
            time.sleep(5)
            after = _rss_mib(server.process.pid)
            _still_serves_row_sum(server.address)
    finally:
        shm.destroy_shared_memory_region(handle)
    assert sums == [float(BURST_ELEMENTS)] * 600
    assert after - before < 256, f"RSS {before:.0f} MiB before, {peak:.0f} after the burst, {after:.0f} 5 s later"


def _still_serves_row_sum(address: str) -> None:
    assert _burst(address, _row_sum_request(None), 1, 1) == [float(BURST_ELEMENTS)]
