"""Issue 11, bounded memory per request: the amplification cases against a real server, real ONNX Runtime.

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
