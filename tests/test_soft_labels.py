"""The soft-labels stage reads the pool in chunks (distill.soft_labels.CHUNK), so a pool of millions
never sits in memory as rows: chunked or not, it labels the same texts with the same logits. It starts
from the teacher's logits on its training rows (teacher/train_logits): the same as scoring them again.
Run again with a larger pool under --resume, it keeps its last output's logits where the teacher is the
same, and scores every text again where it is not."""

from __future__ import annotations

import json

import numpy as np
from tiny import FAST, corpus, write_csv
from typer.testing import CliRunner

from distill import soft_labels
from distill.cli import app
from distill.recipe import load_recipe
from distill.rundir import RunDir
from distill.stage import Context


def _invoke(tmp_path, sets, *flags):
    args = ["run", "--models-dir", str(tmp_path / "models"), *flags]
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output


def _run(tmp_path, tiny_bert, *extra):
    csv = write_csv(tmp_path, corpus(8))
    sets = [f"data.source={csv}", f"teacher.model={tiny_bert}", "name=t", *FAST, "data.few_shot=4",
            "data.augment.multiplier=2", *extra]
    _invoke(tmp_path, sets)
    return tmp_path / "models" / "t", sets


def _fresh_pass(tmp_path, run, sets, monkeypatch):
    """The soft-labels stage run again without the teacher's training-row logits: every text scored here."""
    monkeypatch.setattr(soft_labels, "TRAIN_LOGITS", "absent")
    monkeypatch.setattr(soft_labels, "_previous", lambda folder, teacher: None)  # nor the run's own output
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    soft_labels.soft_labels_stage(Context(load_recipe(None, sets), RunDir(run)), fresh)
    assert json.loads((fresh / "report.json").read_text())["from_teacher_pass"] == 0
    return soft_labels.SoftLabels.load(fresh)


def _assert_same(a, b, atol):
    assert sorted(a.index) == sorted(b.index)
    keys = sorted(a.index)
    np.testing.assert_allclose(a.logits[[a.index[k] for k in keys]], b.logits[[b.index[k] for k in keys]],
                               rtol=0, atol=atol)


def test_chunked_soft_labels_equal_one_pass(tmp_path, tiny_bert, monkeypatch):
    run, sets = _run(tmp_path, tiny_bert)
    whole = json.loads((run / "soft_labels" / "report.json").read_text())
    assert whole["by_origin"]["transfer"] > 0 and whole["by_origin"]["augmented"] > 0 and whole["texts"] > 3 * 7

    monkeypatch.setattr(soft_labels, "CHUNK", 7)
    out = tmp_path / "chunked"
    out.mkdir()
    soft_labels.soft_labels_stage(Context(load_recipe(None, sets), RunDir(run)), out)
    a, b = soft_labels.SoftLabels.load(run / "soft_labels"), soft_labels.SoftLabels.load(out)
    assert a.index == b.index
    np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-6)
    chunked = json.loads((out / "report.json").read_text())
    for key in ("texts", "by_origin", "pseudo_label_accuracy", "pseudo_label_n", "label_distribution"):
        assert chunked[key] == whole[key], key

    # The teacher's training rows came from its label-noise pass, not a second pass of the teacher ...
    teacher_rows = len(soft_labels.SoftLabels.load(run / "teacher" / soft_labels.TRAIN_LOGITS).index)
    assert teacher_rows == whole["by_origin"]["train"] > 0 and whole["from_teacher_pass"] == teacher_rows
    # ... and equal what that second pass gives (batches differ, so only to float rounding).
    _assert_same(_fresh_pass(tmp_path, run, sets, monkeypatch), a, 1e-5)


def test_a_teacher_trained_under_bf16_autocast_scores_its_rows_in_fp32(tmp_path, tiny_bert, monkeypatch):
    """The Trainer leaves bf16 autocast on the trained model's forward (accelerate wraps it); the teacher's
    passes after training must not run under it: its training-row logits are soft labels, which the
    soft-labels stage otherwise computes in fp32 from the saved weights (they differed by ~1e-3 here)."""
    run, sets = _run(tmp_path, tiny_bert, "device=cpu-bf16")
    assert json.loads((run / "teacher" / "metrics.json").read_text())["precision"] == "bf16"
    _assert_same(_fresh_pass(tmp_path, run, sets, monkeypatch), soft_labels.SoftLabels.load(run / "soft_labels"), 1e-5)


def _resume(tmp_path, sets, *more):
    _invoke(tmp_path, [*sets, *more], "--resume")


def test_a_larger_pool_under_resume_scores_only_its_new_texts_with_the_same_teacher(tmp_path, tiny_bert, monkeypatch):
    run, sets = _run(tmp_path, tiny_bert, "data.augment.multiplier=1")
    first = soft_labels.SoftLabels.load(run / "soft_labels")
    _resume(tmp_path, sets, "data.augment.multiplier=3")  # the teacher's inputs are unchanged: reused
    rep = json.loads((run / "soft_labels" / "report.json").read_text())
    grown = soft_labels.SoftLabels.load(run / "soft_labels")
    assert rep["by_origin"]["augmented"] > 0 and rep["texts"] == len(grown.index) > len(first.index)
    kept = set(first.index) & set(grown.index)
    # every text of the first pool still in the grown one was kept (the teacher's rows counted apart) ...
    assert rep["from_previous"] + rep["from_teacher_pass"] == len(kept) > rep["from_teacher_pass"] > 0
    np.testing.assert_array_equal(grown.logits[[grown.index[k] for k in sorted(kept)]],
                                  first.logits[[first.index[k] for k in sorted(kept)]])
    # ... and the whole cache equals a pass of the teacher over every text, to float rounding
    _assert_same(_fresh_pass(tmp_path, run, sets + ["data.augment.multiplier=3"], monkeypatch), grown, 1e-5)
    monkeypatch.undo()

    # a pool that shrinks keeps only its own texts, none of them scored again
    _resume(tmp_path, sets, "data.augment.multiplier=0")
    shrunk = json.loads((run / "soft_labels" / "report.json").read_text())
    assert shrunk["by_origin"]["augmented"] == 0 and 0 < shrunk["texts"] < rep["texts"]
    assert shrunk["from_previous"] + shrunk["from_teacher_pass"] == shrunk["texts"] \
        == len(soft_labels.SoftLabels.load(run / "soft_labels").index)


def test_a_retrained_teacher_scores_every_text_again(tmp_path, tiny_bert):
    run, sets = _run(tmp_path, tiny_bert, "data.augment.multiplier=1")
    before = json.loads((run / "soft_labels" / "report.json").read_text())["teacher"]
    _resume(tmp_path, sets, "data.augment.multiplier=1", "teacher.learning_rate=1e-3")
    rep = json.loads((run / "soft_labels" / "report.json").read_text())
    assert rep["teacher"]["inputs_sha256"] != before["inputs_sha256"] and rep["from_previous"] == 0
