"""The stage table of `distill run`. `fn=None` marks a stage not built yet.

Stage functions are imported lazily (through _lazy) so that listing the stages costs nothing.
`task: causal-lm` runs the same five stages with the functions of distill/causal_lm_stages.py
(the recipe picks them when the stage runs), so a classification run's stage inputs, and with
them what `--resume` reuses, are exactly what they were before the task existed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from distill.stage import Stage


def _lazy(module: str, name: str) -> Callable[[Any, Path], None]:
    def call(ctx: Any, out: Path) -> None:
        return getattr(importlib.import_module(module), name)(ctx, out)

    call.__name__ = name
    return call


def _by_task(module: str, name: str) -> Callable[[Any, Path], None]:
    classify = _lazy(module, name)
    causal = _lazy("distill.causal_lm_stages", name)

    def call(ctx: Any, out: Path) -> None:
        return (causal if ctx.recipe.task == "causal-lm" else classify)(ctx, out)

    call.__name__ = name
    return call


def _data_fingerprint(recipe: Any) -> Any:
    from distill.data.prepare import source_fingerprint

    return source_fingerprint(recipe.data)


def _teacher_fingerprint(recipe: Any) -> Any:
    from distill.teacher import teacher_fingerprint

    if recipe.task == "causal-lm":  # the LM teacher stage also reads the section lm
        from distill.causal_lm_stages import lm_fingerprint

        return {"task": recipe.task, "lm": lm_fingerprint(recipe), "model": teacher_fingerprint(recipe)}
    return teacher_fingerprint(recipe)


STAGES: list[Stage] = [
    Stage("data", _lazy("distill.data.prepare", "data_stage"), ("data",), (), "load, clean, split, few-shot, augment",
          fingerprint=_data_fingerprint,
          revision=2),  # 2: a given test split keeps every row (duplicates and conflicts reported, not dropped)
    Stage("teacher", _by_task("distill.teacher", "teacher_stage"),
          ("teacher", "device", "data.label_noise", "data.label_noise_threshold"), ("data",),
          "fine-tune (or few-shot prompt) the teacher", fingerprint=_teacher_fingerprint,
          reads={"data": ("train.jsonl", "validation.jsonl", "test.jsonl", "labels.json")}),
    Stage("soft_labels", _by_task("distill.soft_labels", "soft_labels_stage"), (), ("data", "teacher"),
          "teacher logits on the student's pool"),
    Stage("student", _by_task("distill.student", "student_stage"), ("data", "student", "distill", "device"),
          ("data", "teacher", "soft_labels"), "distill the student",
          revision=2),  # 2: label_noise: drop matches flagged rows by text, not by row number
    Stage("evaluate", _by_task("distill.evaluate", "evaluate_stage"), ("data",), ("teacher", "student"),
          "test-split metrics beside the TF-IDF floor"),
]
