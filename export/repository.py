"""The model repository entry (Triton's layout): config.pbtxt, <version>/model.onnx, export_report.json."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tensorwire.export.errors import ExportError
from tensorwire.export.graph import TWO_GB, io_table


def build_config(model, name: str, max_batch_size: int, parameters: dict[str, str] | None = None):
    """A ``ModelConfig`` from the served graph's interface; dims drop the batch axis when batching."""
    from tensorwire import proto as pb
    from tensorwire.proto.datatypes import BY_ONNX_ELEM_TYPE

    cfg = pb.ModelConfig(name=name, platform="onnxruntime_onnx", backend="onnxruntime",
                         max_batch_size=max_batch_size)
    inputs, outputs = io_table(model)
    for rows, field in ((inputs, cfg.input), (outputs, cfg.output)):
        for row in rows:
            dt = BY_ONNX_ELEM_TYPE.get(row["elem_type"])
            if dt is None:
                raise ExportError(f"{row['name']!r} has ONNX element type {row['elem_type']}, which the "
                                  "model config cannot express")
            dims = [d if isinstance(d, int) else -1 for d in row["dims"]]
            if max_batch_size > 0:
                dims = dims[1:]
            entry = field.add(name=row["name"], dims=dims)
            entry.data_type = dt.config_enum
    for key, value in (parameters or {}).items():
        cfg.parameters[key].string_value = str(value)
    return cfg


def config_text(cfg) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def existing_versions(repository: str | Path, name: str) -> list[int]:
    """The numeric version folders of ``<repository>/<name>``, ascending."""
    root = Path(repository) / name
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_version(repository: str | Path, name: str, version: int | None, overwrite: bool) -> int:
    """``None``: the next version after the latest (1 for a new name); ``N``: N, refused if it exists
    unless ``overwrite``. Checked before the export runs so a refusal costs nothing."""
    found = existing_versions(repository, name)
    if version is None:
        return (found[-1] + 1) if found else 1
    if version < 1:
        raise ExportError(f"version must be 1 or more, got {version}")
    if version in found and not overwrite:
        raise ExportError(f"{Path(repository) / name / str(version)} exists: pass overwrite=True (CLI --overwrite) "
                          f"to replace it, or leave the version out to write version {found[-1] + 1}")
    return version


def write_entry(repository: str | Path, name: str, version: int, model, cfg, overwrite: bool) -> dict[str, Path]:
    """Write the entry; the version folder is staged beside it and moved in whole, never half-written."""
    import onnx

    root = Path(repository) / name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        model_path = staging / "model.onnx"
        if model.ByteSize() >= TWO_GB:
            onnx.save(model, str(model_path), save_as_external_data=True, location="model.onnx.data")
        else:
            onnx.save(model, str(model_path))
        final = root / str(version)
        if final.exists():
            if not overwrite:
                raise ExportError(f"{final} appeared during the export; pass overwrite=True to replace it")
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    config_path = root / "config.pbtxt"
    config_path.write_text(config_text(cfg))
    return {"model": final / "model.onnx", "config": config_path, "report": root / "export_report.json"}
