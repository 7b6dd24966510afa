from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill import __version__
from distill.cli import app

runner = CliRunner()


def invoke(*args: str, cwd: Path | None = None):
    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return runner.invoke(app, list(args))
    finally:
        os.chdir(old)


def test_version_and_help():
    r = invoke("--version")
    assert r.exit_code == 0 and __version__ in r.output
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("run", "export", "bench", "assets", "recipe"):
        assert cmd in r.output


def test_typo_recipe_exits_2_naming_key_file_and_fix(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: t\nstudnet:\n  epochs: 2\n")
    r = invoke("recipe", "validate", str(p))
    assert r.exit_code == 2
    assert "studnet" in r.output and "bad.yaml" in r.output and "'student'" in r.output
    assert "Traceback" not in r.output


def test_recipe_show_applies_overrides():
    r = invoke("recipe", "show", "--set", "student.epochs=5", "--set", "name=mine")
    assert r.exit_code == 0, r.output
    assert "epochs: 5.0" in r.output and "name: mine" in r.output


def test_recipe_list_and_schema():
    r = invoke("recipe", "list")
    assert r.exit_code == 0 and "default" in r.output
    r = invoke("recipe", "schema")
    assert r.exit_code == 0 and "`student.layers`" in r.output


def test_assets_list_shows_all_six():
    r = invoke("assets", "list")
    assert r.exit_code == 0
    for name in ("builtin:rotten-tomatoes", "builtin:tweets-sentiment", "builtin:sms-spam",
                 "packaged:minilm-l6", "packaged:mpnet-base", "packaged:smollm2-135m-instruct"):
        assert name in r.output


def test_assets_install_unknown_name_is_refused():
    r = invoke("assets", "install", "rotten-tomatos")
    assert r.exit_code == 2 and "Known assets" in r.output


def test_run_writes_resolved_recipe_and_refuses_to_mix_runs(tmp_path, tiny_bert):
    from tiny import corpus, write_csv

    csv = write_csv(tmp_path, corpus(4))
    base = ["run", "--models-dir", str(tmp_path)]
    for s in ("name=t1", f"data.source={csv}", f"teacher.model={tiny_bert}", "student.layers=[0]",
              "teacher.epochs=1", "student.epochs=1", "teacher.min_steps=0", "student.min_steps=0"):
        base += ["--set", s]
    r = invoke(*base)
    assert r.exit_code == 0, r.output
    run = tmp_path / "t1"
    assert "name: t1" in (run / "recipe.yaml").read_text()
    assert json.loads((run / "run.json").read_text())["stages"]["evaluate"]["status"] == "complete"
    assert "TF-IDF" in r.output and "next: distill export onnx" in r.output
    r = invoke(*base)
    assert r.exit_code == 2 and "--resume" in r.output
    assert invoke(*base, "--resume").exit_code == 0
    assert invoke(*base, "--force").exit_code == 0
    r = invoke("summary", str(run))
    assert r.exit_code == 0 and "student" in r.output
    # each stage's wall time and peak memory, from run.json
    stages = json.loads((run / "run.json").read_text())["stages"]
    line = " ".join(r.output[r.output.index("stages   data "):].split())  # the console may wrap it
    assert f"teacher {stages['teacher']['wall_s']:.0f} s, peak {stages['teacher']['peak_rss_mib']:,} MiB · " in line
    assert all(f"· {name} " in line for name in ("soft_labels", "student", "evaluate")), line
    r = invoke("summary", str(tmp_path))  # a folder of runs, not a run: names it and the fix
    assert r.exit_code == 2 and "Traceback" not in r.output
    flat = " ".join(r.output.split())  # the console wraps long lines
    assert f"{tmp_path} is not a run directory (no run.json)" in flat and "pass models/NAME" in flat, r.output


def test_run_on_a_locked_directory_exits_4(tmp_path):
    import socket

    run = tmp_path / "t2"
    run.mkdir()
    (run / "run.json").write_text('{"schema": 1, "stages": {}}')
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    r = invoke("run", "--set", "name=t2", "--models-dir", str(tmp_path), "--resume")
    assert r.exit_code == 4 and "locked" in r.output


def _distill_exe() -> str:
    exe = Path(sys.executable).parent / "distill"
    return str(exe) if exe.exists() else shutil.which("distill") or "distill"


def test_installed_command_runs_in_a_real_process(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("studnet: {}\n")
    proc = subprocess.run([_distill_exe(), "recipe", "validate", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "studnet" in proc.stderr and "'student'" in proc.stderr and "Traceback" not in proc.stderr


HEAVY = ("torch", "transformers", "onnxruntime", "optimum", "datasets", "pydantic", "matplotlib")


def test_help_is_fast_because_heavy_imports_are_lazy():
    """What keeps `distill --help` fast: neither importing the CLI nor printing its help imports a
    heavy library. (How fast it is on a given machine is a benchmark, not a unit test.)"""
    code = f"import sys, distill.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    code = ("import sys\nfrom distill.cli import main\nsys.argv = ['distill', '--help']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            f"print('HEAVY', code, [m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY 0 []", proc.stdout + proc.stderr
    assert "Usage" in proc.stdout and "run" in proc.stdout and "Traceback" not in proc.stderr
