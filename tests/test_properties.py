"""Property-based tests: any recipe text or data cell gives a valid result or a clean error."""

from __future__ import annotations

import pandas as pd
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.data.clean import CleanReport, clean_frame, clean_text
from distill.errors import RecipeError
from distill.recipe import Recipe, load_recipe

KEYS = ["name", "seed", "device", "data", "teacher", "student", "distill", "studnet", "epochs", "layers",
        "source", "few_shot", "losses", "kl", "splits", "train", "test", "curriculum", "scorer", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(allow_nan=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
                      max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=5))
def test_any_recipe_mapping_validates_or_raises_recipe_error(tmp_path, data):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    try:
        assert isinstance(load_recipe(p), Recipe)
    except RecipeError as e:
        assert e.problems and str(p) in str(e)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_any_bytes_as_a_recipe_file_give_a_recipe_or_a_clean_error(tmp_path, raw):
    p = tmp_path / "r.yaml"
    p.write_bytes(raw)
    try:
        raw.decode("utf-8")
        bad_byte = None
    except UnicodeDecodeError as e:
        bad_byte = e.start
    try:
        recipe = load_recipe(p)
    except RecipeError as e:
        # one paragraph naming the file, then each problem on its own line
        assert e.source == str(p) and str(e).startswith(f"{p}: {len(e.problems)} problem")
        assert e.problems and all(x.strip() for x in e.problems)
        if bad_byte is not None:  # names the byte and the fix
            assert e.problems == [f"not UTF-8 text (byte {bad_byte}); save the recipe as UTF-8"]
    else:
        assert isinstance(recipe, Recipe) and bad_byte is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_cleaning_is_idempotent_and_leaves_no_control_characters(text):
    once = clean_text(text)
    assert clean_text(once) == once
    assert once == once.strip() and "  " not in once
    assert not any(ord(c) < 32 for c in once)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=30)),
                          st.one_of(st.none(), st.sampled_from(["a", "b", "", " "]), st.integers(0, 2), st.floats())),
                max_size=30))
def test_clean_frame_never_crashes_and_counts_every_dropped_row(rows):
    df = pd.DataFrame(rows, columns=["text", "label"], dtype=object)
    rep = CleanReport()
    out = clean_frame(df, min_chars=2, max_chars=40, report=rep)
    assert len(out) + sum(rep.dropped.values()) == len(df)
    assert all(isinstance(t, str) and 2 <= len(t) <= 40 for t in out["text"])
