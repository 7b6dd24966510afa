"""Deterministic fault injection for tests: DISTILL_FAULT=STAGE:POINT kills this process with
SIGKILL when that point is reached (never by timing). Points: `start`, `end` (inside a stage, before
its folder is renamed into place) and `step=N` (after optimizer step N of teacher/student training).
`oom-above=N` (or `oom-above=N@S`, from optimizer step S on) instead raises the error CUDA raises
when memory runs out, at a training step of a per-device batch larger than N (distill/batch_fit.py
then halves the batch).
"""

from __future__ import annotations

import os
import signal

ENV = "DISTILL_FAULT"


def maybe_kill(stage: str, point: str) -> None:
    if os.environ.get(ENV) == f"{stage}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_oom(stage: str, batch_size: int, step: int) -> None:
    """STAGE:oom-above=N (or oom-above=N@S: from optimizer step S on) raises CUDA's out-of-memory error."""
    value = os.environ.get(ENV, "")
    prefix = f"{stage}:oom-above="
    if not value.startswith(prefix):
        return
    limit, _, from_step = value[len(prefix):].partition("@")
    if batch_size > int(limit) and step >= int(from_step or 0):
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {batch_size} "
                                     f"(injected by {ENV}={value})")


def step_callback(stage: str):
    """A TrainerCallback that calls maybe_kill(stage, 'step=N') after each optimizer step (and
    maybe_oom before each)."""
    from transformers import TrainerCallback

    class FaultAtStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
            maybe_oom(stage, args.per_device_train_batch_size, state.global_step)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
            maybe_kill(stage, f"step={state.global_step}")

    return FaultAtStep()
