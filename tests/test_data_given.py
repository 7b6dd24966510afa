"""Data you give, kept as given: split files by key or by name, a given test split never cleaned away."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.data.prepare import prepare
from distill.errors import DataError, RecipeError
from distill.recipe import Data, load_recipe

POS = ["a gripping film", "warm and funny", "the best movie", "terrific cast", "a delight", "moving and smart"]
NEG = ["dull and slow", "a tedious mess", "boring plot", "flat jokes", "lifeless", "predictable script"]


def rows(n: int, start: int = 0) -> list[dict[str, str]]:
    """n rows per class, every text distinct (also after normalization)."""
    out = []
    for i in range(start, start + n):
        out.append({"text": f"{POS[i % len(POS)]} take {i}", "label": "pos"})
        out.append({"text": f"{NEG[i % len(NEG)]} take {i}", "label": "neg"})
    return out


def write(path, data: list[dict]) -> str:
    frame = pd.DataFrame(data)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return str(path)


def texts(df: pd.DataFrame) -> list[str]:
    return list(df["text"])


def test_train_and_test_files_under_any_names(tmp_path):
    train = write(tmp_path / "reviews_2019.csv", rows(20))
    test = write(tmp_path / "holdout.jsonl", rows(5, start=100))
    prep = prepare(Data(train=train, test=test), 0)
    assert prep.report["splits_given"] and prep.report["source"] == f"data.train={train}, data.test={test}"
    assert texts(prep.splits["test"]) == [r["text"] for r in rows(5, start=100)]
    assert len(prep.splits["train"]) + len(prep.splits["validation"]) == 40
    assert "test_carved" not in prep.report
    assert prep.report["validation_carved"]["rows"] == len(prep.splits["validation"]) == 6  # 3 per class
    assert prep.report["test_kept_as_given"]["duplicate_exact"] == 0


def test_folder_split_files_are_recognised_by_name_tokens(tmp_path):
    folder = tmp_path / "r8"
    folder.mkdir()
    write(folder / "x-train-all.tsv", rows(20))
    write(folder / "x-test-all.tsv", rows(4, start=100))
    write(folder / "my.dev.jsonl", rows(3, start=200))
    (folder / "notes.txt").write_text("where the data came from\n")
    (folder / "contest.csv").write_text("text,label\nnot a split,pos\n")  # 'test' inside a word is no token
    prep = prepare(Data(source=str(folder)), 0)
    assert [len(prep.splits[s]) for s in ("train", "validation", "test")] == [40, 6, 8]
    assert prep.report["ignored_files"] == ["contest.csv", "notes.txt"]
    assert "validation_carved" not in prep.report


def messy_test_rows() -> list[dict]:
    clean = rows(4, start=100)  # 8 rows
    return clean + [
        dict(clean[0]),                                            # exact duplicate
        {"text": clean[1]["text"].upper() + "!", "label": "neg"},  # near duplicate (case, punctuation)
        {"text": "an odd one", "label": "pos"},                    # conflicting pair
        {"text": "An odd one.", "label": "neg"},
        {"text": "terrific cast take 3", "label": "pos"},          # also a training text
        {"text": "fish &amp; chips", "label": "pos"},              # normalized, kept
        {"text": "no label at all", "label": None},                # cannot be scored: dropped
    ]


def test_a_given_test_file_keeps_duplicates_near_duplicates_and_conflicts(tmp_path, caplog):
    train = write(tmp_path / "train_rows.csv", rows(20))
    test = write(tmp_path / "eval.jsonl", messy_test_rows())
    with caplog.at_level(logging.WARNING, logger="distill.data.clean"):
        prep = prepare(Data(train=train, test=test), 0)
    assert len(prep.splits["test"]) == 14
    kept = prep.report["test_kept_as_given"]
    assert {k: v for k, v in kept.items() if k != "note"} == {
        "duplicate_exact": 1, "duplicate_normalized": 1, "conflicting_labels": 2, "too_short": 0,
        "also_in_train": 1, "dropped_empty_text": 0, "dropped_missing_label": 1}
    assert "normalized" in kept["note"]
    assert "fish & chips" in set(prep.splits["test"]["text"])
    assert "no label" in caplog.text
    # The training copy of a test text is dropped, so it is never scored as unseen.
    held = set(prep.splits["test"]["text"])
    assert not held & (set(prep.splits["train"]["text"]) | set(prep.splits["validation"]["text"]))
    assert prep.report["dropped"]["also_in_test"] == 1
    json.dumps(prep.report)  # data_report.json


def test_the_same_rows_in_one_table_are_cleaned_as_before(tmp_path):
    single = write(tmp_path / "all.csv", rows(20) + messy_test_rows())
    prep = prepare(Data(source=single), 0)
    r = prep.report
    assert "test_kept_as_given" not in r and not r["splits_given"]
    assert r["dropped"] == {"duplicate_exact": 2, "duplicate_normalized": 1, "conflicting_labels": 2,
                            "missing_label": 1}
    assert r["rows_kept"] == 40 + 15 - 6


def test_a_split_column_test_split_is_kept_as_given(tmp_path):
    table = [dict(r, split="train") for r in rows(20)] + [dict(r, split="test") for r in messy_test_rows()]
    prep = prepare(Data(source=write(tmp_path / "d.csv", table)), 0)
    assert len(prep.splits["test"]) == 14 and prep.report["test_kept_as_given"]["conflicting_labels"] == 2


def test_validation_carved_from_given_train_is_reported_and_stratified(tmp_path, caplog):
    table = [{"text": f"glad {i}", "label": "pos"} for i in range(64)] + \
            [{"text": f"sad {i}", "label": "neg"} for i in range(32)] + \
            [{"text": f"meh {i}", "label": "mixed"} for i in range(16)]
    train = write(tmp_path / "mine.csv", table)
    test = write(tmp_path / "theirs.csv", [{"text": "glad again", "label": "pos"}, {"text": "sad again", "label": "neg"},
                                            {"text": "meh again", "label": "mixed"}])
    with caplog.at_level(logging.INFO, logger="distill.data.split"):
        prep = prepare(Data(train=train, test=test), 0)
    val = prep.splits["validation"]
    assert prep.report["validation_carved"] == {"from": "train", "fraction": 0.125, "rows": len(val),
                                                "stratified": True, "grouped": False}
    counts = val["label"].value_counts()
    json.dumps(prep.report)
    assert all(abs(counts[label] - n / 8) <= 1 for label, n in {"pos": 64, "neg": 32, "mixed": 16}.items()), counts
    assert f"validation: {len(val)} rows carved from the given train rows, stratified by label" in caplog.text
    lone = write(tmp_path / "lone.csv", table + [{"text": "only one of these", "label": "odd"}])
    assert prepare(Data(train=lone, test=test), 0).report["validation_carved"]["stratified"] is False


def test_train_without_test_carves_test_as_one_table_would(tmp_path):
    p = write(tmp_path / "labelled.csv", rows(30))
    given = prepare(Data(train=p), 0)
    table = prepare(Data(source=p), 0)
    for name in ("train", "validation", "test"):
        assert texts(given.splits[name]) == texts(table.splits[name]), name
    assert given.report["test_carved"] == {"from": "train", "fraction": 0.2, "rows": 12, "stratified": True,
                                           "grouped": False}
    assert "test_kept_as_given" not in given.report


def test_a_given_validation_file_is_used_and_test_carved_from_train(tmp_path):
    prep = prepare(Data(train=write(tmp_path / "a.csv", rows(40)), validation=write(tmp_path / "b.csv", rows(3, 100))), 0)
    assert len(prep.splits["validation"]) == 6 and "validation_carved" not in prep.report
    assert prep.report["test_carved"]["fraction"] == round(0.2 / 0.9, 4)


# -- errors: one clear message, exit 2 through `distill data inspect` -------------------------------


def inspect(*args: str):
    return CliRunner().invoke(app, ["data", "inspect", *args])


def test_test_without_train_is_a_recipe_error_naming_the_fix(tmp_path):
    test = write(tmp_path / "t.csv", rows(3))
    with pytest.raises(RecipeError, match="data.test is set but data.train is not"):
        load_recipe(None, [f"data.test={test}"])
    r = inspect("--set", f"data.test={test}")
    assert r.exit_code == 2 and "data.test" in r.output and "data.train" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("names, expect", [
    (("train.csv", "news-train.csv", "test.csv"), ["two files for the train split", "news-train.csv", "train.csv"]),
    (("train-test.csv", "test.csv"), ["train-test.csv", "more than one split"]),
    (("data.csv", "test.csv"), ["needs a train file", "data.csv"]),
])
def test_ambiguous_folders_are_refused_with_the_files_named(tmp_path, names, expect):
    folder = tmp_path / "d"
    folder.mkdir()
    for n in names:
        write(folder / n, rows(3))
    with pytest.raises(DataError) as e:
        prepare(Data(source=str(folder)), 0)
    assert all(x in str(e.value) for x in expect) and "data.train" in str(e.value)
    r = inspect(str(folder))
    assert r.exit_code == 2 and all(x in r.output for x in expect) and "Traceback" not in r.output


def test_a_missing_split_file_names_its_key(tmp_path):
    with pytest.raises(DataError, match="no such file. Check data.test"):
        prepare(Data(train=write(tmp_path / "a.csv", rows(5)), test=str(tmp_path / "nope.csv")), 0)
