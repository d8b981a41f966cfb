"""What a result was measured on: absolute times mean nothing without the machine and the versions."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import sys
from pathlib import Path
from typing import Any

from tensorwire.server.affinity import usable_cpus

PACKAGES = ("tensorwire", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "transformers", "numpy", "grpcio",
            "protobuf")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")


def _cpu_details() -> dict[str, Any]:
    """Family/model, the SIMD flags the kernels use, and whether this is a virtual machine."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:
                    break   # the first processor is enough
                continue
            fields.setdefault(key.strip().lower(), value.strip())
    flags = set(fields.get("flags", fields.get("features", "")).split())
    return {"cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
            "simd": [f for f in SIMD_FLAGS if f in flags], "virtualized": "hypervisor" in flags}


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in PACKAGES:
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def describe() -> dict[str, Any]:
    """CPU model, cores, memory, OS, load average, package versions, ONNX Runtime providers."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        **_cpu_details(),
        "cores_usable": usable_cpus(),
        "cores_host": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python_executable": sys.executable,
        "versions": versions(),
    }
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return info


def one_line(info: dict[str, Any]) -> str:
    v = info.get("versions", {})
    simd = ", ".join(info.get("simd", []))
    vm = "; virtual machine" if info.get("virtualized") else ""
    detail = f" [family/model {info['cpu_family_model']}; {simd}{vm}]" if "cpu_family_model" in info else ""
    return (f"{info.get('cpu')}{detail} ({info.get('cores_usable')} usable cores), {info.get('memory_gb')} GB RAM, "
            f"{info.get('os')}; Python {v.get('python')}, torch {v.get('torch', '-')}, "
            f"onnxruntime {v.get('onnxruntime', v.get('onnxruntime-gpu', '-'))}, grpcio {v.get('grpcio', '-')}")
