from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from distill.errors import LockedError, RunDirError
from distill.rundir import RunDir, staged_dir


def _write(out, text="hello"):
    (out / "a.txt").write_text(text)
    (out / "sub").mkdir()
    (out / "sub" / "b.txt").write_text(text * 2)


def test_stage_lands_atomically_and_is_recorded(tmp_path):
    rd = RunDir.prepare(tmp_path / "run")
    res = rd.run_stage("data", {"x": 1}, _write, resume=False)
    assert not res.skipped and (rd.path / "data" / "sub" / "b.txt").read_text() == "hellohello"
    rec = json.loads((rd.path / "run.json").read_text())["stages"]["data"]
    assert rec["status"] == "complete" and set(rec["outputs"]) == {"a.txt", "sub/b.txt"}
    assert "torch" in rec["versions"] and rec["wall_s"] >= 0
    assert not list(rd.path.glob(".*tmp*"))


def test_failed_stage_leaves_nothing_that_looks_complete(tmp_path):
    rd = RunDir.prepare(tmp_path / "run")

    def boom(out):
        (out / "half.txt").write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        rd.run_stage("teacher", {}, boom, resume=False)
    assert not (rd.path / "teacher").exists()
    assert not list(rd.path.glob(".*tmp*"))
    assert rd.read()["stages"]["teacher"]["status"] == "failed"


def test_resume_reuses_only_unchanged_and_intact_stages(tmp_path):
    rd = RunDir.prepare(tmp_path / "run")
    calls = []

    def fn(out):
        calls.append(1)
        _write(out)

    rd.run_stage("data", {"x": 1}, fn, resume=True)
    assert rd.run_stage("data", {"x": 1}, fn, resume=True).skipped
    assert len(calls) == 1
    # changed inputs: rebuilt
    assert not rd.run_stage("data", {"x": 2}, fn, resume=True).skipped
    # tampered output: detected and rebuilt, not trusted
    (rd.path / "data" / "a.txt").write_text("tampered")
    assert not rd.run_stage("data", {"x": 2}, fn, resume=True).skipped
    assert (rd.path / "data" / "a.txt").read_text() == "hello"
    # truncated (deleted) output: rebuilt
    (rd.path / "data" / "sub" / "b.txt").unlink()
    assert not rd.run_stage("data", {"x": 2}, fn, resume=True).skipped
    assert len(calls) == 4


def test_existing_run_dir_needs_resume_or_force(tmp_path):
    rd = RunDir.prepare(tmp_path / "run")
    rd.run_stage("data", {}, _write, resume=False)
    with pytest.raises(RunDirError, match="--resume"):
        RunDir.prepare(tmp_path / "run")
    with pytest.raises(RunDirError, match="contradict"):
        RunDir.prepare(tmp_path / "run", resume=True, force=True)
    RunDir.prepare(tmp_path / "run", resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("not a run")
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir.prepare(tmp_path / "other", resume=True)


def test_lock_refuses_a_live_holder_and_clears_a_dead_one(tmp_path):
    rd = RunDir.prepare(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (rd.path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "t"}))
        with pytest.raises(LockedError) as e:
            with rd.lock():
                pass
        assert str(holder.pid) in str(e.value) and e.value.exit_code == 4
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and is cleared
    with rd.lock():
        assert json.loads((rd.path / ".lock").read_text())["pid"] == os.getpid()
    assert not (rd.path / ".lock").exists()


def test_lock_clears_leftover_temporaries(tmp_path):
    rd = RunDir.prepare(tmp_path / "run")
    (rd.path / ".student.tmp-999").mkdir()
    (rd.path / ".student.tmp-999" / "half.bin").write_bytes(b"x")
    with rd.lock():
        assert not (rd.path / ".student.tmp-999").exists()


def test_staged_dir_replaces_the_folder_only_when_complete(tmp_path):
    final = tmp_path / "parent" / "out"
    with staged_dir(final) as tmp:
        assert tmp == final.with_name(f".out.tmp-{os.getpid()}") and tmp.is_dir() and not final.exists()
        _write(tmp, "one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(final) as tmp:
            _write(tmp, "two")
            raise KeyboardInterrupt
    assert (final / "a.txt").read_text() == "one" and sorted(p.name for p in final.parent.iterdir()) == ["out"]
    with staged_dir(final) as tmp:
        (tmp / "c.txt").write_text("three")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"] and sorted(p.name for p in final.parent.iterdir()) == ["out"]


def test_a_run_that_completed_no_stage_does_not_block_the_rerun(tmp_path):
    rd = RunDir.prepare(tmp_path / "run")

    def bad_column(out):
        raise RunDirError("no label column")

    with pytest.raises(RunDirError):
        rd.run_stage("data", {}, bad_column, resume=False)
    (rd.path / "logs").mkdir()
    (rd.path / "logs" / "train.jsonl").write_text("{}\n")
    again = RunDir.prepare(tmp_path / "run")  # no --force needed: nothing was completed
    assert not (again.path / "logs").exists() and not (again.path / "run.json").exists()
    # A stage left "running" by a killed process keeps its checkpoints for --resume: still refused.
    again._update_stage("teacher", status="running")
    with pytest.raises(RunDirError, match="--resume"):
        RunDir.prepare(tmp_path / "run")


def test_each_stage_records_its_own_peak_memory(tmp_path):
    import sys

    rd = RunDir.prepare(tmp_path / "run")

    def big(out):
        buf = bytearray(300 * 1024 * 1024)  # 300 MiB, zero-filled so resident; freed when the stage ends
        (out / "a.txt").write_text(str(len(buf)))

    rd.run_stage("teacher", {}, big, resume=False)
    rd.run_stage("student", {}, _write, resume=False)
    rec = json.loads((rd.path / "run.json").read_text())["stages"]
    assert rec["teacher"]["peak_rss_mib"] >= 300
    if sys.platform == "linux":  # the mark is reset per stage, so the second stage's peak is its own
        assert rec["teacher"]["peak_rss_scope"] == rec["student"]["peak_rss_scope"] == "stage"
        assert rec["student"]["peak_rss_mib"] < rec["teacher"]["peak_rss_mib"] - 200
