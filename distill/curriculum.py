"""Curriculum learning as a train sampler: difficulty scorers and pacing functions, both registered.

The sampler orders the pool from easy to hard by a score and, at training progress p in [0, 1],
draws each batch from the easiest pacing(p) fraction. `scorer: none` is the ablation (plain
shuffling). `self-paced` re-scores by the student's own current loss at every epoch start.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from distill.registry import Registry

SCORERS: Registry = Registry("curriculum scorer")
PACING: Registry = Registry("pacing function")


def _probs(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@SCORERS.register("margin")
def margin(teacher_logits: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """1 - (top-1 minus top-2 teacher probability): a confident teacher means an easy example."""
    p = np.sort(_probs(teacher_logits), axis=-1)
    return 1.0 - (p[:, -1] - p[:, -2])


@SCORERS.register("entropy")
def entropy(teacher_logits: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    p = _probs(teacher_logits)
    return -(p * np.log(np.clip(p, 1e-12, 1))).sum(-1)


@SCORERS.register("length")
def length(teacher_logits: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    return np.asarray(lengths, dtype=np.float64)


@SCORERS.register("self-paced")
def self_paced(teacher_logits: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    # Before the student has a loss of its own, start from the teacher's view; the sampler's
    # owner replaces the scores at each epoch start (see DistillTrainer).
    return margin(teacher_logits, lengths)


@PACING.register("linear")
def linear(p: float, start: float, ramp: float) -> float:
    return start + (1 - start) * min(1.0, p / ramp)


@PACING.register("root")
def root(p: float, start: float, ramp: float) -> float:
    """Platanios et al. 2019: competence grows fast early, then slows."""
    return start + (1 - start) * math.sqrt(min(1.0, p / ramp))


@PACING.register("step")
def step(p: float, start: float, ramp: float) -> float:
    """Four equal steps from start to the whole pool."""
    return start + (1 - start) * math.floor(4 * min(1.0, p / ramp)) / 4


class CurriculumSampler:
    """Yields len(pool) indices per epoch, batch by batch, from the easiest pacing(progress) share."""

    def __init__(self, scores: np.ndarray, batch_size: int, epochs: float, pacing: str, start: float,
                 ramp: float, seed: int):
        self.scores = np.asarray(scores, dtype=np.float64)
        self.batch_size = batch_size
        self.epochs = max(epochs, 1e-9)
        self.pace = PACING.get(pacing)
        self.start, self.ramp = start, ramp
        self.seed = seed
        self.epoch = 0
        self.pool_sizes: list[int] = []  # what each batch drew from (for tests and the log)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def update_scores(self, scores: np.ndarray) -> None:
        self.scores = np.asarray(scores, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self) -> Iterator[int]:
        n = len(self.scores)
        rng = np.random.default_rng(self.seed + self.epoch)
        order = np.argsort(self.scores, kind="stable")
        batches = math.ceil(n / self.batch_size)
        epoch = self.epoch
        self.epoch += 1
        for b in range(batches):
            progress = (epoch + b / batches) / self.epochs
            k = int(np.clip(round(self.pace(min(progress, 1.0), self.start, self.ramp) * n), min(self.batch_size, n), n))
            self.pool_sizes.append(k)
            size = min(self.batch_size, n - b * self.batch_size)
            yield from rng.choice(order[:k], size=size, replace=False).tolist()


def make_sampler(cfg: Any, teacher_logits: np.ndarray, lengths: Sequence[int], batch_size: int, epochs: float,
                 seed: int) -> Optional[CurriculumSampler]:
    """None for `scorer: none` (the Trainer's own random sampler)."""
    if cfg.scorer == "none":
        return None
    scores = SCORERS.get(cfg.scorer)(teacher_logits, lengths)
    return CurriculumSampler(scores, batch_size, epochs, cfg.pacing, cfg.start, cfg.ramp, seed)
