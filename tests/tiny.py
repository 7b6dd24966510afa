"""Tiny real models and data for tests, built offline from configs in a second: no Hub, no mocks.

A WordPiece tokenizer trained with `tokenizers` on a small corpus, and a BERT of a few hundred KB
whose weights get small noise (randomly initialised tiny models have identical constant tensors,
which break static int8 quantization); a tiny Llama with a byte-level BPE tokenizer; a small
labelled CSV corpus, the `--set` overrides of a run of seconds, and a run directory as `distill run`
leaves it. Shared by the test modules (which import from here, never from each other).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CORPUS = [
    "a gripping and beautifully acted film",
    "the plot is dull and the jokes fall flat",
    "one of the best movies of the year",
    "a tedious mess that overstays its welcome",
    "warm funny and surprisingly moving",
    "lifeless characters and a predictable script",
    "the cast is terrific and the story delights",
    "boring slow and far too long",
]


def make_tiny_bert(folder: Path, num_labels: int = 2, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    fast.save_pretrained(folder)

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=128,
                        num_labels=num_labels)
    return save_with_noise(BertForSequenceClassification(config), folder)


def save_with_noise(model, folder: Path) -> Path:
    """Small noise on every weight (a fresh init's constant tensors break static int8), then safetensors."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# ------------------------------------------------------------------------------- a small labelled CSV

POS = ["a gripping film", "warm and funny", "the best movie", "terrific cast", "a delight", "moving and smart",
       "great fun", "superb acting", "a joy to watch", "beautifully shot", "clever script", "charming story"]
NEG = ["dull and slow", "a tedious mess", "boring plot", "flat jokes", "lifeless", "predictable script",
       "far too long", "badly acted", "a chore", "weak ending", "no laughs", "a waste of time"]


def corpus(n_groups: int = 10) -> list[dict]:
    """len(POS) + len(NEG) = 24 rows per group (a `film` column for grouped splits)."""
    rows = []
    for g in range(n_groups):
        for i, t in enumerate(POS):
            rows.append({"text": f"{t} number {g} {i}", "label": "pos", "film": f"f{g}"})
        for i, t in enumerate(NEG):
            rows.append({"text": f"{t} number {g} {i}", "label": "neg", "film": f"f{g}"})
    return rows


def write_csv(tmp_path: Path, rows: list[dict], name: str = "d.csv", **kw) -> Path:
    import pandas as pd

    p = tmp_path / name
    pd.DataFrame(rows).to_csv(p, index=False, **kw)
    return p


# `distill run --set` overrides for a whole run of seconds on the tiny BERT and corpus(8). device=cpu: fp32
# on every machine (`auto` trains under bf16 autocast on CPUs with bf16 units), so results don't depend on it.
FAST = ["device=cpu", "data.augment.multiplier=0", "teacher.epochs=4", "teacher.warmup_ratio=0", "teacher.early_stopping_patience=0", "student.epochs=2", "teacher.batch_size=8", "student.batch_size=8",
        "student.layers=[1]", "teacher.learning_rate=5e-3", "student.learning_rate=5e-3",
        "teacher.min_steps=0", "student.min_steps=0"]


def make_run(root: Path, model: Path, *, teacher: bool = False) -> Path:
    """A run directory as `distill run` leaves it (models/README.md): student/ + data/*.jsonl."""
    run = root / "models" / "tiny"
    shutil.copytree(model, run / "student")
    if teacher:
        shutil.copytree(model, run / "teacher")
    (run / "data").mkdir(parents=True)
    rows = [{"text": f"{t} {w}", "label": i % 2} for w in ("indeed", "really", "so", "truly")
            for i, t in enumerate(CORPUS)]  # CORPUS alternates positive / negative
    for split, part in (("train", rows[:16]), ("validation", rows[16:24]), ("test", rows[24:])):
        (run / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return run


# ------------------------------------------------------------------------------------- a tiny Llama

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def make_tiny_llama(folder: Path, chat: bool, seed: int = 0, hidden: int = 32, kv_heads: int = 2,
                    init: float = 0.3) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                   model_max_length=1024)
    if chat:
        fast.chat_template = CHATML
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    # A wide init, so that the next-token distribution is far from uniform and differences show.
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=1024,
                         initializer_range=init, pad_token_id=0, bos_token_id=1, eos_token_id=3,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder
