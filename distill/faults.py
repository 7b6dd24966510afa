"""Deterministic fault injection for tests: DISTILL_FAULT=STAGE:POINT kills this process with
SIGKILL when that point is reached (never by timing). Points: `start`, `end` (inside a stage, before
its folder is renamed into place) and `step=N` (after optimizer step N of teacher/student training).
"""

from __future__ import annotations

import os
import signal

ENV = "DISTILL_FAULT"


def maybe_kill(stage: str, point: str) -> None:
    if os.environ.get(ENV) == f"{stage}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def step_callback(stage: str):
    """A TrainerCallback that calls maybe_kill(stage, 'step=N') after each optimizer step."""
    from transformers import TrainerCallback

    class FaultAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
            maybe_kill(stage, f"step={state.global_step}")

    return FaultAtStep()
