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


def distill(models: Path, csv: Path, tiny: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "distill"
    args = [str(exe), "run", "--models-dir", str(models)]
    for s in [f"data.source={csv}", f"teacher.model={tiny}", "name=f", *FAST]:
        args += ["--set", s]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("DISTILL_FAULT", None)
    if fault:
        env["DISTILL_FAULT"] = fault
    return subprocess.run(args + list(extra), capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("faults")
    csv = write_csv(root, corpus(8))
    ref = distill(root / "ref", csv, tiny_bert)
    assert ref.returncode == 0, ref.stderr[-2000:]
    return root, csv, json.loads((root / "ref" / "f" / "student" / "metrics.json").read_text())


@pytest.mark.parametrize("fault", ["teacher:step=40", "soft_labels:end", "student:step=20"])
def test_killed_run_resumes_to_the_same_result(setup, tiny_bert, fault):
    root, csv, ref = setup
    models = root / fault.replace(":", "_").replace("=", "")
    killed = distill(models, csv, tiny_bert, fault=fault)
    assert killed.returncode == -signal.SIGKILL
    run = models / "f"
    stage = fault.split(":")[0]
    assert not (run / stage).exists()  # nothing under a final name that is not complete
    assert (run / ".lock").exists()  # left by the killed process: stale, to be cleared
    ledger = json.loads((run / "run.json").read_text())["stages"]
    assert ledger[stage]["status"] == "running"
    if stage == "teacher":
        assert any((run / "checkpoints" / "teacher").glob("checkpoint-*"))

    again = distill(models, csv, tiny_bert, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stale lock" in again.stderr
    if stage == "teacher":
        assert "resuming from" in again.stderr and "checkpoint-34" in again.stderr
    done = [line for line in again.stdout.splitlines() if "reused" in line]
    assert len(done) == ["data", "teacher", "soft_labels", "student"].index(stage)
    got = json.loads((run / "student" / "metrics.json").read_text())
    assert got["test"] == ref["test"] and got["validation"] == ref["validation"]
    assert not list(run.glob(".*.tmp-*")) and not (run / ".lock").exists()


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
