"""The unlabelled pool (data.unlabeled) is read, cleaned and de-duplicated in chunks: the result must be
exactly what cleaning the whole file at once gives, in every file format, and memory must not hold the file."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from tiny import corpus, write_csv

from distill.data import sources
from distill.data.clean import CleanReport, PoolCleaner, clean_frame, normalized_key
from distill.data.prepare import prepare
from distill.errors import DataError
from distill.recipe import load_recipe

WORDS = "good bad film plot actor slow funny dull great scene score".split()


def messy_texts(n: int, seed: int = 0) -> list[str]:
    """Texts with exact and near duplicates (case, punctuation), HTML entities, odd whitespace, short
    and over-long rows, in a seeded order."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if out and roll < 0.15:
            out.append(rng.choice(out))  # exact duplicate
        elif out and roll < 0.3:
            t = rng.choice(out)
            out.append(t.upper() + rng.choice(["!", "?", " ...", ""]))  # near duplicate
        elif roll < 0.35:
            out.append(rng.choice(["x", "ab", "  "]))  # too short
        elif roll < 0.4:
            out.append(" ".join(rng.choices(WORDS, k=40)))  # over max_chars below
        else:
            t = " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))
            out.append(rng.choice([t, t.replace(" ", "  "), t + " &amp; more", "\u00a0" + t]))
    return out


def whole_file_reference(texts: list[str], exclude: set[str], min_chars=3, max_chars=60):
    """How the pool was cleaned before it was streamed: one frame, then the leak filter."""
    rep = CleanReport()
    df = clean_frame(pd.DataFrame({"text": texts}), min_chars=min_chars, max_chars=max_chars, report=rep,
                     labelled=False)
    leak = df["text"].map(normalized_key).isin(exclude)
    rep.dropped["already_in_labelled_data"] += int(leak.sum())
    kept = df[~leak]["text"].tolist()
    return kept, {"rows_read": len(texts), "kept": len(kept), **rep.as_dict()}


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunked_cleaning_equals_cleaning_the_whole_pool(chunk):
    texts = messy_texts(600)
    exclude = {normalized_key(texts[5]), normalized_key("good film")}
    ref_kept, ref_report = whole_file_reference(texts, exclude)
    cleaner = PoolCleaner(min_chars=3, max_chars=60, report=CleanReport(), exclude_keys=exclude)
    kept = [t for i in range(0, len(texts), chunk) for t in cleaner.feed(texts[i:i + chunk])]
    assert kept == ref_kept
    assert cleaner.finish() == ref_report
    # The case the order of checks matters for: a near duplicate, then an exact copy of it.
    assert ref_report["dropped"]["duplicate_exact"] > 0 and ref_report["dropped"]["duplicate_normalized"] > 0
    assert ref_report["changed"]["truncated_too_long"] > 0 and ref_report["dropped"]["too_short"] > 0


def test_exact_copy_of_a_dropped_near_duplicate_counts_as_exact():
    cleaner = PoolCleaner(min_chars=1, max_chars=100, report=CleanReport(), exclude_keys=set())
    assert cleaner.feed(["nice film!"]) + cleaner.feed(["NICE FILM"]) + cleaner.feed(["NICE FILM"]) == ["nice film!"]
    assert cleaner.finish()["dropped"] == {"duplicate_exact": 1, "duplicate_normalized": 1,
                                           "already_in_labelled_data": 0}


def _write(path, texts, fmt):
    if fmt == "txt":
        path.write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    elif fmt == "csv":
        pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    else:
        pd.DataFrame({"text": texts + [None], "n": range(len(texts) + 1)}).to_parquet(path)


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "parquet"])
def test_reading_in_chunks_gives_the_file_in_order(tmp_path, fmt):
    texts = [t for t in messy_texts(200, seed=1) if t.strip()]
    path = tmp_path / f"pool.{fmt}"
    _write(path, texts, fmt)
    data = load_recipe(None, [f"data.unlabeled={path}"]).data
    chunks = list(sources.iter_unlabeled(str(path), data, chunk_rows=16))
    assert max(len(c) for c in chunks) <= 16 and len(chunks) >= len(texts) // 16
    assert [t for c in chunks for t in c] == texts


def test_a_pool_file_without_the_text_column_is_a_named_error(tmp_path):
    path = tmp_path / "pool.csv"
    pd.DataFrame({"body": ["a text"]}).to_csv(path, index=False)
    data = load_recipe(None, [f"data.unlabeled={path}"]).data
    with pytest.raises(DataError, match=r"pool\.csv: no text column 'text'.*body.*data\.text_column"):
        list(sources.iter_unlabeled(str(path), data))


def test_a_pool_file_in_another_encoding_names_the_line(tmp_path):
    path = tmp_path / "pool.txt"
    path.write_bytes(b"fine text\nstill fine\ncaf\xe9 bad\n")
    data = load_recipe(None, [f"data.unlabeled={path}"]).data
    with pytest.raises(DataError, match=r"pool\.txt: line 3 is not valid utf-8 \(byte.*data\.encoding"):
        list(sources.iter_unlabeled(str(path), data))


def test_prepare_streams_the_pool_through_small_chunks(tmp_path, monkeypatch):
    """The data stage with 5-row chunks keeps what one chunk keeps: same transfer rows, same report."""
    p = write_csv(tmp_path, corpus(10))
    labelled = prepare(load_recipe(None, [f"data.source={p}"]).data, 0)
    pool = messy_texts(300, seed=2) + [labelled.splits["test"]["text"].iloc[0].upper()]
    extra = tmp_path / "extra.txt"
    extra.write_text("\n".join(pool) + "\n")
    data = load_recipe(None, [f"data.source={p}", f"data.unlabeled={extra}"]).data
    whole = prepare(data, 0)
    monkeypatch.setattr("distill.data.prepare.POOL_CHUNK_ROWS", 5)
    chunked = prepare(data, 0)
    assert chunked.transfer.equals(whole.transfer) and chunked.report == whole.report
    assert whole.report["unlabeled"]["dropped"]["already_in_labelled_data"] >= 1
    assert len(whole.transfer) == whole.report["unlabeled"]["kept"] > 100
