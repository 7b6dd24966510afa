"""Defaults that follow the data: a step floor on training length, macro-F1 model selection and
class weights where classes are skewed, and the advice the summary gives from a run's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import FAST, corpus, write_csv
from typer.testing import CliRunner

from distill.advice import advise
from distill.cli import app
from distill.recipe import Teacher
from distill.training import class_weights, planned_steps, selection_metric, weighted_cross_entropy


def test_step_floor_only_lengthens_short_training():
    t = Teacher(batch_size=32, epochs=1, min_steps=250)
    assert planned_steps(t, 8897) == (279, None)  # the default data: one epoch is already enough steps
    assert planned_steps(t, 1500) == (47, 250)  # a small data set: the floor decides
    assert planned_steps(t, 1500, world_size=2) == (24, 250)
    assert planned_steps(Teacher(batch_size=32, epochs=1, min_steps=0), 1500) == (47, None)
    assert planned_steps(Teacher(batch_size=16, grad_accum=2, epochs=3, min_steps=10), 320) == (30, None)


def test_skewed_classes_select_by_macro_f1_and_weigh_classes_as_sklearn_does():
    from sklearn.utils.class_weight import compute_class_weight

    balanced = [0] * 50 + [1] * 40 + [2] * 30
    skewed = [0] * 90 + [1] * 20 + [2] * 10
    assert selection_metric(balanced, 3) == "accuracy"
    assert selection_metric(skewed, 3) == "macro_f1"
    assert selection_metric([0] * 10 + [1] * 5, 3) == "macro_f1"  # a class with no row at all
    assert class_weights(skewed, 3, "none") is None
    np.testing.assert_allclose(class_weights(skewed, 3, "balanced"),
                               compute_class_weight("balanced", classes=np.arange(3), y=np.array(skewed)))
    # auto: balanced exactly where the selection metric turns to macro-F1 (largest / smallest >= 3)
    assert class_weights(skewed, 3, "auto") == class_weights(skewed, 3, "balanced")
    assert class_weights(balanced, 3, "auto") is None and class_weights([0] * 29 + [1] * 10, 2, "auto") is None
    assert class_weights([0] * 30 + [1] * 10, 2, "auto") == pytest.approx([40 / 60, 40 / 20])


def test_weighted_cross_entropy_is_torch_cross_entropy_with_weights():
    import torch

    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    w = [0.5, 1.0, 3.0]
    got = weighted_cross_entropy(w)({"logits": logits}, labels)
    want = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(w))
    assert torch.allclose(got, want)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert not torch.allclose(got, plain)


@pytest.fixture(scope="module")
def skewed_csv(tmp_path_factory):
    rows = [r for r in corpus(8) if r["label"] == "pos" or r["film"] in ("f0", "f1")]
    return write_csv(tmp_path_factory.mktemp("skewed"), rows)


def test_teacher_trains_to_the_step_floor_and_selects_by_macro_f1(tmp_path, tiny_bert, skewed_csv):
    args = ["run", "--models-dir", str(tmp_path), "--set", "name=s"]
    sets = [f"data.source={skewed_csv}", f"teacher.model={tiny_bert}", *FAST, "teacher.epochs=1",
            "teacher.min_steps=25", "teacher.early_stopping_patience=0"]  # class weights at their default, auto
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "s" / "teacher" / "metrics.json").read_text())
    train = m["train"]
    n_train = len((tmp_path / "s" / "data" / "train.jsonl").read_text().splitlines())
    assert train["steps_from_epochs"] == -(-n_train // 8) < 25  # one epoch at batch 8 is under the floor
    assert train["steps"] == 25 and train["epochs_run"] > 1
    assert train["selection_metric"] == "macro_f1"
    assert len(train["class_weights"]) == 2 and train["class_weights"][0] > train["class_weights"][1]  # neg is rare
    # auto = balanced on these skewed rows, for the student's gold-label term too
    student = json.loads((tmp_path / "s" / "student" / "metrics.json").read_text())
    assert student["class_weights"] == pytest.approx(train["class_weights"])
    assert [c["step"] for c in train["validation_curve"]][-1] == 25
    assert 0 <= m["truncated_share"] <= 1


def _files(run, *, teacher=None, student=None, ev=None, names=("a", "b")):
    for folder, data in (("teacher", teacher), ("student", student), ("evaluate", ev)):
        if data is not None:
            (run / folder).mkdir(parents=True, exist_ok=True)
            (run / folder / ("summary.json" if folder == "evaluate" else "metrics.json")).write_text(json.dumps(data))
    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / "data" / "labels.json").write_text(json.dumps({"names": list(names)}))


def _row(acc, f1=None):
    return {"accuracy": acc, "macro_f1": acc if f1 is None else f1}


def test_advice_names_the_floor_the_early_stop_and_the_fix(tmp_path):
    # the long-document case: floor 97.9%, teacher 94.8% after 47 steps and still rising, student 97.2%
    curve = [{"step": 24, "epoch": 1.0, "value": 0.90}, {"step": 47, "epoch": 2.0, "value": 0.93}]
    _files(tmp_path, teacher={"train": {"steps": 47, "steps_from_epochs": 47, "validation_curve": curve},
                              "test": {**_row(0.948), "confusion": [[50, 3], [2, 45]]}, "max_length": 256,
                              "truncated_share": 0.62},
           student={"test": {**_row(0.972), "confusion": [[51, 2], [1, 46]]}, "kept_of_teacher": 1.025},
           ev={"rows": {"teacher": _row(0.948), "student": _row(0.972), "tfidf_logreg": _row(0.979)}})
    got = advise(tmp_path)
    text = "\n".join(a.text for a in got)
    tries = [a.try_ for a in got if a.try_]
    assert "floor (97.9%) beats the student (97.2%)" in text
    assert "teacher (94.8%) is under the TF-IDF floor (97.9%)" in text and "still rising" in text
    assert "--set teacher.epochs=2" in tries
    assert "102.5% of its teacher" in text
    assert "62.0% of the training texts are longer than max_length (256 tokens)" in text
    assert "--set teacher.max_length=512 --set student.max_length=512" in tries
    assert "--set teacher.truncation=head_tail --set student.truncation=head_tail" in text  # same latency


def test_advice_on_skewed_classes_and_a_floored_length(tmp_path):
    # the newswire case: the teacher never predicts class c, accuracy 88.7% beside macro-F1 0.42
    conf = [[80, 0, 0], [5, 3, 0], [4, 0, 0]]
    _files(tmp_path, names=("a", "b", "c"),
           teacher={"train": {"steps": 250, "steps_from_epochs": 150,
                              "validation_curve": [{"step": 150, "epoch": 1, "value": 0.3}, {"step": 250, "epoch": 2, "value": 0.4}]},
                    "test": {**_row(0.887, 0.42), "confusion": conf}},
           student={"test": {**_row(0.973, 0.937), "confusion": [[80, 0, 0], [0, 8, 0], [1, 0, 3]]}},
           ev={"rows": {"teacher": _row(0.887, 0.42), "student": _row(0.973, 0.937), "tfidf_logreg": _row(0.956)}})
    got = advise(tmp_path)
    by_text = {a.text: a.try_ for a in got}
    never = [t for t in by_text if "never predicts 'c'" in t]
    assert never and by_text[never[0]] == "--set teacher.class_weights=balanced"
    assert any("still rising" in t and by_text[t] == "--set teacher.min_steps=500" for t in by_text)
    assert not any("student" in t and "class_weights" in (by_text[t] or "") for t in by_text)  # the student is fine
    assert any("teacher (88.7%) is under the TF-IDF floor (95.6%)" in t for t in by_text)
    assert not any("beats the student" in t or "within a point" in t for t in by_text)  # the student is 1.7 above

    # the same teacher trained with balanced weights already (class_weights auto on skewed rows): more steps, not weights
    teacher = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    teacher["train"]["class_weights"] = [0.4, 3.6, 6.2]
    (tmp_path / "teacher" / "metrics.json").write_text(json.dumps(teacher))
    by_text = {a.text: a.try_ for a in advise(tmp_path)}
    never = [t for t in by_text if "never predicts 'c'" in t]
    assert never and "even with balanced class weights" in never[0] and by_text[never[0]] == "--set teacher.min_steps=500"
    assert not any("class_weights" in (v or "") for v in by_text.values())


def test_no_advice_for_a_run_where_the_defaults_fit(tmp_path):
    _files(tmp_path, teacher={"train": {"steps": 279, "validation_curve": [{"step": 279, "epoch": 1, "value": 0.83}]},
                              "test": {**_row(0.828), "confusion": [[1000, 150], [290, 1120]]}, "truncated_share": 0.05},
           student={"test": {**_row(0.814), "confusion": [[990, 160], [316, 1094]]}, "kept_of_teacher": 0.983},
           ev={"rows": {"teacher": _row(0.828), "student": _row(0.814), "tfidf_logreg": _row(0.781)}})
    assert advise(tmp_path) == []


def test_advice_says_when_setfit_beats_our_teacher_or_student(tmp_path):
    # the few-shot case: SetFit 84.4% beside our teacher 83.7%; its distilled student under ours
    _files(tmp_path, teacher={"train": {"steps": 32}, "test": {**_row(0.837), "confusion": [[1100, 180], [237, 1043]]}},
           student={"test": {**_row(0.814), "confusion": [[1090, 190], [286, 994]]}, "kept_of_teacher": 0.972},
           ev={"rows": {"teacher": _row(0.837), "student": _row(0.814), "tfidf_logreg": _row(0.542)}})
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "summary.json").write_text(json.dumps(
        {"rows": {"setfit": _row(0.844), "setfit_distilled": _row(0.80)}}))
    got = advise(tmp_path)
    setfit = [a for a in got if "SetFit" in a.text]
    assert len(setfit) == 1
    assert "SetFit with the same body on the same labels (84.4%) beats our teacher (83.7%)" in setfit[0].text
    assert setfit[0].try_ == "--set teacher.contrastive_iterations=20"


def test_advice_names_a_student_that_peaked_before_its_last_weights(tmp_path):
    # the mpnet pair, seed 1: validation 82.51 / 86.15 / 85.99 over 3 epochs, in a run copied from one whose
    # own student rows (steps 795-2385) come first in the log
    def log(rows):
        (tmp_path / "logs").mkdir(exist_ok=True)
        (tmp_path / "logs" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    earlier = [{"stage": "student", "step": 795 * e, "epoch": float(e), "eval_accuracy": v}
               for e, v in ((1, 0.8344), (2, 0.8553), (3, 0.8560))]
    mine = [{"stage": "teacher", "step": 125, "epoch": 1.0, "eval_accuracy": 0.88},
            {"stage": "student", "step": 10, "epoch": 0.01, "loss": 0.4}]
    mine += [{"stage": "student", "step": 795 * e, "epoch": float(e), "eval_accuracy": v}
             for e, v in ((1, 0.8251), (2, 0.8615), (3, 0.8599))]
    student = {"test": {**_row(0.8555), "confusion": [[1100, 180], [190, 1090]]}, "kept_of_teacher": 0.969,
               "selection_metric": "accuracy", "rounds": [{"round": 1}]}
    _files(tmp_path, teacher={"train": {"steps": 125}, "test": {**_row(0.8828), "confusion": [[1150, 130], [170, 1110]]}},
           student=student, ev={"rows": {"teacher": _row(0.8828), "student": _row(0.8555), "tfidf_logreg": _row(0.768)}})
    log(earlier + mine)
    got = [a for a in advise(tmp_path) if "peaked" in a.text]
    assert len(got) == 1 and got[0].try_ == "--set student.keep=best"
    assert "peaked at epoch 2 (0.8615) and ended at 0.8599 (epoch 3)" in got[0].text

    log(mine[:-1])  # ended at its best: nothing to say
    assert not [a for a in advise(tmp_path) if "peaked" in a.text]
    log(earlier + mine)
    student["rounds"] = [{"round": 1, "kept": {"step": 1590, "epoch": 2.0, "metric": 0.8615}}]  # keep: best already
    (tmp_path / "student" / "metrics.json").write_text(json.dumps(student))
    assert not [a for a in advise(tmp_path) if "peaked" in a.text]
