"""Tiny real models for tests, built offline from configs in a second: no Hub, no mocks.

A WordPiece tokenizer trained with `tokenizers` on a small corpus, and a BERT of a few hundred KB
whose weights get small noise (randomly initialised tiny models have identical constant tensors,
which break static int8 quantization).
"""

from __future__ import annotations

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
