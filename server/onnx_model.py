"""One loaded model version: an ONNX Runtime session and the spec requests are checked against."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tensorwire.errors import ModelLoadError, RuntimeMissing
from tensorwire.server.model_config import (
    DEFAULT_MODEL_FILENAME,
    GraphTensor,
    ModelSpec,
    complete_config,
)
from tensorwire.server.providers import ProviderPlan, plan_providers
from tensorwire.server.settings import ServerSettings
from tensorwire.server.statistics import ModelStatistics

log = logging.getLogger("tensorwire.model")


def import_onnxruntime():
    """onnxruntime, or a message that says which extra installs it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeMissing(
            "ONNX Runtime is not installed. Install exactly one of: pip install \"tensorwire[cpu]\" "
            "(onnxruntime) or pip install \"tensorwire[gpu]\" (onnxruntime-gpu)"
        ) from exc
    return onnxruntime


_GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_ENABLE_ALL", 0: "ORT_ENABLE_ALL"}


def _int_param(cfg, key: str, default: int) -> int:
    if key in cfg.parameters:
        value = cfg.parameters[key].string_value
        try:
            return int(value)
        except ValueError:
            raise ModelLoadError(f"model '{cfg.name}': parameter {key} must be an integer, got '{value}'") from None
    return default


def session_options(ort, cfg, settings: ServerSettings):
    so = ort.SessionOptions()
    so.intra_op_num_threads = _int_param(cfg, "intra_op_thread_count", settings.intra_op_threads)
    so.inter_op_num_threads = _int_param(cfg, "inter_op_thread_count", settings.inter_op_threads)
    level = cfg.optimization.graph.level if cfg.optimization.HasField("graph") else 0
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS.get(level, "ORT_ENABLE_ALL"))
    so.log_severity_level = 3
    return so


@dataclass
class LoadedModel:
    """A model version ready to run."""

    spec: ModelSpec
    version: str
    session: object
    plan: ProviderPlan
    providers: list[str]
    stats: ModelStatistics = field(default_factory=ModelStatistics)
    misaligned_inputs: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        """Run the session. ONNX Runtime releases the GIL inside, so handler threads overlap."""
        return self.session.run(output_names, feeds)

    def count_misaligned(self) -> None:
        with self._lock:
            self.misaligned_inputs += 1


def load_model_version(model_dir: Path, version: int, cfg, settings: ServerSettings,
                       max_batch_size_written: bool) -> LoadedModel:
    """Open an ORT session for ``model_dir/version`` and complete ``cfg`` from its graph."""
    ort = import_onnxruntime()
    filename = cfg.default_model_filename or DEFAULT_MODEL_FILENAME
    path = model_dir / str(version) / filename
    if not path.is_file():
        raise ModelLoadError(f"model '{cfg.name}' version {version}: {path} does not exist")
    plan = plan_providers(cfg, ort.get_available_providers(), settings.providers, settings.trt_cache_dir,
                          str(version))
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(ort, cfg, settings),
            providers=[(n, o) for n, o in plan.providers],
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise ModelLoadError(f"model '{cfg.name}' version {version}: ONNX Runtime cannot load {path}: {exc}") from None
    used = session.get_providers()
    graph_in = [GraphTensor(i.name, i.type, tuple(i.shape)) for i in session.get_inputs()]
    graph_out = [GraphTensor(o.name, o.type, tuple(o.shape)) for o in session.get_outputs()]
    spec = complete_config(cfg, graph_in, graph_out, settings.default_max_batch_size, max_batch_size_written)
    spec.config.parameters["execution_providers"].string_value = ",".join(used)
    log.info("model '%s' version %s: providers %s (%s%s)", cfg.name, version, used, plan.reason,
             "; skipped " + ", ".join(plan.skipped) if plan.skipped else "")
    return LoadedModel(spec=spec, version=str(version), session=session, plan=plan, providers=used)
