from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from conftest import asset_installed
from tiny import corpus, write_csv
from typer.testing import CliRunner

from distill.cli import app
from distill.data.augment import augment, corpus_vocab
from distill.data.clean import CleanReport, clean_frame, clean_text
from distill.data.prepare import prepare, write
from distill.errors import DataError
from distill.recipe import load_recipe


def recipe_for(path, *sets):
    return load_recipe(None, [f"data.source={path}", *sets])


def test_cleaning_counts_every_change_and_drop():
    rep = CleanReport()
    df = pd.DataFrame({"text": ["Caf\u00e9 &amp; bar", "  spaced\t\tout  ", "ok text", "OK text!", None, "x",
                                "zero\u200bwidth", "same", "same", "clash", "clash"],
                       "label": ["a", "a", "a", "a", "a", "a", "b", None, "b", "a", "b"]})
    out = clean_frame(df, min_chars=2, max_chars=5000, report=rep)
    assert rep.changed["html_entities"] == 1 and rep.changed["whitespace"] == 1
    assert rep.changed["control_characters"] == 1
    assert rep.dropped == {"empty_text": 1, "missing_label": 1, "too_short": 1, "duplicate_normalized": 1,
                           "conflicting_labels": 2}
    assert rep.conflicts == [{"text": "clash", "labels": ["a", "b"]}]
    assert "Café & bar" in set(out["text"]) and "spaced out" in set(out["text"])
    assert clean_text("ﬁne\x07 ") == "fine"  # NFKC ligature, control char, trailing space


def test_truncation_is_counted():
    rep = CleanReport()
    out = clean_frame(pd.DataFrame({"text": ["y" * 100], "label": ["a"]}), min_chars=1, max_chars=10, report=rep)
    assert out["text"][0] == "y" * 10 and rep.changed["truncated_too_long"] == 1


def test_grouped_split_never_straddles_and_files_are_written(tmp_path):
    p = write_csv(tmp_path, corpus(20))
    prep = prepare(recipe_for(p, "data.group_by=film").data, 0)
    groups = {k: set(v["group"]) for k, v in prep.splits.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
    assert not groups["validation"] & groups["test"]
    assert prep.report["groups_straddling"] == {"train&validation": 0, "train&test": 0, "validation&test": 0}
    assert sum(len(v) for v in prep.splits.values()) == 480
    assert 0.15 <= len(prep.splits["test"]) / 480 <= 0.25
    out = tmp_path / "out"
    out.mkdir()
    write(prep, out)
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"text", "label", "group"} and first["label"] in (0, 1)
    assert json.loads((out / "labels.json").read_text()) == {"names": ["neg", "pos"]}


def test_split_is_seeded_and_stratified(tmp_path):
    p = write_csv(tmp_path, corpus(10))
    a = prepare(recipe_for(p).data, 0)
    b = prepare(recipe_for(p).data, 0)
    c = prepare(recipe_for(p, "data.split_seed=1").data, 0)
    assert list(a.splits["test"]["text"]) == list(b.splits["test"]["text"])
    assert list(a.splits["test"]["text"]) != list(c.splits["test"]["text"])
    counts = a.splits["test"]["label"].value_counts()
    assert counts["pos"] == counts["neg"]


def test_few_shot_keeps_exactly_k_per_class_and_the_rest_becomes_transfer(tmp_path):
    p = write_csv(tmp_path, corpus(10))
    prep = prepare(recipe_for(p, "data.few_shot=5").data, 0)
    assert prep.splits["train"]["label"].value_counts().to_dict() == {"neg": 5, "pos": 5}
    n_train = prep.report["few_shot"]["labelled"] + prep.report["few_shot"]["to_transfer"]
    assert len(prep.transfer) == n_train - 10 and prep.transfer["gold"].notna().all()
    assert not set(prep.transfer["text"]) & set(prep.splits["train"]["text"])


def test_few_shot_reports_a_class_with_fewer_than_k(tmp_path):
    rows = corpus(10) + [{"text": f"meh {i}", "label": "mixed", "film": "x"} for i in range(12)]
    prep = prepare(recipe_for(write_csv(tmp_path, rows), "data.few_shot=20").data, 0)
    assert "mixed" in prep.report["few_shot"]["classes_short_of_k"]
    assert prep.splits["train"]["label"].value_counts()["pos"] == 20


