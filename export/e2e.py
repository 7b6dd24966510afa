"""End-to-end classifier: one ONNX graph from a batch of strings to labels and probabilities.

The artifact
    `build_e2e` joins a tokenizer graph to an exported BERT-family classifier (fp32, or int8 from
    ONNX Runtime's quantize_dynamic / transformer optimizer, com.microsoft ops included):

    input   text           tensor(string) [N]     raw texts, any length, "" allowed, N = 0 allowed
    output  label          tensor(int64)  [N]     argmax of the logits
    output  probabilities  tensor(float)  [N, num_labels]  softmax of the logits

    The tokenizer part uses ONNX Runtime Extensions operators (domain ai.onnx.contrib), so a session
    must register the extensions' custom-op library (`e2e_session` does). An app adds, beside ONNX
    Runtime itself:
      - Android: `com.microsoft.onnxruntime:onnxruntime-extensions-android` next to
        `com.microsoft.onnxruntime:onnxruntime-android`, then
        `sessionOptions.registerCustomOpLibrary(OrtxPackage.getLibraryPath())`;
      - iOS: the `onnxruntime-extensions-c` pod next to `onnxruntime-c` / `onnxruntime-objc`, then
        register its `RegisterCustomOps` function on the session options
        (`registerCustomOpsUsingFunction` in Objective-C, `RegisterCustomOpsUsingFunction` in C).
    The .ort form (`export.mobile.to_ort(..., custom_op_library=custom_ops_library())`) needs the same.

Two tokenizer graphs (`ops=`)
    The stock mobile packages are built with a selected operator list (tools/android|ios/
    package_ops.config in microsoft/onnxruntime-extensions: BertTokenizer, the BPE/CLIP/SentencePiece
    tokenizers, image ops). Of the BERT operators they have BasicTokenizer, BertTokenizer,
    BertTokenizerDecoder and HfBertTokenizer, not WordpieceTokenizer, the RE2 regex ops or the string
    ops (StringMapping, StringJoin, ...), which the pip wheel has.

    "mobile" (default): the extensions' BertTokenizer and standard ONNX ops only, so the graph loads
    on the stock Android/iOS packages. Attributes from the HF tokenizer: do_lower_case = lowercase,
    strip_accents = HF's rule (None follows lowercase; the extensions' converter reads None as False,
    which turned "crème brûlée" into [UNK]s), tokenize_chinese_chars = handle_chinese_chars, the
    special tokens and the continuing-subword prefix. BertTokenizer's WordPiece, when a word cannot be
    split completely, emits the pieces found so far and then [UNK] ("great👍" -> great, [UNK]), where
    HF makes the whole word one [UNK]; the graph gives BertTokenizer the vocabulary plus "##c" for each
    character c the vocabulary lacks as a continuation (ids from V on, ~62k entries), so no word fails
    half-way, and turns a word holding such a piece into one [UNK], as HF does. Characters HF deletes
    and BertTokenizer keeps (nonspacing marks such as the emoji variation selector in "❤️" when accents
    are stripped; format characters such as U+FEFF) get vocabulary entries whose pieces the graph drops.
    What it cannot reproduce is BertTokenizer's own normalization: lowercase and accent stripping come
    from small tables (ASCII, Latin-1, part of Greek and Cyrillic: "Ł", "ř", "ś", Greek capitals, "İ"
    are not changed, so such words differ), DEL, U+FFFD and private-use characters are kept,
    U+2028/U+2029 and punctuation outside its table (full-width "！") do not split words, Hangul is not
    decomposed (HF's NFD gives jamo), a deleted character that starts a word (a BOM before the first
    word) leaves that word a "##" piece and one inside a word ("ö\ufe0fu") can split it differently
    (pieces are dropped, not characters), and "[SEP]" written in a text is split into "[", "sep", "]"
    (HF keeps it a special token). On every code point of planes 0-3 and 14 put between two letters,
    about 4,000 assigned ones (Latin Extended, Greek, Cyrillic, Hangul, some punctuation) besides
    private-use and unassigned ones differ. ASCII, Latin-1 accents, CJK, emoji, control characters,
    truncation and "" match (tests/test_e2e.py).

    "full": HF's normalization exactly, with WordpieceTokenizer, StringRegexReplace,
    StringRegexSplitWithOffsets, StringMapping, StringJoin, BasicTokenizer (+ ai.onnx.ml LabelEncoder):
    for the pip wheel, or an app that builds the extensions with those operators. The normalization
    is compiled per code point from the HF tokenizer itself (its normalizer and pre-tokenizer are
    asked about every character of planes 0-3 and 14-16, about 3 s, cached per setting): characters
    it removes, treats as spaces or isolates (punctuation, CJK) become three RE2 classes, characters
    it rewrites (lowercase, NFD accent stripping, Hangul to jamo) a StringMapping table; special tokens
    written in the text are matched on the raw text as HF does. Checked against HF on every code
    point of planes 0-3 and 14-16 in three contexts and on 20,000 random mixed texts (bert-base-uncased
    vocabulary; cased, uncased and accent-keeping settings): no difference.

The batch
    The extensions' tokenizers are not batch operators (BertTokenizer reads two strings as a sentence
    pair; BasicTokenizer takes one string), so a `Loop` over the texts tokenizes each, drops words
    beyond max_length - 2, collapses failed words, truncates to max_length ([SEP] last) and pads to
    max_length; after the loop the columns are cut to the longest row, so the classifier gets exactly
    the [N, longest] batch `tokenizer(..., padding=True, truncation=True)` gives (padding changes no
    text's result: tests compare a batch with one-by-one runs). "full" runs its batch-aware string ops
    (RE2 replacements, StringMapping) once on the whole batch before the loop. A loop-free graph is
    possible with ragged outputs, but not with BertTokenizer, and its ragged-to-dense step would
    allocate N x longest-row strings; the Loop keeps each text's cost its own.

Limits
    The extensions read strings as C strings, so a text is cut at its first U+0000 inside the graph
    (`e2e_predict` removes U+0000 before running, as HF does; an app should do the same). An empty
    batch runs one "" row and returns its first 0 rows (fed to the classifier directly, a [0, 0]
    batch fails in Reshape, and int8 contrib kernels crash the process with SIGFPE). int8-dynamic
    classifiers quantize activations with one scale per batch, so their results depend on the batch
    (with or without this graph).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import ExportError

# custom_ops_library is re-exported: callers name it e2e.custom_ops_library (pipeline, tests, the docstring above)
from export.sessions import custom_ops_library, session as ort_session  # noqa: F401

log = logging.getLogger(__name__)

CONTRIB = "ai.onnx.contrib"
ML = "ai.onnx.ml"
SUPPORTED_TOKENIZERS = ("BertTokenizerFast", "BertTokenizer", "DistilBertTokenizerFast", "DistilBertTokenizer")
CLASSIFIER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPS = ("mobile", "full")  # which extensions operators the tokenizer may use (module docstring)
TEXT, LABEL, PROBABILITIES = "text", "label", "probabilities"

_P = "e2e/"  # prefix of every name the tokenizer graph adds, so merging never collides with the classifier
N_TEXTS = _P + "n_texts"  # [1]: the batch size as given
_PLACEHOLDER = 0x100000  # Supplementary Private Use Area-B: stands for special tokens inside the graph
_SCANNED = ((0x0, 0x40000), (0xE0000, 0x110000))  # planes 0-3 and 14-16; 4-13 are unassigned
_UNSCANNED_SAMPLE = (0x40000, 0x4ABCD, 0x7FFFD, 0xA1234, 0xDFFFF)


# ---------------------------------------------------------------------------------------------- public API


def e2e_session(path: Path, *, threads: int | None = None, options=None):
    """An onnxruntime.InferenceSession on an e2e graph (.onnx or .ort), extensions library registered."""
    return ort_session(path, threads=threads, options=options, custom_ops=True)


def e2e_predict(path_or_session, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N] int64, probabilities [N, num_labels] float32) for texts, batch_size texts per run."""
    session = path_or_session if hasattr(path_or_session, "run") else e2e_session(Path(path_or_session))
    labels, probs = [], []
    for i in range(0, len(texts), batch_size):
        # U+0000 would end the string for the extensions' operators; HF drops it, so drop it here too
        batch = np.array([t.replace("\x00", "") for t in texts[i:i + batch_size]], dtype=object)
        label, prob = session.run([LABEL, PROBABILITIES], {TEXT: batch})
        labels.append(label)
        probs.append(prob)
    if not labels:
        dims = next(o for o in session.get_outputs() if o.name == PROBABILITIES).shape
        width = dims[1] if len(dims) == 2 and isinstance(dims[1], int) else 0
        return np.zeros(0, np.int64), np.zeros((0, width), np.float32)
    return np.concatenate(labels), np.concatenate(probs)


