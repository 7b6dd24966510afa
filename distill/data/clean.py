"""Text cleaning, every row dropped or changed counted by reason.

Order: missing text/label -> HTML entities -> unicode NFKC -> control characters -> whitespace ->
too short -> too long (truncated) -> exact duplicates -> normalized duplicates -> one text with
conflicting labels (all its rows dropped and listed).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

_WS = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^\w]+")


@dataclass
class CleanReport:
    dropped: Counter = field(default_factory=Counter)
    changed: Counter = field(default_factory=Counter)
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"dropped": dict(sorted(self.dropped.items())), "changed": dict(sorted(self.changed.items())),
                "conflicting_labels": self.conflicts[:50], "conflicting_texts": len(self.conflicts)}


def _strip_controls(text: str) -> str:
    # Cc/Cf (control, format: zero-width, BOM) become spaces; tabs and newlines are whitespace anyway.
    return "".join(" " if ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text)


def clean_text(text: str, report: CleanReport | None = None) -> str:
    """One text through entity unescaping, NFKC, control characters and whitespace folding."""
    steps = (("html_entities", html.unescape), ("unicode_nfkc", lambda t: unicodedata.normalize("NFKC", t)),
             ("control_characters", _strip_controls), ("whitespace", lambda t: _WS.sub(" ", t).strip()))
    for reason, fn in steps:
        new = fn(text)
        if new != text and report is not None:
            report.changed[reason] += 1
        text = new
    return text


def normalized_key(text: str) -> str:
    """What counts as 'the same text' for near-duplicates: case and punctuation folded."""
    return _WS.sub(" ", _NON_WORD.sub(" ", text.casefold())).strip()


def _label_str(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = str(value).strip()
    return s or None


def clean_frame(frame: pd.DataFrame, *, min_chars: int, max_chars: int, report: CleanReport,
                labelled: bool = True) -> pd.DataFrame:
    """Clean canonical rows (text, label[, group, split]); returns the kept rows, report updated in place."""
    df = frame.copy()
    texts = df["text"].map(lambda t: t if isinstance(t, str) else None)
    missing = texts.isna()
    report.dropped["empty_text"] += int(missing.sum())
    df = df[~missing].copy()
    df["text"] = texts[~missing]
    if labelled:
        labels = df["label"].map(_label_str)
        no_label = labels.isna()
        report.dropped["missing_label"] += int(no_label.sum())
        df = df[~no_label].copy()
        df["label"] = labels[~no_label]

    df["text"] = [clean_text(t, report) for t in df["text"]]
    short = df["text"].map(len) < min_chars
    report.dropped["too_short"] += int(short.sum())
    df = df[~short].copy()
    long = df["text"].map(len) > max_chars
    report.changed["truncated_too_long"] += int(long.sum())
    df.loc[long, "text"] = df.loc[long, "text"].map(lambda t: t[:max_chars])

    label_cols = ["text", "label"] if labelled else ["text"]
    if "split" in df:
        # With given splits, the copy in test/validation is kept and the training copy dropped:
        # a text seen in training must not be scored as unseen.
        rank = df["split"].map({"test": 0, "validation": 1, "train": 2})
        df = df.iloc[rank.argsort(kind="stable")]
    dup = df.duplicated(subset=label_cols, keep="first")
    report.dropped["duplicate_exact"] += int(dup.sum())
    df = df[~dup].copy()
    df["_key"] = df["text"].map(normalized_key)
    if labelled:
        n_labels = df.groupby("_key")["label"].nunique()
        conflicted = set(n_labels[n_labels > 1].index)
        if conflicted:
            bad = df["_key"].isin(conflicted)
            for key, rows in df[bad].groupby("_key"):
                report.conflicts.append({"text": rows["text"].iloc[0][:200], "labels": sorted(set(rows["label"]))})
            report.dropped["conflicting_labels"] += int(bad.sum())
            df = df[~bad].copy()
        near = df.duplicated(subset=["_key", "label"], keep="first")
    else:
        near = df.duplicated(subset=["_key"], keep="first")
    report.dropped["duplicate_normalized"] += int(near.sum())
    df = df[~near].drop(columns="_key").sort_index()
    for k in [k for k, v in report.dropped.items() if v == 0]:
        del report.dropped[k]
    for k in [k for k, v in report.changed.items() if v == 0]:
        del report.changed[k]
    return df.reset_index(drop=True)
