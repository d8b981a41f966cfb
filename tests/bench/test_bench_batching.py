"""The batching benchmark (tensorwire bench batching) runs against real servers and real ONNX Runtime and
produces real, consistent figures.
No timing assertions: only that every figure exists, is positive and fits the others."""

from __future__ import annotations

from tensorwire.bench import batching
from tensorwire.cli import main


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