def build_e2e(model_onnx: Path, tokenizer_dir: Path, out: Path, *, max_length: int, ops: str = "mobile",
              head: int = 0) -> Path:
    """Write to out a graph text -> (label, probabilities): tokenizer_dir's tokenizer joined to model_onnx.

    head > 0: a text longer than max_length keeps its first head tokens and its last max_length - 2 - head
    (distill.tokenizing's head_tail), else its first max_length - 2.

    ops="mobile" (default): the extensions' BertTokenizer only, which the stock Android/iOS packages
    have; ops="full": HF's normalization exactly, with operators only full builds of the extensions
    have (the pip wheel has them; the stock onnxruntime-extensions-android / -c packages do not).
    """
    import onnx
    from onnx import compose
    from onnx import helper as oh

    model_onnx, out = Path(model_onnx), Path(out)
    try:
        clf = onnx.load(str(model_onnx))
    except Exception as e:  # noqa: BLE001 - any load failure means the same thing to the user
        raise ExportError(f"Could not read the classifier {model_onnx} as an ONNX model ({type(e).__name__}: {e}). "
                          "Pass the model.onnx written by `distill export onnx` (fp32 or int8).") from e
    inputs = [i.name for i in clf.graph.input if i.name not in {init.name for init in clf.graph.initializer}]
    outputs = [o.name for o in clf.graph.output]
    if "input_ids" not in inputs or any(name not in CLASSIFIER_INPUTS for name in inputs):
        raise ExportError(f"The classifier {model_onnx} has inputs {inputs}; the end-to-end graph feeds only "
                          f"{', '.join(CLASSIFIER_INPUTS)} (int64 or int32 [batch, seq]). Export a BERT-family "
                          "sequence classifier with optimum (text-classification task) and pass its model.onnx.")
    logits = "logits" if "logits" in outputs else (outputs[0] if len(outputs) == 1 else None)
    if logits is None:
        raise ExportError(f"The classifier {model_onnx} has outputs {outputs} and none is 'logits'. Pass a "
                          "text-classification export whose output is logits [batch, num_labels].")
    opsets = {o.domain: o.version for o in clf.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 0))
    if opset < 13:
        raise ExportError(f"The classifier {model_onnx} uses ONNX opset {opset}; the end-to-end graph needs 13 "
                          "or later. Re-export it with `--opset 17` (the default).")
    if opsets.get(ML, 2) < 2:
        raise ExportError(f"The classifier {model_onnx} imports ai.onnx.ml opset {opsets[ML]}; the tokenizer "
                          "needs LabelEncoder from ai.onnx.ml 2 or later. Re-export the classifier.")

    spec = _read_tokenizer(Path(tokenizer_dir), max_length, ops)
    int32 = {i.name for i in clf.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.INT32}
    tok = _tokenizer_model(spec, max_length=max_length, opset=opset, ml_opset=opsets.get(ML, 2),
                           outputs=[n for n in CLASSIFIER_INPUTS if n in inputs], trim_rows=False, ops=ops,
                           int32=int32, head=head)
    tok.ir_version = clf.ir_version
    # Drop opset imports no node of the classifier uses: some tools (quant_pre_process of static int8) write
    # one for every registered domain, ai.onnx.contrib included once the extensions are loaded, and
    # merge_models refuses two different versions of one domain.
    used = {n.domain for n in clf.graph.node} | {"", "ai.onnx"}
    kept = [o for o in clf.opset_import if o.domain in used]
    del clf.opset_import[:]
    clf.opset_import.extend(kept)
    merged = compose.merge_models(tok, clf, io_map=[(_P + n, n) for n in inputs], outputs=[logits],
                                  producer_name="edge-distill e2e")
    g = merged.graph
    zero = next(i.name for i in g.initializer if i.name == _P + "zero")
    g.node.extend([oh.make_node("Slice", [logits, zero, N_TEXTS, zero], [_P + "logits"], name=_P + "rows"),
                   oh.make_node("Softmax", [_P + "logits"], [PROBABILITIES], axis=-1, name=_P + "softmax"),
                   oh.make_node("ArgMax", [_P + "logits"], [LABEL], axis=-1, keepdims=0, name=_P + "argmax")])
    logit_type = next(o for o in clf.graph.output if o.name == logits).type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in logit_type.shape.dim]
    num_labels = dims[1] if len(dims) == 2 else None
    del g.output[:]
    g.output.extend([oh.make_tensor_value_info(LABEL, onnx.TensorProto.INT64, ["N"]),
                     oh.make_tensor_value_info(PROBABILITIES, logit_type.elem_type, ["N", num_labels or "num_labels"])])
    meta = {"e2e.inputs": "text: string [N]", "e2e.outputs": "label: int64 [N]; probabilities: float [N, labels]",
            "e2e.tokenizer": spec.name, "e2e.max_length": str(max_length), "e2e.ops": ops,
            "e2e.truncation": f"head_tail: first {head}, last {max_length - 2 - head} tokens" if head else "right",
            "e2e.custom_ops": "onnxruntime-extensions (ai.onnx.contrib): " + ", ".join(
                sorted({n.op_type for n in _all_nodes(merged.graph) if n.domain == CONTRIB}))}
    config = Path(tokenizer_dir) / "config.json"
    if config.is_file():  # the export folder holds the model's config next to the tokenizer: say what labels mean
        id2label = json.loads(config.read_text()).get("id2label")
        if id2label:
            meta["e2e.id2label"] = json.dumps(id2label, ensure_ascii=False)
    onnx.helper.set_model_props(merged, {**{p.key: p.value for p in merged.metadata_props}, **meta})
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(out))
    log.info("wrote %s: text -> label, probabilities (%s labels; %s, max_length %d, ops=%s)",
             out.name, num_labels or "?", spec.name, max_length, ops)
    return out


