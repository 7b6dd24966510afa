"""The stage table of `distill run` (DESIGN.md "Stages"). `fn=None` marks a stage not built yet.

Stage functions are imported lazily (through _lazy) so that listing the stages costs nothing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from distill.pipeline import Stage


def _lazy(module: str, name: str) -> Callable[[Any, Path], None]:
    def call(ctx: Any, out: Path) -> None:
        return getattr(importlib.import_module(module), name)(ctx, out)

    call.__name__ = name
    return call


def _data_fingerprint(recipe: Any) -> Any:
    from distill.data.prepare import source_fingerprint

    return source_fingerprint(recipe.data)


def _teacher_fingerprint(recipe: Any) -> Any:
    from distill.teacher import teacher_fingerprint

    return teacher_fingerprint(recipe)


STAGES: list[Stage] = [
    Stage("data", _lazy("distill.data.prepare", "data_stage"), ("data",), (), "load, clean, split, few-shot, augment",
          fingerprint=_data_fingerprint),
    Stage("teacher", _lazy("distill.teacher", "teacher_stage"),
          ("teacher", "device", "data.label_noise", "data.label_noise_threshold"), ("data",),
          "fine-tune (or few-shot prompt) the teacher", fingerprint=_teacher_fingerprint,
          reads={"data": ("train.jsonl", "validation.jsonl", "test.jsonl", "labels.json")}),
    Stage("soft_labels", _lazy("distill.soft_labels", "soft_labels_stage"), (), ("data", "teacher"),
          "teacher logits on the student's pool"),
    Stage("student", _lazy("distill.student", "student_stage"), ("data", "student", "distill", "device"),
          ("data", "teacher", "soft_labels"), "distill the student"),
    Stage("evaluate", _lazy("distill.evaluate", "evaluate_stage"), ("data",), ("teacher", "student"),
          "test-split metrics beside the TF-IDF floor"),
]
