"""Which device and precision a run trains on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from distill.errors import DistillError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu" | "cuda"
    bf16: bool = False
    fp16: bool = False

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of bf16 matrix units (Zen 4+, Sapphire Rapids+)


def cpu_bf16_units(cpuinfo: str | None = None) -> list[str]:
    """The bf16 matrix-unit flags this CPU reports (empty: bf16 is emulated, slower than fp32)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [f for f in CPU_BF16_FLAGS if f in flags]


def choose_device(requested: str, cuda_available: Optional[bool] = None,
                  bf16_supported: Optional[bool] = None, cpu_units: Optional[list[str]] = None, *,
                  cpu_autocast: bool = False) -> DeviceChoice:
    """auto: CUDA when present (bf16 where the GPU supports it, else fp16), else the CPU in fp32, or,
    for a caller that trains under the Trainer's autocast (cpu_autocast: the classification teacher
    and student), in bf16 where the CPU has bf16 matrix units (avx512_bf16, AMX).
    cpu: the CPU in fp32. cpu-bf16: the CPU under bf16 autocast (the Trainer's bf16 on CPU), units or not.

    The probes are parameters so the decision is testable on a machine without a GPU.
    """
    if requested == "cpu-bf16":
        units = cpu_bf16_units() if cpu_units is None else cpu_units
        if not units:
            log.warning("device: cpu-bf16 on a CPU without bf16 matrix units (no %s in /proc/cpuinfo): bf16 is "
                        "emulated here and trains slower than fp32; use device: cpu", " or ".join(CPU_BF16_FLAGS))
        return DeviceChoice("cpu", bf16=True)
    if cuda_available is None or bf16_supported is None:
        import torch

        cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
        if bf16_supported is None:
            bf16_supported = bool(cuda_available and torch.cuda.is_bf16_supported())
    if requested == "cuda" and not cuda_available:
        raise DistillError("device: cuda was requested but no CUDA GPU is visible (torch.cuda.is_available() is "
                           "False). Use device: auto or cpu, or install a CUDA build of torch on a GPU machine.")
    if requested == "cpu":
        return DeviceChoice("cpu")
    if not cuda_available:
        units = (cpu_bf16_units() if cpu_units is None else cpu_units) if cpu_autocast else []
        return DeviceChoice("cpu", bf16=bool(units))
    return DeviceChoice("cuda", bf16=bool(bf16_supported), fp16=not bf16_supported)
