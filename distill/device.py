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


def choose_device(requested: str, cuda_available: Optional[bool] = None,
                  bf16_supported: Optional[bool] = None) -> DeviceChoice:
    """auto: CUDA when present (bf16 where the GPU supports it, else fp16), else CPU fp32.

    The two probes are parameters so the decision is testable on a machine without a GPU.
    """
    if cuda_available is None or bf16_supported is None:
        import torch

        cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
        if bf16_supported is None:
            bf16_supported = bool(cuda_available and torch.cuda.is_bf16_supported())
    if requested == "cuda" and not cuda_available:
        raise DistillError("device: cuda was requested but no CUDA GPU is visible (torch.cuda.is_available() is "
                           "False). Use device: auto or cpu, or install a CUDA build of torch on a GPU machine.")
    if requested == "cpu" or not cuda_available:
        return DeviceChoice("cpu")
    return DeviceChoice("cuda", bf16=bool(bf16_supported), fp16=not bf16_supported)
