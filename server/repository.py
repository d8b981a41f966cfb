"""The model repository: Triton's directory layout, model states, load and unload.

``models/<name>/config.pbtxt`` (optional) and ``models/<name>/<version>/model.onnx``. Every loaded
version has its own ORT session; a request without a version gets the highest loaded one.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format

from tensorwire import proto as pb
from tensorwire.errors import InvalidArgument, ModelLoadError, NotFound, RequestError, Unavailable
from tensorwire.server.model_config import (
    CONFIG_FILE,
    check_supported,
    read_model_config,
    version_dirs,
    versions_to_load,
)
from tensorwire.server.onnx_model import LoadedModel, load_model_version
from tensorwire.server.settings import ServerSettings

log = logging.getLogger("tensorwire.repository")

READY, UNAVAILABLE, UNLOADED, LOADING = "READY", "UNAVAILABLE", "UNLOADED", "LOADING"


@dataclass
class ModelEntry:
    name: str
    state: str = UNLOADED
    reason: str = ""
    versions: dict[str, LoadedModel] = field(default_factory=dict)
    # (versions dict, its newest model): ``versions`` is replaced, never changed in place, so the
    # newest is found once per load instead of once per request.
    _latest: tuple = (None, None)

    def latest(self) -> LoadedModel:
        versions, model = self._latest
        if versions is not self.versions:
            versions = self.versions
            model = versions[max(versions, key=int)]
            self._latest = (versions, model)
        return model


def _config(name: str, model_dir: Path, config_json: str | None):
    """(config, max_batch_size_written): from the load request's JSON when it gives one, else the directory's."""
    if config_json is None:
        return read_model_config(model_dir)
    cfg = pb.ModelConfig()
    try:
        fields = json.loads(config_json)
        json_format.Parse(config_json, cfg)
    except (ValueError, json_format.ParseError) as exc:
        raise InvalidArgument(f"model '{name}': the 'config' parameter is not a ModelConfig: {exc}") from None
    if cfg.name and cfg.name != name:
        raise InvalidArgument(f"model '{name}': the 'config' parameter names the model '{cfg.name}'; they must match")
    cfg.name = name
    written = isinstance(fields, dict) and ("max_batch_size" in fields or "maxBatchSize" in fields)
    return cfg, written


class ModelRepository:
    def __init__(self, settings: ServerSettings) -> None:
        self.root = Path(settings.model_repository)
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        self.settings = settings
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        self.startup_failures: list[str] = []

    # -- discovery -------------------------------------------------------------------------
    def holds(self, name: str) -> bool:
        """Whether ``name`` is a model directory of this repository (never a path outside it)."""
        return "/" not in name and "\\" not in name and name not in ("", ".", "..") and (self.root / name).is_dir()

    def model_names(self) -> list[str]:
        """Directories of the repository that hold a model (a config or a version directory)."""
        names = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and (
                (p / CONFIG_FILE).exists() or any(c.is_dir() and c.name.isdigit() for c in p.iterdir())
            ):
                names.append(p.name)
        return names

    def load_all(self) -> None:
        """Load the models asked for at startup (all of them by default); failures are kept as states."""
        names = self.settings.load_models or self.model_names()
        for name in names:
            try:
                self.load(name)
            except RequestError as exc:
                self.startup_failures.append(name)
                log.error("model '%s' failed to load: %s", name, exc)

    # -- lifecycle -------------------------------------------------------------------------
    def load(self, name: str, config_json: str | None = None) -> ModelEntry:
        """Load (or reload) every version of ``name`` the version policy selects."""
        model_dir = self.root / name
        if not self.holds(name):
            raise NotFound(f"model '{name}' is not in the repository {self.root}")
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(name))
            if entry.state != READY:  # a reload keeps serving the old versions until the new ones are up
                entry.state, entry.reason = LOADING, ""
        try:
            cfg, mbs_written = _config(name, model_dir, config_json)
            check_supported(cfg)
            available = version_dirs(model_dir)
            if not available:
                raise ModelLoadError(f"model '{name}' has no version directory (e.g. {model_dir}/1/model.onnx)")
            loaded: dict[str, LoadedModel] = {}
            for v in versions_to_load(cfg, available):
                per_version = pb.ModelConfig()
                per_version.CopyFrom(cfg)
                loaded[str(v)] = load_model_version(model_dir, v, per_version, self.settings, mbs_written)
        except Exception as exc:  # whatever it was, the model gets a state with its reason
            error = exc if isinstance(exc, RequestError) else ModelLoadError(
                f"model '{name}': cannot load {model_dir}: {type(exc).__name__}: {exc}")
            with self._lock:
                old, entry.versions = entry.versions, {}
                entry.state, entry.reason = UNAVAILABLE, str(error)
            for model in old.values():
                model.close()
            if error is exc:
                raise
            raise error from exc
        with self._lock:
            old = entry.versions
            entry.versions, entry.state, entry.reason = loaded, READY, ""
            if name in self.startup_failures:
                self.startup_failures.remove(name)
        for model in old.values():
            model.close()
        log.info("model '%s' ready, versions %s", name, ", ".join(loaded))
        return entry

    def unload(self, name: str) -> None:
        with self._lock:
            entry = self._models.get(name)
            if entry is None or entry.state == UNLOADED:
                if not self.holds(name):
                    raise NotFound(f"model '{name}' is not in the repository {self.root}")
                return
            old = entry.versions
            entry.versions, entry.state, entry.reason = {}, UNLOADED, "unloaded by request"
            if name in self.startup_failures:
                self.startup_failures.remove(name)
        for model in old.values():
            model.close()
        log.info("model '%s' unloaded", name)

    # -- lookup ----------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> LoadedModel:
        """The loaded version asked for; NOT_FOUND for unknown ones, UNAVAILABLE for models not ready."""
        with self._lock:
            entry = self._models.get(name)
            known = None if entry else ", ".join(n for n, e in self._models.items() if e.state == READY) or "none"
        if entry is None:  # the file system is read outside the lock every request takes
            if self.holds(name):
                raise Unavailable(f"model '{name}' is in the repository but not loaded")
            raise NotFound(f"unknown model '{name}'; loaded models: {known}")
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

    def entry(self, name: str) -> ModelEntry | None:
        with self._lock:
            return self._models.get(name)

    def close(self) -> None:
        """Stop every model's scheduler (batcher threads); used at shutdown."""
        with self._lock:
            models = [m for e in self._models.values() for m in e.versions.values()]
        for m in models:
            m.close()

    def loaded(self) -> list[LoadedModel]:
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
                elif not ready_only:
                    rows.append((name, "", entry.state, entry.reason))
        return rows
