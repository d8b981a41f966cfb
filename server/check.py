"""`tensorwire check --model-repository DIR`: load every model the way `serve` would, for CI pipelines.

Each model goes through the same ``ModelRepository.load`` as `serve` in mode none (config parsed and
bounded, graphs opened, config checked against the graph), then one warm-up inference through the
model's own request path with inputs made from its config; a table (or JSON) says what passed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorwire.errors import RequestError
from tensorwire.proto.messages import InferRequest, InputTensor, RequestedOutput
from tensorwire.server.repository import ModelRepository
from tensorwire.server.settings import ServerSettings
from tensorwire.server.thread_tuning import warmup_feeds


@dataclass
class CheckResult:
    model: str
    versions: str
    ok: bool
    detail: str
    seconds: float


def _warm_up(model) -> str:
    """One inference through ``Model.infer`` (validation, scheduler, ORT, packaging): what it checked."""
    feeds = warmup_feeds(model.spec, batch=1)
    if feeds is None:
        return "loaded; warm-up skipped: a dynamic dim or BYTES/BOOL input has no size (add model_warmup)"
    inputs = [InputTensor(n, next(t.datatype.name for t in model.spec.inputs if t.name == n), a.shape)
              for n, a in feeds.items()]
    request = InferRequest(model_name=model.name, inputs=inputs,
                           outputs=[RequestedOutput(t.name) for t in model.spec.outputs],
                           raw_input_contents=[np.ascontiguousarray(a).tobytes() for a in feeds.values()])
    model.infer(request)
    return "loaded; warm-up inference ran"


def check_repository(settings: ServerSettings) -> list[CheckResult]:
    """Load and warm up every model of ``settings.model_repository``; one result per model."""
    repository = ModelRepository(settings)
    results = []
    try:
        for name in repository.model_names():
            start = time.monotonic()
            try:
                entry = repository.load(name)
                details = [f"v{v}: {_warm_up(m)}" for v, m in sorted(entry.versions.items(), key=lambda kv: int(kv[0]))]
                results.append(CheckResult(name, ",".join(sorted(entry.versions, key=int)), True, "; ".join(details),
                                           time.monotonic() - start))
            except RequestError as exc:
                results.append(CheckResult(name, "", False, str(exc), time.monotonic() - start))
            repository.unload(name)
    finally:
        repository.close()
    return results


def format_table(results: list[CheckResult]) -> str:
    rows = [("MODEL", "VERSIONS", "RESULT", "SECONDS", "DETAIL")]
    rows += [(r.model, r.versions or "-", "OK" if r.ok else "FAILED", f"{r.seconds:.2f}", r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def run_check(repository: Path, as_json: bool, providers: list[str]) -> int:
    """Print the check's table (or JSON); 0 when every model passed, 1 when one failed or there are none."""
    settings = ServerSettings(model_repository=repository, providers=providers, allow_metrics=False,
                              shutdown_grace_s=0.0)
    results = check_repository(settings)
    if as_json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        print(format_table(results) if results else f"no model in {repository}")
    failed = [r.model for r in results if not r.ok]
    if failed or not results:
        print(f"tensorwire check: {len(failed)} of {len(results)} model(s) failed"
              + (f": {', '.join(failed)}" if failed else ": the repository holds no model"))
        return 1
    print(f"tensorwire check: {len(results)} model(s) passed")
    return 0
