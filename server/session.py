"""The ONNX Runtime side of a model: importing ORT, session options, and the runner for one instance.

Kept apart from loading (``loader.py``) and from serving a request (``model.py``): this is the only
module that knows ORT's option names and its IO binding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tensorwire.errors import Internal, InvalidArgument, ModelLoadError, RequestError, RuntimeMissing
from tensorwire.server.affinity import usable_cpus
from tensorwire.server.settings import ServerSettings

Runner = Callable[[dict, list], list]  # (feeds, output_names) -> output arrays

_GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_ENABLE_ALL", 0: "ORT_ENABLE_ALL"}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


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


def int_parameter(cfg, key: str, default: int) -> int:
    """A config ``parameters`` entry read as an integer (the default when absent)."""
    if key in cfg.parameters:
        value = cfg.parameters[key].string_value
        try:
            return int(value)
        except ValueError:
            raise ModelLoadError(f"model '{cfg.name}': parameter {key} must be an integer, got '{value}'") from None
    return default


def default_intra_op_threads(settings: ServerSettings, instances: int) -> int:
    """This process's cores shared among a model's instances, so N concurrent instances do not oversubscribe."""
    return max(1, (settings.session_cpus or usable_cpus()) // instances)


def session_options(ort, cfg, settings: ServerSettings, instances: int = 1):
    """ORT SessionOptions from the model's config, with the server's settings as defaults."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int_parameter(
        cfg, "intra_op_thread_count", settings.intra_op_threads or default_intra_op_threads(settings, instances))
    so.inter_op_num_threads = int_parameter(cfg, "inter_op_thread_count", settings.inter_op_threads)
    level = cfg.optimization.graph.level if cfg.optimization.HasField("graph") else 0
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS.get(level, "ORT_ENABLE_ALL"))
    so.log_severity_level = 3
    default = "1" if settings.intra_op_spinning else "0"
    spinning = cfg.parameters["allow_spinning"].string_value if "allow_spinning" in cfg.parameters else default
    so.add_session_config_entry("session.intra_op.allow_spinning",
                                "0" if spinning.lower() in ("0", "false") else "1")
    return so


def ort_error(exc: Exception, where: str) -> RequestError:
    """ONNX Runtime's pybind exceptions as our error types (INVALID_ARGUMENT where ORT says so)."""
    msg = f"{where}: ONNX Runtime rejected the request: {exc}"
    if type(exc).__name__ in ("InvalidArgument", "InvalidProtobuf"):
        return InvalidArgument(msg)
    return Internal(msg)


def make_runner(session, providers: list[str], where: str = "model") -> Runner:
    """The function that runs one instance.

    CPU: ``session.run`` over the request's arrays (measured faster than IO binding rebound per request;
    docs/design.md, "The hot path"). CUDA/TensorRT: IO binding, so each
    input is copied to the device once and outputs come back once.
    """
    run = _run_with_binding(session) if providers and providers[0] in GPU_PROVIDERS else session.run

    def runner(feeds: dict, names: list) -> list:
        try:
            return run(names, feeds)
        except Exception as exc:  # ORT raises pybind-generated types
            raise ort_error(exc, where) from None

    return runner


def _run_with_binding(session) -> Callable[[list, dict], list]:
    def run_on_device(names: list, feeds: dict) -> list:
        if any(a.dtype == object for a in feeds.values()):
            return session.run(names, feeds)
        binding = session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in names:
            binding.bind_output(name, "cuda")
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.copy_outputs_to_cpu()

    return run_on_device
