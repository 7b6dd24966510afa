"""The machine block of a report: CPU model, cores, instruction sets, library versions."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path
from typing import Any

# cpuinfo flag -> the name reports use. amx_int8 / amx_tile are the int8 tile units (Sapphire Rapids+);
# asimddp (dot product) and i8mm are the ARM int8 paths ONNX Runtime uses.
_ISA_FLAGS = {
    "avx2": ("avx2",), "avx512f": ("avx512f",), "avx512_vnni": ("avx512_vnni",), "avx_vnni": ("avx_vnni",),
    "amx": ("amx_int8", "amx_tile"), "neon": ("asimd", "neon"), "dotprod": ("asimddp",), "i8mm": ("i8mm",),
}
_LIBRARIES = ["edge-distill", "torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "onnx", "numpy",
              "matplotlib"]


def _cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, flags


def isa(flags: set[str]) -> list[str]:
    return [name for name, aliases in _ISA_FLAGS.items() if any(a in flags for a in aliases)]


def quantization_preset(isa_list: list[str]) -> str:
    """The AutoQuantizationConfig preset optimum would pick for this host."""
    if "avx512_vnni" in isa_list:
        return "avx512_vnni"
    if "neon" in isa_list or platform.machine() in ("aarch64", "arm64"):
        return "arm64"
    if "avx512f" in isa_list:
        return "avx512"
    return "avx2"


def machine_info(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    try:
        model, flags = _cpuinfo(cpuinfo_path.read_text())
    except OSError:
        model, flags = "", set()
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - psutil may not know the topology in a container
        physical = None
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    found = isa(flags)
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "isa": found,
        "quantization_preset": quantization_preset(found),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
    }
