"""Every benchmark's output, in three forms: JSON for machines, a markdown table for people, PNG plots.

The JSON holds the raw figures with the machine, versions and settings; the markdown and the plots are
drawn from it alone, so a committed JSON can be re-rendered later (``render(json_path)``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from tensorwire.bench.machine import one_line

PLOT_DPI = 100


def _save(fig, path: Path) -> Path:
    """Lay out, write and close a figure (closing frees it: these run in long benchmark processes)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path


def write_json(payload: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(payload, indent=1, default=_jsonable, allow_nan=True) + "\n")
    return path


def write_rows(rows: list[dict[str, Any]], table: str, out: Path, stem: str) -> None:
    """The small benchmarks' output (codec, fastpath, batching): ``stem.json`` with the machine, ``stem.md``."""
    from tensorwire.bench.machine import describe

    out.mkdir(parents=True, exist_ok=True)
    write_json({"kind": stem, "machine": describe(), "rows": rows}, out / f"{stem}.json")
    (out / f"{stem}.md").write_text(table + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine_block(payload: dict[str, Any]) -> str:
    m = payload.get("machine", {})
    load = m.get("load_average_at_start")
    return (f"Machine: {one_line(m)}" + (f"; load average at start {load}" if load else "")
            + f". Run {payload.get('created', '')}.")


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------- compare

def _engines(payload: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for r in payload["results"]:
        if r["engine"] not in seen:
            seen.append(r["engine"])
    return seen


def compare_markdown(payload: dict[str, Any]) -> str:
    """Summary (median and speedup per engine), details (every figure), and the models as exported."""
    s = payload["settings"]
    engines = _engines(payload)
    keys: list[tuple[str, int]] = []
    for r in payload["results"]:
        if (r["model"], r["batch"]) not in keys:
            keys.append((r["model"], r["batch"]))
    by = {(r["model"], r["batch"], r["engine"]): r for r in payload["results"]}

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        if not r.get("ok"):
            return f"error: {_short(r.get('error', '?'), 60)}"
        mark = "✓" if r["parity"]["ok"] else "✗ parity"
        ratio = f" (x{r['speedup_vs_eager']:.2f})" if r.get("speedup_vs_eager") and r["engine"] != "eager" else ""
        return f"{_f(r['median_ms'])}{ratio} {mark}"

    summary = _table(["model", "batch", *[f"{e} ms" for e in engines]],
                     [[m, str(b), *[cell(by.get((m, b, e))) for e in engines]] for m, b in keys])
    rows = []
    for r in payload["results"]:
        if not r.get("ok"):
            rows.append([r["model"], str(r["batch"]), r["engine"], f"error: {_short(r.get('error', '?'), 120)}",
                         *["-"] * 8])
            continue
        lat, p = r["latency"], r["parity"]
        rows.append([r["model"], str(r["batch"]), r["engine"], _f(lat["p50_ms"]), _f(lat["p90_ms"]), _f(lat["p99_ms"]),
                     _f(r["throughput_items_s"], 1), _f(r["peak_memory_mb"], 1),
                     f"x{r['speedup_vs_eager']:.2f}" if r.get("speedup_vs_eager") else "-",
                     f"{'ok' if p['ok'] else 'FAIL'} {p['max_abs_diff']:.1e}"
                     + (f", cos {p['min_cosine']:.5f}" if p.get("min_cosine") is not None else ""),
                     str(r["iterations"]),
                     _f(r.get("compile_seconds"), 1)])
    details = _table(["model", "batch", "engine", "median ms", "p90 ms", "p99 ms", "items/s", "peak MB",
                      "vs eager", "parity (max abs diff, cosine)", "iters", "compile s"], rows)
    models = _table(["model", "description", "parameters", "exporter", "ONNX MB", "export s", "prepare"],
                    [[m.get("name", "?"), m.get("description", "-"), f"{m.get('parameters', 0) / 1e6:.2f} M",
                      m.get("exporter", "-"), _f(m.get("onnx_bytes", 0) / 1e6, 1), _f(m.get("export_seconds"), 1),
                      "ok" if "error" not in m else f"error: {_short(m['error'])}"] for m in payload["models"]])
    loop = s["loop"]
    return "\n\n".join([
        "# tensorwire bench compare",
        _machine_block(payload),
        f"Settings: {s['threads']} threads for every engine (torch.set_num_threads, ORT intra_op_num_threads), "
        f"each engine in its own process; {s['size']} models; warm-up {loop['warmup']} calls, then at least "
        f"{loop['min_iters']} calls and {loop['min_time_s']} s (at most {loop['max_time_s']} s); parity against "
        f"eager with rtol={s['rtol']:g}, atol={s['atol']:g}." + (" QUICK mode: figures are not for comparison."
                                                                  if s.get("quick") else ""),
        "## Median latency and speedup vs eager (same run)",
        "Cells: median ms, (x speedup vs eager), ✓ = outputs match eager within tolerance (reduced-precision "
        "engines such as ort-int8: cosine similarity to eager's outputs >= 0.999 instead).",
        summary,
        "## All figures",
        f"items/s = batch x iterations / total time; peak MB = {s['memory_method']}; compile s = first call "
        "of torch.compile (not in the latency figures).",
        details,
        "## Models",
        models,
    ]) + "\n"


def compare_plot(payload: dict[str, Any], path: Path) -> Path | None:
    """One panel per model: median latency per engine, grouped by batch size, whiskers to p90."""
    plt = _pyplot()
    ok = [r for r in payload["results"] if r.get("ok")]
    if not ok:
        return None
    models = list(dict.fromkeys(r["model"] for r in ok))
    engines = _engines(payload)
    cols = min(2, len(models))
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.6 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, model in zip(axes.flat, models):
        batches = sorted({r["batch"] for r in ok if r["model"] == model})
        width = 0.8 / max(1, len(engines))
        for j, engine in enumerate(engines):
            xs, ys, hi, ratios = [], [], [], []
            for i, b in enumerate(batches):
                r = next((r for r in ok if r["model"] == model and r["batch"] == b and r["engine"] == engine), None)
                if r:
                    xs.append(i + (j - (len(engines) - 1) / 2) * width)
                    ys.append(r["median_ms"])
                    hi.append(max(0.0, r["latency"]["p90_ms"] - r["median_ms"]))
                    ratios.append(r.get("speedup_vs_eager") if engine != "eager" else None)
            if xs:
                ax.bar(xs, ys, width, yerr=[[0] * len(hi), hi], capsize=2, label=engine, color=colors(j % 10))
                for x, y, h, ratio in zip(xs, ys, hi, ratios):
                    if ratio:
                        ax.annotate(f"x{ratio:.2f}", (x, y + h), ha="center", va="bottom", fontsize=7,
                                    xytext=(0, 1), textcoords="offset points")
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_title(model)
        ax.set_ylabel("median latency, ms (whisker: p90)")
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"tensorwire bench compare: {payload['settings']['threads']} threads, "
                 f"{payload['machine'].get('cpu', '')}; labels: speedup vs eager", fontsize=10)
    return _save(fig, path)


def write_compare(payload: dict[str, Any], out: Path) -> dict[str, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(compare_markdown(payload))
    return {"json": write_json(payload, out / "compare.json"), "markdown": out / "compare.md",
            "plot": _optional(compare_plot, payload, out / "compare_latency.png")}


# ---------------------------------------------------------------- load

def _level_name(level: dict[str, Any]) -> str:
    if level["mode"] == "open":
        return f"open {level['rate_target']:g}/s"
    return f"closed c={level['concurrency']}"


def load_markdown(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    rows = []
    for lv in payload["levels"]:
        lat = lv["latency"]
        errors = ", ".join(f"{k} {v}" for k, v in lv["errors"].items()) or "0"
        rows.append([lv["mode"], str(lv.get("concurrency") or "-"),
                     _f(lv.get("rate_target"), 1) if lv["mode"] == "open" else "-",
                     str(lv["sent"]), str(lv["ok"]), errors, _f(lv["throughput_rps"], 1), _f(lat.get("p50_ms")),
                     _f(lat.get("p90_ms")), _f(lat.get("p99_ms")), _f(lat.get("p999_ms")), _f(lat.get("max_ms"))])
    table = _table(["mode", "concurrency", "target req/s", "sent", "ok", "errors", "throughput req/s", "p50 ms",
                    "p90 ms", "p99 ms", "p99.9 ms", "max ms"], rows)
    inputs = ", ".join(f"{i['name']} {i['datatype']}{i['shape']}" for i in payload["inputs"])
    notes = [
        "# tensorwire bench load",
        _machine_block(payload),
        f"Target `{s['target']}`, model `{s['model']}`, inputs {inputs} ({payload['request_bytes']} B request, "
        f"{payload['response_bytes']} B response), data: {payload['data_source']}. {s['duration_s']} s per level"
        + (f", at most {s['max_requests']} requests" if s.get("max_requests") else "")
        + f", after {s['warmup_s']} s warm-up; worker processes: {s['processes']} max, each with its own channels."
        + (" QUICK mode." if s.get("quick") else ""),
        "Closed loop: each of `concurrency` callers sends its next request when the last one returns. Open loop: "
        "requests are sent on a fixed schedule whatever the server does, and latency is measured from each "
        "request's intended send time, so a stall shows up in the figures instead of hiding (no coordinated "
        "omission).",
        table,
    ]
    opens = [lv for lv in payload["levels"] if lv["mode"] == "open"]
    if opens:
        notes.append(_table(["open loop", "target req/s", "achieved send rate", "send lag p99 ms",
                             "latency p50 / p99 from intended send", "latency p50 / p99 from actual send"],
                            [[_level_name(lv), _f(lv["rate_target"], 1), _f(lv["send_rate"], 1),
                              _f(lv["send_lag_p99_ms"]),
                              f"{_f(lv['latency'].get('p50_ms'))} / {_f(lv['latency'].get('p99_ms'))}",
                              f"{_f(lv['service_latency'].get('p50_ms'))} / "
                              f"{_f(lv['service_latency'].get('p99_ms'))}"] for lv in opens]))
    return "\n\n".join(notes) + "\n"


def load_plots(payload: dict[str, Any], out: Path) -> dict[str, Path | None]:
    """Throughput and p99 against concurrency (closed loop), and the latency CDF of every level."""
    plt = _pyplot()
    paths: dict[str, Path | None] = {"throughput_p99": None, "cdf": None}
    closed = sorted((lv for lv in payload["levels"] if lv["mode"] == "closed"), key=lambda lv: lv["concurrency"])
    if closed:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        cs = [lv["concurrency"] for lv in closed]
        a1.plot(cs, [lv["throughput_rps"] for lv in closed], "o-")
        a1.set_xlabel("concurrency")
        a1.set_ylabel("throughput, requests/s")
        a1.set_ylim(bottom=0, top=max(lv["throughput_rps"] for lv in closed) * 1.15)
        a2.plot(cs, [lv["latency"].get("p99_ms", float("nan")) for lv in closed], "o-", color="tab:red", label="p99")
        a2.plot(cs, [lv["latency"].get("p50_ms", float("nan")) for lv in closed], "o--", color="tab:gray",
                label="p50")
        a2.set_xlabel("concurrency")
        a2.set_ylabel("latency, ms")
        a2.set_ylim(bottom=0)
        a2.legend()
        for ax in (a1, a2):
            ax.set_xscale("log", base=2)
            ax.set_xticks(cs, [str(c) for c in cs])
            ax.grid(alpha=0.3)
        fig.suptitle(f"bench load: {payload['settings']['model']} at {payload['settings']['target']}", fontsize=10)
        paths["throughput_p99"] = _save(fig, out / "load_throughput_p99.png")
    if any(lv["cdf"]["ms"] for lv in payload["levels"]):
        fig, ax = plt.subplots(figsize=(7, 4))
        for lv in payload["levels"]:
            if lv["cdf"]["ms"]:
                ax.plot(lv["cdf"]["ms"], lv["cdf"]["fraction"], label=_level_name(lv))
        ax.set_xscale("log")
        plain = plt.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}" if _mantissa(v) in (2, 5) else ""))
        ax.set_xlabel("latency, ms (open loop: from intended send time)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title(f"latency CDF: {payload['settings']['model']} at {payload['settings']['target']}", fontsize=10)
        paths["cdf"] = _save(fig, out / "load_latency_cdf.png")
    return paths


def write_load(payload: dict[str, Any], out: Path) -> dict[str, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.md").write_text(load_markdown(payload))
    plots = _optional(load_plots, payload, out) or {}
    return {"json": write_json(payload, out / "load.json"), "markdown": out / "load.md", **plots}


# ---------------------------------------------------------------- overhead

OVERHEAD_ROWS = (("in_process", "in-process ONNX Runtime (session.run)"),
                 ("served", "tensorwire over loopback gRPC"),
                 ("echo", "bare grpcio echo of the same bytes (floor)"))


def overhead_markdown(payload: dict[str, Any]) -> str:
    s, o = payload["settings"], payload["overhead"]
    rows = [[label, str(payload[key]["count"]), _f(payload[key]["p50_ms"]), _f(payload[key]["p90_ms"]),
             _f(payload[key]["p99_ms"]), _f(payload[key]["mean_ms"])] for key, label in OVERHEAD_ROWS]
    return "\n\n".join([
        "# tensorwire bench overhead",
        _machine_block(payload),
        f"Model `{s['model']}` ({payload['model_file']}), inputs "
        + ", ".join(f"{k}{v}" for k, v in payload["input_shapes"].items())
        + f"; {payload['request_bytes']} B request, {payload['response_bytes']} B response; {s['threads']} ORT "
        f"threads in both; {s['rounds']} interleaved rounds, sequential requests. Served answer matches "
        f"in-process: {'yes' if payload['parity_ok'] else 'NO'}." + (" QUICK mode." if s.get("quick") else ""),
        _table(["path", "calls", "p50 ms", "p90 ms", "p99 ms", "mean ms"], rows),
        f"**Server overhead per request (p50): {o['overhead_us']:.0f} us = {o['overhead_pct']:.0f}% over "
        f"in-process** ({o['overhead_share_pct']:.0f}% of the round trip). The bare grpcio echo of the same bytes "
        f"takes {o['floor_us']:.0f} us, " + (
            f"so tensorwire itself adds {o['above_floor_us']:.0f} us beyond gRPC's floor and the model's compute."
            if o["above_floor_us"] > 0 else
            f"so what tensorwire adds beyond gRPC's floor and the model's compute is within noise of zero "
            f"({o['above_floor_us']:.0f} us): the round trip is gRPC's own cost."),
    ]) + "\n"


def overhead_plot(payload: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    labels = [label for _, label in OVERHEAD_ROWS]
    p50 = [payload[k]["p50_ms"] * 1e3 for k, _ in OVERHEAD_ROWS]
    p99 = [payload[k]["p99_ms"] * 1e3 for k, _ in OVERHEAD_ROWS]
    ax.barh(labels, p50, color=["tab:green", "tab:blue", "tab:gray"], label="p50")
    ax.scatter(p99, labels, color="black", marker="|", s=200, label="p99", zorder=3)
    ax.invert_yaxis()
    ax.set_xlabel("latency per request, us")
    ax.legend(fontsize=8)
    ax.set_title(f"bench overhead: {payload['settings']['model']}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def write_overhead(payload: dict[str, Any], out: Path) -> dict[str, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.md").write_text(overhead_markdown(payload))
    return {"json": write_json(payload, out / "overhead.json"), "markdown": out / "overhead.md",
            "plot": _optional(overhead_plot, payload, out / "overhead.png")}


# ---------------------------------------------------------------- common

WRITERS = {"compare": write_compare, "load": write_load, "overhead": write_overhead}


def render(json_path: Path, out: Path | None = None) -> dict[str, Path | None]:
    """Re-draw the markdown and plots of a saved result (e.g. after changing a plot)."""
    payload = json.loads(Path(json_path).read_text())
    return WRITERS[payload["kind"]](payload, Path(out or Path(json_path).parent))


def _optional(plot, *args):
    """Plots need matplotlib (the ``bench`` extra); without it the JSON and markdown are still written."""
    try:
        return plot(*args)
    except ImportError as exc:
        warnings.warn(f"no plots: {exc}; install them with: pip install \"tensorwire[bench]\"", stacklevel=3)
        return None


def _mantissa(v: float) -> int:
    return round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