def tokenizer_model(tokenizer_dir: Path, *, max_length: int, ops: str = "mobile", opset: int = 17, head: int = 0):
    """The tokenizer part alone, as an onnx.ModelProto: text [N] -> input_ids, attention_mask,
    token_type_ids (int64 [N, longest row]). The same graph `build_e2e` puts before the classifier."""
    spec = _read_tokenizer(Path(tokenizer_dir), max_length, ops)
    model = _tokenizer_model(spec, max_length=max_length, opset=opset, ml_opset=2, outputs=list(CLASSIFIER_INPUTS),
                             trim_rows=True, ops=ops, head=head)
    for o in model.graph.output:
        o.name = o.name[len(_P):]
    for node in model.graph.node:
        node.output[:] = [n[len(_P):] if n in {_P + c for c in CLASSIFIER_INPUTS} else n for n in node.output]
    return model


# ------------------------------------------------------------------------------------------ the tokenizer


@dataclass(frozen=True)
class _Tables:
    """What the HF normalizer + pre-tokenizer do to each character, as RE2 classes and a char map."""

    remove: str  # class of characters dropped (control, format, private use, combining marks if stripping)
    space: str  # class of characters that split words and vanish
    isolate: str  # class of characters that become words of their own (punctuation, CJK)
    mapping: dict  # character -> replacement (lowercase, accents stripped, isolation of produced punctuation)


