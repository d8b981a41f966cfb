"""The model repository: Triton's directory layout, model states, load and unload.

``models/<name>/config.pbtxt`` (optional) and ``models/<name>/<version>/model.onnx``. Every loaded
version has its own ORT session; a request without a version gets the highest loaded one.

Reloads behave as Triton's, and better: a failed load of a READY model keeps the versions
that serve, with the failure in RepositoryIndex and the log; replaced versions are retired, not closed,
so what they already queued finishes; and the loads and unloads of one model run one at a time, in the
order they arrive, so the last request wins.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tensorwire import proto as pb
from tensorwire.errors import ModelLoadError, NotFound, RequestError, Unavailable
from tensorwire.server.limits import (
    check_config_limits,
    check_load_threads,
    check_model_name,
    contained,
    quoted,
    valid_model_name,
)
from tensorwire.server.loader import load_model_version
from tensorwire.server.logs import event
from tensorwire.server.model import Model
from tensorwire.server.model_config import (
    CONFIG_FILE,
    DEFAULT_MODEL_FILENAME,
    check_supported,
    config_from_json,
    read_model_config,
    version_dirs,
    versions_to_load,
)
from tensorwire.server.scratch import ScratchPool
from tensorwire.server.session import import_onnxruntime
from tensorwire.server.settings import ServerSettings

log = logging.getLogger("tensorwire.repository")

READY, UNAVAILABLE, UNLOADED, LOADING = "READY", "UNAVAILABLE", "UNLOADED", "LOADING"


@dataclass
class ModelEntry:
    name: str
    state: str = UNLOADED
    reason: str = ""
    versions: dict[str, Model] = field(default_factory=dict)
    # version ("" when the config itself failed) -> why its last load failed, while other versions serve
    failed: dict[str, str] = field(default_factory=dict)
    # The newest of ``versions``, found once per change (``serve``) instead of once per request.
    _newest: Model | None = None

    def serve(self, versions: dict[str, Model]) -> None:
        """Serve ``versions`` from now on ({}: none). Nothing else keeps the ones replaced: an unloaded model's
        sessions are freed once the requests still holding it are done."""
        self.versions = versions
        self._newest = versions[max(versions, key=int)] if versions else None

    def latest(self) -> Model:
        """The newest version served (the entry is READY, so there is one)."""
        assert self._newest is not None, f"model '{self.name}' serves no version"
        return self._newest


def _load_error(name: str, exc: BaseException) -> RequestError:
    """What a client is told of a failed load: our own errors as they are; anything else by its kind only
    (an OSError's text holds host paths), with the whole of it in the server's log."""
    if isinstance(exc, RequestError):
        return exc
    log.error("model '%s': unexpected load failure", name, exc_info=exc)
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return ModelLoadError(f"model '{name}': cannot load: {detail}")


def _config(name: str, model_dir: Path, config_json: str | None):
    """The load request's JSON config when it gives one, else the directory's config.pbtxt."""
    return read_model_config(model_dir) if config_json is None else config_from_json(name, config_json)


class ModelRepository:
    def __init__(self, settings: ServerSettings, scratch: ScratchPool | None = None) -> None:
        self.root = Path(settings.model_repository)
        self.scratch = scratch or ScratchPool(settings.scratch_pool_bytes)  # shared by every model it loads
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        self.settings = settings
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        self._model_locks: dict[str, threading.Lock] = {}  # one per model: its loads and unloads, in turn
        self.startup_failures: list[str] = []

    def _serial(self, name: str) -> threading.Lock:
        with self._lock:
            return self._model_locks.setdefault(name, threading.Lock())

    # -- discovery -------------------------------------------------------------------------
    def holds(self, name: str) -> bool:
        """Whether ``name`` (a checked model name) is a model directory of this repository."""
        return (self.root / name).is_dir()

    def model_names(self) -> list[str]:
        """Directories of the repository that hold a model (a config or a version directory)."""
        names = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and valid_model_name(p.name) and (
                (p / CONFIG_FILE).exists() or any(c.is_dir() and c.name.isdigit() for c in p.iterdir())
            ):
                names.append(p.name)
        return names

    def startup_models(self) -> list[str]:
        """What loads at start: every model in mode none; the --load-model ones (``*``: all) in explicit mode."""
        s = self.settings
        if s.model_control_mode != "explicit" or "*" in s.load_models:
            return self.model_names()
        return list(dict.fromkeys(s.load_models))

    def load_all(self) -> None:
        """Load the models asked for at startup; failures are kept as states (and in ``startup_failures``)."""
        for name in self.startup_models():
            try:
                self.load(name)
            except RequestError as exc:
                self.startup_failures.append(name)
                log.error("model %s failed to load: %s", quoted(name), exc)

    # -- lifecycle -------------------------------------------------------------------------
    def load(self, name: str, config_json: str | None = None) -> ModelEntry:
        """Load (or reload) every version of ``name`` the version policy selects.

        ``config_json`` is RepositoryModelLoad's ``config`` override. The config, from the request or the
        directory, is checked first (the server's bounds; an override's model file must resolve inside each
        version directory). A failure leaves a READY model serving the versions it had.
        """
        check_model_name(name)
        if not self.holds(name):
            raise NotFound(f"model '{name}' is not in the model repository")
        with self._serial(name):
            return self._load(name, config_json)

    def _load(self, name: str, config_json: str | None) -> ModelEntry:
        cfg, versions = self._checked_config(name, config_json)
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(name))
            if entry.state != READY:  # a reload keeps serving the old versions until the new ones are up
                entry.state, entry.reason = LOADING, ""
        at: list[str] = []
        try:
            loaded = self._load_versions(name, cfg, versions, at)
        except Exception as exc:  # whatever it was, the model gets a state with its reason
            self._failed(entry, exc, at[-1] if at else "")
            raise _load_error(name, exc) from exc
        with self._lock:
            old = entry.versions
            entry.serve(loaded)
            entry.state, entry.reason, entry.failed = READY, "", {}
            if name in self.startup_failures:
                self.startup_failures.remove(name)
        self._retire(name, old)
        event(log, "model_loaded", "model '%s' ready, versions %s", name, ", ".join(loaded),
              model=name, versions=",".join(loaded))
        return entry

    def _checked_config(self, name: str, config_json: str | None) -> tuple[object, list[int]]:
        """(config, versions to load), or the refusal: bounds, supported fields, contained model files."""
        model_dir = self.root / name
        try:
            cfg = _config(name, model_dir, config_json)
            check_supported(cfg)
            check_config_limits(cfg, self.settings, import_onnxruntime().get_available_providers())
            available = version_dirs(model_dir)
            if not available:
                raise ModelLoadError(f"model '{name}' has no version directory (e.g. {name}/1/model.onnx)")
            versions = versions_to_load(cfg, available)
            check_load_threads(cfg, len(versions), self.settings)
            if config_json is not None:
                for v in versions:
                    contained(model_dir / str(v), cfg.default_model_filename or DEFAULT_MODEL_FILENAME, name)
        except Exception as exc:
            if config_json is None:  # the repository's own config: the model keeps the reason as its state
                with self._lock:
                    entry = self._models.setdefault(name, ModelEntry(name))
                self._failed(entry, exc, "")
            raise _load_error(name, exc) from exc
        return cfg, versions

    def _load_versions(self, name: str, cfg, versions: list[int], at: list[str]) -> dict[str, Model]:
        """Every version's Model, or the first failure (``at`` ends with the version being loaded)."""
        loaded: dict[str, Model] = {}
        try:
            for v in versions:
                at.append(str(v))
                per_version = pb.ModelConfig()
                per_version.CopyFrom(cfg)
                loaded[str(v)] = load_model_version(self.root / name, v, per_version, self.settings, self.scratch)
        except BaseException:
            for model in loaded.values():
                model.close()
            raise
        return loaded

    def _failed(self, entry: ModelEntry, exc: BaseException, version: str) -> None:
        """A load failed: a READY model keeps serving its versions, with the failure beside them; any other
        becomes UNAVAILABLE with the reason."""
        reason = str(_load_error(entry.name, exc))
        with self._lock:
            if entry.state == READY and entry.versions:
                entry.failed = {version: reason}
                serving = ", ".join(sorted(entry.versions, key=int))
                old: dict[str, Model] = {}
            else:
                old, entry.failed = entry.versions, {}
                entry.serve({})
                entry.state, entry.reason, serving = UNAVAILABLE, reason, ""
        event(log, "model_load_failed", "model '%s'%s failed to load: %s%s", entry.name,
              f" version {version}" if version else "", reason,
              f"; still serving version(s) {serving}" if serving else "", level=logging.ERROR,
              model=entry.name, version=version, reason=reason, serving=serving)
        self._retire(entry.name, old)

    def _retire(self, name: str, old: dict[str, Model]) -> None:
        """Retire replaced or unloaded versions: they finish what they hold (up to --shutdown-grace)."""
        if not old:
            return
        grace = self.settings.shutdown_grace_s
        drained = all([model.retire(self.get, grace) for model in old.values()])
        event(log, "model_drained", "model '%s' versions %s drained%s", name, ", ".join(old),
              "" if drained else f" (requests still running after {grace:.1f}s were answered UNAVAILABLE)",
              level=logging.INFO if drained else logging.WARNING, model=name, versions=",".join(old),
              complete=drained)

    def unload(self, name: str) -> None:
        with self._lock:
            known = name in self._models
        if not known:
            check_model_name(name)
            if not self.holds(name):
                raise NotFound(f"model '{name}' is not in the model repository")
        with self._serial(name):
            with self._lock:
                entry = self._models.get(name)
                if entry is None or entry.state == UNLOADED:
                    return
                old = entry.versions
                entry.serve({})
                entry.failed = {}
                entry.state, entry.reason = UNLOADED, "unloaded by request"
                if name in self.startup_failures:
                    self.startup_failures.remove(name)
            self._retire(name, old)
        event(log, "model_unloaded", "model '%s' unloaded", name, model=name)

    # -- lookup ----------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> Model:
        """The loaded version asked for; NOT_FOUND for unknown ones, UNAVAILABLE for models not ready."""
        with self._lock:
            entry = self._models.get(name)
        if entry is None:  # the name is checked, and the file system read, outside the lock every request takes
            check_model_name(name)
            if self.holds(name):
                raise Unavailable(f"model '{name}' is in the repository but not loaded")
            raise NotFound(f"unknown model '{name}'")
        with self._lock:
            if entry.state != READY:
                detail = f": {entry.reason}" if entry.reason else ""
                raise Unavailable(f"model '{name}' is not ready (state {entry.state}){detail}")
            if not version:
                return entry.latest()
            model = entry.versions.get(version)
            if model is None:
                raise NotFound(
                    f"model '{name}' has no loaded version '{version}'; loaded versions: "
                    f"{', '.join(sorted(entry.versions, key=int))}"
                )
            return model

    def all_available(self) -> bool:
        """Strict readiness: no model the server was asked to serve is loading or failed."""
        with self._lock:
            return not any(e.state in (UNAVAILABLE, LOADING) for e in self._models.values())

    def entry(self, name: str) -> ModelEntry | None:
        with self._lock:
            return self._models.get(name)

    def close(self) -> None:
        """Stop every model's scheduler (batcher threads); used at shutdown."""
        with self._lock:
            models = [m for e in self._models.values() for m in e.versions.values()]
        for m in models:
            m.close()

    def loaded(self) -> list[Model]:
        with self._lock:
            return [m for e in self._models.values() for m in e.versions.values()]

    def index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model of the repository."""
        rows = []
        names = self.model_names()  # outside the lock: a directory scan must not stall inference
        with self._lock:
            for name in names:
                entry = self._models.get(name, ModelEntry(name))
                if entry.state == READY:
                    rows.extend((name, v, READY, "") for v in sorted(entry.versions, key=int))
                    if not ready_only:  # a failed reload beside the versions that still serve
                        rows.extend((name, v, UNAVAILABLE, why) for v, why in entry.failed.items())
                elif not ready_only:
                    rows.append((name, "", entry.state, entry.reason))
        return rows
