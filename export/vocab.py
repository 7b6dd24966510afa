"""Vocabulary pruning: shrink a WordPiece classifier's embedding table to the tokens its domain uses.

A small student spends most of its bytes on the word-embedding table (bert-base-uncased: 30,522
rows), while one data set's texts use a fraction of them. Pruning keeps

* every special token (`all_special_ids`, the added tokens and those the post-processor inserts),
* every single-character piece: each vocabulary entry that is one character once a leading
  continuing-subword prefix ("##") is taken off ("a", "##a", ",", "##,", "中", ...). With these kept,
  greedy WordPiece can always fall back to characters, so a word the original tokenizer split
  without [UNK] is still split without [UNK], only into more (and other) pieces;
* the tokens that the given texts use: all of them, or the `top_n` most frequent ones,

and drops the rest, including the `[unusedN]` placeholders (no text ever produces them: the BERT
pre-tokenizer splits on "[" and "]"). Kept ids stay in their old relative order, so [PAD] stays 0.

`prune_model` writes a Hugging Face folder with the embedding rows sliced to the kept ids and a
tokenizer whose vocab.txt and tokenizer.json list the kept tokens in the new id order. For texts
made only of kept tokens the pruned model gives the original logits. The idea follows TextPruner's
vocabulary pruner (github.com/airaria/TextPruner), which keeps specials plus the tokens seen; the
single-character fallback and the tokenizer.json rewrite are this module's own.

Only WordPiece tokenizers are handled; BPE and SentencePiece (Unigram) tokenizers are refused.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from distill.errors import ExportError
from distill.rundir import staged_dir

log = logging.getLogger(__name__)

PRUNE_FILE = "prune.json"
_BATCH = 1024
_UNUSED = re.compile(r"^\[unused\d+\]$")
# Config fields that hold token ids and must follow the new numbering.
_CONFIG_TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                        "unk_token_id", "mask_token_id", "decoder_start_token_id")
# tokenizer_config keys that describe where a tokenizer came from, not what it is.
_INIT_KWARGS_DROP = ("tokenizer_object", "tokenizer_file", "vocab_file", "name_or_path", "added_tokens_decoder",
                     "special_tokens_map_file", "__slow_tokenizer", "from_slow", "max_length", "stride",
                     "truncation_strategy", "truncation_side", "pad_to_multiple_of", "pad_token_type_id")


@dataclass
class PruneStats:
    """What pruning kept. `kept == specials + single_chars + from_texts` (disjoint groups, in that order)."""

    original: int  # rows in the original vocabulary (tokenizer ids)
    kept: int  # rows kept
    specials: int  # special and added tokens, and tokens the post-processor inserts
    single_chars: int  # single-character pieces that are not specials
    from_texts: int  # the other tokens, kept because the texts use them
    top_n: int | None  # cap on `from_texts`; None keeps every token the texts use
    coverage: float  # share of token occurrences in the texts whose token is kept (1.0 without top_n)
    texts: int = 0  # texts counted
    occurrences: int = 0  # token occurrences in them, without [CLS]/[SEP]
    distinct: int = 0  # distinct tokens the texts use (specials and single characters included)
    unk: int = 0  # occurrences that are [UNK] already in the original tokenizer
    unused_dropped: int = 0  # [unusedN] placeholders dropped
    char_gaps: int = 0  # characters found inside tokens that lack a head or "##" single-character piece
    # Filled by prune_model only:
    embedding_rows_before: int | None = None  # rows of the model's embedding table (config.vocab_size)
    hidden_size: int | None = None
    weights_bytes_before: int | None = None  # the source folder's weight files
    weights_bytes_after: int | None = None  # model.safetensors written
    files: dict[str, int] = field(default_factory=dict)  # out_dir file name -> bytes (prune.json left out)

    @property
    def dropped(self) -> int:
        return self.original - self.kept

    def to_json(self) -> dict:
        return {**asdict(self), "dropped": self.dropped}


# ------------------------------------------------------------------------------------------ tokenizer


def _backend_json(tokenizer) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _check_wordpiece(tokenizer, where: str) -> dict | None:
    """The backend's JSON for a fast WordPiece tokenizer, None for a slow BERT-style one; refuses the rest."""
    data = _backend_json(tokenizer)
    if data is not None:
        kind = (data.get("model") or {}).get("type")
        if kind == "WordPiece":
            return data
    elif getattr(tokenizer, "wordpiece_tokenizer", None) is not None and hasattr(tokenizer, "vocab"):
        return None
    else:
        kind = type(tokenizer).__name__
    raise ExportError(
        f"{where}: its tokenizer is a {kind} tokenizer ({type(tokenizer).__name__}), and vocabulary pruning "
        "handles only WordPiece tokenizers (BERT, DistilBERT, MiniLM, ELECTRA: a vocab.txt with '##' "
        "continuation pieces); pruning BPE and SentencePiece vocabularies is not supported yet. Export this "
        "model without vocabulary pruning, or distill into a student that uses a WordPiece tokenizer.")


