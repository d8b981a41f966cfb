"""Every benchmark's output, in three forms: JSON for machines, a markdown table for people, PNG plots.

The JSON holds the raw figures with the machine, versions and settings; the markdown and the plots are
drawn from it alone, so a committed JSON can be re-rendered later (``render(json_path)``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from tensorwire.bench.machine import one_line

PLOT_DPI = 100
# A latency axis turns logarithmic when its values span this factor: on a linear axis one slow bar or
# level flattens the rest to the baseline, and sub-millisecond and second-long engines share panels.
LOG_SCALE_SPAN = 10.0
# A run is marked contended when, as it started, the load average already held this share of the usable
# cores: other work then competed with the benchmark for the same cores (the machine block records it).
CONTENDED_LOAD_PER_CORE = 0.5
# A bar is marked noisy when its p90 is this far above its median: its median alone would mislead.
NOISY_P90_OVER_MEDIAN = 1.5
TITLE_CHARS_PER_INCH = 13  # at fontsize 10, what fits across a figure without being cut at its edges


def _save(fig, path: Path) -> Path:
    """Write and close a figure (closing frees it: these run in long benchmark processes).

    Figures are made with ``layout="constrained"``, which, unlike ``tight_layout``, makes room for a
    suptitle and legends, so nothing is cut at the edges.
    """
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path


def contention(payload: dict[str, Any]) -> str | None:
    """A warning when other work held the cores as the run started, else None."""
    m = payload.get("machine", {})
    load, cores = m.get("load_average_at_start"), m.get("cores_usable")
    if not load or not cores or load[0] < CONTENDED_LOAD_PER_CORE * cores:
        return None
    return (f"contended run: load average {load[0]:g} on {cores} usable cores at start, "
            "so absolute times are pessimistic and noisy")


def _title(fig, text: str, payload: dict[str, Any], fontsize: int = 10) -> None:
    """The figure's title wrapped to its width; the contention warning, when there is one, in red below.

    Both are figure-level labels, which the constrained layout makes room for: nothing is cut.
    """
    import textwrap

    width = max(30, int(fig.get_figwidth() * TITLE_CHARS_PER_INCH * 10 / fontsize))
    fig.suptitle("\n".join(textwrap.wrap(text, width)), fontsize=fontsize)
    warning = contention(payload)
    if warning:
        fig.supxlabel("\n".join(textwrap.wrap(f"[!] {warning}", width)), fontsize=fontsize, color="firebrick")


def _latency_axis(ax, values: list[float], axis: str = "y", decide_on: list[float] | None = None) -> None:
    """Log scale with plain tick labels when the values span LOG_SCALE_SPAN or more, else linear from 0.

    ``decide_on`` (default: ``values``) chooses the scale, so that panels of one figure share it while
    each keeps limits fitted to its own ``values``.
    """
    import matplotlib.ticker as ticker

    def positive(vs: list[float]) -> list[float]:
        return [v for v in vs if v and v > 0 and not math.isnan(v)]

    own, deciding = positive(values), positive(values if decide_on is None else decide_on)
    if own and deciding and max(deciding) / min(deciding) >= LOG_SCALE_SPAN:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        # bars grow from the axis: start it below the smallest value so that one still shows its size
        (ax.set_ylim if axis == "y" else ax.set_xlim)(min(own) / 2, max(own) * 2)
        target = ax.yaxis if axis == "y" else ax.xaxis
        target.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if _mantissa(v) in (2, 5) else ""))
    else:
        (ax.set_ylim if axis == "y" else ax.set_xlim)(0, max(own or [1.0]) * 1.15)


def write_json(payload: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(payload, indent=1, default=_jsonable, allow_nan=True) + "\n")
    return path


def write_rows(rows: list[dict[str, Any]], table: str, out: Path, stem: str) -> None:
    """The small benchmarks' output (codec, fastpath, batching): ``stem.json`` with the machine, ``stem.md``."""
    from tensorwire.bench.machine import describe

    out.mkdir(parents=True, exist_ok=True)
    write_json({"kind": stem, "machine": describe(), "rows": rows}, out / f"{stem}.json")
    (out / f"{stem}.md").write_text(table + "\n")


def write_payload(payload: dict[str, Any], text: str, out: Path | None, stem: str) -> None:
    """A benchmark's ``stem.json`` (the whole payload) and ``stem.md`` (its table), printed and said where; only
    printed without ``out`` (a run to look at never replaces a record in bench/results/)."""
    if out is None:
        print(text)
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(payload, out / f"{stem}.json")
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"written: {out}/{stem}.json, {stem}.md")


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
    warning = contention(payload)
    return (f"Machine: {one_line(m)}" + (f"; load average at start {load}" if load else "")
            + f". Run {payload.get('created', '')}." + (f" **{warning[0].upper()}{warning[1:]}.**" if warning else ""))


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


