"""The app developer's artifact on a tiny run: one deployed length everywhere, a pruned vocabulary, the
end-to-end graph (strings in), and a bench that times real texts, the floor and the teacher's optimum int8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.api import export_onnx
from tiny import make_run, make_tiny_bert

pytestmark = pytest.mark.heavy  # minutes of exports, benches, kills or SetFit: `make test-heavy`

LENGTH = 12  # shorter than several test texts, so truncation matters
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tiny_bert, tmp_path_factory) -> Path:
    """A tiny run whose student and teacher were trained at LENGTH tokens (their metrics.json say so)."""
    run = make_run(tmp_path_factory.mktemp("deployed"), tiny_bert, teacher=True)
    for which in ("student", "teacher"):
        (run / which / "metrics.json").write_text(json.dumps(
            {"max_length": LENGTH, "test": {"accuracy": 0.5, "macro_f1": 0.4, "n": 8}}))
    (run / "data" / "augmented.jsonl").write_text(
        json.dumps({"text": "a gripping plot indeed", "split": "train", "source": 0}) + "\n")
    (run / "evaluate").mkdir()
    (run / "evaluate" / "summary.json").write_text(json.dumps(
        {"rows": {"tfidf_logreg": {"accuracy": 0.6, "macro_f1": 0.55}}}))
    return run


@pytest.fixture(scope="module")
def exported(run):
    return export_onnx(run, vocab="domain", per_channel=True)


def test_the_deployed_length_is_written_into_the_export(exported, run):
    onnx = run / "onnx"
    assert exported.manifest["max_length"] == LENGTH
    assert json.loads((onnx / "tokenizer_config.json").read_text())["model_max_length"] == LENGTH
    assert json.loads((onnx / "tokenizer.json").read_text())["truncation"]["max_length"] == LENGTH
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(onnx)  # an app following the files truncates at LENGTH by itself
    long = " ".join(["gripping"] * 40)
    assert len(tok(long, truncation=True)["input_ids"]) == LENGTH


def test_pruned_vocabulary_keeps_the_gate_and_is_smaller(exported, run, tiny_bert):
    v = exported.manifest["vocab"]
    assert v["mode"] == "domain" and v["kept"] < v["original"] == json.loads((tiny_bert / "config.json").read_text())["vocab_size"]
    assert json.loads((run / "onnx" / "config.json").read_text())["vocab_size"] == v["kept"]
    assert len((run / "onnx" / "vocab.txt").read_text(encoding="utf-8").splitlines()) == v["kept"]
    assert exported.passed, exported.lines
    assert not (run / "onnx" / ".pruned-model").exists()


def test_e2e_graph_takes_strings_and_decides_as_the_token_id_graph(exported, run):
    arts = exported.artifacts
    assert {"e2e-int8-dynamic", "e2e-int8-dynamic-ort"} <= set(arts)
    assert arts["e2e-int8-dynamic"]["file"] == "model.e2e.int8.onnx"
    for key in ("e2e-int8-dynamic", "e2e-int8-dynamic-ort"):
        same = arts[key]["same_labels_as"]
        assert same["artifact"] == "int8-dynamic" and same["label_agreement"] == 1.0 and same["passed"]
        assert same["n"] == 16  # validation 8 + test 8
        assert arts[key]["accuracy"]["test"] == arts["int8-dynamic"]["accuracy"]["test"]
    assert any("same labels as int8-dynamic" in line for line in exported.lines)
    from export.e2e import e2e_predict

    texts = [json.loads(line)["text"] for line in (run / "data" / "test.jsonl").read_text().splitlines()]
    labels, probs = e2e_predict(run / "onnx" / "model.e2e.int8.onnx", texts)
    assert labels.shape == (len(texts),) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def benched(exported, run):
    from bench.api import run_bench

    return run_bench(run, targets=["mobile-1t"], iterations=3, warmup=1, batch=[1], texts=6, compare_optimum=True)


def test_bench_rows_use_the_deployed_length_and_real_texts(benched):
    res = benched.results
    assert res["config"]["seq"] == [LENGTH] and res["config"]["deployed_length"] == LENGTH
    keys = [a["key"] for a in res["artifacts"]]
    for k in ("teacher-pytorch", "student-pytorch", "int8-dynamic", "e2e-int8-dynamic", "e2e-int8-dynamic-ort",
              "optimum-default", "teacher-optimum-int8", "tfidf-floor"):
        assert k in keys, keys
    text_rows = [r for r in res["rows"] if r["inputs"] == "texts"]
    assert {r["artifact"] for r in text_rows} == set(keys)  # every artifact, the floor included
    for r in text_rows:
        assert r["status"] == "ok", r
        assert r["texts"] == 6 and len(r["samples_ms"]) == 6 and r["seq"] is None
        if r["artifact"] != "tfidf-floor":
            assert 1 <= r["tokens"]["p50"] <= r["tokens"]["max"] <= LENGTH
    fixed = [r for r in res["rows"] if r["inputs"] == "synthetic"]
    assert "tfidf-floor" not in {r["artifact"] for r in fixed} and all(r["seq"] == LENGTH for r in fixed)
    for r in fixed:  # cold start: the fixed rows (the text rows load the Python tokenizer first)
        assert r["load_s"] > 0 and r["first_run_ms"] > 0 and "memory_growth_mb" in r
    assert all("memory_growth_mb" not in r for r in text_rows)


def test_text_rows_read_the_ids_the_bench_tokenized_once_without_loading_transformers(exported, run, tmp_path):
    import subprocess
    import sys

    from bench.api import _text_ids_files
    from bench.artifacts import discover_run
    from bench.worker import text_feeds

    arts = [a for a in discover_run(run)[0] if a.tokenizer]
    test = run / "data" / "test.jsonl"
    files = _text_ids_files(arts, test, 6, LENGTH, tmp_path)
    assert set(files) == {a.key for a in arts} and len(set(files.values())) < len(arts)  # shared by tokenizer and length
    for a in arts:
        spec = {"runtime": a.runtime, "data": str(test), "max_texts": 6, "max_length": a.max_length or LENGTH,
                "head": a.head, "tokenizer": str(a.tokenizer)}
        tokenized, given = text_feeds(spec), text_feeds({**spec, "ids_file": files[a.key]})
        assert given[1] == tokenized[1] and len(given[0]) == 6
        for x, y in zip(*(f[0] for f in (tokenized, given))):
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), a.key
    # the worker process of a token-id row: ids in, no tokenizer library loaded
    a = next(a for a in arts if a.runtime == "onnxruntime")
    code = ("import json, sys; from bench.worker import text_feeds; "
            f"text_feeds({{'runtime': 'onnxruntime', 'ids_file': {files[a.key]!r}}}); "
            "print(json.dumps(sorted(m for m in ('transformers', 'torch', 'tokenizers') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout) == []


def test_bench_accuracy_is_computed_at_each_artifacts_length_with_macro_f1(benched):
    arts = {a["key"]: a for a in benched.results["artifacts"]}
    for k in ("optimum-default", "teacher-optimum-int8"):
        assert arts[k]["accuracy_source"] == f"computed at {LENGTH} tokens"
        assert 0 <= arts[k]["accuracy"]["macro_f1"] <= 1 and arts[k]["accuracy"]["n"] == 8
    assert arts["tfidf-floor"]["accuracy"]["accuracy"] == 0.6
    head, rows = __import__("bench.report", fromlist=["table_rows"]).table_rows(benched.results)
    assert "macro-F1" in head and "x vs teacher int8" in head and "% of peak" in head


def test_bench_records_peaks_macs_and_the_fraction_of_peak(benched):
    res = benched.results
    peak = res["peaks"]["mobile-1t"]
    assert peak["threads"] == 1 and peak["int8_gops"] > 0 and peak["fp32_gflops"] > 0
    rows = [r for r in res["rows"] if r["artifact"] == "int8-dynamic" and r["inputs"] == "synthetic"]
    assert rows and rows[0]["macs"]["total"] > 0 and rows[0]["macs"]["seq"] == LENGTH
    hw = rows[0]["hardware"]
    assert 0 < hw["fraction"] and hw["ideal_ms"] == pytest.approx(hw["fraction"] * rows[0]["latency_ms"]["p50"], rel=1e-6)
    e2e = next(a for a in res["artifacts"] if a["key"] == "e2e-int8-dynamic")
    assert e2e["onnx_graph"].endswith("model.int8-dynamic.onnx")  # its MACs: the classifier it wraps
    row = next(r for r in res["rows"] if r["artifact"] == "e2e-int8-dynamic" and r["inputs"] == "synthetic")
    assert row["macs"]["total"] == rows[0]["macs"]["total"] and "fraction" in row["hardware"]
    text_row = next(r for r in res["rows"] if r["artifact"] == "int8-dynamic" and r["inputs"] == "texts")
    assert text_row["macs"]["seq"] == round(text_row["tokens"]["p50"])  # real texts: MACs at the median length


def test_plain_model_folder_deploys_its_tokenizer_length(tmp_path):
    model = make_tiny_bert(tmp_path / "m")
    res = export_onnx(model, output=tmp_path / "out", quantize="none", ort=False, e2e=False)
    assert res.manifest["max_length"] == 128  # the tiny tokenizer's model_max_length (under the 256 cap)