def _id_to_token(tokenizer, data: dict | None) -> dict[int, str]:
    if data is None:  # slow tokenizer
        table = {i: t for t, i in tokenizer.vocab.items()}
        for i, tok in tokenizer.added_tokens_decoder.items():
            table.setdefault(i, str(tok))
        return table
    table = {i: t for t, i in data["model"]["vocab"].items()}
    for added in data.get("added_tokens") or []:
        table.setdefault(added["id"], added["content"])
    return table


def _post_processor_tokens(node) -> set[str]:
    """Tokens a post-processor inserts ([CLS], [SEP]), from its JSON."""
    if not isinstance(node, dict):
        return set()
    kind = node.get("type")
    if kind == "TemplateProcessing":
        return {t for spec in (node.get("special_tokens") or {}).values() for t in spec.get("tokens", [])}
    if kind in ("BertProcessing", "RobertaProcessing"):
        return {node["sep"][0], node["cls"][0]}
    if kind == "Sequence":
        return set().union(*(_post_processor_tokens(p) for p in node.get("processors") or []))
    return set()


def _counter(tokenizer, data: dict | None, texts: Iterable[str]) -> tuple[Counter, int]:
    """Token id -> occurrences in the texts (no special tokens added), and the number of texts."""
    counts: Counter = Counter()
    n = 0
    if data is None:  # slow tokenizer
        for text in texts:
            counts.update(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)))
            n += 1
        return counts, n
    from tokenizers import Tokenizer

    # A private copy without padding or truncation: a tokenizer.json may pad every text to 128
    # [PAD]s (MiniLM's does) or cut long texts, and neither belongs in a count.
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    batch: list[str] = []

    def flush():
        for enc in backend.encode_batch(batch, add_special_tokens=False):
            counts.update(enc.ids)
        batch.clear()

    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
        batch.append(text)
        n += 1
        if len(batch) >= _BATCH:
            flush()
    if batch:
        flush()
    return counts, n


def token_counts(tokenizer, texts: Iterable[str]) -> Counter:
    """Token id -> occurrences in the texts, as the tokenizer splits them (no [CLS]/[SEP])."""
    return _counter(tokenizer, _backend_json(tokenizer), texts)[0]


def coverage(tokenizer, kept_ids: Iterable[int], texts: Iterable[str]) -> float:
    """Share of the texts' token occurrences (original tokenizer, no [CLS]/[SEP]) whose id is in kept_ids."""
    counts = token_counts(tokenizer, texts)
    return _share(counts, set(kept_ids))


def _share(counts: Counter, kept: set[int]) -> float:
    total = sum(counts.values())
    return sum(c for i, c in counts.items() if i in kept) / total if total else 1.0


