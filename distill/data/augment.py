"""Token-level augmentation of transfer texts (EDA-style swap/delete/insert, and span cutoff).

Augmented texts carry no label: the teacher labels them, so augmentation never invents a label.
Seeded: the same texts, ops, rate, multiplier and seed give the same output.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable, Iterable, Sequence

Op = Callable[[list[str], random.Random, float, Sequence[str]], list[str]]


def _n(tokens: list[str], rate: float) -> int:
    return max(1, int(round(len(tokens) * rate)))


def swap(tokens: list[str], rng: random.Random, rate: float, vocab: Sequence[str]) -> list[str]:
    out = tokens[:]
    for _ in range(_n(out, rate)):
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


def delete(tokens: list[str], rng: random.Random, rate: float, vocab: Sequence[str]) -> list[str]:
    if len(tokens) < 2:
        return tokens[:]
    out = [t for t in tokens if rng.random() >= rate]
    return out or [rng.choice(tokens)]


def insert(tokens: list[str], rng: random.Random, rate: float, vocab: Sequence[str]) -> list[str]:
    out = tokens[:]
    for _ in range(_n(out, rate)):
        out.insert(rng.randrange(len(out) + 1), rng.choice(vocab))
    return out


def mask(tokens: list[str], rng: random.Random, rate: float, vocab: Sequence[str]) -> list[str]:
    """Cutoff: remove one contiguous span (the text-level analogue of masking a span)."""
    if len(tokens) < 3:
        return tokens[:]
    span = _n(tokens, rate)
    start = rng.randrange(len(tokens) - span + 1)
    return tokens[:start] + tokens[start + span:]


OPS: dict[str, Op] = {"swap": swap, "delete": delete, "insert": insert, "mask": mask}


def corpus_vocab(texts: Iterable[str], size: int = 5000) -> list[str]:
    """The most frequent words of the training texts, the pool `insert` draws from."""
    counts = Counter(w for t in texts for w in t.split() if w.isalpha())
    return [w for w, _ in counts.most_common(size)] or ["the"]


def augment(texts: Sequence[str], *, ops: Sequence[str], rate: float, multiplier: int, seed: int,
            vocab: Sequence[str], exclude: set[str] | None = None) -> list[tuple[str, int]]:
    """(augmented text, index of its source) pairs; exact copies of existing texts are skipped."""
    from distill import progress

    rng = random.Random(seed)
    seen = set(texts) | (exclude or set())
    out: list[tuple[str, int]] = []
    for i, text in progress.track(enumerate(texts), total=len(texts), description="augmenting"):
        tokens = text.split()
        if len(tokens) < 2:
            continue
        for _ in range(multiplier):
            op = OPS[rng.choice(list(ops))]
            new = " ".join(op(tokens, rng, rate, vocab))
            if new and new not in seen:
                seen.add(new)
                out.append((new, i))
    return out
