"""Checkpoints that make a killed training stage resume inside the stage.

- `WallClockCheckpoint(every_s)`: a TrainerCallback asking the Trainer for a checkpoint whenever
  every_s seconds have passed since the last one (on top of the per-epoch saves), so a kill costs
  minutes, not a stage. `checkpoint_every_s()` is the interval: DEFAULT_EVERY_S, or the environment
  variable DISTILL_CHECKPOINT_EVERY_S (<= 0 turns the wall clock off).
- `resume_checkpoint(folder, inputs_digest)`: the checkpoint to resume from (the last complete one
  written for the same stage inputs), `prepare_checkpoints` the same plus a fresh folder otherwise.
- `EpochStartRng(folder)`: a TrainerCallback that makes a run resumed mid-epoch draw that epoch's
  batches in the order the killed run drew them (see its docstring); pass it with the wall clock.
- `trim_train_log(path, stage, step)`: drops a killed attempt's log rows past the step the stage
  resumes from, so logs/train.jsonl reads as one run.

Like the rest of distill, transformers is imported only when a callback is built.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from distill.training import last_checkpoint

log = logging.getLogger(__name__)

DEFAULT_EVERY_S = 300.0
ENV_EVERY_S = "DISTILL_CHECKPOINT_EVERY_S"
MARKER = "inputs.sha256"  # the digest of the stage inputs the checkpoints were written for
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last into a checkpoint folder


def checkpoint_every_s() -> float:
    """Seconds between wall-clock checkpoints: $DISTILL_CHECKPOINT_EVERY_S, else DEFAULT_EVERY_S."""
    raw = os.environ.get(ENV_EVERY_S, "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        return float(raw)
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %.0f", ENV_EVERY_S, raw, DEFAULT_EVERY_S)
        return DEFAULT_EVERY_S


@functools.lru_cache(maxsize=None)
def _wall_clock_class() -> type:
    from transformers import TrainerCallback

    class WallClockCheckpoint(TrainerCallback):
        """Sets control.should_save after an optimizer step once every_s seconds have passed since
        training began or since the last save (any save: per-epoch ones reset the clock too)."""

        def __init__(self, every_s: float):
            self.every_s = float(every_s)
            self._last = time.monotonic()

        def due(self) -> bool:
            return self.every_s > 0 and time.monotonic() - self._last >= self.every_s

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
            self._last = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.every_s > 0 and _agreed(self.due(), args):
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            self._last = time.monotonic()

    return WallClockCheckpoint


@functools.lru_cache(maxsize=None)
def _epoch_rng_class() -> type:
    from transformers import TrainerCallback

    class EpochStartRng(TrainerCallback):
        """Keeps the random state each epoch began with (folder/rng-epoch-E.pth, written before any
        checkpoint of epoch E) and puts it back when a resumed run begins epoch E again.

        A sampler drawing from the global torch RNG when its epoch starts (the Trainer's
        length-grouped sampler, group_by_length) orders the epoch by the RNG state at that moment.
        The Trainer restores a checkpoint's RNG state only after the resumed epoch's first batch is
        drawn, so without this a run resumed mid-epoch would skip the batches of another order.
        Restoring at on_epoch_begin is harmless elsewhere: the checkpoint's state replaces it before
        the first training step.
        """

        def __init__(self, folder: Path):
            self.folder = Path(folder)

        def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
            import random

            import numpy as np
            import torch

            path = self.folder / f"rng-epoch-{int(state.epoch or 0)}.pth"
            if path.exists():
                saved = torch.load(path, weights_only=False)  # written by this class, below
                random.setstate(saved["python"])
                np.random.set_state(saved["numpy"])
                torch.random.set_rng_state(saved["cpu"])
            elif state.is_world_process_zero:
                self.folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                torch.save({"python": random.getstate(), "numpy": np.random.get_state(),
                            "cpu": torch.random.get_rng_state()}, tmp)
                os.replace(tmp, path)

    return EpochStartRng


def _agreed(flag: bool, args: Any) -> bool:
    """Rank 0's decision on every rank: a checkpoint save has collective steps, so all ranks of a
    multi-process run must save at the same step, and their clocks differ."""
    from distill.distributed import world_size

    if world_size() <= 1:
        return flag
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=args.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def __getattr__(name: str) -> Any:  # the callbacks are built on first use (lazy transformers import)
    if name == "WallClockCheckpoint":
        return _wall_clock_class()
    if name == "EpochStartRng":
        return _epoch_rng_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def checkpoint_step(checkpoint: str | Path) -> int:
    """The global step of a Trainer checkpoint folder (checkpoint-N)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def _complete(checkpoint: str) -> bool:
    try:
        json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
        return True
    except (OSError, ValueError):
        return False