def test_augmentation_is_seeded_unlabelled_and_never_from_held_out(tmp_path):
    p = write_csv(tmp_path, corpus(10))
    r = recipe_for(p, "data.augment.multiplier=2")
    a, b = prepare(r.data, 3), prepare(r.data, 3)
    assert a.augmented == b.augmented and len(a.augmented) > 0
    held = set(a.splits["validation"]["text"]) | set(a.splits["test"]["text"])
    assert {s for _, s, _ in a.augmented} <= {"train", "transfer"}
    assert not {t for t, _, _ in a.augmented} & held
    out = augment(["one two three four five"], ops=["swap"], rate=0.4, multiplier=3, seed=0, vocab=["x"])
    assert all(sorted(t.split()) == ["five", "four", "one", "three", "two"] for t, _ in out)
    out = augment(["one two three four five"], ops=["insert"], rate=0.2, multiplier=1, seed=0, vocab=["zebra"])
    assert out[0][0].split().count("zebra") == 1
    assert corpus_vocab(["a b b", "b c"])[0] == "b"


def test_unlabeled_file_extends_transfer_without_leaking_test(tmp_path):
    p = write_csv(tmp_path, corpus(10))
    prep0 = prepare(recipe_for(p).data, 0)
    leak = prep0.splits["test"]["text"].iloc[0]
    extra = tmp_path / "extra.txt"
    extra.write_text(f"brand new text one\nbrand new text two\n{leak.upper()}\n\n")
    prep = prepare(recipe_for(p, f"data.unlabeled={extra}").data, 0)
    assert list(prep.transfer["text"]) == ["brand new text one", "brand new text two"]
    assert prep.report["unlabeled"]["dropped"]["already_in_labelled_data"] == 1