def _detail_row(r: dict[str, Any]) -> list[str]:
    """One row of compare's "All figures" table."""
    if not r.get("ok"):
        return [r["model"], str(r["batch"]), r["engine"], f"error: {_short(r.get('error', '?'), 120)}", *["-"] * 8]
    lat, p = r["latency"], r["parity"]
    return [r["model"], str(r["batch"]), r["engine"], _f(lat["p50_ms"]), _f(lat["p90_ms"]), _f(lat["p99_ms"]),
            _f(r["throughput_items_s"], 1), _f(r["peak_memory_mb"], 1),
            f"x{r['speedup_vs_eager']:.2f}" if r.get("speedup_vs_eager") else "-",
            f"{'ok' if p['ok'] else 'FAIL'} {p['max_abs_diff']:.1e}"
            + (f", cos {p['min_cosine']:.5f}" if p.get("min_cosine") is not None else ""),
            str(r["iterations"]), _f(r.get("compile_seconds"), 1)]


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
    details = _table(["model", "batch", "engine", "median ms", "p90 ms", "p99 ms", "items/s", "peak MB",
                      "vs eager", "parity (max abs diff, cosine)", "iters", "compile s"],
                     [_detail_row(r) for r in payload["results"]])
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


def _compare_bars(ax, ok: list[dict[str, Any]], model: str, engines: list[str], colors) -> list[float]:
    """One group of bars per batch size, one bar per engine; returns every plotted value (for the scale)."""
    batches = sorted({r["batch"] for r in ok if r["model"] == model})
    width = 0.8 / max(1, len(engines))
    plotted: list[float] = []
    for j, engine in enumerate(engines):
        for i, b in enumerate(batches):
            r = next((r for r in ok if r["model"] == model and r["batch"] == b and r["engine"] == engine), None)
            if r is None:
                continue
            x, y, p90 = i + (j - (len(engines) - 1) / 2) * width, r["median_ms"], r["latency"]["p90_ms"]
            noisy = p90 >= NOISY_P90_OVER_MEDIAN * y
            ax.bar(x, y, width, yerr=[[0], [max(0.0, p90 - y)]], capsize=2, color=colors(j % 10),
                   hatch="///" if noisy else None, edgecolor="black" if noisy else None, linewidth=0.5)
            ratio = r.get("speedup_vs_eager") if engine != "eager" else None
            label = "\n".join(([f"x{ratio:.2f}"] if ratio else []) + (["noisy"] if noisy else []))
            if label:
                ax.annotate(label, (x, max(y, p90)), ha="center", va="bottom", fontsize=6.5, xytext=(0, 1),
                            textcoords="offset points", color="firebrick" if noisy else "black")
            plotted += [y, p90]
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    return plotted


def compare_plot(payload: dict[str, Any], path: Path) -> Path | None:
    """``compare_figure`` written to ``path``; None when no engine produced a figure."""
    fig = compare_figure(payload)
    return None if fig is None else _save(fig, path)


def compare_figure(payload: dict[str, Any]):
    """One panel per model: median latency per engine, grouped by batch size, whiskers to p90.

    Log latency axis where a panel spans an order of magnitude; hatched bars are noisy (p90 well above
    the median); a red title line says the machine was busy when the run started.
    """
    plt = _pyplot()
    ok = [r for r in payload["results"] if r.get("ok")]
    if not ok:
        return None
    models = list(dict.fromkeys(r["model"] for r in ok))
    engines = _engines(payload)
    cols = min(2, len(models))
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.6 * rows + 0.6), squeeze=False, layout="constrained")
    plotted = [_compare_bars(ax, ok, model, engines, plt.get_cmap("tab10")) for ax, model in zip(axes.flat, models)]
    everything = [v for values in plotted for v in values]
    for ax, model, values in zip(axes.flat, models, plotted):
        _latency_axis(ax, values, decide_on=everything)   # one kind of scale for every panel, so they read alike
        ax.margins(y=0.15)
        ax.set_title(model)
        ax.set_ylabel("median latency, ms\n(whisker: p90)")
        ax.grid(axis="y", alpha=0.3, which="both")
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    from matplotlib.patches import Patch

    colors = plt.get_cmap("tab10")
    axes.flat[0].legend(handles=[Patch(color=colors(j % 10), label=e) for j, e in enumerate(engines)], fontsize=8)
    _title(fig, f"bench compare: {payload['settings']['threads']} threads, {payload['machine'].get('cpu', '')}; "
                f"labels: speedup vs eager; hatched: noisy (p90 >= {NOISY_P90_OVER_MEDIAN:g}x median)", payload)
    return fig


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
    cpu = _load_cpu_table(payload)
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
    if cpu:
        notes.append(cpu)
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


