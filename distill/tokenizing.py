"""How a text becomes at most max_length tokens: the one tokenizer call every pass uses.

Two ways to cut a text longer than max_length:
  right      the first max_length - 2 tokens, then [SEP] (what the tokenizer does by itself);
  head_tail  the first `head` tokens and the last max_length - 2 - head (Sun et al. 2019, "How to
             Fine-Tune BERT for Text Classification": on long reviews and news the opening and the
             ending carry most of the label). head is a quarter of the room (128 + 382 at 512).
Texts that fit are never cut, so both ways agree on them. Training, soft labels, evaluation, the
export's checks, the end-to-end graph and the bench all cut the same way (`head` is recorded in the
model's metrics.json and the export's export.json).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

TRUNCATIONS = ("right", "head_tail")
HEAD_SHARE = 0.25


def head_tokens(tokenizer: Any, max_length: int, truncation: str) -> int:
    """Tokens kept from a long text's start under head_tail (0 = cut on the right)."""
    if truncation == "right":
        return 0
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation {truncation!r} is not one of {', '.join(TRUNCATIONS)}")
    room = max_length - tokenizer.num_special_tokens_to_add()
    return max(1, int(room * HEAD_SHARE)) if room > 1 else 0


def cut(ids: list[int], room: int, head: int) -> list[int]:
    """ids (no special tokens) cut to room: the first head and the last room - head, else unchanged."""
    if len(ids) <= room:
        return ids
    if not head:
        return ids[:room]
    return ids[:head] + ids[len(ids) - (room - head):]


def encode(tokenizer: Any, texts: Sequence[str], *, max_length: int, head: int = 0, padding: bool = False,
           return_tensors: Optional[str] = None) -> Any:
    """tokenizer(texts, truncation=True, max_length=...), or the head+tail cut of it when head > 0."""
    texts = list(texts)
    if not head:
        return tokenizer(texts, truncation=True, max_length=max_length, padding=padding, return_tensors=return_tensors)
    room = max_length - tokenizer.num_special_tokens_to_add()
    rows = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    ids = [tokenizer.build_inputs_with_special_tokens(cut(r, room, head)) for r in rows]
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True  # pad() is the point here; no advice
    features: dict[str, list] = {"input_ids": ids}
    if "token_type_ids" in tokenizer.model_input_names:
        features["token_type_ids"] = [[0] * len(r) for r in ids]
    return tokenizer.pad(features, padding=padding, return_tensors=return_tensors, return_attention_mask=True)


def first_split_difference(a: Any, b: Any, texts: Sequence[str]) -> Optional[tuple[str, list[str], list[str]]]:
    """The first text that tokenizers a and b cut into different word pieces (special tokens aside), with
    both cuts; None when they agree on every text. Two vocabularies may number the same pieces
    differently (minilm-l6 and mpnet-base do): what matters to a comparison of hidden states is the pieces."""
    texts = list(texts)
    ids_a = a(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    ids_b = b(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    for text, x, y in zip(texts, ids_a, ids_b):
        pa, pb = a.convert_ids_to_tokens(x), b.convert_ids_to_tokens(y)
        if pa != pb:
            return text, pa, pb
    return None
