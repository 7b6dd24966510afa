"""The baselines stage (`baselines.setfit: true`): reference models trained on the run's own split and
scored on its test split, so a report puts them beside ours at equal data.

- `setfit`: SetFit with teacher.model as its body, on the labelled training rows.
- `setfit_distilled`: SetFit's DistillationTrainer from that model into student.model (when the
  student is a pretrained model) on the run's unlabelled transfer texts, the texts our student's
  soft labels come from.

Writes baselines/summary.json: {"rows": {name: {accuracy, macro_f1, n, confusion, wall_s, model}}}.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from distill.data.prepare import read_labels, read_split
from distill.training import classification_metrics

log = logging.getLogger(__name__)


def _texts(path: Path) -> list[str]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def baselines_stage(ctx: Any, out: Path) -> None:
    from distill import setfit_runs

    r, b = ctx.recipe, ctx.recipe.baselines
    names = read_labels(ctx.data_dir)
    train, test = read_split(ctx.data_dir, "train"), read_split(ctx.data_dir, "test")
    gold = [row["label"] for row in test]
    test_texts = [row["text"] for row in test]
    rows: dict[str, Any] = {}

    log.info("baselines: SetFit with %s on %d labelled rows, %d pair iterations", r.teacher.model, len(train),
             b.setfit_iterations)
    model, wall = setfit_runs.train_setfit(r.teacher.model, [row["text"] for row in train],
                                           [row["label"] for row in train], iterations=b.setfit_iterations, seed=r.seed)
    rows["setfit"] = {**classification_metrics(gold, setfit_runs.predict(model, test_texts), len(names)),
                      "model": r.teacher.model, "wall_s": round(wall, 1)}
    log.info("baselines: SetFit test accuracy %.4f (%.0f s)", rows["setfit"]["accuracy"], wall)

    unlabelled = _texts(ctx.data_dir / "transfer.jsonl")
    if r.student.init == "pretrained" and unlabelled:
        log.info("baselines: SetFit distillation into %s on %d unlabelled texts, %d steps", r.student.model,
                 len(unlabelled), b.setfit_distill_steps)
        student, wall = setfit_runs.distill_setfit(model, r.student.model, unlabelled,
                                                   max_steps=b.setfit_distill_steps, seed=r.seed)
        rows["setfit_distilled"] = {**classification_metrics(gold, setfit_runs.predict(student, test_texts), len(names)),
                                    "model": r.student.model, "wall_s": round(wall, 1)}
        log.info("baselines: SetFit's distilled student test accuracy %.4f (%.0f s)",
                 rows["setfit_distilled"]["accuracy"], wall)
    else:
        log.info("baselines: no SetFit distillation row (it needs student.init: pretrained and unlabelled transfer texts)")
    (out / "summary.json").write_text(json.dumps({"test_n": len(test), "rows": rows}, indent=2) + "\n")
