"""Loading one model version: its config completed from the graph, its ORT sessions, threads, scheduler.

What comes out is a :class:`~tensorwire.server.model.Model`; nothing here runs on a request's path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tensorwire.errors import ModelLoadError
from tensorwire.server.model import Model
from tensorwire.server.model_config import DEFAULT_MODEL_FILENAME, GraphTensor, ModelSpec, complete_config
from tensorwire.server.providers import ProviderPlan, plan_providers
from tensorwire.server.request_limits import RequestLimits
from tensorwire.server.scheduler import make_scheduler
from tensorwire.server.scratch import ScratchPool
from tensorwire.server.session import import_onnxruntime, make_runner, session_options
from tensorwire.server.settings import ServerSettings
from tensorwire.server.statistics import ModelStatistics
from tensorwire.server.thread_tuning import faster_thread_count, warmup_feeds

log = logging.getLogger("tensorwire.loader")


def instance_count(cfg) -> int:
    """Instances the config's instance groups open (normalised by limits.normalise_instance_groups)."""
    return sum(g.count for g in cfg.instance_group)


def _threads_fixed(cfg, settings: ServerSettings) -> bool:
    """Whether the operator chose the intra-op thread count (flag or model parameter)."""
    return bool(settings.intra_op_threads) or "intra_op_thread_count" in cfg.parameters


def _open_session(ort, path: Path, options, plan: ProviderPlan):
    return ort.InferenceSession(str(path), sess_options=options, providers=[(n, o) for n, o in plan.providers])


def _tune_threads(ort, path: Path, cfg, settings: ServerSettings, plan: ProviderPlan, sessions: list,
                  spec: ModelSpec, pool_threads: int) -> tuple[list, int, str]:
    """(sessions, threads, why): a one-thread session instead of the pool when it runs this model faster
    (tensorwire.server.thread_tuning); the pool session otherwise. A batching model is timed at its largest batch."""
    batching = cfg.WhichOneof("scheduling_choice") == "dynamic_batching" and spec.max_batch_size > 0
    feeds = warmup_feeds(spec, batch=spec.max_batch_size if batching else 1)
    if feeds is None:
        return sessions, pool_threads, "default; not timed: no fixed warm-up shape (set model_warmup to time it)"
    one = session_options(ort, cfg, settings, 1)
    one.intra_op_num_threads = 1
    try:
        single = _open_session(ort, path, one, plan)
        threads, why = faster_thread_count(sessions[0], single, feeds, pool_threads)
    except Exception as exc:  # ORT refused the made-up warm-up input: keep its default
        return sessions, pool_threads, f"default; not timed: warm-up run failed: {exc}"
    return ([single] if threads == 1 else sessions), threads, f"timed: {why}"


def _open_sessions(ort, path: Path, cfg, settings: ServerSettings, plan: ProviderPlan, where: str):
    """(sessions, options): one ORT session per instance."""
    count = instance_count(cfg)
    options = session_options(ort, cfg, settings, count)
    sessions = []
    for _ in range(count):
        try:
            sessions.append(_open_session(ort, path, options, plan))
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(f"{where}: ONNX Runtime cannot load {path.name}: "
                                 f"{without_host_paths(str(exc), path)}") from None
    return sessions, options


def without_host_paths(text: str, path: Path) -> str:
    """``text`` (ONNX Runtime's message) with the host's path to the model file cut down to the part inside
    the repository: clients never learn where the repository lives."""
    inside = "/".join(path.parts[-3:])
    for form in {str(path.resolve()), str(path.absolute()), str(path)}:
        text = text.replace(form, inside)
    return text


def _graph_tensors(session) -> tuple[list[GraphTensor], list[GraphTensor]]:
    return ([GraphTensor(i.name, i.type, tuple(i.shape)) for i in session.get_inputs()],
            [GraphTensor(o.name, o.type, tuple(o.shape)) for o in session.get_outputs()])


def load_model_version(model_dir: Path, version: int, cfg, settings: ServerSettings,
                       scratch: ScratchPool) -> Model:
    """Open the ORT sessions for ``model_dir/version``, complete ``cfg`` from the graph, and build the Model."""
    ort = import_onnxruntime()
    where = f"model '{cfg.name}' version {version}"
    path = model_dir / str(version) / (cfg.default_model_filename or DEFAULT_MODEL_FILENAME)
    if not path.is_file():
        raise ModelLoadError(f"{where}: {path.name} does not exist in version directory {version}")
    plan = plan_providers(cfg, ort.get_available_providers(), settings.providers, settings.trt_cache_dir,
                          str(version))
    sessions, options = _open_sessions(ort, path, cfg, settings, plan, where)
    used = sessions[0].get_providers()
    spec = complete_config(cfg, *_graph_tensors(sessions[0]), settings.default_max_batch_size)
    spec.config.parameters["execution_providers"].string_value = ",".join(used)
    fixed = _threads_fixed(cfg, settings)
    threads, threads_why = options.intra_op_num_threads, "set" if fixed else "default"
    if threads > 1 and len(sessions) == 1 and used == ["CPUExecutionProvider"] and not fixed:
        sessions, threads, threads_why = _tune_threads(ort, path, cfg, settings, plan, sessions, spec, threads)
    spec.config.parameters["intra_op_thread_count"].string_value = str(threads)  # what runs, as ModelConfig says
    stats = ModelStatistics(histograms=settings.allow_metrics)
    scheduler = make_scheduler(spec, [make_runner(s, used, where) for s in sessions], stats, settings)
    log.info("%s: %d instance(s), %d intra-op thread(s) each (%s), %s, providers %s (%s%s)",
             where, len(sessions), threads, threads_why, type(scheduler).__name__, used, plan.reason,
             "; skipped " + ", ".join(plan.skipped) if plan.skipped else "")
    return Model(spec=spec, version=str(version), scheduler=scheduler, stats=stats, sessions=tuple(sessions),
                 limits=RequestLimits.of(settings), scratch=scratch, access_rate=settings.log_requests)
