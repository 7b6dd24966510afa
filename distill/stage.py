"""What a stage of `distill run` is, and what it is handed: `Stage` (the table entry) and `Context`.

A stage is a function `(ctx, out_dir) -> None` plus the inputs that decide whether a previous output
can be reused (the recipe sections it reads, the output digests of the stages it depends on, a
fingerprint, a revision). The table itself is distill/stages.py; the loop that runs it,
distill/pipeline.py. Stages read upstream outputs through the Context's accessors, not through
paths of their own, so the run directory's layout is written down once (docs/architecture.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from distill.recipe import Recipe
from distill.rundir import RunDir

METRICS = "metrics.json"  # a model stage's figures (teacher/, student/): test, validation, max_length, ...


@dataclass
class Context:
    recipe: Recipe
    run: RunDir
    # Extra transformers TrainerCallbacks for the Trainer of the stage being run (teacher, student
    # append them to their own); run_recipe(callbacks={stage: [...]}) gives each stage its own.
    callbacks: list[Any] = field(default_factory=list)

    @property
    def path(self) -> Path:
        """The run directory."""
        return self.run.path

    @property
    def data_dir(self) -> Path:
        """The data stage's output: train/validation/test.jsonl, labels.json, transfer/augmented.jsonl."""
        return self.run.path / "data"

    def output(self, stage: str) -> Path:
        """The folder a completed upstream stage wrote."""
        return self.run.path / stage

    def metrics(self, stage: str) -> dict[str, Any]:
        """An upstream model stage's metrics.json (teacher, student)."""
        return read_metrics(self.run.path, stage)

    def checkpoints(self, stage: str) -> Path:
        """Where a training stage keeps the checkpoints of an unfinished attempt."""
        return self.run.path / "checkpoints" / stage

    @property
    def train_log(self) -> Path:
        return self.run.path / "logs" / "train.jsonl"

    def inputs_digest(self, stage: str) -> str:
        """The digest of the stage's inputs as recorded for the attempt now running (checkpoints carry it)."""
        return self.run.read()["stages"].get(stage, {}).get("inputs_sha256", "")


def read_metrics(run_dir: Path, stage: str) -> dict[str, Any]:
    """run_dir/stage/metrics.json, for code outside a running stage (summary, advice, evaluate)."""
    return json.loads((Path(run_dir) / stage / METRICS).read_text())


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Optional[Callable[[Context, Path], None]]
    # Recipe sections whose values the stage reads: top-level names, or dotted paths to one field
    # ("data.label_noise") where a stage reads only part of a section.
    sections: tuple[str, ...]
    # Stages whose outputs the stage reads.
    after: tuple[str, ...] = ()
    description: str = ""
    # Anything else that decides the output (e.g. the sha256 of a user's data file).
    fingerprint: Optional[Callable[[Recipe], Any]] = None
    # Where a stage reads only some of an upstream stage's files: {stage: (file, ...)}. Only those
    # files' digests then decide reuse (the teacher does not retrain when augmentation changes).
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Raise it when a code change alters what the stage produces from the same inputs (as seeding
    # the new classifier head did): `--resume` then rebuilds the stage instead of reusing an output
    # the current code would not make. Revision 1 adds nothing to the inputs, so runs made before
    # revisions existed keep their digests.
    revision: int = 1
    # Stages a recipe may leave out (e.g. baselines): run only when when(recipe) is true; otherwise
    # neither run nor recorded, so runs made before the stage existed resume unchanged.
    when: Optional[Callable[[Recipe], bool]] = None

    def wanted(self, recipe: Recipe) -> bool:
        return self.when is None or bool(self.when(recipe))
