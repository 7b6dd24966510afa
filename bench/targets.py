"""Where a measurement runs: a target is data (name, cores, threads, description).

Mobile targets emulate a phone's big-core budget on this host by restricting cores and threads;
they say nothing about a phone's memory bandwidth or instruction set, and the report says so.
ARM targets (qemu_cpu set) run the exported .onnx files with aarch64 onnxruntime under qemu
(export/arm64.py): a correctness check against this host, never a latency.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

from distill.arm64_env import PROFILES as ARM_PROFILES
from distill.errors import DistillError


@dataclass(frozen=True)
class Target:
    name: str
    cores: tuple[int, ...]  # CPU ids the worker is pinned to
    threads: int  # intra-op threads (ONNX Runtime) / torch.set_num_threads
    description: str = ""
    spin: bool = True  # ORT intra-op spinning; off for mobile profiles (a phone scheduler parks idle cores)
    emulated: bool = False  # a profile emulated on this host, not the device itself
    qemu_cpu: Optional[str] = None  # set: aarch64 onnxruntime under qemu with this QEMU_CPU; accuracy only

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cores"] = list(self.cores)
        return d


def host_cores() -> tuple[int, ...]:
    """The cores this process may run on (respects cgroups / an outer taskset)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def builtin_targets() -> dict[str, Target]:
    cores = host_cores()
    return {
        "cpu": Target("cpu", cores, len(cores), f"all {len(cores)} cores of this host, one thread per core"),
        "mobile-2t": Target("mobile-2t", cores[:2], min(2, len(cores)),
                            "phone-class budget: 2 big cores, 2 threads, no spinning (emulated on this host)",
                            spin=False, emulated=True),
        "mobile-1t": Target("mobile-1t", cores[:1], 1,
                            "phone-class budget: 1 big core, 1 thread, no spinning (emulated on this host)",
                            spin=False, emulated=True),
        **{name: Target(name, cores, 1, f"aarch64 onnxruntime under qemu user-mode, QEMU_CPU={cpu} ({what}); "
                                        "label agreement with this host and accuracy, no latency",
                        spin=False, emulated=True, qemu_cpu=cpu)
           for name, cpu, what in (("arm64-emulated", "max", ARM_PROFILES["max"]),
                                   ("arm64-emulated-little", "cortex-a53", ARM_PROFILES["cortex-a53"]))},
    }


def _from_recipe(t: Any, available: tuple[int, ...]) -> Target:
    """A recipe `bench.custom_targets` entry (distill.recipe.Target) -> Target."""
    cores = tuple(t.cores) if t.cores else available
    missing = sorted(set(cores) - set(available))
    if missing:
        raise DistillError(f"Custom target {t.name!r} pins to cores {missing}, which this process cannot use "
                           f"(available: {list(available)}). Edit bench.custom_targets in the recipe.")
    return Target(t.name, cores, t.threads, t.description or f"custom: cores {list(cores)}, {t.threads} threads",
                  spin=True, emulated=False)


def resolve_targets(names: Iterable[str], custom: Iterable[Any] = ()) -> list[Target]:
    """Names -> targets; custom ones (recipe bench.custom_targets) override built-ins of the same name."""
    known = builtin_targets()
    available = host_cores()
    for t in custom:
        known[t.name] = _from_recipe(t, available)
    out: list[Target] = []
    for n in names:
        if n not in known:
            raise DistillError(f"Unknown bench target {n!r}. Valid targets: {', '.join(known)}. Define more in the "
                               "recipe under bench.custom_targets (name, cores, threads, description).")
        if known[n] not in out:
            out.append(known[n])
    return out
