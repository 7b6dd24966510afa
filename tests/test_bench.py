"""Bench: one process per measurement, pinning and threads, results.json, report, plots, CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.heavy  # minutes of exports, benches, kills or SetFit: `make test-heavy`

FAST = dict(iterations=3, warmup=1, batch=[1], seq=[16], texts=0)  # real-text rows: tests/test_deployed.py


def make_bench_run(run: Path, model_dir: Path) -> Path:
    """A run directory the way export leaves it (models/README.md), built here so bench tests do not wait
    for the export package: optimum's main_export -> onnx/model.onnx, quantize_dynamic ->
    onnx/model.int8-dynamic.onnx, onnx/export.json; student/ with metrics.json; data/test.jsonl; a log."""
    import shutil

    from onnxruntime.quantization import quantize_dynamic
    from optimum.exporters.onnx import main_export

    from distill.rundir import sha256_file
    from tiny import CORPUS

    onnx_dir = run / "onnx"
    main_export(str(model_dir), onnx_dir, task="text-classification", local_files_only=True, do_validation=False)
    quantize_dynamic(onnx_dir / "model.onnx", onnx_dir / "model.int8-dynamic.onnx")
    shutil.copytree(model_dir, run / "student")
    (run / "student" / "metrics.json").write_text(json.dumps(
        {"test": {"accuracy": 0.5, "macro_f1": 0.4, "n": 8, "confusion": [[2, 2], [2, 2]]}}))
    arts = {}
    for key, name in (("fp32", "model.onnx"), ("int8-dynamic", "model.int8-dynamic.onnx")):
        f = onnx_dir / name
        arts[key] = {"file": name, "sha256": sha256_file(f), "size_bytes": f.stat().st_size, "status": "ok",
                     "parity": {"max_abs_diff": 0.0, "label_agreement": 1.0, "n": 8, "passed": True}}
    arts["fp32"]["accuracy"] = {"test": {"accuracy": 0.5, "macro_f1": 0.4, "n": 8}}  # int8 one is computed
    arts["int8-static"] = {"file": "model.int8-static.onnx", "status": "failed"}
    (onnx_dir / "export.json").write_text(json.dumps(
        {"schema": 1, "source": {"model": "student"}, "opset": 14, "isa": "avx2", "fusions": {}, "artifacts": arts,
         "mobile": {}, "versions": {}}))
    (run / "data").mkdir()
    (run / "data" / "test.jsonl").write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n"
                                                     for i, t in enumerate(CORPUS)))
    (run / "logs").mkdir()
    (run / "logs" / "train.jsonl").write_text("".join(
        json.dumps({"stage": "student", "step": s, "epoch": s / 10, "loss": 1.0 / s}) + "\n" for s in range(1, 11)))
    return run


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_bert) -> Path:
    return make_bench_run(tmp_path_factory.mktemp("run") / "tiny", tiny_bert)


@pytest.fixture(scope="module")
def benched(bench_run):
    """One bench over the fixture run (two targets, few iterations), shared by the assertions below."""
    from bench.api import run_bench

    return run_bench(bench_run, targets=["cpu", "mobile-1t"], **FAST)


def test_every_measurement_ran_in_its_own_pinned_process(benched):
    from bench.targets import builtin_targets

    rows = benched.results["rows"]
    assert len(rows) == 3 * 2  # student PyTorch, ONNX fp32, ONNX int8 dynamic x cpu, mobile-1t
    assert all(r["status"] == "ok" for r in rows), rows
    assert len({r["pid"] for r in rows}) == len(rows)
    assert os.getpid() not in {r["pid"] for r in rows}
    targets = builtin_targets()
    for r in rows:
        t = targets[r["target"]]
        assert r["affinity"] == list(t.cores)
        assert r["env_threads"]["OMP_NUM_THREADS"] == str(t.threads)
        assert r["env_threads"]["OMP_WAIT_POLICY"] == (None if t.spin else "PASSIVE")
        applied = r["applied"]
        if r["artifact"] == "student-pytorch":
            assert applied["torch_num_threads"] == t.threads
        else:
            assert applied["intra_op_num_threads"] == t.threads
            spin = applied["session_config"].get("session.intra_op.allow_spinning")
            assert spin == ("0" if r["target"] == "mobile-1t" else None)


def test_results_json_schema(benched, bench_run):
    res = json.loads((bench_run / "bench" / "results.json").read_text())
    assert res["schema"] == 1 and res["source"]["kind"] == "run"
    # what it timed, by stage output digest (this hand-made run records none): see test_export's summary test
    assert res["source"]["measured"] == {"teacher": None, "student": None, "onnx": None, "onnx-teacher": None}
    assert {"cpu_model", "isa", "logical_cores", "versions"} <= res["host"].keys()
    assert "onnxruntime" in res["host"]["versions"]
    assert [a["key"] for a in res["artifacts"]] == ["student-pytorch", "fp32", "int8-dynamic"]
    acc = {a["key"]: a["accuracy_source"] for a in res["artifacts"]}
    # computed at the deployed length: the exported tokenizer's (no metrics.json max_length in this fixture)
    assert acc == {"student-pytorch": "metrics.json", "fp32": "export.json", "int8-dynamic": "computed at 128 tokens"}
    assert res["config"]["iterations"] == 3 and res["config"]["seq"] == [16]
    for r in res["rows"]:
        lat = r["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] and lat["std"] >= 0
        assert len(r["samples_ms"]) == 3
        assert r["throughput_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["load_s"] > 0 and r["size_bytes"] > 0
        assert isinstance(r["noisy"], bool)
    assert any("int8-static" in n and "failed" in n for n in res["notes"])  # listed as failed: skipped, said so
    assert any(t["emulated"] for t in res["config"]["targets"]) and "emulat" in res["emulation_note"]
    run_json = json.loads((bench_run / "run.json").read_text())
    assert run_json["stages"]["bench"]["status"] == "complete"
    assert not list(bench_run.glob(".bench.tmp-*")) and not (bench_run / ".lock").exists()


def test_html_is_self_contained_and_plots_are_pngs(benched, bench_run):
    out = bench_run / "bench"
    for name in ("latency.png", "accuracy_vs_latency.png", "training.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "report.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs
    assert page.count("<img") == 3
    host_cpu = benched.results["host"]["cpu_model"]
    md = (out / "report.md").read_text()
    for text in (page, md):
        assert host_cpu in text and "emulat" in text and "ONNX int8 dynamic" in text


def test_unknown_target_lists_valid_ones(bench_run):
    from bench.api import run_bench
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="mobile-2t") as e:
        run_bench(bench_run, targets=["phone"], **FAST)
    assert "phone" in str(e.value)


def test_bad_paths_are_user_errors(tmp_path, bench_run):
    import shutil

    from bench.api import run_bench
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="export onnx"):
        run_bench(tmp_path)  # a folder with no onnx/export.json
    broken = tmp_path / "broken"
    shutil.copytree(bench_run / "onnx", broken / "onnx")
    (broken / "onnx" / "model.int8-dynamic.onnx").unlink()
    with pytest.raises(DistillError, match="model.int8-dynamic.onnx"):
        run_bench(broken, targets=["cpu"], **FAST)


def test_single_onnx_file_and_report_dir(bench_run, tmp_path):
    from bench.api import run_bench

    res = run_bench(bench_run / "onnx" / "model.int8-dynamic.onnx", targets=["mobile-1t"], report_dir=tmp_path / "r",
                    iterations=2, warmup=0, seq=[8])
    assert res.report_dir == tmp_path / "r" and (tmp_path / "r" / "report.html").exists()
    assert [r["seq"] for r in res.results["rows"]] == [8] and res.results["source"]["kind"] == "file"


def test_custom_target_from_recipe():
    from bench.targets import resolve_targets
    from distill.recipe import Target

    (t,) = resolve_targets(["little"], [Target(name="little", cores=[0], threads=1, description="one small core")])
    assert t.cores == (0,) and t.threads == 1 and t.description == "one small core"


def test_pareto_front():
    from bench.plots import pareto_front

    pts = [(10, 0.9, "teacher"), (2, 0.85, "int8"), (3, 0.84, "fp32"), (1, 0.5, "tiny")]
    assert [p[2] for p in pareto_front(pts)] == ["tiny", "int8", "teacher"]


def test_host_isa_from_cpuinfo(tmp_path):
    from bench.host import machine_info

    f = tmp_path / "cpuinfo"
    f.write_text("model name\t: Test CPU\nflags\t\t: sse avx2 avx512f avx512_vnni amx_int8\n")
    info = machine_info(f)
    assert info["cpu_model"] == "Test CPU" and {"avx2", "avx512_vnni", "amx"} <= set(info["isa"])
    assert info["quantization_preset"] == "avx512_vnni"


def test_cli_bench_unknown_target_exits_2_and_prints_table(bench_run, tmp_path):
    from typer.testing import CliRunner

    from distill.cli import app

    r = CliRunner().invoke(app, ["bench", str(bench_run), "--target", "phone"])
    assert r.exit_code == 2 and "cpu" in r.output and "mobile-1t" in r.output
    r = CliRunner().invoke(app, ["bench", str(bench_run / "onnx" / "model.onnx"), "--target", "mobile-1t",
                                 "--iterations", "2", "--warmup", "0", "--seq", "8", "--report", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert "p50" in r.output and str(tmp_path / "cli") in r.output.replace("\n", "")


@pytest.mark.slow
def test_compare_optimum_adds_the_default_path_row(bench_run):
    from bench.api import run_bench

    res = run_bench(bench_run, targets=["cpu"], compare_optimum=True, **FAST)
    art = {a["key"]: a for a in res.results["artifacts"]}["optimum-default"]
    assert art["path"] == "bench/optimum-default/model_quantized.onnx"
    assert (bench_run / art["path"]).exists() and art["accuracy_source"].startswith("computed at ")
    assert any(r["artifact"] == "optimum-default" and r["status"] == "ok" for r in res.results["rows"])
