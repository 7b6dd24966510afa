"""A run killed with SIGKILL inside a stage resumes with --resume, reuses only complete stages, and
ends with the same metrics as an uninterrupted run (CPU, fixed seed). Kills are deterministic
(DISTILL_FAULT=stage:point), never timed."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tiny import FAST, corpus, write_csv

from distill.checkpointing import ENV_EVERY_S

pytestmark = pytest.mark.heavy  # minutes of exports, benches, kills or SetFit: `make test-heavy`


def distill(models: Path, csv: Path, tiny: Path, *extra: str, fault: str | None = None,
            checkpoint_every_s: float | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "distill"
    args = [str(exe), "run", "--models-dir", str(models)]
    for s in [f"data.source={csv}", f"teacher.model={tiny}", "name=f", *FAST]:
        args += ["--set", s]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("DISTILL_FAULT", None)
    env.pop(ENV_EVERY_S, None)  # the default: per-epoch checkpoints only, in runs this short
    if fault:
        env["DISTILL_FAULT"] = fault
    if checkpoint_every_s is not None:
        env[ENV_EVERY_S] = str(checkpoint_every_s)
    return subprocess.run(args + list(extra), capture_output=True, text=True, env=env, timeout=600)


def student_weights(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "student" / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and (a[k] == b[k]).all() for k in a)


def epoch_steps(section: dict, rows: int) -> int:
    """Optimizer steps per epoch of a resolved recipe's teacher or student section on `rows` rows."""
    return math.ceil(rows / (section["batch_size"] * section["grad_accum"]))


def logging_steps(run: Path) -> int:
    """The Trainer's logging interval (distill.training): the step of the student's first loss row."""
    rows = [json.loads(x) for x in (run / "logs" / "train.jsonl").read_text().splitlines()]
    return next(r["step"] for r in rows if r["stage"] == "student" and "loss" in r)


