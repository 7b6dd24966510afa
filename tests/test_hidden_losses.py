"""Hidden-state losses (hidden_mse, hidden_cos) for a pretrained student of another model: the uniform
layer map, the word-piece check that lets two vocabularies numbering the same pieces differently
(minilm-l6 and mpnet-base) pass, and the clear errors when they cut texts differently or the map
names a layer that does not exist."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from tiny import FAST, corpus, make_tiny_bert, write_csv
from transformers import BertConfig, BertTokenizerFast, BertForSequenceClassification
from typer.testing import CliRunner

from distill.cli import app
from distill.student_init import default_layer_map
from distill.tokenizing import first_split_difference

TEXTS = [row["text"] for row in corpus(2)]


def _bert(layers: int) -> BertForSequenceClassification:
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=layers,
                                                    num_attention_heads=2, intermediate_size=16))


def test_default_layer_map_is_uniform_for_other_students_and_the_copied_layers_for_teacher_layer_ones():
    assert default_layer_map("pretrained", [0, 5], _bert(6), _bert(12)) == {0: 1, 1: 3, 2: 5, 3: 7, 4: 9, 5: 11}
    assert default_layer_map("config", [0, 5], _bert(2), _bert(6)) == {0: 2, 1: 5}
    assert default_layer_map("pretrained", [0], _bert(1), _bert(2)) == {0: 1}
    assert default_layer_map("pretrained", [0], _bert(3), _bert(3)) == {0: 0, 1: 1, 2: 2}
    assert default_layer_map("teacher-layers", [0, 5], _bert(2), _bert(6)) == {0: 0, 1: 5}


def _vocab_file(tok, path: Path, drop: str | None = None, specials_last: bool = False) -> Path:
    """tok's word pieces written as a vocab.txt: renumbered (the special tokens moved to the end), or
    with one piece left out."""
    pieces = [p for p, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if p != drop]
    if specials_last:
        pieces = [p for p in pieces if not p.startswith("[")] + [p for p in pieces if p.startswith("[")]
    path.write_text("\n".join(pieces) + "\n")
    return path


def _whole_word(tok) -> str:
    """The longest piece that is a whole word of the corpus (leaving it out changes how texts are cut)."""
    words = {w for t in TEXTS for w in t.split()}
    return max((p for p in tok.get_vocab() if p in words), key=len)


def test_first_split_difference_compares_word_pieces_not_ids(tiny_bert, tmp_path):
    tok = BertTokenizerFast.from_pretrained(tiny_bert)
    renumbered = BertTokenizerFast(vocab_file=str(_vocab_file(tok, tmp_path / "a.txt", specials_last=True)))
    assert renumbered.get_vocab() != tok.get_vocab() and renumbered.get_vocab().keys() == tok.get_vocab().keys()
    assert first_split_difference(renumbered, tok, TEXTS) is None

    word = _whole_word(tok)
    trimmed = BertTokenizerFast(vocab_file=str(_vocab_file(tok, tmp_path / "b.txt", drop=word)))
    text, a, b = first_split_difference(trimmed, tok, TEXTS)
    assert word in text.split() and word not in a and word in b


def _student_with_vocab(tmp_path: Path, tiny_bert: Path, **kw) -> Path:
    """A 1-layer, 16-wide pretrained student whose tokenizer is the teacher's pieces in another vocab.txt."""
    student = make_tiny_bert(tmp_path / "student-model", layers=1, hidden=16, seed=1)
    tok = BertTokenizerFast.from_pretrained(tiny_bert)
    vocab = _vocab_file(tok, tmp_path / "vocab.txt", **kw)
    for f in student.glob("*token*"):
        f.unlink()
    (student / "vocab.txt").unlink(missing_ok=True)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(student)
    return student


def _run(tmp_path: Path, tiny_bert: Path, student: Path, *sets: str):
    csv = write_csv(tmp_path, corpus(6))
    args = ["run", "--models-dir", str(tmp_path / "models")]
    for s in [f"data.source={csv}", f"teacher.model={tiny_bert}", "name=h", *FAST, "student.init=pretrained",
              f"student.model={student}", *sets]:
        args += ["--set", s]
    return tmp_path / "models" / "h", CliRunner().invoke(app, args)


def test_a_pretrained_student_of_another_vocabulary_learns_the_teachers_hidden_states(tiny_bert, tmp_path):
    student = _student_with_vocab(tmp_path, tiny_bert, specials_last=True)
    run, r = _run(tmp_path, tiny_bert, student, "distill.losses={kl: 0.5, ce: 0.5, hidden_cos: 0.5}")
    assert r.exit_code == 0, r.output
    m = json.loads((run / "student" / "metrics.json").read_text())
    # 1 student layer, 2 teacher layers: the last learns the last, through a 16 -> 32 projection
    assert m["hidden"] == {"layer_map": {"0": 1}, "projected": True}
    assert m["layers"] == 1 and 0 <= m["test"]["accuracy"] <= 1
    saved = json.loads((run / "student" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1 and saved["hidden_size"] == 16
    with safe_open(run / "student" / "model.safetensors", "pt") as f:
        assert f.keys() and not [k for k in f.keys() if "projection" in k]  # trained beside it, not shipped


def test_hidden_losses_refuse_a_student_that_cuts_texts_differently_and_a_map_past_the_layers(tiny_bert, tmp_path):
    tok = BertTokenizerFast.from_pretrained(tiny_bert)
    student = _student_with_vocab(tmp_path / "a", tiny_bert, drop=_whole_word(tok))
    run, r = _run(tmp_path / "a", tiny_bert, student, "distill.losses={kl: 0.5, hidden_mse: 0.5}")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "hidden_mse/hidden_cos" in r.output and "cut" in r.output and "teacher-layers" in r.output
    assert not (run / "student" / "metrics.json").exists()

    student = _student_with_vocab(tmp_path / "b", tiny_bert, specials_last=True)
    run, r = _run(tmp_path / "b", tiny_bert, student, "distill.losses={kl: 0.5, hidden_mse: 0.5}",
                  "distill.layer_map={0: 2}")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "distill.layer_map {0: 2}" in r.output and "the teacher 0-1" in r.output
    assert not (run / "student" / "metrics.json").exists()


def test_the_teachers_pooled_hidden_states_come_back_in_the_texts_order(tiny_bert, tmp_path):
    """Batched by length for speed, returned in input order: each text's row is its own, one at a time."""
    import numpy as np

    from distill.student import _pooled_teacher_hidden
    from tiny import make_run

    run = make_run(tmp_path, tiny_bert, teacher=True)
    texts = sorted(TEXTS, key=len, reverse=True)[:5] + ["ok", "a much longer text than the others by far"]
    together = _pooled_teacher_hidden(run, texts, [0, 1], max_length=32)
    assert together.shape == (len(texts), 2, 32)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(together[i], _pooled_teacher_hidden(run, [t], [0, 1], max_length=32)[0], atol=1e-5)
