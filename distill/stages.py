"""The stage table of `distill run` (DESIGN.md "Stages"). `fn=None` marks a stage not built yet."""

from __future__ import annotations

from distill.data.prepare import data_stage, source_fingerprint
from distill.pipeline import Stage

STAGES: list[Stage] = [
    Stage("data", data_stage, ("data",), (), "load, clean, split, few-shot, augment",
          fingerprint=lambda r: source_fingerprint(r.data)),
    Stage("teacher", None, ("data", "teacher", "device"), ("data",), "fine-tune the teacher"),
    Stage("soft_labels", None, ("teacher",), ("data", "teacher"), "teacher logits on the transfer pool"),
    Stage("student", None, ("student", "distill", "device"), ("data", "soft_labels"), "distill the student"),
    Stage("evaluate", None, ("teacher", "student"), ("teacher", "student"), "test-split metrics"),
]
