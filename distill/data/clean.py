"""Text cleaning, every row dropped or changed counted by reason.

Order: missing text/label -> HTML entities -> unicode NFKC -> control characters -> whitespace ->
too short -> too long (truncated) -> exact duplicates -> normalized duplicates -> one text with
conflicting labels (all its rows dropped and listed).

A given test split (rows whose split column says test) is the data's own: its texts are normalized
like every text, but no test row is dropped for being a duplicate, a near-duplicate, too short or
having a conflicting label; those rows are counted instead, and training/validation copies of a test
text are dropped from those splits.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

log = logging.getLogger(__name__)

_WS = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^\w]+")

TEST_KEPT_KEYS = ("duplicate_exact", "duplicate_normalized", "conflicting_labels", "too_short", "also_in_train",
                  "dropped_empty_text", "dropped_missing_label")
TEST_KEPT_NOTE = ("Given test rows are scored as given: their text is normalized like every text (HTML entities, "
                  "Unicode NFKC, control characters, whitespace; cut at data.max_chars), but none is dropped for being "
                  "a duplicate, a near-duplicate, too short or having a conflicting label (counted here). Training and "
                  "validation copies of a test text are dropped from those splits (also_in_train counts the test rows "
                  "concerned). Rows with no text or no label cannot be scored and are dropped (dropped_*).")


@dataclass
class CleanReport:
    dropped: Counter = field(default_factory=Counter)
    changed: Counter = field(default_factory=Counter)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    test_kept: Optional[Counter] = None  # a given test split: what cleaning left in place, by reason

    def drop_zero_counts(self) -> None:
        """Reasons that never happened leave the report."""
        for counter in (self.dropped, self.changed):
            for k in [k for k, v in counter.items() if v == 0]:
                del counter[k]

    def as_dict(self) -> dict[str, Any]:
        out = {"dropped": dict(sorted(self.dropped.items())), "changed": dict(sorted(self.changed.items())),
               "conflicting_labels": self.conflicts[:50], "conflicting_texts": len(self.conflicts)}
        if self.test_kept is not None:
            out["test_kept_as_given"] = {**{k: int(self.test_kept[k]) for k in TEST_KEPT_KEYS}, "note": TEST_KEPT_NOTE}
        return out


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
    given_test = "split" in frame and bool((frame["split"] == "test").any())
    if given_test:
        report.test_kept = Counter({k: 0 for k in TEST_KEPT_KEYS})
    df = _drop_unscorable(frame, report, labelled)
    df = _normalize(df, min_chars, max_chars, report)
    df = _dedupe_around_test(df, report, labelled) if given_test else _dedupe(df, report, labelled)
    if given_test and (report.test_kept["dropped_empty_text"] or report.test_kept["dropped_missing_label"]):
        log.warning("test: %d given rows dropped because they cannot be scored (%d with no text, %d with no label)",
                    report.test_kept["dropped_empty_text"] + report.test_kept["dropped_missing_label"],
                    report.test_kept["dropped_empty_text"], report.test_kept["dropped_missing_label"])
    report.drop_zero_counts()
    return df.reset_index(drop=True)


def _is_test(df: pd.DataFrame) -> pd.Series:
    return df["split"] == "test" if "split" in df else pd.Series(False, index=df.index)


def _drop_unscorable(frame: pd.DataFrame, report: CleanReport, labelled: bool) -> pd.DataFrame:
    df = frame.copy()
    texts = df["text"].map(lambda t: t if isinstance(t, str) else None)
    missing = texts.isna()
    report.dropped["empty_text"] += int(missing.sum())
    if report.test_kept is not None:
        report.test_kept["dropped_empty_text"] += int((missing & _is_test(df)).sum())
    df = df[~missing].copy()
    df["text"] = texts[~missing]
    if labelled:
        labels = df["label"].map(_label_str)
        no_label = labels.isna()
        report.dropped["missing_label"] += int(no_label.sum())
        if report.test_kept is not None:
            report.test_kept["dropped_missing_label"] += int((no_label & _is_test(df)).sum())
        df = df[~no_label].copy()
        df["label"] = labels[~no_label]
    return df


def _normalize(df: pd.DataFrame, min_chars: int, max_chars: int, report: CleanReport) -> pd.DataFrame:
    df["text"] = [clean_text(t, report) for t in df["text"]]
    lengths = df["text"].map(len)
    short = lengths < min_chars
    if report.test_kept is not None:
        test, empty = _is_test(df), lengths == 0
        report.test_kept["too_short"] += int((short & test & ~empty).sum())
        report.test_kept["dropped_empty_text"] += int((test & empty).sum())
        short &= ~test | empty  # a short test text is still a text to score; an empty one is not
    report.dropped["too_short"] += int(short.sum())
    df = df[~short].copy()
    long = df["text"].map(len) > max_chars
    report.changed["truncated_too_long"] += int(long.sum())
    df.loc[long, "text"] = df.loc[long, "text"].map(lambda t: t[:max_chars])
    return df


def _dedupe(df: pd.DataFrame, report: CleanReport, labelled: bool) -> pd.DataFrame:
    """Drop exact duplicates, every row of a text with conflicting labels, then near-duplicates."""
    label_cols = ["text", "label"] if labelled else ["text"]
    if "split" in df:
        # With given splits, the copy in validation is kept and the training copy dropped.
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
    return df[~near].drop(columns="_key").sort_index()


def _dedupe_around_test(df: pd.DataFrame, report: CleanReport, labelled: bool) -> pd.DataFrame:
    """Keep every given test row; drop train/validation copies of a test text (a text seen in training
    must not be scored as unseen), then clean train/validation as usual."""
    test, rest = df[_is_test(df)], df[~_is_test(df)]
    keys, rest_keys = test["text"].map(normalized_key), rest["text"].map(normalized_key)
    seen = rest_keys.isin(set(keys))
    report.dropped["also_in_test"] += int(seen.sum())
    report.test_kept["also_in_train"] += int(keys.isin(set(rest_keys)).sum())
    _count_test_duplicates(test, keys, report.test_kept, labelled)
    return pd.concat([test, _dedupe(rest[~seen], report, labelled)]).sort_index()


def _count_test_duplicates(test: pd.DataFrame, keys: pd.Series, counts: Counter, labelled: bool) -> None:
    """What the usual cleaning would have dropped within the test split, counted in its order."""
    exact = test.duplicated(subset=["text", "label"] if labelled else ["text"], keep="first")
    counts["duplicate_exact"] += int(exact.sum())
    rows = test[~exact].assign(_key=keys[~exact])
    if labelled:
        n_labels = rows.groupby("_key")["label"].nunique()
        bad = rows["_key"].isin(set(n_labels[n_labels > 1].index))
        counts["conflicting_labels"] += int(bad.sum())
        rows = rows[~bad]
    near = rows.duplicated(subset=["_key", "label"] if labelled else ["_key"], keep="first")
    counts["duplicate_normalized"] += int(near.sum())


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class PoolCleaner:
    """Unlabelled texts cleaned chunk by chunk, exactly as `clean_frame(..., labelled=False)` cleans them
    all at once, then texts already in the labelled data (`exclude_keys`, normalized keys) dropped.

    De-duplication across chunks keeps an 8-byte hash of each text and of each normalized key, not the
    texts, so memory grows by tens of bytes per distinct text rather than by the text (a chance
    collision, about 1 in 10^7 at a billion texts, would drop one text as a duplicate)."""

    def __init__(self, *, min_chars: int, max_chars: int, report: CleanReport, exclude_keys: set[str]):
        self.min_chars, self.max_chars, self.report, self.exclude = min_chars, max_chars, report, exclude_keys
        self._texts: set[int] = set()
        self._keys: set[int] = set()
        self.rows_read = 0

    def feed(self, texts: list[str]) -> list[str]:
        """The texts of this chunk that survive, in order."""
        rep, kept = self.report, []
        self.rows_read += len(texts)
        for text in texts:
            text = clean_text(text, rep)
            if len(text) < self.min_chars:
                rep.dropped["too_short"] += 1
                continue
            if len(text) > self.max_chars:
                rep.changed["truncated_too_long"] += 1
                text = text[:self.max_chars]
            h = _digest(text)
            if h in self._texts:
                rep.dropped["duplicate_exact"] += 1
                continue
            self._texts.add(h)
            key = normalized_key(text)
            hk = _digest(key)
            if hk in self._keys:
                rep.dropped["duplicate_normalized"] += 1
                continue
            self._keys.add(hk)
            if key in self.exclude:
                rep.dropped["already_in_labelled_data"] += 1
                continue
            kept.append(text)
        return kept

    def finish(self) -> dict[str, Any]:
        """The pool's report: rows read, kept, and what was dropped or changed, by reason."""
        rep = self.report
        rep.drop_zero_counts()
        rep.dropped["already_in_labelled_data"] += 0  # always reported, as a check that was made
        kept = self.rows_read - sum(v for k, v in rep.dropped.items())
        return {"rows_read": self.rows_read, "kept": kept, **rep.as_dict()}
