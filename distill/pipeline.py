"""`distill run`: the stages of a recipe, in order, in one run directory.

Each stage is a function `(ctx, out_dir) -> None` plus the inputs that decide whether a previous
output can be reused (the recipe sections it reads and the output digests of the stages it
depends on). Stages that later issues build are listed with `None` and recorded as `not-built`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from distill.distributed import barrier, is_rank_zero, shutdown
from distill.recipe import Recipe, dump_recipe
from distill.rundir import RunDir, StageResult

log = logging.getLogger(__name__)


@dataclass
class Context:
    recipe: Recipe
    run: RunDir
    results: dict[str, StageResult] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Optional[Callable[[Context, Path], None]]
    # Recipe sections whose values the stage reads: top-level names, or dotted paths to one field
    # ("data.label_noise") where a stage reads only part of a section.
    sections: tuple[str, ...]
    # Stages whose outputs the stage reads.
    after: tuple[str, ...] = ()
    description: str = ""
    # Anything else that decides the output (e.g. the sha256 of a user's data file).
    fingerprint: Optional[Callable[[Recipe], Any]] = None
    # Where a stage reads only some of an upstream stage's files: {stage: (file, ...)}. Only those
    # files' digests then decide reuse (the teacher does not retrain when augmentation changes).
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Raise it when a code change alters what the stage produces from the same inputs (as seeding
    # the new classifier head did): `--resume` then rebuilds the stage instead of reusing an output
    # the current code would not make. Revision 1 adds nothing to the inputs, so runs made before
    # revisions existed keep their digests.
    revision: int = 1


def _stages() -> list[Stage]:
    # Imported here so `distill --help` never pays for the stage modules' heavy imports.
    from distill import stages

    return stages.STAGES


@dataclass
class RunSummary:
    run_dir: Path
    done: list[StageResult]
    not_built: list[str]


def _section(recipe: Recipe, name: str) -> Any:
    value: Any = recipe
    for part in name.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def run_recipe(recipe: Recipe, run_dir: Path, *, resume: bool = False, force: bool = False,
               on_stage: Callable[[str, str], None] | None = None) -> RunSummary:
    """Run every built stage of the recipe into run_dir; return what ran, what was reused, what is missing.

    on_stage(name, event) is called with event "start", "done", "reused" or "not-built" (the CLI
    uses it for progress).
    """
    notify = on_stage or (lambda name, event: None)
    # Under torchrun only rank 0 opens, locks and writes the run directory; the others follow.
    run = RunDir.prepare(run_dir, resume=resume, force=force) if is_rank_zero() else RunDir(run_dir)
    with run.lock():
        if is_rank_zero():
            if force:
                run.wipe()
            (run.path / "recipe.yaml").write_text(dump_recipe(recipe))
        barrier()
        ctx = Context(recipe=recipe, run=run)
        done: list[StageResult] = []
        not_built: list[str] = []
        for stage in _stages():
            if stage.fn is None or any(dep in not_built for dep in stage.after):
                run.record(stage.name, status="not-built")
                not_built.append(stage.name)
                notify(stage.name, "not-built")
                continue
            inputs: dict[str, Any] = {s: _section(recipe, s) for s in stage.sections}
            inputs["seed"] = recipe.seed
            inputs["upstream"] = {dep: run.output_digest(dep, stage.reads.get(dep)) for dep in stage.after}
            if stage.fingerprint:
                inputs["fingerprint"] = stage.fingerprint(recipe)
            if stage.revision > 1:
                inputs["revision"] = stage.revision
            notify(stage.name, "start")
            res = run.run_stage(stage.name, inputs, lambda out, st=stage: st.fn(ctx, out), resume=resume)
            ctx.results[stage.name] = res
            done.append(res)
            notify(stage.name, "reused" if res.skipped else "done")
        shutdown()
        return RunSummary(run.path, done, not_built)