def _load_cpu_table(payload: dict[str, Any]) -> str | None:
    """Server CPU per request per level and, with --echo, the bare echo's figures beside them."""
    levels = [lv for lv in payload["levels"] if lv.get("server_cpu") or lv.get("echo")]
    if not levels:
        return None
    rows = []
    for lv in levels:
        cpu, echo = lv.get("server_cpu") or {}, lv.get("echo") or {}
        echo_cpu = echo.get("server_cpu") or {}
        rows.append([_level_name(lv), lv.get("transport", "ModelInfer"), _f(lv["throughput_rps"], 1),
                     _f(lv["latency"].get("p50_ms")), _f(cpu.get("us_per_request"), 0),
                     _f(echo.get("throughput_rps"), 1), _f((echo.get("latency") or {}).get("p50_ms")),
                     _f(echo_cpu.get("us_per_request"), 0), _f(lv.get("cpu_ratio_vs_echo"), 2)])
    return ("Server CPU: user + system time of the server's processes (/proc/PID/stat, pids "
            f"{payload.get('server_pids')}) from the common start to the last report, per successful request.\n\n"
            + _table(["level", "transport", "req/s", "p50 ms", "server CPU us/req", "echo req/s", "echo p50 ms",
                      "echo CPU us/req", "CPU ratio vs echo"], rows))


def load_plots(payload: dict[str, Any], out: Path) -> dict[str, Path | None]:
    """Throughput and p99 against concurrency (closed loop), and the latency CDF of every level."""
    plt = _pyplot()
    paths: dict[str, Path | None] = {"throughput_p99": None, "cdf": None}
    closed = sorted((lv for lv in payload["levels"] if lv["mode"] == "closed"), key=lambda lv: lv["concurrency"])
    if closed:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
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
        _latency_axis(a2, [lv["latency"].get(k, float("nan")) for lv in closed for k in ("p50_ms", "p99_ms")])
        a2.legend()
        for ax in (a1, a2):
            ax.set_xscale("log", base=2)
            ax.set_xticks(cs, [str(c) for c in cs])
            ax.grid(alpha=0.3, which="both")
        s = payload["settings"]
        _title(fig, f"bench load: {s['model']} at {s['target']}, closed loop", payload)
        paths["throughput_p99"] = _save(fig, out / "load_throughput_p99.png")
    if any(lv["cdf"]["ms"] for lv in payload["levels"]):
        fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
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
        _title(fig, f"latency CDF: {payload['settings']['model']} at {payload['settings']['target']}", payload)
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
    """``overhead_figure`` written to ``path``."""
    return _save(overhead_figure(payload), path)


def overhead_figure(payload: dict[str, Any]):
    """p50 bars and p99 ticks of the three paths, on a log axis when they span an order of magnitude."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
    labels = [label for _, label in OVERHEAD_ROWS]
    p50 = [payload[k]["p50_ms"] * 1e3 for k, _ in OVERHEAD_ROWS]
    p99 = [payload[k]["p99_ms"] * 1e3 for k, _ in OVERHEAD_ROWS]
    ax.barh(labels, p50, color=["tab:green", "tab:blue", "tab:gray"], label="p50 (bar)")
    ax.scatter(p99, labels, color="black", marker="|", s=200, label="p99 (tick)", zorder=3)
    ax.invert_yaxis()
    ax.set_xlabel("latency per request, us")
    _latency_axis(ax, p50 + p99, axis="x")
    ax.legend(fontsize=8)
    _title(fig, f"bench overhead: {payload['settings']['model']}, p50 bars, p99 ticks", payload)
    ax.grid(axis="x", alpha=0.3, which="both")
    return fig


def write_overhead(payload: dict[str, Any], out: Path) -> dict[str, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.md").write_text(overhead_markdown(payload))
    return {"json": write_json(payload, out / "overhead.json"), "markdown": out / "overhead.md",
            "plot": _optional(overhead_plot, payload, out / "overhead.png")}


# ---------------------------------------------------------------- common

WRITERS = {"compare": write_compare, "load": write_load, "overhead": write_overhead}


def render(json_path: Path, out: Path | None = None) -> dict[str, Path | None]:
    """Re-draw the markdown and plots of a saved result (e.g. after changing a plot), without re-measuring."""
    payload = json.loads(Path(json_path).read_text())
    if payload.get("kind") not in WRITERS:
        raise ValueError(f"{json_path}: kind {payload.get('kind')!r} has no report; one of {sorted(WRITERS)}")
    return WRITERS[payload["kind"]](payload, Path(out or Path(json_path).parent))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench report``."""
    p.add_argument("--from", dest="source", type=Path, required=True, metavar="RESULT.json",
                   help=f"a saved {', '.join(WRITERS)} result, e.g. bench/results/compare/compare.json")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the markdown and plots (default: beside the JSON, overwriting them)")


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench report``: 2 when the file is missing or not a result."""
    try:
        paths = render(args.source, args.out)
    except (OSError, ValueError, KeyError) as exc:
        print(f"tensorwire bench report: {exc}", file=sys.stderr)
        return 2
    print("written: " + ", ".join(str(v) for k, v in paths.items() if v is not None and k != "json"))
    return 0


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