def test_given_splits_from_a_folder_are_respected(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    rows = corpus(6)
    write_csv(folder, rows[:100], "train.csv")
    write_csv(folder, rows[100:], "test.csv")
    prep = prepare(recipe_for(folder).data, 0)
    assert prep.report["splits_given"]
    assert len(prep.splits["test"]) == len(rows) - 100
    assert len(prep.splits["train"]) + len(prep.splits["validation"]) == 100


def test_bom_and_crlf_are_handled_silently(tmp_path):
    p = tmp_path / "bom.csv"
    body = "text,label\r\n" + "".join(f"{r['text']},{r['label']}\r\n" for r in corpus(3))
    p.write_bytes(b"\xef\xbb\xbf" + body.encode())
    prep = prepare(recipe_for(p).data, 0)
    assert sum(len(v) for v in prep.splits.values()) == 72
    assert not any("\r" in t for t in prep.splits["train"]["text"])


def test_jsonl_tsv_and_parquet_load(tmp_path):
    rows = corpus(3)
    pd.DataFrame(rows).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    pd.DataFrame(rows).to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.tsv", "d.parquet"):
        prep = prepare(recipe_for(tmp_path / name).data, 0)
        assert sum(len(v) for v in prep.splits.values()) == 72, name


def test_a_multi_megabyte_field_is_truncated_not_fatal(tmp_path):
    rows = corpus(3) + [{"text": "huge " * 400_000, "label": "pos", "film": "z"}]
    prep = prepare(recipe_for(write_csv(tmp_path, rows)).data, 0)
    assert prep.report["changed"]["truncated_too_long"] == 1


# -- bad input: one clear DataError (exit 2 through the CLI) each ------------------------------------


def bad(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize("case, expect", [
    ("missing", "no such file"),
    ("unknown_format", "cannot tell the format"),
    ("missing_column", "The columns are: review, label"),
    ("empty", "empty"),
    ("header_only", "no rows"),
    ("single_class", "single class"),
    ("not_utf8", "line 3 is not valid utf-8 (byte 0xe9"),  # the recipe's name, not utf-8-sig
    ("unseen_label", "never in train"),
    ("bad_split_value", "train, validation or test"),
])
def test_bad_data_gets_a_clear_error(tmp_path, case, expect):
    if case == "missing":
        p = tmp_path / "nope.csv"
    elif case == "unknown_format":
        p = bad(tmp_path, "d.xlsx", b"x")
    elif case == "missing_column":
        p = bad(tmp_path, "d.csv", b"review,label\nhi,a\n")
    elif case == "empty":
        p = bad(tmp_path, "d.csv", b"")
    elif case == "header_only":
        p = bad(tmp_path, "d.csv", b"text,label\n")
    elif case == "single_class":
        p = bad(tmp_path, "d.csv", ("text,label\n" + "".join(f"t{i} x,a\n" for i in range(30))).encode())
    elif case == "not_utf8":
        p = bad(tmp_path, "d.csv", b"text,label\ngood,a\ncaf\xe9,b\n")
    elif case == "unseen_label":
        folder = tmp_path / "split"
        folder.mkdir()
        write_csv(folder, corpus(3), "train.csv")
        write_csv(folder, [{"text": "brand new", "label": "neutral"}, {"text": "also new", "label": "pos"}], "test.csv")
        p = folder
    elif case == "bad_split_value":
        rows = [dict(r, split="train") for r in corpus(2)]
        rows[3]["split"] = "holdout"
        p = write_csv(tmp_path, rows)
    with pytest.raises(DataError, match=re.escape(expect)):
        prepare(recipe_for(p).data, 0)
    r = CliRunner().invoke(app, ["data", "inspect", str(p)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    flat = " ".join(r.output.split())  # the same message on the command line, naming the file
    assert expect in flat and p.name in flat, r.output


def test_nan_and_empty_labels_are_counted_drops(tmp_path):
    rows = corpus(3) + [{"text": "no label here", "label": "", "film": "z"}, {"text": "nan label", "label": None, "film": "z"}]
    prep = prepare(recipe_for(write_csv(tmp_path, rows)).data, 0)
    assert prep.report["dropped"]["missing_label"] == 2


def test_other_encoding_via_recipe(tmp_path):
    p = bad(tmp_path, "d.csv", ("text,label\n" + "".join(f"café {i},{'ab'[i % 2]}\n" for i in range(40))).encode("latin-1"))
    prep = prepare(recipe_for(p, "data.encoding=latin-1").data, 0)
    assert "café 0" in set(pd.concat(prep.splits.values())["text"])


@pytest.mark.parametrize("teacher", ["tiny-bert", pytest.param("minilm-l6", marks=pytest.mark.slow)])
def test_run_writes_the_data_stage_and_resume_reuses_it(tmp_path, teacher, request):
    """The default recipe run on a small CSV; the data stage is what is tested. `minilm-l6`: the packaged
    teacher as shipped (3 steps of it, a student from its layers), minutes of CPU, so `slow`; `tiny-bert`:
    the same run with the tiny BERT as the teacher (a 1-layer student of its 2), in seconds."""
    p = write_csv(tmp_path, corpus(5))
    runner = CliRunner()
    args = ["run", "--set", f"data.source={p}", "--set", "name=d", "--models-dir", str(tmp_path / "m"),
            "--set", "teacher.min_steps=0", "--set", "student.min_steps=0"]  # the data stage is what is tested
    if teacher == "tiny-bert":
        args += ["--set", f"teacher.model={request.getfixturevalue('tiny_bert')}", "--set", "student.layers=[1]"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    run = tmp_path / "m" / "d"
    report = json.loads((run / "data" / "data_report.json").read_text())
    assert report["rows_kept"] == 120
    r = runner.invoke(app, args + ["--resume"])
    assert r.exit_code == 0 and "reused" in r.output, r.output
    p.write_text(p.read_text() + "one more new row,pos,f9\n")  # a changed data file re-runs the stage
    r = runner.invoke(app, args + ["--resume"])
    assert r.exit_code == 0, r.output
    assert "reused" not in r.output.split("data")[1].split("\n")[0]


@pytest.mark.real
@pytest.mark.skipif(not asset_installed("rotten-tomatoes"), reason="builtin:rotten-tomatoes not installed")
def test_rotten_tomatoes_default_split_figures():
    prep = prepare(load_recipe().data, 0)
    r = prep.report
    assert r["dropped"]["not_a_class_row"] == 1097
    assert r["dropped"]["duplicate_exact"] == 56
    assert r["groups_straddling"]["train&test"] == 0
    n = sum(len(v) for v in prep.splits.values())
    assert n == r["rows_kept"] and 12_700 <= n <= 12_808
    assert 0.18 <= len(prep.splits["test"]) / n <= 0.22


def test_augmentation_of_a_large_pool_is_capped_to_a_seeded_sample(tmp_path):
    p = write_csv(tmp_path, corpus(10))
    sets = ["data.augment.multiplier=2"]
    whole = prepare(recipe_for(p, *sets).data, 0)
    n_sources = len(whole.splits["train"]) + len(whole.transfer)
    same = prepare(recipe_for(p, *sets, f"data.augment.max_texts={n_sources}").data, 0)
    assert same.augmented == whole.augmented and "augment_sampled" not in same.report
    capped = prepare(recipe_for(p, *sets, "data.augment.max_texts=40").data, 0)
    sources = {(split, i) for _, split, i in capped.augmented}
    assert len(sources) <= 40 and len(capped.augmented) > 40
    assert capped.report["augment_sampled"] == {"sources": 40, "of": n_sources}
    assert prepare(recipe_for(p, *sets, "data.augment.max_texts=40").data, 0).augmented == capped.augmented
