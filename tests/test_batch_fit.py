"""A batch that runs out of memory is halved with the accumulation doubled (distill/batch_fit.py): the
stage trains again from its starting weights and ends exactly where a run at the smaller batch ends.
Out-of-memory is injected (DISTILL_FAULT=STAGE:oom-above=N@S raises CUDA's error), never provoked."""

from __future__ import annotations

import json

import pytest
from tiny import FAST, corpus, write_csv
from typer.testing import CliRunner

from distill.cli import app


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data"), corpus(8))


def _run(root, tiny_bert, csv_path, *extra):
    args = ["run", "--models-dir", str(root / "models")]
    for s in [f"data.source={csv_path}", f"teacher.model={tiny_bert}", "name=t", *FAST, *extra]:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return root / "models" / "t"


def _log(run, stage):
    rows = [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("train_runtime", "train_samples_per_second",
                                                       "train_steps_per_second", "eval_runtime",
                                                       "eval_samples_per_second", "eval_steps_per_second")}
            for row in rows if row["stage"] == stage]


@pytest.mark.heavy
def test_teacher_out_of_memory_mid_training_retrains_at_half_the_batch(tmp_path, tiny_bert, csv_path, monkeypatch):
    """Batch 8 fails at step 12 (past a logged step and an epoch's evaluation), batch 4 at step 12 again,
    batch 2 x 4 accumulation fits: the teacher equals one trained at 2 x 4 from the start, its log too."""
    monkeypatch.setenv("DISTILL_FAULT", "teacher:oom-above=2@12")
    fitted = _run(tmp_path / "a", tiny_bert, csv_path, "teacher.batch_size=8")
    monkeypatch.delenv("DISTILL_FAULT")
    direct = _run(tmp_path / "b", tiny_bert, csv_path, "teacher.batch_size=2", "teacher.grad_accum=4")
    a, b = (json.loads((r / "teacher" / "metrics.json").read_text()) for r in (fitted, direct))
    assert a["train"]["fitted_batch"] == {"batch_size": 2, "grad_accum": 4} and "fitted_batch" not in b["train"]
    assert a["train"]["steps"] == b["train"]["steps"] > 12
    assert a["train"]["train_loss"] == pytest.approx(b["train"]["train_loss"], rel=1e-6)
    assert a["test"] == b["test"] and a["validation"] == b["validation"]
    assert _log(fitted, "teacher") == _log(direct, "teacher")  # no row of the failed attempts left


@pytest.mark.heavy
def test_student_out_of_memory_retrains_the_round_at_half_the_batch(tmp_path, tiny_bert, csv_path, monkeypatch):
    monkeypatch.setenv("DISTILL_FAULT", "student:oom-above=4@5")
    fitted = _run(tmp_path / "a", tiny_bert, csv_path, "student.batch_size=8")
    monkeypatch.delenv("DISTILL_FAULT")
    direct = _run(tmp_path / "b", tiny_bert, csv_path, "student.batch_size=4", "student.grad_accum=2")
    a, b = (json.loads((r / "student" / "metrics.json").read_text()) for r in (fitted, direct))
    ra, rb = a["rounds"][0], b["rounds"][0]
    assert ra["fitted_batch"] == {"batch_size": 4, "grad_accum": 2} and "fitted_batch" not in rb
    assert ra["steps"] == rb["steps"] > 5 and ra["resumed_from_step"] is None
    assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)
    assert a["test"] == b["test"]
    assert _log(fitted, "student") == _log(direct, "student")


def test_out_of_memory_at_batch_one_fails_with_the_error(tmp_path, tiny_bert, csv_path, monkeypatch):
    monkeypatch.setenv("DISTILL_FAULT", "teacher:oom-above=0")
    args = ["run", "--models-dir", str(tmp_path / "models")]
    for s in [f"data.source={csv_path}", f"teacher.model={tiny_bert}", "name=t", *FAST, "teacher.batch_size=2"]:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0
    assert "out of memory" in str(r.exception) or "out of memory" in r.output
