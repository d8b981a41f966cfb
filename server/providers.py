"""Execution provider choice: TensorRT -> CUDA -> CPU, from what is installed and what is asked.

A pure function of the model config, the server's override and ``onnxruntime.get_available_providers()``,
so it is tested without a GPU; the server logs the plan and reports it in the model's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tensorwire import proto as pb
from tensorwire.errors import ModelLoadError

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ALIASES = {"tensorrt": TRT, "trt": TRT, "cuda": CUDA, "gpu": CUDA, "cpu": CPU}
DEFAULT_ORDER = [TRT, CUDA, CPU]


@dataclass
class ProviderPlan:
    providers: list[tuple[str, dict]]  # (name, options) in priority order, CPU last
    reason: str
    skipped: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.providers]


def gpu_possible(available: list[str], override: list[str]) -> bool:
    """Whether a group of kind KIND_AUTO may run on a GPU: a GPU provider is installed and, where
    ``--providers`` chooses, chosen (Triton's test is a GPU being present; ONNX Runtime's list is ours)."""
    gpu = {TRT, CUDA}
    wanted = {provider_name(p) for p in override} if override else gpu
    return bool(gpu & wanted & set(available))


def provider_name(alias: str) -> str:
    key = alias.strip()
    if key in (TRT, CUDA, CPU):
        return key
    try:
        return ALIASES[key.lower()]
    except KeyError:
        raise ModelLoadError(f"unknown execution provider '{alias}'; use tensorrt, cuda or cpu") from None


def _accelerator_params(cfg, provider: str) -> dict[str, str]:
    for acc in cfg.optimization.execution_accelerators.gpu_execution_accelerator:
        if provider_name(acc.name) == provider:
            return dict(acc.parameters)
    return {}


def trt_profile_shapes(cfg, max_batch_size: int) -> dict[str, str] | None:
    """min/opt/max profile shapes so TensorRT builds one engine for every batch size 1..max.

    Only derivable when every non-batch dim is fixed; otherwise TensorRT sees the real range at
    run time and rebuilds, which the server logs.
    """
    if max_batch_size <= 0 or not cfg.input:
        return None
    if any(d < 0 for t in cfg.input for d in t.dims):
        return None
    opt = max(1, max_batch_size // 2)

    def shapes(batch: int) -> str:
        return ",".join(f"{t.name}:{'x'.join(str(d) for d in [batch, *t.dims])}" for t in cfg.input)

    return {
        "trt_profile_min_shapes": shapes(1),
        "trt_profile_opt_shapes": shapes(opt),
        "trt_profile_max_shapes": shapes(max_batch_size),
    }


def plan_providers(cfg, available: list[str], override: list[str], cache_dir: Path,
                   model_version: str = "1") -> ProviderPlan:
    """The providers to open a session with, and why."""
    kinds = {g.kind for g in cfg.instance_group}
    skipped: list[str] = []
    if override:
        wanted = [provider_name(p) for p in override]
        reason = "server --providers"
    elif kinds == {pb.ModelInstanceGroup.KIND_CPU}:
        wanted = [CPU]
        reason = "instance_group kind KIND_CPU"
    elif cfg.optimization.execution_accelerators.gpu_execution_accelerator:
        wanted = [provider_name(a.name) for a in cfg.optimization.execution_accelerators.gpu_execution_accelerator]
        wanted.append(CUDA)
        reason = "config gpu_execution_accelerator"
    else:
        wanted = list(DEFAULT_ORDER)
        reason = "default order TensorRT -> CUDA -> CPU"
    if CPU not in wanted:
        wanted.append(CPU)
    gpus = [g for group in cfg.instance_group for g in group.gpus]
    device_id = str(gpus[0]) if gpus else "0"
    plan: list[tuple[str, dict]] = []
    for name in dict.fromkeys(wanted):
        if name not in available:
            skipped.append(f"{name} (not available in this onnxruntime)")
            continue
        options: dict = {}
        if name == TRT:
            params = _accelerator_params(cfg, TRT)
            path = cache_dir / cfg.name / model_version
            options = {
                "device_id": device_id,
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(path),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(path),
                "trt_fp16_enable": str(params.get("precision_mode", "").upper() == "FP16"),
            }
            if "max_workspace_size_bytes" in params:
                options["trt_max_workspace_size"] = params["max_workspace_size_bytes"]
            profiles = trt_profile_shapes(cfg, cfg.max_batch_size)
            if profiles:
                options.update(profiles)
        elif name == CUDA:
            options = {"device_id": device_id}
            if cfg.optimization.cuda.graphs:
                options["enable_cuda_graph"] = "1"
        plan.append((name, options))
    return ProviderPlan(providers=plan, reason=reason, skipped=skipped)
