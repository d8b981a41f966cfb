"""The hot-path and batching benchmarks (tensorwire bench codec | fastpath | alignment | batching) run
against real codecs, real servers and real ONNX Runtime and produce real, consistent figures.
No timing assertions: only that every figure exists, is positive and fits the others."""

from __future__ import annotations

import json

from tensorwire.bench import alignment, batching, codec, fastpath_e2e
from tensorwire.cli import main


def test_codec_benchmark(tmp_path):
    assert main(["bench", "codec", "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "codec.json").read_text())["rows"]
    assert [r["payload"] for r in rows] == list(codec.PAYLOADS)
    for r, size in zip(rows, codec.PAYLOADS.values()):
        assert r["request_bytes"] > size
        for key in ("decode_ext_us", "decode_twin_us", "decode_protobuf_us", "decode_protobuf_read_us",
                    "encode_ext_us", "encode_twin_us", "encode_protobuf_us"):
            assert r[key] > 0, key
        assert abs(r["decode_protobuf_over_ext"] - r["decode_protobuf_us"] / r["decode_ext_us"]) < 1e-9
    assert "| 600 KB |" in (tmp_path / "codec.md").read_text()


def test_fastpath_end_to_end_benchmark(tmp_path):
    rows = fastpath_e2e.measure_servers(requests=40, rounds=2, out=tmp_path)
    assert [r["model"] for r in rows] == list(fastpath_e2e.MODELS)
    image = rows[1]
    assert image["request_bytes"] > 3 * 224 * 224 * 4 and image["response_bytes"] > 0
    for r in rows:
        for k in ("ext", "twin", "echo", "ort"):
            assert 0 < r[f"{k}_p50_ms"] <= r[f"{k}_p99_ms"]
        assert r["ext_overhead_ms"] == r["ext_p50_ms"] - r["ort_p50_ms"]
    assert json.loads((tmp_path / "fastpath_e2e.json").read_text())["rows"] == rows


def test_alignment_benchmark():
    rows = alignment.measure()
    assert {r["model"] for r in rows} == set(fastpath_e2e.MODELS)
    for r in rows:
        assert min(r["aligned_us"], r["misaligned_us"], r["copy_then_run_us"], r["copy_us"]) > 0


def test_batching_benchmark_quick(tmp_path):
    rows = batching.run_batching(tmp_path, duration=1.0, models=["mlp_small"], workers=[1])
    assert {(r["batching"], r["concurrency"]) for r in rows} == {
        (m, c) for m in batching.MODES for c in batching.CONCURRENCY}
    for r in rows:
        assert r["ok"] > 0 and not r["errors"], r
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput_rps"] > 0
    md = (tmp_path / "batching.md").read_text()
    assert "mlp_small: throughput at concurrency 32, batching on / off" in md


def test_batching_refuses_an_unknown_model(capsys):
    assert main(["bench", "batching", "--models", "mlp_small,gpt7"]) == 2
    assert "gpt7" in capsys.readouterr().err