def domain_token_ids(tokenizer, texts: Iterable[str], *, top_n: int | None = None) -> tuple[list[int], PruneStats]:
    """The old ids to keep, ascending, and what they are: specials, single characters, the texts' tokens.

    With `top_n`, only the `top_n` most frequent of the texts' tokens that are neither specials nor
    single characters are kept (ties go to the lower id, so the choice is deterministic).
    """
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise ExportError(f"top_n={top_n!r}: give a whole number of tokens to keep (0 or more), or None to "
                          "keep every token the texts use.")
    data = _check_wordpiece(tokenizer, getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    id_to_token = _id_to_token(tokenizer, data)
    token_to_id = {t: i for i, t in id_to_token.items()}
    prefix = data["model"].get("continuing_subword_prefix", "##") if data else "##"
    unk = data["model"]["unk_token"] if data else tokenizer.unk_token

    special_tokens = set(getattr(tokenizer, "all_special_tokens", [])) | {unk}
    special_tokens |= {str(t) for t in tokenizer.added_tokens_decoder.values()}
    if data is not None:
        special_tokens |= {a["content"] for a in data.get("added_tokens") or []}
        special_tokens |= _post_processor_tokens(data.get("post_processor"))
    specials = {token_to_id[t] for t in special_tokens if t in token_to_id}
    specials |= {i for i in getattr(tokenizer, "all_special_ids", []) if i in id_to_token}

    def core(token: str) -> str:
        return token[len(prefix):] if prefix and token.startswith(prefix) and len(token) > len(prefix) else token

    singles = {i for i, t in id_to_token.items() if len(core(t)) == 1} - specials
    heads = {t for i, t in id_to_token.items() if i in singles and not t.startswith(prefix)}
    tails = {core(t) for i, t in id_to_token.items() if i in singles and t.startswith(prefix)}
    chars = {c for i, t in id_to_token.items() if i not in specials and not _UNUSED.match(t) for c in core(t)}
    gaps = len(chars - (heads & tails))
    if gaps:
        log.warning("%d characters of the vocabulary have no head or %r single-character piece: words using "
                    "them may become [UNK] after pruning where they did not before.", gaps, prefix)

    counts, n_texts = _counter(tokenizer, data, texts)
    base = specials | singles
    others = sorted((i for i in counts if i not in base), key=lambda i: (-counts[i], i))
    if top_n is not None:
        others = others[:top_n]
    kept = sorted(base | set(others))
    kept_set = set(kept)
    unk_id = token_to_id.get(unk)
    stats = PruneStats(
        original=len(id_to_token), kept=len(kept), specials=len(specials), single_chars=len(singles),
        from_texts=len(others), top_n=top_n, coverage=_share(counts, kept_set), texts=n_texts,
        occurrences=sum(counts.values()), distinct=len(counts), unk=counts.get(unk_id, 0) if unk_id is not None else 0,
        unused_dropped=sum(1 for i, t in id_to_token.items() if _UNUSED.match(t) and i not in kept_set),
        char_gaps=gaps)
    log.info("vocabulary: keep %d of %d ids (%d specials, %d single characters, %d from %d texts); "
             "coverage %.4f of %d token occurrences", stats.kept, stats.original, stats.specials,
             stats.single_chars, stats.from_texts, stats.texts, stats.coverage, stats.occurrences)
    return kept, stats


def _remap_post_processor(node, new_vocab: dict[str, int], where: Path):
    if node is None:
        return None
    kind = node.get("type")
    if kind == "TemplateProcessing":
        for spec in (node.get("special_tokens") or {}).values():
            spec["ids"] = [new_vocab[t] for t in spec["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        node["sep"] = [node["sep"][0], new_vocab[node["sep"][0]]]
        node["cls"] = [node["cls"][0], new_vocab[node["cls"][0]]]
    elif kind == "Sequence":
        node["processors"] = [_remap_post_processor(p, new_vocab, where) for p in node.get("processors") or []]
    elif kind != "ByteLevel":
        raise ExportError(f"{where}: the tokenizer's post-processor is a {kind}, whose token ids this pruner "
                          "cannot renumber; use a tokenizer with a TemplateProcessing or BertProcessing "
                          "post-processor (what BERT tokenizers save), or export without vocabulary pruning.")
    return node


def pruned_tokenizer_json(data: dict, kept_ids: list[int], where: Path) -> tuple[dict, list[str]]:
    """A tokenizer.json (as a dict) whose WordPiece vocab is the kept tokens in the new order, and that order."""
    id_to_token = {i: t for t, i in data["model"]["vocab"].items()}
    for added in data.get("added_tokens") or []:
        id_to_token.setdefault(added["id"], added["content"])
    tokens = [id_to_token[i] for i in kept_ids]
    new_vocab = {t: n for n, t in enumerate(tokens)}
    out = json.loads(json.dumps(data))
    model = out["model"]
    if model["unk_token"] not in new_vocab:
        raise ExportError(f"{where}: the unknown token {model['unk_token']!r} is not among the kept ids.")
    model["vocab"] = new_vocab
    dropped = [a["content"] for a in out.get("added_tokens") or [] if a["content"] not in new_vocab]
    if dropped:
        raise ExportError(f"{where}: the added tokens {dropped} are not among the kept ids; keep them.")
    for added in out.get("added_tokens") or []:
        added["id"] = new_vocab[added["content"]]
    out["post_processor"] = _remap_post_processor(out.get("post_processor"), new_vocab, where)
    if out.get("padding"):
        out["padding"]["pad_id"] = new_vocab[out["padding"]["pad_token"]]
    return out, tokens


def _source_model_max_length(model_dir: Path, tokenizer) -> int | None:
    path = model_dir / "tokenizer_config.json"
    if path.exists():
        value = json.loads(path.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(value, int):
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and value < 10**9 else None


def prune_tokenizer(tokenizer, kept_ids: list[int], out_dir: Path, *, model_max_length: int | None = None,
                    source_config: dict | None = None, where: Path | None = None) -> list[str]:
    """Write the pruned tokenizer (tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json).

    `tokenizer` is a fast WordPiece tokenizer (transformers). `source_config` is the source folder's
    tokenizer_config.json: when given, the written one is that file with only the added tokens'
    ids (and model_max_length) changed, so that settings the source left to the class defaults (e.g.
    clean_up_tokenization_spaces, which differs between BertTokenizer and BertTokenizerFast) stay
    defaults. Returns the kept tokens in the new id order.
    """
    from tokenizers import Tokenizer, models

    where = where or Path(getattr(tokenizer, "name_or_path", "") or "tokenizer")
    data = _check_wordpiece(tokenizer, str(where))
    if data is None:
        raise ExportError(f"{where}: vocabulary pruning needs a fast tokenizer (tokenizer.json); this one is "
                          f"{type(tokenizer).__name__}. Load it with use_fast=True, or save it once with "
                          "AutoTokenizer.from_pretrained(folder).save_pretrained(folder).")
    new_json, tokens = pruned_tokenizer_json(data, kept_ids, where)
    backend = Tokenizer.from_str(json.dumps(new_json, ensure_ascii=False))
    # Rebuild the model through the tokenizers API too, so that what is saved is what WordPiece makes of it.
    wp = new_json["model"]
    backend.model = models.WordPiece(wp["vocab"], unk_token=wp["unk_token"],
                                     continuing_subword_prefix=wp["continuing_subword_prefix"],
                                     max_input_chars_per_word=wp["max_input_chars_per_word"])
    wrong = [t for n, t in enumerate(tokens) if backend.token_to_id(t) != n]
    if wrong or backend.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ExportError(f"{where}: the pruned tokenizer does not number its {len(tokens)} tokens 0..{len(tokens) - 1}"
                          f" (first misplaced: {wrong[:5]}); its added tokens do not match its vocabulary.")

    kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _INIT_KWARGS_DROP}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    new = type(tokenizer)(tokenizer_object=backend, **kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    new.save_pretrained(out_dir)
    # vocab.txt for the slow tokenizer, in the new id order (not every fast class saves one).
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    # Padding/truncation of the source tokenizer.json are kept (pad id renumbered) rather than
    # whatever state the transformers wrapper leaves in its backend.
    saved = json.loads((out_dir / "tokenizer.json").read_text(encoding="utf-8"))
    saved["padding"], saved["truncation"] = new_json.get("padding"), new_json.get("truncation")
    (out_dir / "tokenizer.json").write_text(json.dumps(saved, ensure_ascii=False, indent=2), encoding="utf-8")
    if source_config is not None:
        written = json.loads((out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        config = {k: v for k, v in source_config.items() if k not in _INIT_KWARGS_DROP}
        if "added_tokens_decoder" in written:
            config["added_tokens_decoder"] = written["added_tokens_decoder"]
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                                       encoding="utf-8")
    return tokens


# ---------------------------------------------------------------------------------------------- model


def prune_embeddings(model, kept_ids: list[int]) -> dict[int, int]:
    """Slice the model's word-embedding rows to kept_ids in place; update config ids. Returns old -> new id."""
    import torch

    emb = model.get_input_embeddings()
    weight = emb.weight
    ptr = weight.data_ptr()
    shared = [k for k, v in model.state_dict().items() if v.data_ptr() == ptr]
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if len(shared) > 1 or (out is not None and getattr(out, "weight", None) is not None):
        raise ExportError(f"The word embeddings are tied to {shared} (an LM head): vocabulary pruning handles "
                          "classifiers, whose embedding table is used only on the input side. Load the model as "
                          "AutoModelForSequenceClassification.")
    if kept_ids and max(kept_ids) >= weight.shape[0]:
        raise ExportError(f"The tokenizer has ids up to {max(kept_ids)} but the model's embedding table has "
                          f"{weight.shape[0]} rows: tokenizer and model do not belong together.")
    old_to_new = {o: n for n, o in enumerate(kept_ids)}
    config = model.config
    pad = getattr(config, "pad_token_id", None)
    new_pad = old_to_new.get(pad) if isinstance(pad, int) else None
    index = torch.tensor(kept_ids, dtype=torch.long, device=weight.device)
    new = torch.nn.Embedding(len(kept_ids), weight.shape[1], padding_idx=new_pad, dtype=weight.dtype,
                             device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight.index_select(0, index))
    new.weight.requires_grad_(weight.requires_grad)
    model.set_input_embeddings(new)
    config.vocab_size = len(kept_ids)
    for name in _CONFIG_TOKEN_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            if value in old_to_new:
                setattr(config, name, old_to_new[value])
            else:
                log.warning("config.%s=%d is not a kept id; set to None", name, value)
                setattr(config, name, None)
    return old_to_new


def _weights_bytes(folder: Path) -> int:
    names = ("model.safetensors", "pytorch_model.bin")
    files = [p for n in names for p in [folder / n] if p.exists()]
    files += [p for p in folder.glob("model-*.safetensors")] + [p for p in folder.glob("pytorch_model-*.bin")]
    return sum(p.stat().st_size for p in files)


def prune_model(model_dir: Path, texts: Iterable[str], out_dir: Path, *, top_n: int | None = None,
                overwrite: bool = False) -> PruneStats:
    """Write to out_dir the classifier in model_dir with its vocabulary pruned to the texts' tokens.

    out_dir gets model.safetensors + config.json (vocab_size and pad_token_id renumbered), the pruned
    tokenizer files and prune.json (the stats and the kept old ids, new id = position). The folder is
    written beside out_dir first and moved into place when complete.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").exists():
        raise ExportError(f"{model_dir} is not a Hugging Face model folder (no config.json); give the folder that "
                          "save_pretrained wrote.")
    if out_dir.resolve() == model_dir.resolve() or model_dir.resolve() in out_dir.resolve().parents:
        raise ExportError(f"The output folder {out_dir} is the model folder {model_dir} or inside it; choose "
                          "another.")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"The output folder {out_dir} already exists and is not empty; remove it, pass "
                          "overwrite=True, or choose another folder.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    except (OSError, ValueError) as e:
        raise ExportError(f"{model_dir}: its tokenizer could not be loaded ({type(e).__name__}: {e}); save the "
                          "tokenizer into the model folder with tokenizer.save_pretrained(folder).") from e
    data = _check_wordpiece(tokenizer, str(model_dir))
    if data is None:
        raise ExportError(f"{model_dir}: AutoTokenizer gave the slow {type(tokenizer).__name__}; vocabulary "
                          "pruning needs the fast tokenizer (tokenizer.json). Install `tokenizers` and save the "
                          "tokenizer again with save_pretrained.")
    kept, stats = domain_token_ids(tokenizer, texts, top_n=top_n)

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype="auto")
    model.eval()
    rows = model.get_input_embeddings().weight.shape[0]
    if stats.original > rows:
        raise ExportError(f"{model_dir}: the tokenizer has {stats.original} ids but the model's embedding table "
                          f"has {rows} rows; tokenizer and model do not belong together.")
    prune_embeddings(model, kept)
    stats.embedding_rows_before = rows
    stats.hidden_size = int(model.get_input_embeddings().weight.shape[1])
    stats.weights_bytes_before = _weights_bytes(model_dir)

    with staged_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        config_path = model_dir / "tokenizer_config.json"
        source_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else None
        prune_tokenizer(tokenizer, kept, tmp, model_max_length=_source_model_max_length(model_dir, tokenizer),
                        source_config=source_config, where=model_dir)
        stats.weights_bytes_after = _weights_bytes(tmp)
        stats.files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / PRUNE_FILE).write_text(json.dumps({**stats.to_json(), "source": str(model_dir), "old_ids": kept},
                                                 indent=1), encoding="utf-8")
    log.info("pruned %s -> %s: %d -> %d embedding rows, weights %d -> %d bytes", model_dir, out_dir, rows,
             stats.kept, stats.weights_bytes_before, stats.weights_bytes_after)
    return stats


def read_old_ids(folder: Path) -> list[int]:
    """The original id of each id of a pruned folder (new id = position), from its prune.json."""
    return json.loads((Path(folder) / PRUNE_FILE).read_text(encoding="utf-8"))["old_ids"]
