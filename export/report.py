"""The record of one export: every step timed, the numbers that show the graph is the same model.

Plain dataclasses without torch/onnx imports, so the report can be read back on a serving host.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepRecord:
    name: str
    seconds: float = 0.0
    status: str = "ok"          # ok | skipped | failed | fallback
    detail: str = ""


@dataclass
class OutputDiff:
    name: str
    shape: list[int]
    max_abs_diff: float
    max_rel_diff: float
    ok: bool


@dataclass
class ParityCase:
    label: str                  # e.g. "export shape", "batch=1", "sequence=8"
    input_shapes: dict[str, list[int]]
    outputs: list[OutputDiff]
    ok: bool
    error: str = ""

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for o in self.outputs), default=float("nan"))


@dataclass
class TracerNote:
    """A TracerWarning: a place where the trace froze a value that may depend on the input."""

    message: str
    filename: str
    lineno: int
    source: str

    def where(self) -> str:
        return f"{self.filename}:{self.lineno}: {self.source}".rstrip(": ")


@dataclass
class ExportReport:
    name: str
    version: int
    repository: str = ""
    model_path: str = ""
    config_path: str = ""
    exporter: str = ""
    exporter_attempts: list[dict[str, Any]] = field(default_factory=list)
    opset: int = 0
    opset_note: str = ""            # why a requested opset was not served
    max_batch_size: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    nodes_exported: int = 0
    nodes_simplified: int = 0
    nodes_served: int = 0
    ops_exported: dict[str, int] = field(default_factory=dict)
    ops_simplified: dict[str, int] = field(default_factory=dict)
    simplified: bool = False
    simplify_note: str = ""
    optimized: bool = False
    optimize_note: str = ""
    fusion: dict[str, Any] = field(default_factory=dict)    # ORT transformer fusions tried: counts, kept or not
    rtol: float = 0.0
    atol: float = 0.0
    parity: list[ParityCase] = field(default_factory=list)
    parity_ok: bool = False
    precision: dict[str, Any] = field(default_factory=dict)
    tracer_warnings: list[TracerNote] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    total_seconds: float = 0.0
    file_size_bytes: int = 0
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def parity_max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.parity), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dynamic_axes"] = {k: {str(a): lbl for a, lbl in v.items()} for k, v in self.dynamic_axes.items()}
        d["parity_max_abs_diff"] = self.parity_max_abs_diff
        return d

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    @contextmanager
    def step(self, name: str, progress=None):
        """Time one pipeline step, record it, and tell ``progress`` when it starts and ends."""
        rec = StepRecord(name)
        if progress is not None:
            progress(name, "start", "")
        t0 = time.perf_counter()
        try:
            yield rec
        except BaseException as exc:
            rec.status = "failed"
            if not rec.detail:
                first = str(exc).strip().splitlines()
                rec.detail = first[0][:300] if first else type(exc).__name__
            raise
        finally:
            rec.seconds = time.perf_counter() - t0
            self.steps.append(rec)
            if progress is not None:
                progress(name, rec.status, f"{rec.seconds:.2f}s {rec.detail}".strip())
