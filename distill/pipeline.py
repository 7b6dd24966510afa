"""`distill run`: the stages of a recipe (distill/stages.py), in order, in one run directory.

A stage (distill/stage.py) is a function `(ctx, out_dir) -> None` plus the inputs that decide whether
a previous output can be reused (the recipe sections it reads and the output digests of the stages
it depends on). A stage listed with `fn=None` is recorded as `not-built`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from distill.distributed import barrier, is_rank_zero, shutdown
from distill.recipe import Recipe, dump_recipe
from distill.rundir import RunDir, StageResult
from distill.stage import Context, Stage

log = logging.getLogger(__name__)


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
            done.append(res)
            notify(stage.name, "reused" if res.skipped else "done")
        shutdown()
        return RunSummary(run.path, done, not_built)