@dataclass(frozen=True)
class _Spec:
    name: str
    vocab: dict  # token -> id
    unk: str
    unk_id: int
    cls_id: int
    sep_id: int
    pad_id: int
    prefix: str
    max_chars: int
    specials: dict  # added token matched on the raw text -> id
    normalizer: dict  # BertNormalizer settings: lowercase, strip_accents, handle_chinese_chars, clean_text
    tokens: dict  # the special tokens' strings: unk, cls, sep, pad, mask
    backend: object  # the tokenizers.Tokenizer, asked about every character for ops="full"

    @property
    def strip_accents(self) -> bool:
        """HF's rule: strip_accents None follows lowercase (the extensions' converter reads None as False)."""
        strip = self.normalizer.get("strip_accents")
        return bool(self.normalizer.get("lowercase")) if strip is None else bool(strip)


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _all_nodes(attr.g)


def _read_tokenizer(where: Path, max_length: int, ops: str) -> _Spec:
    from transformers import AutoTokenizer

    if ops not in OPS:
        raise ExportError(f"ops={ops!r} is not one of {', '.join(OPS)}: 'mobile' for the stock Android/iOS "
                          "onnxruntime-extensions packages, 'full' for HF's normalization on every character.")

    fix = (f"Point it at a folder with the files of a WordPiece (BERT-style) tokenizer, one of "
           f"{', '.join(SUPPORTED_TOKENIZERS)} (vocab.txt and/or tokenizer.json, tokenizer_config.json), "
           "as `distill export onnx` writes next to model.onnx.")
    try:
        tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad folder
        raise ExportError(f"Could not load a tokenizer from {where} ({type(e).__name__}: {e}). {fix}") from e
    name = type(tok).__name__
    if name not in SUPPORTED_TOKENIZERS or not getattr(tok, "is_fast", False):
        raise ExportError(f"The tokenizer in {where} is a {name}; the end-to-end graph can only reproduce "
                          f"WordPiece tokenizers with BERT normalization. {fix}")
    state = json.loads(tok.backend_tokenizer.to_str())
    model, norm = state.get("model") or {}, state.get("normalizer") or {}
    pre, post = state.get("pre_tokenizer") or {}, state.get("post_processor") or {}
    problems = []
    if model.get("type") != "WordPiece":
        problems.append(f"its model is {model.get('type')}, not WordPiece")
    if norm.get("type") != "BertNormalizer":
        problems.append(f"its normalizer is {norm.get('type')}, not BertNormalizer")
    if pre.get("type") != "BertPreTokenizer":
        problems.append(f"its pre-tokenizer is {pre.get('type')}, not BertPreTokenizer")
    cls_sep = _cls_sep(post)
    if cls_sep is None:
        problems.append("its post-processor does not build [CLS] text [SEP]")
    if getattr(tok, "truncation_side", "right") != "right":
        problems.append(f"it truncates on the {tok.truncation_side}")
    specials = {}
    for added in state.get("added_tokens") or []:
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word") or added.get("normalized"):
            problems.append(f"its added token {added['content']!r} is matched with lstrip/rstrip/single_word/"
                            "normalized options the graph does not reproduce")
        else:
            specials[added["content"]] = int(added["id"])
    vocab = {str(k): int(v) for k, v in (model.get("vocab") or {}).items()}
    unk = model.get("unk_token", "[UNK]")
    if unk not in vocab:
        problems.append(f"its unknown token {unk!r} is not in the vocabulary")
    if tok.pad_token_id is None:
        problems.append("it has no padding token")
    if ops == "mobile":  # BertTokenizer reads the vocabulary as lines (id = line) and splits words at 100 characters
        if sorted(vocab.values()) != list(range(len(vocab))):
            problems.append("its vocabulary ids are not 0..V-1 (BertTokenizer numbers lines)")
        if any(not t or "\n" in t or "\r" in t for t in vocab):
            problems.append("a vocabulary entry is empty or holds a line break")
        if int(model.get("max_input_chars_per_word") or 100) != 100:
            problems.append("its WordPiece max_input_chars_per_word is not BertTokenizer's fixed 100")
    if problems:
        raise ExportError(f"The tokenizer in {where} ({name}) cannot be reproduced in the graph: "
                          f"{'; '.join(problems)}. {fix}")
    if max_length < 2:
        raise ExportError(f"max_length {max_length} leaves no room for [CLS] and [SEP]. Use the length the model "
                          f"was trained with (2 to {tok.model_max_length} for the tokenizer in {where}).")
    if tok.model_max_length and tok.model_max_length < 1_000_000 and max_length > tok.model_max_length:
        raise ExportError(f"max_length {max_length} is longer than the {tok.model_max_length} tokens the "
                          f"tokenizer in {where} allows (tokenizer_config.json model_max_length); the model's "
                          "position embeddings stop there. Use the length the model was trained with.")
    by_id = {i: t for t, i in vocab.items()}
    tokens = {"unk": unk, "cls": by_id[cls_sep[0]], "sep": by_id[cls_sep[1]], "pad": by_id.get(int(tok.pad_token_id)),
              "mask": tok.mask_token if tok.mask_token in vocab else unk}  # BertTokenizer wants a mask token
    return _Spec(name=name, vocab=vocab, unk=unk, unk_id=vocab[unk], cls_id=cls_sep[0], sep_id=cls_sep[1],
                 pad_id=int(tok.pad_token_id), prefix=model.get("continuing_subword_prefix") or "##",
                 max_chars=int(model.get("max_input_chars_per_word") or 100), specials=specials,
                 normalizer=norm, tokens=tokens, backend=tok.backend_tokenizer)


