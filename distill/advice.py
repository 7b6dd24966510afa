"""Plain-language advice from a finished run's files: where the figures say the defaults did not
fit the data, and the exact `--set` to try. Reads only; the CLI prints it under the summary.

Each rule looks at one thing a user would otherwise have to notice in the numbers: a bag-of-words
model as good as the networks, a teacher that was still improving when it stopped, a student whose
validation score peaked before its last weights, classes a model never predicts, a student "above
100% of its teacher", long texts cut at max_length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from distill.training import validation_curve

NEAR_FLOOR = 0.01  # a student within one point of the TF-IDF floor gains little from being a network
F1_GAP = 0.10  # accuracy minus macro-F1 at which small classes are being sacrificed
TRUNCATED_SHARE = 0.2  # fraction of training texts cut at max_length worth a word


@dataclass(frozen=True)
class Advice:
    level: str  # "warn": a figure is worse than it looks; "info": a lever worth trying
    text: str
    try_: Optional[str] = None  # the exact flags to type, e.g. "--set teacher.epochs=4"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _never_predicted(metrics: dict[str, Any], names: list[str]) -> list[str]:
    """Classes with test rows that the model never predicts (a column of zeros in the confusion matrix)."""
    conf = metrics.get("confusion") or []
    if not conf:
        return []
    support = [sum(row) for row in conf]
    predicted = [sum(row[j] for row in conf) for j in range(len(conf))]
    return [names[j] if j < len(names) else str(j) for j in range(len(conf)) if support[j] and not predicted[j]]


def _still_rising(curve: list[dict[str, Any]]) -> bool:
    """The last evaluation was the best and higher than the one before it."""
    values = [c["value"] for c in curve]
    return len(values) >= 2 and values[-1] > values[-2] and values[-1] >= max(values)


def _student_evaluations(run_dir: Path, metric: str) -> list[dict[str, Any]]:
    """The student's validation curve (training.validation_curve) of its last training in logs/train.jsonl:
    a round, or a copied run trained again, starts its steps afresh, and only the last one made the weights."""
    try:
        lines = (run_dir / "logs" / "train.jsonl").read_text().splitlines()
    except OSError:
        return []
    rows: list[dict[str, Any]] = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or row.get("stage") != "student":
            continue
        if rows and int(row.get("step") or 0) < int(rows[-1].get("step") or 0):
            rows = []
        rows.append(row)
    return validation_curve(rows, metric)


def _longer_training(section: str, train: dict[str, Any], epochs: float) -> str:
    steps = int(train.get("steps") or 0)
    if train.get("steps_from_epochs", steps) < steps:  # the min_steps floor set the length
        return f"--set {section}.min_steps={max(2 * steps, 100)}"
    return f"--set {section}.epochs={max(2 * epochs, epochs + 1):g}"


def advise(run_dir: Path, recipe: Any = None) -> list[Advice]:
    """Advice for the run in run_dir (the recipe, when given, names the current epochs)."""
    run_dir = Path(run_dir)
    ev = _read(run_dir / "evaluate" / "summary.json")
    teacher = _read(run_dir / "teacher" / "metrics.json")
    student = _read(run_dir / "student" / "metrics.json")
    names = (_read(run_dir / "data" / "labels.json")).get("names") or []
    rows = ev.get("rows") or {}
    out: list[Advice] = []
    t_epochs = float(getattr(getattr(recipe, "teacher", None), "epochs", 1.0))
    s_epochs = float(getattr(getattr(recipe, "student", None), "epochs", 2.0))
    t_train = teacher.get("train") or {}
    t_rising = _still_rising(t_train.get("validation_curve") or [])

    floor, t_row, s_row = rows.get("tfidf_logreg"), rows.get("teacher"), rows.get("student")
    if floor and s_row:
        gap = s_row["accuracy"] - floor["accuracy"]
        if gap < 0:
            out.append(Advice("warn", f"The TF-IDF + logistic-regression floor ({_pct(floor['accuracy'])}) beats the "
                                      f"student ({_pct(s_row['accuracy'])}): on this data a bag-of-words model, a few MB "
                                      "and well under a millisecond, is the better choice until the networks improve.",
                              _longer_training("student", {}, s_epochs)))
        elif gap < NEAR_FLOOR:
            out.append(Advice("warn", f"The student ({_pct(s_row['accuracy'])}) is within a point of the TF-IDF floor "
                                      f"({_pct(floor['accuracy'])}): the network buys little over a bag-of-words model here."))
    if floor and t_row and t_row["accuracy"] < floor["accuracy"]:
        why = "its validation score was still rising at the last evaluation, so it stopped too early" if t_rising \
            else "it has little to teach the student that the floor does not already know"
        out.append(Advice("warn", f"The teacher ({_pct(t_row['accuracy'])}) is under the TF-IDF floor "
                                  f"({_pct(floor['accuracy'])}): {why}.", _longer_training("teacher", t_train, t_epochs)))
    elif t_rising:
        out.append(Advice("info", "The teacher's validation score was still rising at its last evaluation "
                                  f"({t_train['validation_curve'][-2]['value']:.4f} -> {t_train['validation_curve'][-1]['value']:.4f}); "
                                  "it may gain from longer training.", _longer_training("teacher", t_train, t_epochs)))

    for who, m, section, epochs in (("teacher", teacher, "teacher", t_epochs), ("student", student, "student", s_epochs)):
        test = m.get("test") or {}
        missing = _never_predicted(test, names)
        skewed_gap = test and test.get("accuracy", 0) - test.get("macro_f1", 0) >= F1_GAP
        if missing or skewed_gap:
            what = (f"never predicts {', '.join(map(repr, missing))}" if missing else
                    f"scores macro-F1 {test['macro_f1']:.3f} beside accuracy {test['accuracy']:.3f}")
            train = m.get("train") or {}
            if train.get("class_weights", m.get("class_weights")):  # (the student's are at the top level)
                # already weighted: the small classes need more steps, not weights
                out.append(Advice("warn", f"The {who} {what}, even with balanced class weights: the small classes "
                                          "have too few rows or steps to be learnt.",
                                  _longer_training(section, train, epochs)))
            else:
                out.append(Advice("warn", f"The {who} {what}: the small classes are being sacrificed to the large ones.",
                                  f"--set {section}.class_weights=balanced"))

    base = (_read(run_dir / "baselines" / "summary.json").get("rows") or {})
    for ours, key, what in (("teacher", "setfit", "SetFit with the same body on the same labels"),
                            ("student", "setfit_distilled", "SetFit's own distillation into the same student model")):
        mine, theirs = rows.get(ours), base.get(key)
        if mine and theirs and theirs["accuracy"] > mine["accuracy"]:
            hint = "--set teacher.contrastive_iterations=20" if ours == "teacher" and not t_train.get("contrastive") else None
            out.append(Advice("warn", f"{what} ({_pct(theirs['accuracy'])}) beats our {ours} ({_pct(mine['accuracy'])}) "
                                      "on this split: at equal data, that route is the better one here.", hint))

    kept = student.get("kept_of_teacher")
    if kept and kept > 1.0:
        out.append(Advice("warn", f"The student scores {_pct(kept)} of its teacher: the teacher, not the student, is the "
                                  "weak link, so the ratio says nothing about what distillation kept. Improve the teacher "
                                  "first (see the lines above), then distill again."))

    rounds = student.get("rounds") or [{}]
    if student and "kept" not in rounds[-1]:  # student.keep: last
        metric = student.get("selection_metric") or "accuracy"
        evals = _student_evaluations(run_dir, metric)
        best = max(evals, key=lambda e: e["value"], default=None)
        if best is not None and best["value"] > evals[-1]["value"]:
            out.append(Advice("info", f"The student's validation {metric.replace('_', '-')} peaked at epoch "
                                      f"{best['epoch']:.3g} ({best['value']:.4f}) and ended at {evals[-1]['value']:.4f} "
                                      f"(epoch {evals[-1]['epoch']:.3g}), and the student keeps its last weights. Keeping "
                                      "the best evaluation's may score higher; compare the two runs on test, since "
                                      "validation chose the epoch.", "--set student.keep=best"))

    share = teacher.get("truncated_share")
    if share and share >= TRUNCATED_SHARE:
        longer = min(512, 2 * int(teacher.get("max_length") or 256))
        head_tail = bool(teacher.get("head_tokens"))
        same_cost = "" if head_tail else (
            " Or keep the length and the latency and read each long text's start and end instead of its start alone: "
            "`--set teacher.truncation=head_tail --set student.truncation=head_tail`.")
        out.append(Advice("info", f"{_pct(share)} of the training texts are longer than max_length "
                                  f"({teacher.get('max_length')} tokens) and are cut to their "
                                  f"{'first and last' if head_tail else 'first'} tokens. Longer inputs "
                                  f"can help long documents, at a latency cost that grows with the length.{same_cost}",
                          f"--set teacher.max_length={longer} --set student.max_length={longer}"))
    return out
