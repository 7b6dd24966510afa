"""A run killed with SIGKILL inside a stage resumes with --resume, reuses only complete stages, and
ends with the same metrics as an uninterrupted run (CPU, fixed seed). Kills are deterministic
(DISTILL_FAULT=stage:point), never timed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_data import corpus, write_csv
from test_pipeline import FAST

from distill.checkpointing import ENV_EVERY_S


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


@pytest.mark.parametrize("fault", ["teacher:step=40", "soft_labels:end", "student:step=20"])
def test_killed_run_resumes_to_the_same_result(setup, tiny_bert, fault):
    root, csv, ref = setup
    models = root / fault.replace(":", "_").replace("=", "")
    stage = fault.split(":")[0]
    # The student saves a wall-clock checkpoint after every step here (its 34 steps fit in seconds):
    # the kill at step 20 (epoch 2 starts at step 18) leaves checkpoint-19, mid-epoch.
    killed = distill(models, csv, tiny_bert, fault=fault, checkpoint_every_s=1e-9 if stage == "student" else None)
    assert killed.returncode == -signal.SIGKILL
    run = models / "f"
    assert not (run / stage).exists()  # nothing under a final name that is not complete
    assert (run / ".lock").exists()  # left by the killed process: stale, to be cleared
    ledger = json.loads((run / "run.json").read_text())["stages"]
    assert ledger[stage]["status"] == "running"
    if stage == "teacher":
        assert any((run / "checkpoints" / "teacher").glob("checkpoint-*"))
    if stage == "student":  # save_total_limit 1: the last checkpoint (and the Trainer keeps the best, at 17)
        assert max(ckpt_steps(run / "checkpoints" / "student" / "round-1")) == 19

    again = distill(models, csv, tiny_bert, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stale lock" in again.stderr
    if stage == "teacher":
        assert "resuming from" in again.stderr and "checkpoint-34" in again.stderr
    done = [line for line in again.stdout.splitlines() if "reused" in line]
    assert len(done) == ["data", "teacher", "soft_labels", "student"].index(stage)
    got = json.loads((run / "student" / "metrics.json").read_text())
    assert got["test"] == ref["test"] and got["validation"] == ref["validation"]
    # the same student, bit for bit: metrics alone are weak on data this easy (both score 1.0)
    assert same_weights(student_weights(run), student_weights(root / "ref" / "f"))
    if stage == "student":
        assert "student round 1: resuming from" in again.stderr and "checkpoint-19" in again.stderr
        assert got["rounds"][0]["resumed_from_step"] == 19 and ref["rounds"][0]["resumed_from_step"] is None
        assert got["rounds"][0]["steps"] == ref["rounds"][0]["steps"] == 34
        # steps 20-34 trained again from the checkpoint reproduce the uninterrupted run's log rows
        assert student_log(run) == student_log(root / "ref" / "f")
        assert not (run / "checkpoints" / "student").exists()
    assert not list(run.glob(".*.tmp-*")) and not (run / ".lock").exists()


def test_a_student_killed_in_its_second_round_reuses_the_first_and_resumes_the_second(setup, tiny_bert):
    """distill.rounds=2, killed at step 35 of round 2 (round 1 has 34 steps, round 2 36): the resumed
    stage reuses round 1's recorded weights and result, resumes round 2 from its per-epoch checkpoint
    (step 18), drops the killed attempt's log rows past it, and ends with the weights of an
    uninterrupted run. Student-only runs: copies of the reference run, the student's inputs changed."""
    import shutil

    root, csv, _ = setup
    two = ("--set", "distill.rounds=2", "--resume")
    for name in ("rounds_ref", "rounds_killed"):
        shutil.copytree(root / "ref", root / name)
    ref_lines = len((root / "ref" / "f" / "logs" / "train.jsonl").read_text().splitlines())
    ref = distill(root / "rounds_ref", csv, tiny_bert, *two)
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = distill(root / "rounds_killed", csv, tiny_bert, *two, fault="student:step=35")
    assert killed.returncode == -signal.SIGKILL
    run = root / "rounds_killed" / "f"
    assert (run / "checkpoints" / "student" / "round-1" / "final" / "model.safetensors").exists()
    assert max(ckpt_steps(run / "checkpoints" / "student" / "round-2")) == 18
    assert [row[0] for row in student_log(run, ref_lines)][-2:] == [20, 30]  # logged by round 2 past step 18

    again = distill(root / "rounds_killed", csv, tiny_bert, *two)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "student round 1: finished by an earlier attempt" in again.stderr
    assert "student round 2: resuming from" in again.stderr and "checkpoint-18" in again.stderr
    assert sum("reused" in line for line in again.stdout.splitlines()) == 3
    want = json.loads((root / "rounds_ref" / "f" / "student" / "metrics.json").read_text())
    got = json.loads((run / "student" / "metrics.json").read_text())
    strip = lambda r: {k: v for k, v in r.items() if k != "wall_s"}  # noqa: E731
    assert strip(got["rounds"][0]) == strip(want["rounds"][0])  # round 1's entry, recorded before the kill
    assert got["rounds"][1]["resumed_from_step"] == 18 and want["rounds"][1]["resumed_from_step"] is None
    assert got["rounds"][1]["steps"] == want["rounds"][1]["steps"] == 36
    assert got["test"] == want["test"] and got["validation"] == want["validation"]
    assert same_weights(student_weights(run), student_weights(root / "rounds_ref" / "f"))
    # round 1's rows (steps up to 34) stay; the killed round 2's rows past step 18 (20, 30) went
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
