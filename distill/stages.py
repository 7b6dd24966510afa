"""The stage table of `distill run`. `fn=None` marks a stage not built yet.

Stage functions belong to the recipe's task (distill/tasks.py: classification, causal-lm) and are
chosen and imported when the stage runs, so listing the stages costs nothing. Both tasks run the same
five stages with the same recipe inputs; the task adds only the teacher's fingerprint, so a
classification run's stage inputs, and with them what `--resume` reuses, are exactly what they were
before the task existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from distill.stage import Stage
from distill.tasks import task_of


def _by_task(name: str) -> Callable[[Any, Path], None]:
    """Stage `name`'s function for the recipe's task (distill/tasks.py), chosen and imported when it runs."""

    def call(ctx: Any, out: Path) -> None:
        return task_of(ctx.recipe).stage(name)(ctx, out)

    call.__name__ = f"{name}_stage"  # the name of the function in both tasks
    return call


def _data_fingerprint(recipe: Any) -> Any:
    from distill.data.prepare import source_fingerprint

    return source_fingerprint(recipe.data)


def _baselines(ctx: Any, out: Path) -> None:
    from distill.baselines import baselines_stage

    return baselines_stage(ctx, out)


def _teacher_fingerprint(recipe: Any) -> Any:
    return task_of(recipe).teacher_fingerprint(recipe)


STAGES: list[Stage] = [
    Stage("data", _by_task("data"), ("data",), (), "load, clean, split, few-shot, augment",
          fingerprint=_data_fingerprint,
          revision=2),  # 2: a given test split keeps every row (duplicates and conflicts reported, not dropped)
    Stage("teacher", _by_task("teacher"),
          ("teacher", "device", "data.label_noise", "data.label_noise_threshold"), ("data",),
          "fine-tune (or few-shot prompt) the teacher", fingerprint=_teacher_fingerprint,
          reads={"data": ("train.jsonl", "validation.jsonl", "test.jsonl", "labels.json")},
          revision=2),  # 2: keeps its training rows' logits (train_logits/); passes after bf16 training run in fp32
    Stage("soft_labels", _by_task("soft_labels"), (), ("data", "teacher"),
          "teacher logits on the student's pool"),
    Stage("student", _by_task("student"), ("data", "student", "distill", "device"),
          ("data", "teacher", "soft_labels"), "distill the student",
          revision=4),  # 2: label_noise: drop matches flagged rows by text, not by row number
          # 3: evaluation and rounds after bf16 training run in fp32
          # 4: hidden losses of a pretrained or config student map its layers uniformly onto the teacher's;
          #    the teacher's pass for them batches texts by length
    Stage("evaluate", _by_task("evaluate"), ("data",), ("teacher", "student"),
          "test-split metrics beside the TF-IDF floor"),
    Stage("baselines", _baselines, ("baselines", "teacher.model", "student.init", "student.model"), ("data",),
          "SetFit and its own distillation on the same split (baselines.setfit)",
          reads={"data": ("train.jsonl", "test.jsonl", "transfer.jsonl", "labels.json")},
          when=lambda recipe: recipe.task == "classification" and recipe.baselines.setfit),
]
