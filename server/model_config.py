"""Model configuration: read config.pbtxt, complete it from the ONNX graph, and check the two agree.

The format is Triton's (``inference.ModelConfig`` in protobuf text format) so that a Triton model
repository of ONNX models loads unchanged. What the server acts on is condensed into ``ModelSpec``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format, text_format

from tensorwire import proto as pb
from tensorwire.errors import InvalidArgument, ModelLoadError
from tensorwire.proto.datatypes import BY_CONFIG_ENUM, BY_ORT_TYPE, Datatype

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"
ONNX_PLATFORMS = {"onnxruntime_onnx", ""}
ONNX_BACKENDS = {"onnxruntime", ""}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: Datatype
    dims: tuple[int, ...]  # as in the config: without the batch dimension when the model batches
    optional: bool = False


@dataclass
class ModelSpec:
    """What the server needs to validate a request and describe the model."""

    name: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    config: object  # the completed pb.ModelConfig
    input_by_name: dict[str, TensorSpec] = field(init=False)
    output_by_name: dict[str, TensorSpec] = field(init=False)

    def __post_init__(self) -> None:
        self.input_by_name = {t.name: t for t in self.inputs}
        self.output_by_name = {t.name: t for t in self.outputs}

    def full_shape(self, t: TensorSpec) -> tuple[int, ...]:
        """Shape as clients see it: with a leading -1 batch dim when the model batches."""
        return ((-1,) + t.dims) if self.max_batch_size > 0 else t.dims


# proto3 cannot tell ``max_batch_size: 0`` from an absent field, and only an absent one is completed from
# the graph. Reading a config marks an absent one with this value; complete_config() resolves it.
MAX_BATCH_SIZE_UNSET = -1


# A real config.pbtxt is a few KiB; one larger than this is refused before it is read.
MAX_CONFIG_FILE_BYTES = 1 << 20


def _mark_max_batch_size(cfg, written: bool, where: str) -> None:
    if not written:
        cfg.max_batch_size = MAX_BATCH_SIZE_UNSET
    elif cfg.max_batch_size < 0:
        raise ModelLoadError(f"{where}: max_batch_size must be >= 0, got {cfg.max_batch_size}")


def _read_bounded(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total <= limit:
        chunk = os.read(fd, min(1 << 16, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_config_file(path: Path, where: str) -> str | None:
    """The text of a repository's config file, None if there is none. Opened without blocking and read only
    if it is a regular file of at most MAX_CONFIG_FILE_BYTES: a FIFO would block the poller forever, a link
    to /dev/zero would be read without end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot be opened ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelLoadError(f"{where}: not a regular file (a FIFO, device or directory is not a config)")
        data = _read_bounded(fd, MAX_CONFIG_FILE_BYTES)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ModelLoadError(f"{where}: larger than the {MAX_CONFIG_FILE_BYTES}-byte bound of a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelLoadError(f"{where}: not UTF-8 text") from None


def read_model_config(model_dir: Path):
    """The config.pbtxt of ``model_dir`` parsed (an empty config if the file is absent)."""
    cfg = pb.ModelConfig()
    where = f"model '{model_dir.name}': {CONFIG_FILE}"
    text = read_config_file(model_dir / CONFIG_FILE, where)
    written = False
    if text is not None:
        try:
            text_format.Parse(text, cfg)
        except text_format.ParseError as exc:
            raise ModelLoadError(f"{where}: not a valid model configuration: {exc}") from None
        except RecursionError:
            raise ModelLoadError(f"{where}: nested too deeply to be a model configuration") from None
        written = re.search(r"^\s*max_batch_size\s*:", text, re.M) is not None
    if cfg.name and cfg.name != model_dir.name:
        raise ModelLoadError(
            f"{where}: config names the model '{cfg.name}' but its directory is '{model_dir.name}'; they must match"
        )
    cfg.name = model_dir.name
    _mark_max_batch_size(cfg, written, where)
    return cfg


def config_from_json(name: str, config_json: str):
    """A ModelConfig given as JSON (RepositoryModelLoad's ``config`` parameter) for the model ``name``."""
    cfg = pb.ModelConfig()
    try:
        fields = json.loads(config_json)
        json_format.Parse(config_json, cfg)
    except (ValueError, json_format.ParseError) as exc:
        raise InvalidArgument(f"model '{name}': the 'config' parameter is not a ModelConfig: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"model '{name}': the 'config' parameter is nested too deeply to be a ModelConfig "
                              "(JSON objects or arrays inside each other)") from None
    if cfg.name and cfg.name != name:
        raise InvalidArgument(f"model '{name}': the 'config' parameter names the model '{cfg.name}'; they must match")
    cfg.name = name
    written = isinstance(fields, dict) and ("max_batch_size" in fields or "maxBatchSize" in fields)
    _mark_max_batch_size(cfg, written, f"model '{name}': the 'config' parameter")
    return cfg


def check_supported(cfg) -> None:
    """Refuse configs that ask for something this server does not do, saying what."""
    if cfg.platform not in ONNX_PLATFORMS or cfg.backend not in ONNX_BACKENDS:
        raise ModelLoadError(
            f"model '{cfg.name}': platform '{cfg.platform}' / backend '{cfg.backend}' is not served; "
            "tensorwire serves ONNX models (platform \"onnxruntime_onnx\", backend \"onnxruntime\")"
        )
    which = cfg.WhichOneof("scheduling_choice")
    if which in ("sequence_batching", "ensemble_scheduling"):
        raise ModelLoadError(f"model '{cfg.name}': {which} is not supported by tensorwire")


@dataclass(frozen=True)
class GraphTensor:
    """An input or output of the ONNX graph as ONNX Runtime reports it."""

    name: str
    ort_type: str
    shape: tuple  # ints for static dims, None or a symbol name (str) for dynamic ones

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in self.shape)


