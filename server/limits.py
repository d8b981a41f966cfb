"""Bounds on what a client or a config can make the server do, checked before anything is spent.

Model names are checked before any file-system call; a model's file name must be a plain name that
resolves inside its version directory; every value of a config that costs memory, threads or time
(instances, thread counts, batch sizes, queue delay and size, warm-up tensors) is held to a server flag
(``--limit-*``, defaults in ``ServerSettings``). The same bounds hold for config.pbtxt files and for
configs that arrive with RepositoryModelLoad. Messages name the model and what was wrong, never a host path.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from tensorwire import proto as pb
from tensorwire.errors import InvalidArgument, ModelLoadError
from tensorwire.proto.datatypes import BY_CONFIG_ENUM
from tensorwire.server.providers import gpu_possible
from tensorwire.server.session import default_intra_op_threads
from tensorwire.server.settings import ServerSettings

MAX_NAME_LENGTH = 128
# A config override is a few hundred bytes; parsing JSON costs several times its size in memory.
MAX_CONFIG_JSON_BYTES = 1 << 20
# Letters, digits, '_', '-', '.'; not starting with '.' (no hidden directories, no '..').
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_SHOWN = 40
CPU_INSTANCE_COUNT = 2  # Triton's default instance count for an ONNX Runtime model on CPU


def quoted(name: str) -> str:
    """A client-given name as it may appear in a message or a log line: quoted, escaped and cut short."""
    text = name if len(name) <= _SHOWN else name[:_SHOWN] + "..."
    return repr(text)


def valid_model_name(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def check_model_name(name: str) -> None:
    """INVALID_ARGUMENT for a name that cannot be a model directory of the repository."""
    if not name:
        raise InvalidArgument("model name is empty")
    if not valid_model_name(name):
        raise InvalidArgument(
            f"model name {quoted(name)} is not valid: use at most {MAX_NAME_LENGTH} letters, digits, '_', '-' "
            "or '.', not starting with '.'")


def check_config_json_size(model: str, config_json: str) -> None:
    if len(config_json) > MAX_CONFIG_JSON_BYTES:
        raise InvalidArgument(f"model {quoted(model)}: the 'config' parameter has {len(config_json)} characters; "
                              f"at most {MAX_CONFIG_JSON_BYTES} are accepted")


def check_file_name(model: str, file_name: str) -> None:
    """A model file name must be a plain name inside its version directory: no path, no '..'."""
    if (not file_name or "/" in file_name or "\\" in file_name or file_name in (".", "..")
            or "\0" in file_name or len(file_name) > 255):
        raise InvalidArgument(
            f"model '{model}': default_model_filename {quoted(file_name)} must be a plain file name inside the "
            "version directory (no '/', no '..')")


def contained(version_dir: Path, file_name: str, model: str) -> Path:
    """``version_dir/file_name`` with links resolved, refused unless it lies inside the resolved version
    directory (which may itself be a link, e.g. to a model store). Nothing is opened here."""
    base = version_dir.resolve()
    path = (version_dir / file_name).resolve()
    if not path.is_relative_to(base):
        raise InvalidArgument(f"model '{model}': its model file resolves outside its version directory; "
                              "link the version directory instead of the file")
    return path


def _at_most(model: str, what: str, value: float, bound: float, flag: str) -> None:
    if value > bound:
        raise ModelLoadError(f"model '{model}': {what} is {value}, above this server's bound {bound} ({flag})")


def _warmup_bytes(cfg) -> int:
    total = 0
    for warmup in cfg.model_warmup:
        rows = max(int(warmup.batch_size), 1)
        for name, inp in warmup.inputs.items():
            if any(d < 0 for d in inp.dims):
                raise ModelLoadError(f"model '{cfg.name}': model_warmup '{quoted(warmup.name)}' input "
                                     f"{quoted(name)} has a negative dimension")
            dt = BY_CONFIG_ENUM.get(inp.data_type)
            total += rows * math.prod(int(d) for d in inp.dims) * (dt.itemsize if dt and dt.itemsize else 1)
    return total


def check_load_threads(cfg, versions: int, s: ServerSettings) -> None:
    """The threads one load creates, versions x instances x (intra-op + inter-op threads per session), within
    ``--limit-load-threads``: each bound alone is sane, their product is not (64 instances x 256 threads)."""
    instances = sum(int(g.count) for g in cfg.instance_group)
    intra = _thread_parameter(cfg, "intra_op_thread_count") or s.intra_op_threads or default_intra_op_threads(
        s, instances)
    inter = _thread_parameter(cfg, "inter_op_thread_count") or s.inter_op_threads
    threads = versions * instances * (intra + inter)
    if threads > s.limit_load_threads:
        raise ModelLoadError(
            f"model '{cfg.name}': loading it would create {threads} ONNX Runtime threads ({versions} version(s) x "
            f"{instances} instance(s) x ({intra} intra-op + {inter} inter-op)), above this server's bound "
            f"{s.limit_load_threads} (--limit-load-threads)")


def _thread_parameter(cfg, key: str) -> int:
    if key not in cfg.parameters:
        return 0
    text = cfg.parameters[key].string_value
    try:
        return int(text)
    except ValueError:
        raise ModelLoadError(f"model '{cfg.name}': parameter {key} must be an integer, got {quoted(text)}") from None


def normalise_instance_groups(cfg, gpu_possible: bool) -> None:
    """Triton's rule (its SetDefaultInstanceCount), applied before any bound is checked, so the bounds see what
    will be opened and ModelConfig reports it: no group means one group of kind KIND_AUTO; KIND_AUTO is
    KIND_CPU where no GPU can run it; a ``count`` below 1 is 2 instances on CPU (what Triton gives ONNX
    Runtime models: two requests run at once on a multi-core host) and 1 on a GPU."""
    if not cfg.instance_group:
        cfg.instance_group.add(kind=pb.ModelInstanceGroup.KIND_AUTO)
    for group in cfg.instance_group:
        if group.kind == pb.ModelInstanceGroup.KIND_AUTO and not gpu_possible:
            group.kind = pb.ModelInstanceGroup.KIND_CPU
        if group.count < 1:
            group.count = CPU_INSTANCE_COUNT if group.kind == pb.ModelInstanceGroup.KIND_CPU else 1


def check_config_limits(cfg, s: ServerSettings, available_providers: list[str]) -> None:
    """Every costly value of ``cfg`` within the server's bounds (ModelLoadError, INVALID_ARGUMENT, if not);
    ``cfg``'s instance groups are normalised first (``available_providers``: ONNX Runtime's)."""
    name = cfg.name
    normalise_instance_groups(cfg, gpu_possible(available_providers, s.providers))
    instances = sum(int(g.count) for g in cfg.instance_group)
    _at_most(name, "the instance count of instance_group", instances, s.limit_instance_count, "--limit-instance-count")
    for key in ("intra_op_thread_count", "inter_op_thread_count"):
        threads = _thread_parameter(cfg, key)
        if threads < 0:
            raise ModelLoadError(f"model '{name}': parameter {key} must be >= 0, got {threads}")
        _at_most(name, f"parameter {key}", threads, s.limit_thread_count, "--limit-thread-count")
    _at_most(name, "max_batch_size", cfg.max_batch_size, s.limit_max_batch_size, "--limit-max-batch-size")
    db = cfg.dynamic_batching
    for size in db.preferred_batch_size:
        _at_most(name, "a preferred_batch_size", size, s.limit_max_batch_size, "--limit-max-batch-size")
    _at_most(name, "dynamic_batching.max_queue_delay_microseconds", db.max_queue_delay_microseconds,
             s.limit_queue_delay_us, "--limit-queue-delay-us")
    policies = [db.default_queue_policy, *db.priority_queue_policy.values()]
    for policy in policies:
        _at_most(name, "a queue policy's max_queue_size", policy.max_queue_size, s.limit_queue_size,
                 "--limit-queue-size")
    _at_most(name, "the model_warmup inputs' size in MiB", round(_warmup_bytes(cfg) / 2**20, 1), s.limit_warmup_mb,
             "--limit-warmup-mb")
    if cfg.model_operations.op_library_filename:
        raise ModelLoadError(f"model '{name}': model_operations.op_library_filename (custom operator libraries) "
                             "is not supported")
    if cfg.default_model_filename:
        check_file_name(name, cfg.default_model_filename)
