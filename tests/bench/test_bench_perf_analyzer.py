"""`tensorwire bench triton-perf` and `bench cpu` without running them: their parsers, perf_analyzer's command
lines and CSV (a recorded sample), and the paired ratios.

perf_analyzer itself does not run here: its venv (bench/perf_analyzer_env.sh: tritonclient 2.41.0, libb64,
libcudart) takes ~25 s to build and a run of every case minutes, beyond what CI's suite can spend.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tensorwire.bench import cpu, triton_perf
from tensorwire.cli import main

SAMPLE = Path(__file__).parents[1] / "fixtures" / "perf_analyzer" / "mlp_c8_streaming.csv"


def test_perf_analyzer_csv_is_parsed_to_numbers():
    figures = triton_perf.parse_csv(SAMPLE.read_text())
    assert figures["Concurrency"] == 8 and figures["Inferences/Second"] == pytest.approx(1186.86)
    assert figures["p50 latency"] == 5853 and figures["p99 latency"] == 19026
    with pytest.raises(ValueError, match="no CSV rows"):
        triton_perf.parse_csv("Concurrency,Inferences/Second\n")
    with pytest.raises(ValueError, match="p50 latency"):
        triton_perf.parse_csv("Concurrency,Inferences/Second\n1,10\n")


def test_perf_analyzer_command_lines_per_case(tmp_path):
    cases = {c.name: c for c in triton_perf.CASES}
    shm = triton_perf.command(Path("pa"), "127.0.0.1:1", cases["conv_b8_shm"], tmp_path / "x.csv", 3000, 6)
    assert shm[:3] == ["pa", "-m", "conv"] and shm[shm.index("-b") + 1] == "8"
    assert shm[shm.index("--shared-memory") + 1] == "system"
    assert shm[shm.index("--output-shared-memory-size") + 1] == str(16 * 4 * 8)
    stream = triton_perf.command(Path("pa"), "127.0.0.1:1", cases["mlp_c8_streaming"], tmp_path / "x.csv", 500, 3)
    assert "--streaming" in stream and "--shared-memory" not in stream
    assert stream[stream.index("--concurrency-range") + 1] == "8" and stream[stream.index("-f") + 1].endswith(".csv")


def test_triton_perf_summary_pairs_rounds_and_the_floor():
    runs = [{"case": name, "round": r, "figures": {"Inferences/Second": ips, "p50 latency": p50, "p90 latency": p50,
                                                   "p99 latency": p50}}
            for r, scale in ((0, 1.0), (1, 2.0))
            for name, ips, p50 in (("conv_b1_grpc", 100 * scale, 2000), ("conv_b1_shm", 200 * scale, 1100),
                                   ("small2k_c1_grpc", 1000, 600))]
    payload = {"runs": runs, "ort": {"conv_b1_p50_us": 400.0}}
    s = triton_perf.summarize(payload, triton_perf.CASES)
    assert s["ratios"]["conv_b1_shm_vs_grpc_throughput"] == pytest.approx(2.0)
    assert s["ratios"]["conv_b8_shm_vs_grpc_throughput"] is None
    assert s["floor_us"] == 1000 and s["ratios"]["conv_b1_shm_p50_vs_floor"] == pytest.approx(1.1)
    assert s["cases"]["conv_b8_grpc"]["rounds"] == 0
    # Plain b1 takes 10 ms (round 0) and 5 ms (round 1); a 2 KB round trip 1 ms; the model 400 us in process.
    assert s["ceilings"]["conv_b1_in_process"] == pytest.approx(((10 / 1.4) + (5 / 1.4)) / 2)
    assert s["ceilings"]["conv_b1_server"] is None  # these CSVs have no Server Compute Infer column
    runs[1]["figures"]["Server Compute Infer"] = 4000.0  # round 0's shared-memory run: the model took 4 ms
    s = triton_perf.summarize(payload, triton_perf.CASES)
    assert s["ceilings"]["conv_b1_server"] == pytest.approx(10 / 5) and s["ceilings"]["conv_b8_server"] is None


def test_bench_cpu_variants_and_paired_ratios():
    assert cpu.parse_variant("spin=--intra-op-spinning --intra-op-threads 1") == (
        "spin", ["--intra-op-spinning", "--intra-op-threads", "1"])
    assert cpu.parse_variant("default=") == ("default", [])
    with pytest.raises(Exception, match="NAME=ARGS"):
        cpu.parse_variant("--intra-op-spinning")
    rows = [{"target": t, "round": r, "concurrency": 8, "cpu_us_per_request": v}
            for r, (a, e) in enumerate(((1000, 400), (3000, 1000), (900, 500)))
            for t, v in (("default/unary", a), ("echo/unary", e))]
    assert cpu._paired(rows, "default/unary", "echo/unary", 8, "cpu_us_per_request") == pytest.approx(2.5)
    assert cpu._paired(rows, "default/unary", "echo/stream", 8, "cpu_us_per_request") is None
    # ORT's own 200 us per run on top of the echo's 400, 1000 and 500: 1.5, 1.2, 1.4 -> median 1.4.
    payload = {"rows": rows, "intra_op_threads": {"default": 1}, "ort": {"1": {"cpu_us_per_run": 200.0}}}
    assert cpu._echo_plus_ort(payload, "default", "unary", 8) == pytest.approx(1.4)
    assert cpu._echo_plus_ort(payload, "default", "stream", 8) is None


def test_triton_perf_without_perf_analyzer_says_how_to_get_it(tmp_path, capsys):
    rc = main(["bench", "triton-perf", "--perf-analyzer", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert rc == 2 and "perf_analyzer_env.sh" in capsys.readouterr().err

