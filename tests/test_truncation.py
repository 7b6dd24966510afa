"""Head+tail truncation (distill/tokenizing.py): one cut for training, soft labels, evaluation, the export's
checks, the end-to-end graph and the bench. Real tokenizers, ONNX Runtime with the Extensions, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import FAST, corpus, make_run, write_csv
from typer.testing import CliRunner

from distill.tokenizing import cut, encode, head_tokens
from export import e2e

pytestmark = pytest.mark.heavy  # minutes of exports, benches, kills or SetFit: `make test-heavy`

LENGTH = 12  # room for 10 pieces: head 2, tail 8
LONG = ["the cast is terrific " * 6 + "but the ending is a dull waste of time",
        "boring slow and far too long " * 4 + "yet one of the best movies of the year"]
SHORT = ["a gripping plot indeed", "", "dull"]


@pytest.fixture(scope="module")
def tok(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def test_head_tail_keeps_the_first_and_last_pieces_and_leaves_short_texts_alone(tok):
    head = head_tokens(tok, LENGTH, "head_tail")
    assert head == 2 and head_tokens(tok, LENGTH, "right") == 0
    with pytest.raises(ValueError, match="not one of right, head_tail"):
        head_tokens(tok, LENGTH, "middle")
    for text in LONG:
        pieces = tok(text, add_special_tokens=False)["input_ids"]
        assert len(pieces) > LENGTH
        want = [tok.cls_token_id] + pieces[:2] + pieces[-8:] + [tok.sep_token_id]
        assert encode(tok, [text], max_length=LENGTH, head=head)["input_ids"][0] == want
        assert encode(tok, [text], max_length=LENGTH)["input_ids"][0] == [tok.cls_token_id] + pieces[:10] + [tok.sep_token_id]
    for text in SHORT:  # texts that fit are never cut, so both ways agree
        assert encode(tok, [text], max_length=LENGTH, head=head)["input_ids"] == tok([text])["input_ids"]
    batch = encode(tok, LONG + SHORT, max_length=LENGTH, head=head, padding=True, return_tensors="np")
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (5, LENGTH)
    assert batch["attention_mask"].sum(1).tolist() == [LENGTH, LENGTH] + [len(x) for x in tok(SHORT)["input_ids"]]
    assert cut([1, 2, 3], 10, 2) == [1, 2, 3] and cut(list(range(20)), 5, 2) == [0, 1, 17, 18, 19]


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(e2e.custom_ops_library())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("ops", ["mobile", "full"])
def test_the_in_graph_tokenizer_cuts_head_and_tail_as_python_does(tiny_bert, tok, ops):
    sess = _session(e2e.tokenizer_model(tiny_bert, max_length=LENGTH, ops=ops, head=2))
    texts = LONG + SHORT
    for text in texts:
        ids, mask, _ = sess.run(None, {"text": np.array([text], dtype=object)})
        want = encode(tok, [text], max_length=LENGTH, head=2)
        assert ids[0].tolist() == want["input_ids"][0], text
        assert mask[0].tolist() == want["attention_mask"][0]
    ids, mask, types = sess.run(None, {"text": np.array(texts, dtype=object)})
    want = encode(tok, texts, max_length=LENGTH, head=2, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"])
    np.testing.assert_array_equal(types, want["token_type_ids"])


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    from export.api import export_onnx

    run = make_run(tmp_path_factory.mktemp("head-tail"), tiny_bert, teacher=True)
    for which in ("student", "teacher"):
        (run / which / "metrics.json").write_text(json.dumps(
            {"max_length": LENGTH, "truncation": "head_tail", "head_tokens": 2,
             "test": {"accuracy": 0.5, "macro_f1": 0.4, "n": 8}}))
    rows = [json.loads(x) for x in (run / "data" / "test.jsonl").read_text().splitlines()]
    long_rows = [{"text": t, "label": i % 2} for i, t in enumerate(LONG * 2)]
    (run / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + long_rows))
    return run, export_onnx(run, ort=False)


def test_the_export_states_the_cut_and_its_text_graph_decides_as_the_python_cut(exported):
    run, res = exported
    assert res.manifest["truncation"] == {"side": "head_tail", "head_tokens": 2, "tail_tokens": 8}
    assert res.manifest["source"]["head_tokens"] == 2
    same = res.artifacts["e2e-int8-dynamic"]["same_labels_as"]
    assert same["artifact"] == "int8-dynamic" and same["label_agreement"] == 1.0 and same["passed"], res.lines
    import onnx

    graph = run / "onnx" / "model.e2e.int8.onnx"
    meta = {p.key: p.value for p in onnx.load(str(graph)).metadata_props}
    assert meta["e2e.truncation"] == "head_tail: first 2, last 8 tokens"
    # each text graph scores as the int8 token-id graph on Python's cut of the same kind: the exported one
    # as the head+tail cut, one rebuilt with a right cut as the right cut. (The gap between the two cuts
    # on this untrained int8 model is small and varies by run, 4e-5 to 1e-4; the comparison does not
    # rest on it.) One text per run: dynamic int8 scales activations per batch.
    import onnxruntime as ort

    right = e2e.build_e2e(run / "onnx" / "model.int8-dynamic.onnx", run / "onnx", run / "right.onnx",
                          max_length=LENGTH)
    ids_graph = ort.InferenceSession(str(run / "onnx" / "model.int8-dynamic.onnx"), providers=["CPUExecutionProvider"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "onnx")
    names = {i.name for i in ids_graph.get_inputs()}
    for graph_file, head in ((graph, 2), (right, 0)):
        _, probs = e2e.e2e_predict(graph_file, SHORT + LONG, batch_size=1)
        for text, p in zip(SHORT + LONG, probs):
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in
                    encode(tok, [text], max_length=LENGTH, head=head, return_tensors="np").items() if k in names}
            logits = ids_graph.run(None, feed)[0][0]
            want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            np.testing.assert_allclose(p, want, atol=1e-6, err_msg=f"{graph_file.name}: {text!r}")
    assert all(encode(tok, [t], max_length=LENGTH, head=2)["input_ids"] != encode(tok, [t], max_length=LENGTH)["input_ids"]
               for t in LONG)


def test_the_bench_cuts_every_row_it_tokenizes_the_same_way(exported):
    from bench.api import run_bench

    run, _ = exported
    res = run_bench(run, targets=["mobile-1t"], iterations=2, warmup=1, batch=[1], texts=4,
                    compare_optimum=True).results
    arts = {a["key"]: a for a in res["artifacts"]}
    for key in ("student-pytorch", "teacher-pytorch", "int8-dynamic", "e2e-int8-dynamic", "optimum-default"):
        assert arts[key]["head"] == 2, (key, arts[key])
    # the one row whose accuracy the bench computes itself (the others come from export.json / metrics.json)
    assert arts["optimum-default"]["accuracy_source"] == f"computed at {LENGTH} tokens"


def test_a_run_with_head_tail_records_it_and_resumes(tmp_path, tiny_bert):
    from distill.cli import app

    data = write_csv(tmp_path, corpus(8))
    args = ["run", "--models-dir", str(tmp_path / "models")]
    for s in [f"data.source={data}", f"teacher.model={tiny_bert}", "name=ht", *FAST,
              f"teacher.max_length={LENGTH}", f"student.max_length={LENGTH}",
              "teacher.truncation=head_tail", "student.truncation=head_tail"]:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rd = tmp_path / "models" / "ht"
    for which in ("teacher", "student"):
        m = json.loads((rd / which / "metrics.json").read_text())
        assert (m["max_length"], m["truncation"], m["head_tokens"]) == (LENGTH, "head_tail", 2)
    assert "truncation: head_tail" in (rd / "recipe.yaml").read_text()
    r = CliRunner().invoke(app, args + ["--resume"])
    assert r.exit_code == 0 and r.output.count("reused") == 5, r.output


def test_truncation_enters_the_stage_digests_only_when_set_so_older_runs_resume():
    from distill.recipe import digest_view, load_recipe

    assert "truncation" not in digest_view(load_recipe(None), "teacher")
    r = load_recipe(None, ["student.truncation=head_tail"])
    assert r.student.truncation == "head_tail" and r.teacher.truncation == "right"
    assert digest_view(r, "student")["truncation"] == "head_tail" and "truncation" not in digest_view(r, "teacher")