def _graph_datatype(t: GraphTensor, model: str) -> Datatype:
    try:
        return BY_ORT_TYPE[t.ort_type]
    except KeyError:
        raise ModelLoadError(f"model '{model}': graph tensor '{t.name}' has type {t.ort_type}, "
                             "which has no KServe v2 datatype") from None


def _graph_batches(tensors: list[GraphTensor]) -> bool:
    return bool(tensors) and all(len(t.dims) >= 1 and t.dims[0] == -1 for t in tensors)


def _check_declared(kind: str, declared, graph: dict[str, GraphTensor], mbs: int, model: str) -> list[TensorSpec]:
    specs = []
    for d in declared:
        g = graph.get(d.name)
        if g is None:
            raise ModelLoadError(
                f"model '{model}': config {kind} '{d.name}' is not in the ONNX graph, whose {kind}s are "
                f"{', '.join(graph) or 'none'}"
            )
        dt = BY_CONFIG_ENUM.get(d.data_type)
        gdt = _graph_datatype(g, model)
        if dt is None or dt.name != gdt.name:
            declared_name = dt.config_name if dt else str(d.data_type)
            raise ModelLoadError(
                f"model '{model}': config {kind} '{d.name}' has data_type {declared_name} but the ONNX graph "
                f"has {gdt.config_name}"
            )
        dims = tuple(int(x) for x in d.dims)
        if d.HasField("reshape"):
            raise ModelLoadError(f"model '{model}': {kind} '{d.name}': reshape is not supported")
        graph_dims = g.dims[1:] if mbs > 0 else g.dims
        if mbs > 0 and (not g.dims or g.dims[0] != -1):
            raise ModelLoadError(
                f"model '{model}': max_batch_size is {mbs} but graph {kind} '{g.name}' has a fixed first "
                f"dimension {list(g.shape)[:1]}; export it with a dynamic batch axis or set max_batch_size: 0"
            )
        if len(dims) != len(graph_dims) or any(
            c != gd and gd != -1 and c != -1 for c, gd in zip(dims, graph_dims)
        ):
            raise ModelLoadError(
                f"model '{model}': config {kind} '{d.name}' has dims {list(dims)} but the ONNX graph has "
                f"{list(graph_dims)}" + (" after the batch dimension" if mbs > 0 else "")
            )
        specs.append(TensorSpec(d.name, dt, dims, bool(getattr(d, "optional", False))))
    return specs


def complete_config(cfg, graph_inputs: list[GraphTensor], graph_outputs: list[GraphTensor],
                    default_max_batch_size: int) -> ModelSpec:
    """Fill what config.pbtxt leaves out from the graph (as Triton does), and check the rest."""
    name = cfg.name
    if cfg.max_batch_size == MAX_BATCH_SIZE_UNSET:
        batches = default_max_batch_size > 0 and _graph_batches(graph_inputs + graph_outputs)
        cfg.max_batch_size = default_max_batch_size if batches else 0
    mbs = cfg.max_batch_size
    if not cfg.platform and not cfg.backend:
        cfg.platform = "onnxruntime_onnx"
    if not cfg.backend:
        cfg.backend = "onnxruntime"
    for kind, declared, graph in (("input", cfg.input, graph_inputs), ("output", cfg.output, graph_outputs)):
        if len(declared) == 0:
            for g in graph:
                dt = _graph_datatype(g, name)
                if mbs > 0 and (not g.dims or g.dims[0] != -1):
                    raise ModelLoadError(
                        f"model '{name}': max_batch_size is {mbs} but graph {kind} '{g.name}' has no dynamic "
                        "batch dimension"
                    )
                entry = declared.add(name=g.name, data_type=dt.config_enum)
                entry.dims.extend(g.dims[1:] if mbs > 0 else g.dims)
    graph_in = {g.name: g for g in graph_inputs}
    graph_out = {g.name: g for g in graph_outputs}
    inputs = _check_declared("input", cfg.input, graph_in, mbs, name)
    outputs = _check_declared("output", cfg.output, graph_out, mbs, name)
    missing = [g for g in graph_in if g not in {t.name for t in inputs}]
    if missing:
        raise ModelLoadError(
            f"model '{name}': the ONNX graph needs input(s) {', '.join(missing)} that config.pbtxt does not list"
        )
    if not cfg.instance_group:
        cfg.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_AUTO)
    return ModelSpec(name=name, max_batch_size=mbs, inputs=inputs, outputs=outputs, config=cfg)


def version_dirs(model_dir: Path) -> list[int]:
    """Numeric version subdirectories, ascending."""
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def versions_to_load(cfg, available: list[int]) -> list[int]:
    """Versions the config's version_policy selects (default: the latest one)."""
    policy = cfg.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return list(available)
    if which == "specific":
        wanted = [v for v in policy.specific.versions]
        missing = [v for v in wanted if v not in available]
        if missing:
            raise ModelLoadError(
                f"model '{cfg.name}': version_policy asks for version(s) {missing} that have no directory"
            )
        return sorted(wanted)
    n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions > 0 else 1
    return available[-n:]