def resume_checkpoint(folder: Path, inputs_digest: str) -> Optional[str]:
    """The last complete Trainer checkpoint in folder written for these stage inputs, else None.

    A checkpoint folder the kill interrupted mid-write (no readable trainer_state.json, the file the
    Trainer writes last) is removed: the one before it, kept until the new one is complete, is used.
    """
    while True:
        found = last_checkpoint(folder, inputs_digest)
        if found is None or _complete(found):
            return found
        log.warning("removing %s: a checkpoint the kill interrupted while it was written", found)
        shutil.rmtree(found, ignore_errors=True)


def prepare_checkpoints(folder: Path, inputs_digest: str) -> Optional[str]:
    """The checkpoint to resume from; without one, folder is emptied and marked with the digest."""
    found = resume_checkpoint(folder, inputs_digest)
    if found is None:
        reset_checkpoints(folder, inputs_digest)
    return found


def claim_checkpoints(folder: Path, inputs_digest: str) -> None:
    """Keep folder only if it was written for these stage inputs; else start it afresh."""
    marker = folder / MARKER
    if not marker.exists() or marker.read_text().strip() != inputs_digest:
        reset_checkpoints(folder, inputs_digest)


def claim_checkpoints_on_rank_zero(folder: Path, inputs_digest: str) -> None:
    """claim_checkpoints by rank 0 of a multi-process run while the other ranks wait (a training stage,
    which every rank runs)."""
    from distill.distributed import barrier, is_rank_zero

    if is_rank_zero():
        claim_checkpoints(folder, inputs_digest)
    barrier()


def reset_checkpoints(folder: Path, inputs_digest: str, keep: tuple[str, ...] = ()) -> None:
    """An empty checkpoint folder (but for the entries named in keep), marked with the digest of the
    stage inputs it is for."""
    if keep and folder.is_dir():
        for entry in folder.iterdir():
            if entry.name not in keep:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    else:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(inputs_digest)


def enable_checkpoints(args: Any, total_limit: int = 1, at_every_eval: bool = False) -> Any:
    """Turn on per-epoch checkpoints in TrainingArguments built with save=False, keeping the last
    total_limit (plus the best one by metric_for_best_model, which the Trainer never rotates away).
    at_every_eval: a checkpoint at every evaluation instead (every eval_steps where set), so the best
    one is always on disk (`student.keep: best`, best_checkpoint). The Trainer itself loads no best
    model at the end: the stage decides which weights it keeps."""
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy

    steps = at_every_eval and args.eval_strategy == IntervalStrategy.STEPS
    args.save_strategy = SaveStrategy.STEPS if steps else SaveStrategy.EPOCH
    if steps:
        args.save_steps = args.eval_steps
    args.save_total_limit = total_limit
    args.load_best_model_at_end = False
    return args


def best_checkpoint(state: Any) -> Optional[dict[str, Any]]:
    """The evaluation with the best metric_for_best_model in a finished Trainer's state: {"step",
    "epoch", "metric", "checkpoint"}, checkpoint None where that step is the last one (the model holds
    its weights already). None when nothing was evaluated."""
    if state.best_model_checkpoint is None or state.best_metric is None:
        return None
    step = checkpoint_step(state.best_model_checkpoint)
    epoch = next((row["epoch"] for row in state.log_history if row.get("step") == step and "epoch" in row), None)
    return {"step": step, "epoch": epoch, "metric": state.best_metric,
            "checkpoint": None if step == state.global_step else state.best_model_checkpoint}


def trim_train_log(path: Path, stage: str, step: int, start: int = 0) -> int:
    """Drop `stage`'s rows with step > `step` from the JSONL training log at path, at or after byte
    offset `start` (where the resumed training's first attempt began logging; 0 = the whole file).

    A stage resumed from its checkpoint at `step` logs those steps again; without this, the killed
    attempt's rows stay and a plot of the log jumps back. The file is rewritten atomically (a
    temporary file renamed over it). Returns the number of rows dropped.
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not 0 <= start <= len(data) or (start and data[start - 1:start] != b"\n"):
        log.warning("%s: offset %d is not a line start; trimming the whole file", path, start)
        start = 0
    kept, dropped = [], 0
    for line in data[start:].splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by the kill
            dropped += 1
            continue
        if isinstance(row, dict) and row.get("stage") == stage and int(row.get("step", 0)) > step:
            dropped += 1
            continue
        kept.append(line if line.endswith(b"\n") else line + b"\n")
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data[:start] + b"".join(kept))
        os.replace(tmp, path)
        log.info("%s: dropped %d %s rows past step %d (from an earlier attempt at this stage)", path, dropped, stage, step)
    return dropped