def _cls_sep(post: dict) -> tuple[int, int] | None:
    """(cls id, sep id) when the post-processor makes [CLS] A [SEP] with type ids 0; else None."""
    if post.get("type") == "BertProcessing":
        return int(post["cls"][1]), int(post["sep"][1])
    if post.get("type") != "TemplateProcessing":
        return None
    single = post.get("single") or []
    if len(single) != 3 or "SpecialToken" not in single[0] or "Sequence" not in single[1] \
            or "SpecialToken" not in single[2] or any(next(iter(p.values())).get("type_id", 0) for p in single):
        return None
    ids = [post["special_tokens"][single[i]["SpecialToken"]["id"]]["ids"] for i in (0, 2)]
    if any(len(i) != 1 for i in ids):
        return None
    return int(ids[0][0]), int(ids[1][0])


_TABLES: dict[str, _Tables] = {}
_CLASSES: dict[str, tuple[set, set]] = {}


def _tables(backend) -> _Tables:
    """Ask the HF normalizer and pre-tokenizer about every scanned character (cached per configuration)."""
    key = backend.normalizer.__getstate__().decode() + backend.pre_tokenizer.__getstate__().decode()
    if key not in _TABLES:
        _TABLES[key] = _compute_tables(backend.normalizer, backend.pre_tokenizer)
    return _TABLES[key]


def _scanned_chars() -> list[str]:
    return [chr(c) for lo, hi in _SCANNED for c in range(lo, hi) if not 0xD800 <= c <= 0xDFFF]


def _compute_tables(normalizer, pre_tokenizer) -> _Tables:
    for cp in _UNSCANNED_SAMPLE:  # planes 4-13: nothing assigned, so nothing to map; make sure
        if normalizer.normalize_str(f"a{chr(cp)}a") != f"a{chr(cp)}a" or \
                len(pre_tokenizer.pre_tokenize_str(f"a{chr(cp)}a")) != 1:
            raise ExportError(f"The tokenizer's normalizer changes U+{cp:X}, an unassigned code point; this "
                              "tokenizers version is not one the end-to-end export was checked with.")
    chars = _scanned_chars()
    norms = _normalize_each(normalizer, chars)
    pre_key = pre_tokenizer.__getstate__().decode()
    if pre_key not in _CLASSES:  # the same for every normalizer setting
        _CLASSES[pre_key] = _pre_token_classes(pre_tokenizer, chars)
    space, alone = _CLASSES[pre_key]
    remove, spaces, isolate, mapping = [], [], [], {}
    for ch, n in zip(chars, norms):
        if n == "":
            remove.append(ord(ch))
        elif all(d in space for d in n):
            spaces.append(ord(ch))
        else:
            v = "".join(f" {d} " if d in alone else " " if d in space else d for d in n)
            if v == f" {ch} ":
                isolate.append(ord(ch))
            elif v != ch:
                mapping[ch] = v
    return _Tables(_re2_class(remove), _re2_class(spaces), _re2_class(isolate), mapping)


def _normalize_each(normalizer, chars: list[str], step: int = 8192) -> list[str]:
    """normalizer.normalize_str of each character; in chunks joined by '|' (BertNormalizer is per character)."""
    out = []
    for k in range(0, len(chars), step):
        chunk = chars[k:k + step]
        if "|" not in chunk:
            parts = normalizer.normalize_str("|".join(chunk)).split("|")
            if len(parts) == len(chunk):
                out.extend(parts)
                continue
        out.extend(normalizer.normalize_str(c) for c in chunk)
    return out


def _pre_token_classes(pre_tokenizer, chars: list[str]) -> tuple[set, set]:
    """(characters the pre-tokenizer drops as space, characters it makes a word of their own)."""
    text = "a" + "a".join(chars) + "a"  # character i sits at 2i+1 between two letters
    words = pre_tokenizer.pre_tokenize_str(text)
    starts = np.array([s for _, (s, _) in words], dtype=np.int64)
    ends = np.array([e for _, (_, e) in words], dtype=np.int64)
    cover = np.zeros(len(text) + 1, dtype=np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, ends, -1)
    covered = np.cumsum(cover)[1::2][:len(chars)] > 0
    space = {c for c, hit in zip(chars, covered) if not hit}
    alone = {text[s] for s, e in zip(starts.tolist(), ends.tolist()) if e - s == 1 and s % 2 == 1}
    return space, alone


def _re2_class(cps: list[int]) -> str:
    """An RE2 character class for the code points, as ranges; '' for none."""
    if not cps:
        return ""
    parts, lo, prev = [], cps[0], cps[0]
    for c in cps[1:] + [-1]:
        if c == prev + 1:
            prev = c
            continue
        parts.append(f"\\x{{{lo:X}}}" if lo == prev else f"\\x{{{lo:X}}}-\\x{{{prev:X}}}")
        lo = prev = c
    return "[" + "".join(parts) + "]"


def _re2_literal(s: str) -> str:
    return "".join(f"\\x{{{ord(c):X}}}" for c in s)


