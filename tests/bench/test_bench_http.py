"""The HTTP benchmarks in their smallest runs, against a real `tensorwire serve`: `bench load --protocol http`
(closed and open loop, errors counted by HTTP status) and `bench http-servers` (HTTP beside gRPC).
They check that figures are real and counts add up, never compare speeds."""

from __future__ import annotations

import json

from models import build_test_repository
from serving import start_server

from tensorwire.bench import load
from tensorwire.cli import main


def test_load_over_http_closed_and_open_loop(tmp_path):
    repo = build_test_repository(tmp_path / "models")
    with start_server(repo) as s:
        settings = load.LoadSettings(target=s.http_address, model="add_sub", protocol="http", concurrency=[1, 2],
                                     rates=[50.0],
                                     shapes={"INPUT0": [1, 16], "INPUT1": [1, 16]}, processes=1, progress=False)
        payload = load.run_load(load.quick_settings(settings))
    closed1, closed2, opened = payload["levels"]
    for level in (closed1, closed2, opened):
        assert level["transport"] == "HTTP infer" and not level["errors"] and level["ok"] > 0
        assert level["latency"]["p50_ms"] > 0 and level["server_cpu"]["cpu_s"] > 0
    assert opened["sent"] == opened["ok"]
    assert payload["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16]},
                                 {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16]}]


def test_load_over_http_counts_refusals_by_status(tmp_path):
    repo = build_test_repository(tmp_path / "models")
    with start_server(repo, "--http-restricted-api", "inference:k=v") as s:
        code = main(["bench", "load", "--protocol", "http", "--target", s.http_address, "--model", "add_sub",
                     "--quick", "--concurrency", "1", "--processes", "1", "--input", "INPUT0:1x16:FP32",
                     "--input", "INPUT1:1x16:FP32"])
    assert code == 2  # the first request is refused (403): the run does not start


def test_http_servers_bench_measures_http_and_grpc(tmp_path):
    out = tmp_path / "out"
    assert main(["bench", "http-servers", "--requests", "16", "--concurrency", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    cases = {(r["model"], r["case"]) for r in rows}
    assert {("mlp", "http binary"), ("mlp", "grpc"), ("mlp", "http json")} <= cases
    assert all(r["p50_ms"] > 0 and r["requests"] > 0 for r in rows)
