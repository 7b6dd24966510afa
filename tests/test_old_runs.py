"""A run directory made before a change still resumes with every stage reused.

tests/fixtures/old-runs/ holds run directories written by an older commit's own pipeline (made.json
names the commit; tests/fixtures/make_old_runs.py made them, stage functions stubbed so no weights or
data are committed). Resuming them with today's pipeline, the same stubs in place, must reuse every
stage: today's recipe serialization, stage table, fingerprints and revisions give the digests the
older code recorded. A deliberate `Stage.revision` bump shows up here as a rebuilt stage; regenerate
the fixture at the new commit then, and say so in the commit message.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from distill import stages
from distill.pipeline import run_recipe
from distill.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "old-runs"
MADE = json.loads((FIXTURES / "made.json").read_text())


def _stub(name: str):
    def fn(ctx, out: Path) -> None:
        raise AssertionError(f"stage {name} was rebuilt instead of reused")

    return fn


@pytest.mark.parametrize("name", sorted(MADE["runs"]))
def test_a_run_made_by_older_code_resumes_with_every_stage_reused(name, tmp_path, monkeypatch):
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    monkeypatch.chdir(REPO)  # the recipes name their data files relative to the repository
    monkeypatch.setattr(stages, "STAGES", [dataclasses.replace(s, fn=_stub(s.name)) for s in stages.STAGES])
    recipe = load_recipe(run / "recipe.yaml")
    summary = run_recipe(recipe, run, resume=True)
    assert [r.name for r in summary.done] == [s.name for s in stages.STAGES if s.wanted(recipe)] and not summary.not_built
    rebuilt = [r.name for r in summary.done if not r.skipped]
    assert not rebuilt, f"{name} (made at {MADE['commit']}): {rebuilt} rebuilt"
