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
from typing import Any, Optional

from distill.data.prepare import read_labels, read_split
from distill.training import classification_metrics

log = logging.getLogger(__name__)


def _texts(path: Path) -> list[str]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def baselines_stage(ctx: Any, out: Path) -> None:
    """Each row, once finished, is kept beside the stage's checkpoints (the SetFit model with it), so a
    stage killed during SetFit's distillation resumes without training SetFit again."""
    import shutil

    from distill import setfit_runs
    from distill.checkpointing import claim_checkpoints

    r, b = ctx.recipe, ctx.recipe.baselines
    names = read_labels(ctx.data_dir)
    train, test = read_split(ctx.data_dir, "train"), read_split(ctx.data_dir, "test")
    gold = [row["label"] for row in test]
    test_texts = [row["text"] for row in test]
    ckpt = ctx.checkpoints("baselines")
    claim_checkpoints(ckpt, ctx.inputs_digest("baselines"))
    rows: dict[str, Any] = {}

    kept = _finished(ckpt / "setfit")
    if kept is not None:
        log.info("baselines: SetFit trained by an earlier attempt; its model reused")
        rows["setfit"] = kept
        model = setfit_runs.load_setfit(str(ckpt / "setfit"))
    else:
        log.info("baselines: SetFit with %s on %d labelled rows, %d pair iterations", r.teacher.model, len(train),
                 b.setfit_iterations)
        model, wall = setfit_runs.train_setfit(r.teacher.model, [row["text"] for row in train],
                                               [row["label"] for row in train], iterations=b.setfit_iterations,
                                               seed=r.seed)
        rows["setfit"] = {**classification_metrics(gold, setfit_runs.predict(model, test_texts), len(names)),
                          "model": r.teacher.model, "wall_s": round(wall, 1)}
        _keep(ckpt / "setfit", model, rows["setfit"])
    log.info("baselines: SetFit test accuracy %.4f (%.0f s)", rows["setfit"]["accuracy"], rows["setfit"]["wall_s"])

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
    shutil.rmtree(ckpt, ignore_errors=True)  # the stage is complete: no resume needs them


ROW = "row.json"  # beside a kept SetFit model: its finished row of the summary


def _finished(folder: Path) -> Optional[dict[str, Any]]:
    return json.loads((folder / ROW).read_text()) if (folder / ROW).exists() else None


def _keep(folder: Path, model: Any, row: dict[str, Any]) -> None:
    """The SetFit model (setfit's own format: body in safetensors, the logistic head as setfit's joblib
    file, written and read only by this stage) and its row, moved into place together."""
    from distill.rundir import staged_dir

    with staged_dir(folder) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / ROW).write_text(json.dumps(row) + "\n")