def ckpt_steps(folder: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")]


def student_log(run: Path, skip: int = 0) -> list[tuple]:
    """The student's rows of logs/train.jsonl (after the first `skip` lines) as what an exact resume
    reproduces: step, epoch, per-step grad norm, learning rate, evaluation loss. (`loss` averages the
    steps since the last log, and a resume starts that count afresh; runtimes differ.)"""
    rows = [json.loads(x) for x in (run / "logs" / "train.jsonl").read_text().splitlines()[skip:]]
    return [(r["step"], r["epoch"], r.get("grad_norm"), r.get("learning_rate"), r.get("eval_loss"))
            for r in rows if r["stage"] == "student"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("faults")
    csv = write_csv(root, corpus(8))
    ref = distill(root / "ref", csv, tiny_bert)
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert not (root / "ref" / "f" / "checkpoints" / "student").exists()  # gone once the stage completed
    return root, csv, json.loads((root / "ref" / "f" / "student" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def plan(setup) -> SimpleNamespace:
    """The reference run's step counts, from its resolved recipe (FAST: batch sizes, epochs) and data
    sizes (the training split of corpus(8) for the teacher, the student's pool), so that the kill
    points below follow them."""
    root, _, ref = setup
    run = root / "ref" / "f"
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    t, s = recipe["teacher"], recipe["student"]
    train_rows = len((run / "data" / "train.jsonl").read_text().splitlines())
    out = SimpleNamespace(teacher=epoch_steps(t, train_rows), teacher_epochs=int(t["epochs"]),
                          student=epoch_steps(s, ref["rounds"][0]["pool"]), student_epochs=int(s["epochs"]),
                          log_every=logging_steps(run))
    # FAST sets min_steps=0: the epochs alone decide the length (what the kill points rely on)
    teacher = json.loads((run / "teacher" / "metrics.json").read_text())["train"]
    assert teacher["steps"] == out.teacher_epochs * out.teacher, (teacher["steps"], out)
    assert ref["rounds"][0]["steps"] == out.student_epochs * out.student, (ref["rounds"][0]["steps"], out)
    assert out.teacher_epochs >= 2 and out.student_epochs >= 2 and out.teacher >= 2 and out.student >= 2, out
    return out


@pytest.mark.parametrize("stage", ["teacher", "soft_labels", "student"])
def test_killed_run_resumes_to_the_same_result(setup, plan, tiny_bert, stage):
    root, csv, ref = setup
    resume_at = None
    if stage == "teacher":
        # mid-epoch, after the per-epoch checkpoint that ends the middle epoch (4 epochs of 17 steps:
        # killed at 42, resumed from checkpoint-34)
        resume_at = (plan.teacher_epochs // 2) * plan.teacher
        fault = f"teacher:step={resume_at + plan.teacher // 2}"
    elif stage == "student":
        # The student saves a wall-clock checkpoint after every step here (its few dozen steps fit in
        # seconds); the kill at step N's end comes before that step's checkpoint. Killed mid-way
        # through epoch 2 (17 steps an epoch: killed at 25, resumed from checkpoint-24, mid-epoch).
        kill = plan.student + plan.student // 2
        resume_at = kill - 1
        fault = f"student:step={kill}"
    else:
        fault = "soft_labels:end"
    models = root / fault.replace(":", "_").replace("=", "")
    killed = distill(models, csv, tiny_bert, fault=fault, checkpoint_every_s=1e-9 if stage == "student" else None)
    assert killed.returncode == -signal.SIGKILL
    run = models / "f"
    assert not (run / stage).exists()  # nothing under a final name that is not complete
    assert (run / ".lock").exists()  # left by the killed process: stale, to be cleared
    ledger = json.loads((run / "run.json").read_text())["stages"]
    assert ledger[stage]["status"] == "running"
    if stage == "teacher":
        assert any((run / "checkpoints" / "teacher").glob("checkpoint-*"))
    if stage == "student":  # save_total_limit 1: the last checkpoint (and the Trainer keeps the best, an epoch's end)
        assert max(ckpt_steps(run / "checkpoints" / "student" / "round-1")) == resume_at

    again = distill(models, csv, tiny_bert, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stale lock" in again.stderr
    if stage == "teacher":
        assert "resuming from" in again.stderr and f"checkpoint-{resume_at}" in again.stderr
    done = [line for line in again.stdout.splitlines() if "reused" in line]
    assert len(done) == ["data", "teacher", "soft_labels", "student"].index(stage)
    got = json.loads((run / "student" / "metrics.json").read_text())
    assert got["test"] == ref["test"] and got["validation"] == ref["validation"]
    # the same student, bit for bit: metrics alone are weak on data this easy (both score 1.0)
    assert same_weights(student_weights(run), student_weights(root / "ref" / "f"))
    if stage == "student":
        assert "student round 1: resuming from" in again.stderr and f"checkpoint-{resume_at}" in again.stderr
        assert got["rounds"][0]["resumed_from_step"] == resume_at and ref["rounds"][0]["resumed_from_step"] is None
        assert got["rounds"][0]["steps"] == ref["rounds"][0]["steps"] == plan.student_epochs * plan.student
        # the steps trained again from the checkpoint reproduce the uninterrupted run's log rows
        assert student_log(run) == student_log(root / "ref" / "f")
        assert not (run / "checkpoints" / "student").exists()
    assert not list(run.glob(".*.tmp-*")) and not (run / ".lock").exists()


def test_a_student_killed_in_its_second_round_reuses_the_first_and_resumes_the_second(setup, plan, tiny_bert):
    """distill.rounds=2, killed at the last step but one of round 2 (round 1 has 34 steps, round 2,
    on its grown pool, 36: killed at 35): the resumed stage reuses round 1's recorded weights and
    result, resumes round 2 from its last per-epoch checkpoint (step 18), drops the killed attempt's
    log rows past it, and ends with the weights of an uninterrupted run. Student-only runs: copies of
    the reference run, the student's inputs changed."""
    import shutil

    root, csv, _ = setup
    two = ("--set", "distill.rounds=2", "--resume")
    for name in ("rounds_ref", "rounds_killed"):
        shutil.copytree(root / "ref", root / name)
    ref_lines = len((root / "ref" / "f" / "logs" / "train.jsonl").read_text().splitlines())
    ref = distill(root / "rounds_ref", csv, tiny_bert, *two)
    assert ref.returncode == 0, ref.stderr[-2000:]
    want = json.loads((root / "rounds_ref" / "f" / "student" / "metrics.json").read_text())
    # round 2's steps from its pool (round 1's plus the re-augmented hard examples) and FAST's batch size
    s = yaml.safe_load((root / "rounds_ref" / "f" / "recipe.yaml").read_text())["student"]
    per_epoch = epoch_steps(s, want["rounds"][1]["pool"])
    total = plan.student_epochs * per_epoch
    assert want["rounds"][1]["steps"] == total and per_epoch >= 2
    kill = total - 1  # inside the last epoch, after its per-epoch checkpoint
    resume_at = (plan.student_epochs - 1) * per_epoch  # that checkpoint (no wall-clock ones in this test)
    dropped = [step for step in range(resume_at + 1, kill + 1) if step % plan.log_every == 0]
    assert dropped  # the killed attempt logs rows past its checkpoint, which the resume must drop

    killed = distill(root / "rounds_killed", csv, tiny_bert, *two, fault=f"student:step={kill}")
    assert killed.returncode == -signal.SIGKILL
    run = root / "rounds_killed" / "f"
    assert (run / "checkpoints" / "student" / "round-1" / "final" / "model.safetensors").exists()
    assert max(ckpt_steps(run / "checkpoints" / "student" / "round-2")) == resume_at
    # the killed log ends with round 2's rows past its checkpoint
    assert [row[0] for row in student_log(run, ref_lines)][-len(dropped):] == dropped

    again = distill(root / "rounds_killed", csv, tiny_bert, *two)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "student round 1: finished by an earlier attempt" in again.stderr
    assert "student round 2: resuming from" in again.stderr and f"checkpoint-{resume_at}" in again.stderr
    assert sum("reused" in line for line in again.stdout.splitlines()) == 3
    got = json.loads((run / "student" / "metrics.json").read_text())
    strip = lambda r: {k: v for k, v in r.items() if k != "wall_s"}  # noqa: E731
    assert strip(got["rounds"][0]) == strip(want["rounds"][0])  # round 1's entry, recorded before the kill
    assert got["rounds"][1]["resumed_from_step"] == resume_at and want["rounds"][1]["resumed_from_step"] is None
    assert got["rounds"][1]["steps"] == want["rounds"][1]["steps"] == total
    assert got["test"] == want["test"] and got["validation"] == want["validation"]
    assert same_weights(student_weights(run), student_weights(root / "rounds_ref" / "f"))
    # round 1's rows stay; the killed round 2's rows past its checkpoint (`dropped`) went
    assert student_log(run, ref_lines) == student_log(root / "rounds_ref" / "f", ref_lines)
    assert not (run / "checkpoints" / "student").exists()


def _cli(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("DISTILL_FAULT", None)
    if fault:
        env["DISTILL_FAULT"] = fault
    return subprocess.run([str(Path(sys.executable).parent / "distill"), *args], capture_output=True, text=True,
                          env=env, timeout=600)


EXPORT = ["export", "onnx", "--allow-mismatch", "--no-ort"]
BENCH = ["bench", "--target", "cpu", "--iterations", "3", "--warmup", "1", "--seq", "16", "--no-compare-optimum", "--texts", "0"]


@pytest.mark.parametrize("stage", ["onnx", "bench"])
def test_killed_export_or_bench_leaves_nothing_that_looks_complete(setup, tmp_path, stage):
    import shutil

    from distill.rundir import RunDir

    root, _, _ = setup
    run = tmp_path / "f"
    shutil.copytree(root / "ref" / "f", run)
    if stage == "bench":
        assert _cli([*EXPORT, str(run)]).returncode == 0
    cmd = [*(EXPORT if stage == "onnx" else BENCH), str(run)]
    killed = _cli(cmd, fault=f"{stage}:end")  # everything built, killed just before the rename
    assert killed.returncode == -signal.SIGKILL
    assert not (run / stage).exists() and (run / ".lock").exists()
    assert json.loads((run / "run.json").read_text())["stages"][stage]["status"] == "running"

    again = _cli(cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stale lock" in again.stderr
    assert RunDir(run).verify(stage)  # complete, every file's sha256 as recorded
    assert not list(run.glob(".*.tmp-*")) and not (run / ".lock").exists()
    # the training stages before it were never touched
    assert all(RunDir(run).verify(s) for s in ("data", "teacher", "soft_labels", "student", "evaluate"))
