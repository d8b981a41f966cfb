"""The benchmark harness in its --quick modes, against real engines and a real `tensorwire serve`.

These check that every figure is real and plausible (positive medians, throughput that agrees with the
median and batch, parity within tolerance, counts that add up, latencies measured from the intended
send time in the open loop). They never compare speeds: CI machines are too noisy for that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorwire.bench import load, report, stats
from tensorwire.bench.prepare import parse_model
from tensorwire.cli import main
from tensorwire.launcher import echo_server, tensorwire_server

CPU_ENGINES = ["eager", "compile", "ort", "ort-iobinding", "ort-int8"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_repository(root: Path) -> Path:
    """A two-input model: y = x @ w (FP32 [-1, 16]), mask_out = mask (INT64 [-1, -1], variable length)."""
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Identity", ["mask"], ["mask_out"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("mask_out", TensorProto.INT64, ["batch", "seq"])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    (root / "tiny" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "tiny" / "1" / "model.onnx"))
    (root / "tiny" / "config.pbtxt").write_text(
        'name: "tiny"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] }, '
        '{ name: "mask" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 8 ] }, '
        '{ name: "mask_out" data_type: TYPE_INT64 dims: [ -1 ] } ]\n')
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return _tiny_repository(tmp_path_factory.mktemp("bench") / "models")


@pytest.fixture(scope="module")
def served(repository):
    with tensorwire_server(repository) as server:
        yield server


def _check_outputs(out: Path, stem: str, pngs: list[str]) -> dict:
    payload = json.loads((out / f"{stem}.json").read_text())
    assert payload["kind"] == stem and payload["schema"] == 1
    for key in ("cpu", "cores_usable", "memory_gb", "versions"):
        assert key in payload["machine"]
    assert "onnxruntime" in payload["machine"]["versions"]
    md = (out / f"{stem}.md").read_text()
    assert md.startswith(f"# tensorwire bench {stem}") and "| --- |" in md
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and 5_000 < len(data) < 300_000, name
    return payload


# ---------------------------------------------------------------- compare

@pytest.fixture(scope="module")
def compare_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compare")
    rc = main(["bench", "compare", "--models", "mlp", "--batch", "1", "--engines", ",".join(CPU_ENGINES),
               "--quick", "--out", str(out)])
    payload = _check_outputs(out, "compare", ["compare_latency.png"])
    assert rc == 0, [r.get("error") for r in payload["results"]]
    return out, payload


def test_compare_every_engine_has_real_figures(compare_run):
    _, payload = compare_run
    results = {r["engine"]: r for r in payload["results"]}
    assert sorted(results) == sorted(CPU_ENGINES)
    for engine, r in results.items():
        assert r["ok"], (engine, r.get("error"))
        assert r["model"] == "mlp" and r["batch"] == 1
        lat = r["latency"]
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"], engine
        assert r["median_ms"] == lat["p50_ms"] and r["iterations"] == lat["count"] >= 8
        # throughput comes from the total time, the median from the middle sample: same order of magnitude
        implied = r["batch"] * 1e3 / r["median_ms"]
        assert implied / 10 < r["throughput_items_s"] < implied * 10, engine
        if engine == "ort-int8":   # reduced precision: judged on cosine similarity to eager's outputs
            p = r["parity"]        # (the quick MLP's random weights drift more than trained ones would)
            assert p["min_cosine"] > 0.99 and p["ok"] == (p["min_cosine"] >= p["min_cosine_required"] == 0.999)
        else:
            assert r["parity"]["ok"] and r["parity"]["max_abs_diff"] <= 1e-3, (engine, r["parity"])
        assert r["threads"] == payload["settings"]["threads"] >= 1
        assert r["peak_rss_mb"] > r["baseline_rss_mb"] > 0 and r["peak_memory_mb"] >= 0
        assert r["speedup_vs_eager"] == pytest.approx(results["eager"]["median_ms"] / r["median_ms"])
    assert results["eager"]["speedup_vs_eager"] == pytest.approx(1.0)
    assert results["eager"]["parity"]["max_abs_diff"] == 0.0        # the same weights as the exported module
    assert results["compile"]["compile_seconds"] > 0
    assert results["ort"]["info"]["providers"][0] == "CPUExecutionProvider"
    assert payload["models"][0]["export_parity_ok"] and payload["models"][0]["onnx_bytes"] > 0


def test_compare_markdown_shows_every_engine_with_ratio_and_parity(compare_run):
    out, _ = compare_run
    md = (out / "compare.md").read_text()
    for engine in CPU_ENGINES:
        assert f"| {engine} |" in md
    assert "(x" in md and "✓" in md and "threads for every engine" in md


def test_compare_table_shows_failures_instead_of_crashing(compare_run):
    _, payload = compare_run
    broken = json.loads(json.dumps(payload))
    broken["results"].append({"model": "mlp", "batch": 1, "engine": "compile-max-autotune", "ok": False,
                              "error": "BackendCompilerFailed: no C++ compiler"})
    md = report.compare_markdown(broken)
    assert "error: BackendCompilerFailed: no C++ compiler" in md


def test_render_redraws_from_json(compare_run, tmp_path):
    out, _ = compare_run
    paths = report.render(out / "compare.json", tmp_path)
    assert paths["plot"].read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "compare.md").read_text() == (out / "compare.md").read_text()


# ---------------------------------------------------------------- load

@pytest.fixture(scope="module")
def load_run(served, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("load")
    rc = main(["bench", "load", "--target", served.address, "--model", "tiny", "--concurrency", "1,4",
               "--rate", "40", "--shape", "mask:1x8", "--quick", "--out", str(out)])
    assert rc == 0
    return _check_outputs(out, "load", ["load_throughput_p99.png", "load_latency_cdf.png"])


def test_load_closed_loop_counts_and_percentiles(load_run):
    assert load_run["inputs_from"] == "ModelMetadata"
    assert load_run["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 16]},
                                  {"name": "mask", "datatype": "INT64", "shape": [1, 8]}]
    closed = [lv for lv in load_run["levels"] if lv["mode"] == "closed"]
    assert [lv["concurrency"] for lv in closed] == [1, 4]
    for lv in closed:
        assert lv["errors"] == {} and lv["sent"] == lv["ok"] == lv["latency"]["count"] > 0
        lat = lv["latency"]
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["p999_ms"] <= lat["max_ms"]
        assert lv["throughput_rps"] == pytest.approx(lv["ok"] / lv["window_s"])
        assert lv["cdf"]["fraction"][-1] == 1.0 and lv["cdf"]["ms"] == sorted(lv["cdf"]["ms"])
    assert closed[1]["processes"] >= 1 and closed[0]["processes"] == 1


def test_load_open_loop_keeps_the_schedule_and_measures_from_intended_send(load_run):
    (lv,) = [lv for lv in load_run["levels"] if lv["mode"] == "open"]
    assert lv["rate_target"] == 40 and lv["latency_from"] == "intended send time"
    duration = load_run["settings"]["duration_s"]
    assert abs(lv["sent"] - 40 * duration) <= 1 and lv["errors"] == {} and lv["ok"] == lv["sent"]
    # per request, intended <= actual send, so latency from the intended time dominates the service time
    assert lv["latency"]["p50_ms"] >= lv["service_latency"]["p50_ms"] > 0
    assert lv["latency"]["max_ms"] >= lv["service_latency"]["max_ms"]
    assert lv["send_lag_p99_ms"] >= 0


def test_load_speaks_only_the_protocol_to_another_server(tmp_path):
    """The bare grpcio echo server has no ModelMetadata: describe the input and it still works."""
    with echo_server(64) as echo:
        payload = load.run_load(load.quick_settings(load.LoadSettings(
            target=echo.address, model="anything", concurrency=[2], inputs=["input:1x512:FP32"], progress=False)))
    (lv,) = payload["levels"]
    assert payload["inputs_from"] == "--input" and payload["response_bytes"] == 64
    assert lv["errors"] == {} and lv["ok"] == lv["sent"] > 0


def test_load_reports_errors_by_status_code(served):
    """A deadline no request can meet: every failure is counted under its gRPC status code."""
    payload = load.run_load(load.LoadSettings(target=served.address, model="tiny", concurrency=[2], duration_s=0.3,
                                              warmup_s=0.0, timeout_s=1e-6, shapes={"mask": [1, 8]},
                                              progress=False))
    (lv,) = payload["levels"]
    assert lv["errors"].get("DEADLINE_EXCEEDED", 0) > 0
    assert lv["sent"] == lv["ok"] + sum(lv["errors"].values())


def test_load_refuses_a_request_the_server_rejects(served):
    with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
        load.run_load(load.LoadSettings(target=served.address, model="tiny", concurrency=[1],
                                        inputs=["x:1x3:FP32", "mask:1x8:INT64"], progress=False))
    with pytest.raises(RuntimeError, match="NOT_FOUND"):
        load.run_load(load.LoadSettings(target=served.address, model="no_such_model", progress=False))


def test_load_streaming_reports_server_cpu_beside_the_echo(served):
    """--streaming over ModelStreamInfer, the server's CPU per request found from its port, and the bare echo
    on the same transport right after each level, with the ratio."""
    payload = load.run_load(load.quick_settings(load.LoadSettings(
        target=served.address, model="tiny", concurrency=[2], shapes={"mask": [1, 8]}, streaming=True, echo=True,
        progress=False)))
    (lv,) = payload["levels"]
    assert payload["transport"] == lv["transport"] == "ModelStreamInfer"
    assert payload["server_pids"] == [served.process.pid]
    assert lv["errors"] == {} and lv["ok"] == lv["sent"] > 0
    cpu = lv["server_cpu"]
    assert cpu["pids"] == [served.process.pid] and cpu["cpu_s"] == pytest.approx(cpu["user_s"] + cpu["system_s"])
    assert lv["cpu_us_per_request"] == cpu["us_per_request"] == pytest.approx(cpu["cpu_s"] / lv["ok"] * 1e6, rel=0.01)
    echo = lv["echo"]
    assert echo["errors"] == {} and echo["ok"] > 0 and echo["server_cpu"]["pids"] not in ([], cpu["pids"])
    if echo["server_cpu"]["us_per_request"] > 0:  # one 10 ms tick can be all a quiet echo spends in 1 s
        assert lv["cpu_ratio_vs_echo"] == pytest.approx(cpu["us_per_request"] / echo["server_cpu"]["us_per_request"])
    md = report.load_markdown(payload)
    assert "| closed c=2 | ModelStreamInfer |" in md and "CPU ratio vs echo" in md


def test_stream_caller_counts_an_error_message_and_the_stream_goes_on(served):
    """A bad request on a stream is answered with error_message (counted, not fatal); the next one works."""
    from tensorwire.client import encode_request

    good = encode_request("tiny", {"x": np.zeros((1, 16), np.float32), "mask": np.zeros((1, 8), np.int64)})
    bad = encode_request("tiny", {"x": np.zeros((1, 3), np.float32), "mask": np.zeros((1, 8), np.int64)})
    with load._channel(served.address) as ch:
        stream = load.StreamCaller(ch)
        try:
            with pytest.raises(load.StreamError) as err:
                stream(bad)
            assert err.value.code().name == "STREAM_ERROR_MESSAGE"
            assert stream(good)[:1] == b"\x12"  # field 2: infer_response
        finally:
            stream.close()


def test_server_cpu_is_found_only_for_local_targets(served):
    from tensorwire.bench import procnet, procstat

    port = int(served.address.rsplit(":", 1)[1])
    assert procnet.listeners(port) == [served.process.pid]
    assert procstat.local_server_pids(f"localhost:{port}") == [served.process.pid]
    assert procstat.local_server_pids(f"example.invalid:{port}") == []
    user, system = procstat.stat_times(served.process.pid)
    assert user > 0 and system >= 0
    with pytest.raises(ValueError, match="closed loop only"):
        load.run_load(load.LoadSettings(target=served.address, model="tiny", rates=[10.0], streaming=True,
                                        shapes={"mask": [1, 8]}, progress=False))


# ---------------------------------------------------------------- overhead

def test_overhead_in_process_vs_served_vs_echo(repository, tmp_path):
    rc = main(["bench", "overhead", "--model", "tiny", "--model-repository", str(repository), "--shape", "mask:1x8",
               "--quick", "--out", str(tmp_path)])
    assert rc == 0
    payload = _check_outputs(tmp_path, "overhead", ["overhead.png"])
    assert payload["parity_ok"] is True
    for key in ("in_process", "served", "echo"):
        assert payload[key]["count"] > 0 and 0 < payload[key]["p50_ms"] <= payload[key]["p99_ms"]
    o = payload["overhead"]
    assert o["overhead_us"] == pytest.approx((payload["served"]["p50_ms"] - payload["in_process"]["p50_ms"]) * 1e3)
    assert o["overhead_pct"] == pytest.approx(100 * o["overhead_us"] / (payload["in_process"]["p50_ms"] * 1e3))
    assert o["floor_us"] > 0 and payload["response_bytes"] > 0
    assert "Server overhead per request" in (tmp_path / "overhead.md").read_text()


# ---------------------------------------------------------------- small pieces

def test_shapes_models_and_stats_helpers():
    assert load.resolve_shape([-1, 16], None, "x") == [1, 16]
    assert load.resolve_shape([-1, -1], [4, 32], "ids") == [4, 32]
    with pytest.raises(ValueError, match="does not fit"):
        load.resolve_shape([-1, 16], [4, 15], "x")
    assert load.split(32, 3) == [11, 11, 10] and sum(load.split(5, 2)) == 5
    assert parse_model("bert", [], "full", 64)["overrides"] == {"seq": 64}
    with pytest.raises(ValueError, match="--input"):
        parse_model("model.py:make", [], "full", None)
    with pytest.raises(ValueError, match="unknown model"):
        parse_model("gpt7", [], "full", None)
    tail = stats.summarize_tail([i / 1000 for i in range(1, 1001)])
    assert tail["p50_ms"] < tail["p99_ms"] < tail["p999_ms"] <= tail["max_ms"] == 1000.0
    cdf = stats.cdf_points([0.003, 0.001, 0.002])
    assert cdf["ms"] == sorted(cdf["ms"]) and cdf["fraction"][-1] == 1.0
    assert math.isnan(stats.percentile_ms([], 50))


# ---------------------------------------------------------------- plots people can read

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _inside_figure(fig, artist) -> bool:
    fig.canvas.draw()
    box, frame = artist.get_window_extent(), fig.bbox
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def test_compare_figure_log_axis_fitting_title_noisy_and_contended_marks():
    """The committed compare run: latencies from 0.02 ms to 1.4 s, a busy machine, one noisy cell."""
    payload = json.loads((RESULTS / "compare" / "compare.json").read_text())
    fig = report.compare_figure(payload)
    try:
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title() for ax in panels] == ["mlp", "resnet50", "distilbert", "bert"]
        assert all(ax.get_yscale() == "log" for ax in panels)   # batch 1 and 8 differ by about 10x
        title, warning = fig._suptitle, fig._supxlabel
        assert title.get_text().startswith("bench compare: 2 threads") and _inside_figure(fig, title)
        assert "contended run: load average 1.29 on 2 usable cores" in warning.get_text().replace("\n", " ")
        assert warning.get_color() == "firebrick" and _inside_figure(fig, warning)
        hatched = [bar for bar in panels[0].patches if bar.get_hatch()]
        assert len(hatched) == 1  # mlp eager batch 1: p90 1.7x its median
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_linear_axis_for_a_narrow_range_and_no_mark_on_a_quiet_machine():
    payload = json.loads((RESULTS / "load" / "load.json").read_text())   # load average 0.21 on 2 cores
    assert report.contention(payload) is None
    busy = json.loads((RESULTS / "overhead" / "overhead.json").read_text())   # 2.34 on 2 cores
    assert "load average 2.34" in report.contention(busy)
    assert "Contended run" in report.overhead_markdown(busy)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    report._latency_axis(ax, [1.0, 2.5, 4.0])
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    report._latency_axis(ax, [0.02, 40.0])
    assert ax.get_yscale() == "log"
    plt.close(fig)


def test_bench_report_redraws_committed_results_without_measuring(tmp_path):
    for kind, pngs in (("compare", ["compare_latency.png"]), ("overhead", ["overhead.png"]),
                       ("load", ["load_throughput_p99.png", "load_latency_cdf.png"])):
        out = tmp_path / kind
        assert main(["bench", "report", "--from", str(RESULTS / kind / f"{kind}.json"), "--out", str(out)]) == 0
        _check_outputs(out, kind, pngs)
        # the committed markdown is exactly what the committed JSON renders to
        assert (out / f"{kind}.md").read_text() == (RESULTS / kind / f"{kind}.md").read_text()
    assert main(["bench", "report", "--from", str(RESULTS / "fastpath" / "codec.json")]) == 2


@pytest.mark.parametrize("bench", ["peers", "cpu", "triton-perf"])
def test_a_record_is_written_only_where_out_says(bench, tmp_path, capsys, monkeypatch):
    """Without --out a bench prints its table and writes nothing: a look at one case never replaces the record
    in bench/results/ (the commands in the records' READMEs pass --out)."""
    with pytest.raises(SystemExit):
        main(["bench", bench, "--help"])
    assert "(default: print only)" in " ".join(capsys.readouterr().out.split())
    monkeypatch.chdir(tmp_path)
    report.write_payload({"kind": bench}, "the table", None, bench)
    assert capsys.readouterr().out == "the table\n"
    assert list(tmp_path.iterdir()) == []
    report.write_payload({"kind": bench}, "the table", tmp_path / "out", bench)
    assert json.loads((tmp_path / "out" / f"{bench}.json").read_text())["kind"] == bench
