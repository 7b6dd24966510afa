"""The ARM check: aarch64 environment pins and prerequisites, the side script, agreement, verdict, report.

Everything but the last test runs here without emulation, in seconds: the side script runs with this
host's onnxruntime on a hand-built ONNX graph. The last test builds (or reuses) the real aarch64
environment and runs a tiny export under qemu; it needs root, qemu-user-static and debootstrap, and
is marked slow and arm so that `make test` leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from distill import arm64_env
from distill.errors import AssetError, DistillError
from export import arm64, arm64_side

# The cache the user has, captured before conftest points DISTILL_CACHE at a per-test folder: the slow
# test reuses a built environment instead of spending minutes on a new one.
REAL_CACHE = os.environ.get("DISTILL_CACHE") or str(Path.home() / ".cache" / "edge-distill")
TEXTS = [{"text": t, "label": i % 2} for i, t in enumerate([
    "a gripping and beautifully acted film", "dull", "one of the best movies of the year indeed, truly",
    "a tedious mess", "warm funny and surprisingly moving", "lifeless characters and a predictable script so so",
    "terrific", "boring slow and far too long"])]


def bag_of_words_onnx(path: Path, vocab: int, seed: int = 0) -> Path:
    """A real ONNX classifier in a few nodes: mean of masked token embeddings -> linear -> 2 logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(vocab, 16)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.normal(size=(16, 2)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["em"]),
             helper.make_node("ReduceSum", ["em", "axis1"], ["s"], keepdims=0),
             helper.make_node("ReduceSum", ["m3", "axis1"], ["n"], keepdims=0),
             helper.make_node("Div", ["s", "n"], ["mean"]),
             helper.make_node("MatMul", ["mean", "w"], ["logits"])]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(nodes, "bow", ids, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture()
def side_run(tiny_bert, tmp_path):
    """Inputs tokenized with the tiny tokenizer and the side script's output on this host."""
    from transformers import AutoTokenizer

    model = bag_of_words_onnx(tmp_path / "bow.onnx", len(AutoTokenizer.from_pretrained(tiny_bert)))
    inputs = arm64.prepare_inputs(tiny_bert, {"test": TEXTS, "validation": TEXTS[:3]}, tmp_path)
    spec = {"artifacts": {"fp32": str(model)}, "splits": {s: str(i["dir"]) for s, i in inputs.items()},
            "graph_optimization_level": "all", "threads": 1, "batch_size": 3}
    arm64_side.run({**spec, "out": str(tmp_path / "host")})
    return model, inputs, spec, tmp_path


# ------------------------------------------------------------------------------------ environment


def test_pins_follow_the_host_onnxruntime_and_name_the_folder():
    import onnxruntime

    p = arm64_env.pins()
    assert p["wheels"]["onnxruntime"] == onnxruntime.__version__ and p["wheels"]["numpy"] == np.__version__
    assert p["suite"] == "bookworm" and p["python"] == "3.11"
    h = arm64_env.pins_hash(p)
    assert len(h) == 12 and h == arm64_env.pins_hash(json.loads(json.dumps(p)))
    other = {**p, "wheels": {**p["wheels"], "onnxruntime": "1.0.0"}}
    assert arm64_env.pins_hash(other) != h
    assert arm64_env.env_dir(p) == Path(os.environ["DISTILL_CACHE"]) / f"arm64-env-{h}"


def test_only_a_folder_with_its_marker_counts_as_built():
    final = arm64_env.env_dir()
    assert arm64_env.status()["state"] == "missing"
    (final / "root" / "usr" / "bin").mkdir(parents=True)  # as a killed build that got far would leave it
    (final.parent / f".{final.name}.tmp-99999999").mkdir()
    assert arm64_env.status()["state"] == "missing"
    with pytest.raises(AssetError, match="distill assets install arm64-env"):
        arm64_env.require_built()
    (final / arm64_env.MARKER).write_text(json.dumps({"pins": arm64_env.pins(), "size_bytes": 123_000_000}))
    st = arm64_env.status()
    assert st["state"] == "built" and st["size_bytes"] == 123_000_000 and st["stale"] == []
    old = final.parent / "arm64-env-000000000000"
    old.mkdir()
    (old / arm64_env.MARKER).write_text(json.dumps({"pins": {"wheels": {"onnxruntime": "1.0.0"}}}))
    assert arm64_env.status()["stale"] == [old]


def test_missing_tools_and_root_are_named_with_the_fix(tmp_path, monkeypatch):
    empty = str(tmp_path)  # a PATH with nothing on it
    missing = arm64_env.missing_tools(path=empty, euid=1000, need_root=True)
    assert missing == ["qemu-aarch64-static", "debootstrap", "root"]
    msg = arm64_env.prerequisite_message(missing, "build it")
    assert "apt-get install -y qemu-user-static debootstrap" in msg and "root" in msg and msg.count("\n") == 0
    assert arm64_env.missing_tools(["sh"], path="/bin:/usr/bin", euid=0, need_root=True) == []
    monkeypatch.setenv("PATH", empty)
    with pytest.raises(AssetError, match="qemu-aarch64-static and debootstrap are not on PATH"):
        arm64_env.build()
    assert not list(Path(os.environ["DISTILL_CACHE"]).glob("*arm64-env*"))


def test_arm_targets_are_profiles_without_latency():
    from bench.targets import resolve_targets

    big, little = resolve_targets(["arm64-emulated", "arm64-emulated-little"])
    assert (big.qemu_cpu, little.qemu_cpu) == ("max", "cortex-a53")
    assert big.threads == little.threads == 1 and big.emulated and "no latency" in big.description
    assert resolve_targets(["cpu"])[0].qemu_cpu is None


# ------------------------------------------------------------------------------- side script, parsing


def test_sorted_batches_give_the_logits_of_one_unbatched_run(side_run):
    model, inputs, spec, tmp = side_run
    res = arm64.parse_result(tmp / "host", spec)
    assert res["machine"] == os.uname().machine and res["graph_optimization_level"] == "all"
    got = res["logits"]["fp32"]["test"]
    assert got.shape == (8, 2) and got.dtype == np.float32
    # Each row alone, unpadded: cutting sorted batches to their longest row must not change a logit.
    folder = inputs["test"]["dir"]
    ids, mask, lengths = (np.load(folder / f"{n}.npy") for n in ("input_ids", "attention_mask", "lengths"))
    assert list(lengths) == sorted(lengths) and inputs["test"]["n"] == 8
    sess = arm64_side.session(str(model), "all", 1)
    for i in range(8):
        one = sess.run(None, {"input_ids": ids[i:i + 1, :lengths[i]], "attention_mask": mask[i:i + 1, :lengths[i]]})[0]
        np.testing.assert_allclose(got[i], one[0], atol=1e-5)
    assert sorted(inputs["test"]["labels"].tolist()) == [0] * 4 + [1] * 4


def test_a_result_from_the_wrong_machine_or_with_missing_logits_is_refused(side_run):
    _, _, spec, tmp = side_run
    if os.uname().machine != "aarch64":
        with pytest.raises(DistillError, match="did not run under emulation"):
            arm64.parse_result(tmp / "host", spec, machine="aarch64")
    (tmp / "host" / "fp32.validation.npy").unlink()
    with pytest.raises(DistillError, match="no readable logits for fp32 on validation"):
        arm64.parse_result(tmp / "host", spec)
    with pytest.raises(DistillError, match="wrote no result"):
        arm64.parse_result(tmp / "nowhere", spec)


def test_int8_on_the_same_cpu_agrees_with_itself_bit_for_bit(side_run):
    """Two runs of the same artifacts with the same options: the comparison a real check makes, minus qemu."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, inputs, spec, tmp = side_run
    quantize_dynamic(model, tmp / "bow.int8.onnx", weight_type=QuantType.QInt8)
    spec = {**spec, "artifacts": {"fp32": str(model), "int8-dynamic": str(tmp / "bow.int8.onnx")}}
    for out in ("a", "b"):
        arm64_side.run({**spec, "out": str(tmp / out)})
    runs = [arm64.parse_result(tmp / out, spec) for out in ("a", "b")]
    labels = {s: i["labels"] for s, i in inputs.items()}
    arts = arm64.combine(runs[0], runs[1], labels, {"fp32": "bow.onnx", "int8-dynamic": "bow.int8.onnx"})
    assert set(arts) == {"fp32", "int8-dynamic"}
    for e in arts.values():
        assert set(e["splits"]) == {"test", "validation"} and e["splits"]["validation"]["n"] == 3
        assert all(s["bit_identical"] and s["label_agreement"] == 1.0 and s["max_abs_diff"] == 0.0
                   for s in e["splits"].values())
        assert e["accuracy"]["test"]["arm"] == e["accuracy"]["test"]["host"]
    assert arm64.passed(arts)


def test_export_artifacts_are_the_ok_onnx_files(tmp_path):
    for f in ("model.onnx", "model.int8-dynamic.onnx", "model.int8-dynamic.ort"):
        (tmp_path / f).write_bytes(b"x")
    (tmp_path / "export.json").write_text(json.dumps({"artifacts": {
        "fp32": {"file": "model.onnx", "status": "ok"}, "int8-dynamic": {"file": "model.int8-dynamic.onnx", "status": "ok"},
        "int8-dynamic-ort": {"file": "model.int8-dynamic.ort", "status": "ok"},
        "int8-static": {"file": "model.int8-static.onnx", "status": "failed"}}}))
    assert arm64.export_artifacts(tmp_path) == {"fp32": tmp_path / "model.onnx",
                                                "int8-dynamic": tmp_path / "model.int8-dynamic.onnx"}
    with pytest.raises(DistillError, match="distill export onnx"):
        arm64.export_artifacts(tmp_path / "nothing")


# ---------------------------------------------------------------------------- agreement and verdict


def test_compare_counts_labels_and_logit_differences():
    host = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.5, 0.4]], np.float32)
    arm = np.array([[1.0, 0.0], [1.0, 0.5], [2.0, 1.001], [0.5, 0.4]], np.float32)
    c = arm64.compare(host, arm)
    assert c == {"n": 4, "label_agreement": 0.75, "disagreements": 1, "max_abs_diff": pytest.approx(1.0),
                 "bit_identical": False}
    assert arm64.compare(host, host.copy())["bit_identical"]
    with pytest.raises(DistillError, match="did not run the same inputs"):
        arm64.compare(host, arm[:3])


def _result(arm_test: np.ndarray, host_test: np.ndarray, labels: np.ndarray) -> dict:
    host = {"logits": {"int8-dynamic": {"test": host_test}}}
    arm = {"logits": {"int8-dynamic": {"test": arm_test}}, "artifacts": {"int8-dynamic": {"load_s": 1.5, "run_s": 40.2}}}
    arts = arm64.combine(host, arm, {"test": labels}, {"int8-dynamic": "model.int8-dynamic.onnx"})
    r = {"qemu_cpu": "cortex-a53", "graph_optimization_level": "all", "arm": {"onnxruntime": "1.32.0"},
         "artifacts": arts, "min_agreement": arm64.MIN_AGREEMENT, "passed": arm64.passed(arts)}
    r["verdict"] = arm64.verdict(r)
    return r


def test_verdict_says_the_outcome_in_one_sentence():
    labels = np.array([0, 1] * 500)
    host = np.stack([1.0 - labels, labels.astype(float)], 1).astype(np.float32)
    same = _result(host.copy(), host, labels)
    assert "bit-identical logits to x86 on all 1,000 texts" in same["verdict"] and same["passed"]
    nudged = host.copy()
    nudged[0, 0] += 2e-3
    r = _result(nudged, host, labels)
    assert "same label as on x86 for all 1,000 texts (largest |logit diff| 2.0e-03, int8-dynamic)" in r["verdict"]
    flipped = host.copy()
    flipped[:3] = flipped[:3, ::-1]  # three labels change on ARM
    r = _result(flipped, host, labels)
    assert r["passed"] and "99.70%" in r["verdict"] and "3 of 1,000 differ" in r["verdict"]
    assert "test accuracy 99.7% on ARM vs 100.0% on x86" in r["verdict"]
    flipped[:30] = host[:30, ::-1]
    r = _result(flipped, host, labels)
    assert not r["passed"] and "int8-dynamic agrees with x86 on only 97.00%" in r["verdict"]
    assert "below the 99.5% bar" in r["verdict"] and "QEMU_CPU=cortex-a53" in r["verdict"]
    for v in (same, r):
        assert v["verdict"].count(". ") == 0 and v["verdict"].endswith(".")
    row = arm64.table(r, {"int8-dynamic": "ONNX int8 dynamic"})[0]
    assert row == ["ONNX int8 dynamic", "test", "1,000", "97.00% (30 differ)", "1.0e+00", "no", "97.00%", "100.00%", "42"]


def test_report_has_an_arm_section_with_table_and_verdict(tmp_path):
    from bench import report
    from bench.host import machine_info

    labels = np.array([0, 1] * 10)
    host = np.stack([1.0 - labels, labels.astype(float)], 1).astype(np.float32)
    check = {**_result(host.copy(), host, labels), "target": "arm64-emulated-little", "profile": "little core",
             "threads": 1, "batch_size": 32, "max_length": 256, "wall_s": 61.0, "note": arm64.EMULATED_NOTE}
    check["arm"].update(python="3.11.2", hwcaps={"asimddp": False, "i8mm": False})
    check["host"] = {"onnxruntime": "1.32.0"}
    results = {"schema": 1, "version": "x", "created": "now", "source": {"path": "models/x", "kind": "run"},
               "host": machine_info(), "config": {"targets": [], "warmup": 1, "iterations": 1, "inputs": "-"},
               "emulation_note": "-", "artifacts": [{"key": "int8-dynamic", "label": "ONNX int8 dynamic", "runtime": "onnxruntime",
                                              "path": "onnx/model.int8-dynamic.onnx", "size_bytes": 1, "accuracy": None,
                                              "accuracy_source": None}],
               "rows": [], "notes": [], "warnings": [],
               "arm64": [check, {"target": "arm64-emulated", "qemu_cpu": "max", "error": "qemu crashed"}]}
    md = report.write_markdown(results, tmp_path / "r.md", []).read_text()
    assert "## ARM (aarch64, emulated): arm64-emulated-little (QEMU_CPU=cortex-a53: little core)" in md
    assert f"**{check['verdict']}**" in md and "| ONNX int8 dynamic | test | 20 | 100.00% | 0.0e+00 | yes |" in md
    assert "| max abs logit diff |" in md and "emulated wall s (not a speed)" in md  # no stray "|" in the head
    assert "CPU features seen: none of dotprod/i8mm/SVE" in md
    assert "The check failed: qemu crashed" in md
    page = report.write_html(results, tmp_path / "r.html", []).read_text()
    assert "ARM (aarch64, emulated)" in page and "bit-identical logits" in page and "qemu crashed" in page


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_lists_the_env_and_refuses_arm_work_until_it_is_built(tiny_bert, tmp_path):
    from typer.testing import CliRunner

    from distill.cli import app

    r = CliRunner().invoke(app, ["assets", "list"])
    assert r.exit_code == 0 and "arm64-env" in r.output and "missing" in r.output
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["export", "onnx", str(tiny_bert), "--output", str(out), "--check-arm64"])
    assert r.exit_code == 2 and "distill assets install arm64-env" in r.output
    assert not out.exists()  # refused before minutes of export
    run = tmp_path / "run"
    (run / "onnx").mkdir(parents=True)
    bag_of_words_onnx(run / "onnx" / "model.onnx", 10)
    (run / "onnx" / "export.json").write_text(json.dumps({"artifacts": {"fp32": {"file": "model.onnx", "status": "ok"}}}))
    r = CliRunner().invoke(app, ["bench", str(run), "--target", "arm64-emulated"])
    assert r.exit_code == 2 and "distill assets install arm64-env" in r.output and not (run / "bench").exists()


# ------------------------------------------------------------------------------------ under emulation


def _can_emulate() -> str | None:
    missing = arm64_env.missing_tools(need_root=True)
    return f"needs {', '.join(missing)}" if missing else None


@pytest.mark.slow
@pytest.mark.arm
@pytest.mark.skipif(_can_emulate() is not None, reason=f"ARM check {_can_emulate()}")
def test_tiny_export_under_emulation(tiny_bert, tmp_path, monkeypatch):
    """Real qemu: a tiny run exported with --check-arm64, then benched on the little-core profile."""
    from bench.api import run_bench
    from export.api import export_onnx
    from tiny import make_run

    monkeypatch.setenv("DISTILL_CACHE", REAL_CACHE)
    arm64_env.build()  # reused when built; minutes and about 400 MB the first time
    run = make_run(tmp_path, tiny_bert)
    res = export_onnx(run, ort=False, arm64={"qemu_cpu": "max", "graph_optimization_level": "all"})
    a = res.arm64
    assert a["arm"]["machine"] == "aarch64" and a["arm"]["qemu_cpu"] == "max"
    assert a["arm"]["hwcaps"]["asimddp"] and a["arm"]["hwcaps"]["i8mm"]
    assert a["arm"]["onnxruntime"] == a["host"]["onnxruntime"] and a["splits"] == {"validation": 8, "test": 8}
    assert set(a["artifacts"]) == {"fp32", "int8-dynamic"} and a["passed"]
    fp32 = a["artifacts"]["fp32"]
    assert all(s["label_agreement"] == 1.0 and s["max_abs_diff"] < 1e-5 for s in fp32["splits"].values())
    assert fp32["accuracy"]["test"]["arm"]["accuracy"] == fp32["accuracy"]["test"]["host"]["accuracy"]
    saved = json.loads((run / "onnx" / "arm64-check.json").read_text())
    assert saved["verdict"] == a["verdict"]
    assert "arm64-check.json" in json.loads((run / "run.json").read_text())["stages"]["onnx"]["outputs"]

    bench = run_bench(run, targets=["arm64-emulated-little"], arm64_opt_level="basic")
    little = bench.results["arm64"][0]
    assert bench.results["rows"] == [] and little["target"] == "arm64-emulated-little"
    assert little["arm"]["qemu_cpu"] == "cortex-a53" and not any(little["arm"]["hwcaps"].values())
    # Measured on this tiny model at every level and profile: fp32 and int8 logits within ~2e-8 of x86 (not
    # always bit-identical: the float ops around the int8 MatMuls round differently), no label changes.
    for e in little["artifacts"].values():
        assert all(s["label_agreement"] == 1.0 and s["max_abs_diff"] < 1e-6 for s in e["splits"].values()), little
    md = (run / "bench" / "report.md").read_text()
    assert "## ARM (aarch64, emulated): arm64-emulated-little" in md and little["verdict"] in md
    assert not list(Path("/tmp").glob("distill-arm64-*"))  # work folders are removed
    assert not arm64_env.mounts_under(Path(REAL_CACHE))