class _Graph:
    """Collects nodes and constants under the e2e/ prefix."""

    def __init__(self, tag: str = ""):
        self.nodes, self.inits, self._n, self._tag = [], [], 0, _P + tag

    def const(self, name, values, dtype=None, scalar=False):
        import onnx

        if any(init.name == _P + name for init in self.inits):
            return _P + name  # the same constant, asked for again
        arr = np.array(values if scalar else list(values), dtype=dtype)
        if arr.dtype.kind in "OU":
            arr = arr.astype(object)
        self.inits.append(onnx.numpy_helper.from_array(arr, _P + name))
        return _P + name

    def op(self, op_type, inputs, n_out=1, domain="", name=None, **attrs):
        from onnx import helper as oh

        self._n += 1
        outs = [name] if name else [f"{self._tag}{op_type.lower()}{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(oh.make_node(op_type, inputs, outs, name=f"{self._tag}{op_type}{self._n}",
                                       domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs


def _tokenizer_model(spec: _Spec, *, max_length: int, opset: int, ml_opset: int, outputs: list[str],
                     trim_rows: bool, ops: str, int32: set[str] = frozenset(), head: int = 0):
    from onnx import TensorProto as T
    from onnx import helper as oh

    g, body = _Graph(), _Graph("row/")  # body: the Loop's per-text graph
    i64 = np.int64
    zero, one = g.const("zero", [0], i64), g.const("one", [1], i64)
    empty_s = g.const("empty", [""], object)

    # an empty batch would reach the classifier as a [0, 0] tensor, which its Reshape rejects and int8
    # contrib kernels crash on (SIGFPE); so N = 0 runs one "" row, and the rows are cut back to N after
    n_texts = g.op("Shape", [TEXT], name=N_TEXTS)
    extra = g.op("Cast", [g.op("Equal", [n_texts, zero])], to=T.INT64)
    text = g.op("Concat", [TEXT, g.op("Slice", [empty_s, zero, extra])], axis=0)
    n = g.op("Squeeze", [g.op("Shape", [text]), zero])

    i, cond, cond_out = _P + "row/i", _P + "row/cond", _P + "row/cond_out"
    idx = body.op("Unsqueeze", [i, zero])
    if ops == "full":
        ids = _full_ids(spec, g, body, text, idx, cap_words=not head)
    else:
        ids = _mobile_ids(spec, g, body, text, idx)

    # per text: ids [n] of the words' pieces (no [CLS]/[SEP]); cut, frame, pad to max_length
    room = max_length - 2
    if head and room > head:
        # head+tail: ids[:head] + ids[max(head, n - tail):]; a text that fits comes out whole
        n_ids = body.op("Shape", [ids])
        head_c = g.const("head", [head], i64)
        tail_start = body.op("Max", [head_c, body.op("Sub", [n_ids, g.const("tail", [room - head], i64)])])
        kept = body.op("Concat", [body.op("Slice", [ids, zero, head_c, zero]),
                                  body.op("Slice", [ids, tail_start, n_ids, zero])], axis=0)
    else:
        kept = body.op("Slice", [ids, zero, g.const("words_max", [room], i64), zero])
    row = body.op("Concat", [g.const("cls", [spec.cls_id], i64), kept, g.const("sep", [spec.sep_id], i64)], axis=0)
    row_len = body.op("Shape", [row])
    pads = body.op("Concat", [zero, body.op("Sub", [g.const("max_length", [max_length], i64), row_len])], axis=0)
    row_ids = body.op("Pad", [row, pads, g.const("pad_id", spec.pad_id, i64, scalar=True)])
    row_mask = body.op("Pad", [body.op("ConstantOfShape", [row_len], value=oh.make_tensor("", T.INT64, [1], [1])),
                               pads])
    body.nodes.append(oh.make_node("Identity", [cond], [cond_out], name=_P + "row/cond"))
    loop_body = oh.make_graph(
        body.nodes, "e2e_tokenize_one",
        [oh.make_tensor_value_info(i, T.INT64, []), oh.make_tensor_value_info(cond, T.BOOL, [])],
        [oh.make_tensor_value_info(cond_out, T.BOOL, []),
         oh.make_tensor_value_info(row_ids, T.INT64, [max_length]),
         oh.make_tensor_value_info(row_mask, T.INT64, [max_length])])

    all_ids, all_mask = g.op("Loop", [n, g.const("true", True, bool, scalar=True)], n_out=2, body=loop_body)
    # cut the columns to the longest row (the Concat with 0 keeps ReduceMax off an empty tensor)
    longest = g.op("ReduceMax", [g.op("Concat", [g.op("ReduceSum", [all_mask, one], keepdims=0), zero], axis=0)],
                   keepdims=1)
    named = {"input_ids": g.op("Slice", [all_ids, zero, longest, one]),
             "attention_mask": g.op("Slice", [all_mask, zero, longest, one])}
    named["token_type_ids"] = g.op("ConstantOfShape", [g.op("Shape", [named["input_ids"]])],
                                   value=oh.make_tensor("", T.INT64, [1], [0]))
    for name in outputs:
        value = g.op("Slice", [named[name], zero, n_texts, zero]) if trim_rows else named[name]
        if name in int32:  # a classifier exported with int32 ids
            g.nodes.append(oh.make_node("Cast", [value], [_P + name], to=T.INT32, name=f"{_P}out_{name}"))
        else:
            g.nodes.append(oh.make_node("Identity", [value], [_P + name], name=f"{_P}out_{name}"))
    graph = oh.make_graph(g.nodes, "e2e_tokenizer", [oh.make_tensor_value_info(TEXT, T.STRING, ["N"])],
                          [oh.make_tensor_value_info(_P + name, T.INT32 if name in int32 else T.INT64,
                                                     ["N", "sequence"]) for name in outputs],
                          initializer=g.inits)
    opsets = [oh.make_opsetid("", opset), oh.make_opsetid(CONTRIB, 1)]
    if ops == "full":
        opsets.append(oh.make_opsetid(ML, ml_opset))
    return oh.make_model(graph, opset_imports=opsets)


def _collapse_failed_words(g: _Graph, body: _Graph, ids: str, starts: str, failed: str, unk_id: int) -> str:
    """HF gives a word that WordPiece cannot split completely one [UNK]; keep one [UNK] for such a word.

    ids: int64 [n] pieces; starts: int64 0/1 [n], 1 where a word begins; failed: int64 0/1 [n], 1 on a
    piece that marks its word as failed. Returns the ids with each failed word reduced to one [UNK]."""
    from onnx import TensorProto as T

    i64 = np.int64
    zero, one = _P + "zero", _P + "one"
    axis0 = g.const("axis0", 0, i64, scalar=True)
    word_of = body.op("Sub", [body.op("CumSum", [starts, axis0]), one])  # per piece: its word
    first = body.op("Squeeze", [body.op("NonZero", [starts]), zero])  # per word: its first piece
    n_words = body.op("Shape", [first])
    after = body.op("Concat", [body.op("Slice", [first, one, g.const("big", [2**62], i64), zero]),
                               body.op("Shape", [ids])], axis=0)
    last = body.op("Slice", [body.op("Sub", [after, one]), zero, n_words, zero])  # per word: its last piece
    upto = body.op("CumSum", [failed, axis0])
    before = body.op("CumSum", [failed, axis0], exclusive=1)
    bad_word = body.op("Greater", [body.op("Sub", [body.op("Gather", [upto, last], axis=0),
                                                   body.op("Gather", [before, first], axis=0)]),
                                   g.const("zero_s", 0, i64, scalar=True)])
    bad = body.op("Gather", [bad_word, word_of], axis=0)
    keep = body.op("Or", [body.op("Not", [bad]), body.op("Cast", [starts], to=T.BOOL)])
    return body.op("Compress", [body.op("Where", [bad, g.const("unk", [unk_id], i64), ids]), keep], axis=0)


def _mobile_ids(spec: _Spec, g: _Graph, body: _Graph, text: str, idx: str) -> str:
    """BertTokenizer only (the op the stock Android/iOS extensions packages have), plus standard ops.

    Its WordPiece emits the pieces found so far and then [UNK] when a word cannot be split completely;
    so the vocabulary it gets has one more entry "##c" for each character c the original lacks as a
    continuation: then no word fails half-way, and a word with such a piece is one HF would make [UNK].
    Characters HF deletes but BertTokenizer keeps (nonspacing marks such as the emoji variation
    selector U+FE0F when accents are stripped, format characters such as U+FEFF) get entries "c" and
    "##c" whose pieces the graph drops. Its lowercase / accent tables are its own (module docstring)."""
    import unicodedata

    from onnx import TensorProto as T

    i64 = np.int64
    vocab = [t for t, _ in sorted(spec.vocab.items(), key=lambda kv: kv[1])]
    have = set(vocab)
    chinese = bool(spec.normalizer.get("handle_chinese_chars", True))
    deleted = {"Cf"} if spec.normalizer.get("clean_text", True) else set()
    if spec.strip_accents:
        deleted.add("Mn")
    fails, drops = [], []
    for lo, hi in ((0x0, 0x40000), (0xE0000, 0xE1000)):
        for cp in range(lo, hi):
            ch = chr(cp)
            cat = unicodedata.category(ch) if not 0xD800 <= cp <= 0xDFFF else "Cs"
            if cat in deleted:
                drops += [t for t in (ch, spec.prefix + ch) if t not in have]
            # surrogates, private use, controls and spaces never reach WordPiece whole; CJK characters are words
            # of their own when tokenize_chinese_chars (a one-character word that fails is one [UNK] either way);
            # unassigned code points are left out but for the emoji blocks, which grow with each Unicode version
            elif cat in ("Cs", "Co", "Cc", "Zs", "Zl", "Zp") or (chinese and _is_cjk(cp)) \
                    or (cat == "Cn" and not 0x1F000 <= cp <= 0x1FBFF):
                continue
            elif spec.prefix + ch not in have:
                fails.append(spec.prefix + ch)
    table = np.array([t.startswith(spec.prefix) for t in vocab + fails + drops])
    t = spec.tokens
    one_text = body.op("Gather", [text, idx], axis=0)
    ids = body.op("BertTokenizer", [one_text], n_out=3, domain=CONTRIB,
                  vocab_file="\n".join(vocab + fails + drops),
                  do_lower_case=int(bool(spec.normalizer.get("lowercase"))),
                  strip_accents=int(spec.strip_accents),
                  tokenize_chinese_chars=int(chinese),
                  unk_token=t["unk"], sep_token=t["sep"], pad_token=t["pad"], cls_token=t["cls"],
                  mask_token=t["mask"], suffix_indicator=spec.prefix)[0]
    every = body.op("Slice", [ids, _P + "one", g.const("minus_one", [-1], i64), _P + "zero"])  # [CLS] ... [SEP]
    every_starts = body.op("Cast", [body.op("Not", [body.op("Gather", [g.const("continues", table, bool), every],
                                                            axis=0)])], to=T.INT64)
    # drop the deleted characters' pieces; a kept piece starts a word if a piece since the last kept one did
    first_drop = g.const("first_drop", [len(vocab) + len(fails)], i64)
    kept = body.op("Squeeze", [body.op("NonZero", [body.op("Less", [every, first_drop])]), _P + "zero"])
    ids = body.op("Gather", [every, kept], axis=0)
    seen = body.op("Gather", [body.op("CumSum", [every_starts, g.const("axis0", 0, i64, scalar=True)]), kept], axis=0)
    before = body.op("Concat", [_P + "zero", body.op("Slice", [seen, _P + "zero", _P + "minus_one", _P + "zero"])],
                     axis=0)
    starts = body.op("Cast", [body.op("Greater", [body.op("Sub", [seen, before]),
                                                  g.const("zero_s", 0, i64, scalar=True)])], to=T.INT64)
    failed = body.op("Cast", [body.op("Greater", [ids, g.const("last_id", [len(vocab) - 1], i64)])], to=T.INT64)
    return _collapse_failed_words(g, body, ids, starts, failed, spec.unk_id)


def _is_cjk(cp: int) -> bool:
    """The extensions' IsCJK (base/string_utils.cc), which BertTokenizer isolates like HF's CJK ranges."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _full_ids(spec: _Spec, g: _Graph, body: _Graph, text: str, idx: str, cap_words: bool = True) -> str:
    """HF's normalization compiled per character (RE2 classes, StringMapping), WordpieceTokenizer."""
    from onnx import TensorProto as T
    from onnx import helper as oh

    i64 = np.int64
    zero, one = _P + "zero", _P + "one"
    empty_s = _P + "empty"
    t = _tables(spec.backend)
    # batch-wide string work: the RE2 replacements see the whole [N] tensor
    if t.remove:
        text = g.op("StringRegexReplace", [text, g.const("remove", [t.remove], object), empty_s],
                    domain=CONTRIB, global_replace=1)
    placeholders = {}
    for k, (content, tid) in enumerate(sorted(spec.specials.items(), key=lambda kv: -len(kv[0]))):
        ph = chr(_PLACEHOLDER + k)
        placeholders[ph] = tid
        text = g.op("StringRegexReplace", [text, g.const(f"special{k}", [_re2_literal(content)], object),
                                           g.const(f"special{k}_as", [f" {ph} "], object)],
                    domain=CONTRIB, global_replace=1)
    if t.space:
        text = g.op("StringRegexReplace", [text, g.const("space", [t.space], object),
                                           g.const("blank", [" "], object)], domain=CONTRIB, global_replace=1)
    if t.isolate:
        text = g.op("StringRegexReplace", [text, g.const("isolate", [f"({t.isolate})"], object),
                                           g.const("spaced", [" \\1 "], object)], domain=CONTRIB, global_replace=1)
    if t.mapping:
        # split each text around the characters to rewrite (each one a piece of its own, the runs between
        # them whole), rewrite those pieces; the Loop joins each text's pieces back
        mapped_class = g.const("mapped", [f"({_re2_class(sorted(ord(c) for c in t.mapping))})"], object)
        pieces_, _, _, piece_rows = g.op("StringRegexSplitWithOffsets", [text, mapped_class, mapped_class],
                                         n_out=4, domain=CONTRIB)
        text = g.op("StringMapping", [pieces_], domain=CONTRIB,
                    map="\n".join(f"{k}\t{v}" for k, v in t.mapping.items()))
        bounds = [body.op("Gather", [piece_rows, idx], axis=0),
                  body.op("Gather", [piece_rows, body.op("Add", [idx, one])], axis=0)]
        own = body.op("Slice", [text, *bounds, zero])
        one_text = body.op("StringJoin", [own, empty_s, zero], domain=CONTRIB)
    else:
        one_text = body.op("Gather", [text, idx], axis=0)
    words = body.op("BasicTokenizer", [one_text], domain=CONTRIB, do_lower_case=0, strip_accents=0,
                    tokenize_chinese_chars=0, tokenize_punctuation=0, remove_control_chars=0)
    # every word gives at least one token, so words past max_length - 2 can never be kept (unless the
    # tail of the text is kept too: head+tail)
    if cap_words:
        words = body.op("Slice", [words, zero, _P + "words_max", zero])
    ids_vocab = dict(spec.vocab, **placeholders)
    pieces, _, begins, limits = body.op(
        "WordpieceTokenizer", [words, g.const("no_rows", [], i64)], n_out=4, domain=CONTRIB,
        vocab=json.dumps(ids_vocab, ensure_ascii=False, separators=(",", ":")), suffix_indicator=spec.prefix,
        unknown_token=spec.unk, max_input_chars_per_word=spec.max_chars)
    ids = body.op("LabelEncoder", [pieces], domain=ML, keys_strings=list(ids_vocab),
                  values_int64s=list(ids_vocab.values()), default_int64=spec.unk_id)
    # the operator emits a failed word's pieces, then [UNK]: a word whose last piece is [UNK] failed
    n_pieces = body.op("Shape", [ids])

    def fill(shape, value):
        return body.op("ConstantOfShape", [shape], value=oh.make_tensor("", T.INT64, [1], [value]))

    starts = body.op("ScatterElements", [fill(n_pieces, 0), begins, fill(body.op("Shape", [begins]), 1)], axis=0)
    lasts = body.op("ScatterElements", [fill(n_pieces, 0), body.op("Sub", [limits, one]),
                                        fill(body.op("Shape", [limits]), 1)], axis=0)
    failed = body.op("Mul", [lasts, body.op("Cast", [body.op("Equal", [ids, g.const("unk", [spec.unk_id], i64)])],
                                            to=T.INT64)])
    return _collapse_failed_words(g, body, ids, starts, failed, spec.unk_id)
