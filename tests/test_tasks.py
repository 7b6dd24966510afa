"""The task objects (distill/tasks.py): which task a recipe or a run has, what each task names, and
that the causal-LM path imports no private helper of another module."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from distill import stages
from distill.recipe import load_recipe
from distill.tasks import CAUSAL_LM, CLASSIFICATION, STAGE_NAMES, TASKS, Entry, load, task_of, task_of_run

REPO = Path(__file__).resolve().parents[1]


def test_every_task_names_every_stage_and_entry_point_and_each_resolves():
    assert set(TASKS) == {"classification", "causal-lm"}
    for task in TASKS.values():
        # the task-specific stages; the rest (baselines) are the same function for every task, run when wanted
        assert tuple(task.stages) == STAGE_NAMES == tuple(s.name for s in stages.STAGES if s.when is None)
        for name in STAGE_NAMES:
            fn = task.stage(name)
            assert callable(fn) and fn.__name__ == f"{name}_stage"
            assert list(inspect.signature(fn).parameters)[:2] == ["ctx", "out"]
        for ref in (task.teacher_fingerprint_ref, task.export.ref, task.bench.ref, task.export_view, task.bench_view):
            assert callable(load(ref)), ref
    assert CLASSIFICATION.stage("teacher").__module__ == "distill.teacher"
    assert CAUSAL_LM.stage("teacher").__module__ == "distill.causal_lm_stages"
    assert CAUSAL_LM.stage("data") is CLASSIFICATION.stage("data")  # one data stage for both tasks
    assert CLASSIFICATION.export.ref == "export.api:export_onnx" and CAUSAL_LM.export.ref == "export.causal_lm:export_run"
    assert CLASSIFICATION.bench.ref == "bench.api:run_bench" and CAUSAL_LM.bench.ref == "bench.causal_lm:bench_lm"


def test_an_entry_point_drops_unset_options_and_refuses_set_ones_it_does_not_take():
    from distill.errors import DistillError

    entry = Entry("builtins:dict", keys=("which", "allow_mismatch"), refusal="Set it in the recipe.")
    assert entry(which="student", allow_mismatch=True, output=None, force=False) == {"which": "student", "allow_mismatch": True}
    with pytest.raises(DistillError, match=r"^--quantize, --check-arm64: not an option here\. Set it in the recipe\.$"):
        entry(which="student", quantize="static", arm64={"qemu_cpu": "max"}, output=None)
    assert Entry("builtins:dict")(a=1, b=2) == {"a": 1, "b": 2}
    # what the causal-LM entry points take, and that they take it
    for entry in (CAUSAL_LM.export, CAUSAL_LM.bench):
        assert set(entry.keys) <= set(inspect.signature(load(entry.ref)).parameters)


def test_task_of_a_recipe_and_of_a_run_directory(tmp_path):
    assert task_of(load_recipe("default")) is CLASSIFICATION
    assert task_of(load_recipe("prompted-smollm")) is CLASSIFICATION
    assert task_of(load_recipe("lm-smollm")) is CAUSAL_LM
    run = tmp_path / "run"
    run.mkdir()
    assert task_of_run(run) is CLASSIFICATION  # no recipe.yaml: a model folder
    (run / "recipe.yaml").write_text("name: x\ntask: causal-lm\n")
    assert task_of_run(run) is CAUSAL_LM and task_of_run(str(run)) is CAUSAL_LM
    (run / "recipe.yaml").write_text("name: x\n")  # written before tasks existed, or a classification run
    assert task_of_run(run) is CLASSIFICATION
    for text in ("task: [causal-lm\n", "- a list\n", "task: [1, 2]\n", "task: translation\n", ""):
        (run / "recipe.yaml").write_text(text)
        assert task_of_run(run) is CLASSIFICATION, text
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    assert task_of_run(onnx) is CLASSIFICATION  # a file: bench of one .onnx


def test_teacher_fingerprint_is_what_it_was_before_the_task_objects():
    """The teacher stage's input digest of older runs depends on these exact values (tests/test_old_runs.py)."""
    from distill.causal_lm_stages import lm_fingerprint
    from distill.teacher import teacher_fingerprint

    cls = load_recipe("default")
    assert stages._teacher_fingerprint(cls) == teacher_fingerprint(cls)
    lm = load_recipe("lm-smollm")
    assert stages._teacher_fingerprint(lm) == {"task": "causal-lm", "lm": lm_fingerprint(lm),
                                               "model": teacher_fingerprint(lm)}


LM_FILES = ["distill/causal_lm.py", "distill/causal_lm_stages.py", "bench/causal_lm.py", "bench/lm_worker.py",
            "export/causal_lm.py"]


@pytest.mark.parametrize("rel", LM_FILES)
def test_the_causal_lm_path_imports_no_private_name_of_another_module(rel):
    module = rel[:-3].replace("/", ".")
    tree = ast.parse((REPO / rel).read_text())
    private = [f"{node.module}.{a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module != module for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not private, f"{rel} imports private names: {private}"


def test_the_classification_export_refuses_a_causal_lm_run_with_its_message(tmp_path):
    from distill.errors import ExportError
    from export.source import resolve

    run = tmp_path / "lm"
    for d in ("data", "student"):
        (run / d).mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: lm\ntask: causal-lm\n")
    with pytest.raises(ExportError) as e:
        resolve(run)
    assert str(e.value) == (f"{run} is a task: causal-lm run; export it with `distill export onnx {run}` (or "
                            "export.causal_lm.export_run from Python: ONNX with KV cache, int8, greedy-generation "
                            "check against PyTorch).")


@pytest.mark.parametrize("args, flags", [(["export", "onnx", "{run}", "--quantize", "none", "--opset", "17"], "--quantize, --opset"),
                                         (["export", "onnx", "{run}", "--output", "{run}/x", "--force"], "--output, --force"),
                                         (["bench", "{run}", "--batch", "4", "--report", "{run}/r"], "--batch, --report")])
def test_a_causal_lm_run_refuses_the_flags_only_a_classifier_takes(tmp_path, args, flags):
    """Through the real CLI, before any model is loaded: exit 2, one paragraph naming the flags, no traceback."""
    from typer.testing import CliRunner

    from distill.cli import app

    run = tmp_path / "lm"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: lm\ntask: causal-lm\n")
    r = CliRunner().invoke(app, [a.format(run=run) for a in args])
    flat = " ".join(r.output.split())
    assert r.exit_code == 2 and f"{flags}: not an option here" in flat and "causal-LM run" in flat, r.output
    assert "Traceback" not in r.output and not (run / "onnx").exists() and not (run / "bench").exists()


def test_the_causal_lm_bench_view_prints_its_markdown_table(tmp_path):
    from rich.console import Console

    from bench.causal_lm import report_md

    res = {"repeats": 2, "warmup": 1, "rows": [
        {"artifact": "int8-dynamic", "target": "cpu", "status": "ok", "size_bytes": 2e6, "prompt_tokens": 8,
         "new_tokens": 4, "ttft_ms": {"p50": 1.5}, "decode_tokens_per_s": {"p50": 99.0}}]}
    console = Console(record=True, width=200)
    CAUSAL_LM.show_bench(console, tmp_path, res)
    assert console.export_text().rstrip("\n") == report_md(res)
