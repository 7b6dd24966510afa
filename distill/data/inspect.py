"""What `distill data inspect` shows: the data report plus token-length percentiles."""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np

from distill.data.prepare import prepare

log = logging.getLogger(__name__)

PERCENTILES = (50, 90, 95, 99, 100)


def token_lengths(texts: Sequence[str], tokenizer_ref: str) -> Optional[dict[str, Any]]:
    """Token-length percentiles with the given model's tokenizer; None when it cannot be loaded."""
    from distill.assets import resolve_model
    from distill.errors import DistillError

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(resolve_model(tokenizer_ref))
    except (DistillError, OSError, ValueError) as e:
        log.warning("token lengths skipped: cannot load the tokenizer of %s (%s)", tokenizer_ref, e)
        return None
    lengths = np.array([len(ids) for ids in tok(list(texts), add_special_tokens=True)["input_ids"]])
    return {"tokenizer": tokenizer_ref, **{f"p{p}": int(np.percentile(lengths, p)) for p in PERCENTILES}}


def inspect(recipe: Any) -> dict[str, Any]:
    prep = prepare(recipe.data, recipe.seed)
    report = dict(prep.report)
    texts = [t for df in prep.splits.values() for t in df["text"]] + list(prep.transfer["text"])
    report["token_lengths"] = token_lengths(texts, recipe.teacher.model)
    return report
