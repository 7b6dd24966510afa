"""`distill run`: the stages of a recipe (distill/stages.py), in order, in one run directory.

A stage (distill/stage.py) is a function `(ctx, out_dir) -> None` plus the inputs that decide whether
a previous output can be reused (the recipe sections it reads and the output digests of the stages
it depends on). A stage listed with `fn=None` is recorded as `not-built`.

Besides a whole run, `run_recipe` can run part of one (`until=`), take completed stages from
another run directory instead of recomputing them (`base=`), and hand Trainer callbacks to the
training stages (`callbacks=`); `distill tune` (distill/tune.py) is built on these.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from distill.distributed import barrier, from_rank_zero, is_rank_zero, shutdown
from distill.errors import DistillError
from distill.recipe import Recipe, digest_view, dump_recipe
from distill.rundir import RunDir, StageResult, digest, hash_tree, replace_dir
from distill.stage import Context, Stage

log = logging.getLogger(__name__)


def _stages() -> list[Stage]:
    # Imported here so `distill --help` never pays for the stage modules' heavy imports.
    from distill import stages

    return stages.STAGES


@dataclass
class RunSummary:
    run_dir: Path
    done: list[StageResult]  # every stage that ran or was reused (skipped=True), in order
    not_built: list[str]


def _inputs(recipe: Recipe, stage: Stage, run: RunDir) -> dict[str, Any]:
    """What decides whether a stage's earlier output can be reused (docs/architecture.md, "How
    stage reuse works"); its digest is the stage's `inputs_sha256` in run.json."""
    inputs: dict[str, Any] = {s: digest_view(recipe, s) for s in stage.sections}
    inputs["seed"] = recipe.seed
    inputs["upstream"] = {dep: run.output_digest(dep, stage.reads.get(dep)) for dep in stage.after}
    if stage.fingerprint:
        inputs["fingerprint"] = stage.fingerprint(recipe)
    if stage.revision > 1:
        inputs["revision"] = stage.revision
    return inputs


def run_recipe(recipe: Recipe, run_dir: Path, *, resume: bool = False, force: bool = False,
               on_stage: Callable[[str, str], None] | None = None, until: Optional[str] = None,
               base: Path | str | None = None,
               callbacks: Mapping[str, Sequence[Any]] | None = None) -> RunSummary:
    """Run every built stage of the recipe into run_dir; return what ran, what was reused, what is missing.

    on_stage(name, event) is called with event "start", "done", "reused" or "not-built" (the CLI
    uses it for progress).

    until: the name of the last stage to run (one of distill.stages.STAGES). The stages after it
        are neither run nor recorded in run.json; the run ends as a whole one does (lock released,
        the distributed process group left).
    base: another run directory to take completed stages from. A stage whose inputs hash the same
        as base's completed stage (so its upstream outputs are the same bytes too) is hard-linked
        from base (copied where the filesystem cannot link), its files checked against base's
        recorded sha256, and recorded with base's run.json entry, instead of being recomputed;
        on_stage then says "reused". Base is only read. A stage this run already completed with the
        same inputs is left to `resume`; a stage whose linked files do not verify is run as usual.
    callbacks: transformers TrainerCallbacks by stage name, e.g. {"student": [cb]}: appended to the
        callbacks of that stage's Trainer (the stages that train: teacher, student), through
        `Context.callbacks`. A callback may stop training the Trainer's way (control), or raise to
        abort its stage, which then fails as any failing stage does (status "failed", its temporary
        folder removed, the exception propagated).
    """
    notify = on_stage or (lambda name, event: None)
    stages = _stages()
    names = [s.name for s in stages]
    if until is not None and until not in names:
        raise DistillError(f"until={until!r} is not a stage; the stages are {', '.join(names)}.")
    callbacks = dict(callbacks or {})
    if set(callbacks) - set(names):
        raise DistillError(f"callbacks for {', '.join(sorted(set(callbacks) - set(names)))}: not a stage; "
                           f"the stages are {', '.join(names)}.")
    source = RunDir(base) if base is not None and Path(base).resolve() != Path(run_dir).resolve() else None
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
        for stage in stages:
            if not stage.wanted(recipe):
                if stage.name == until:
                    break
                continue
            if stage.fn is None or any(dep in not_built for dep in stage.after):
                run.record(stage.name, status="not-built")
                not_built.append(stage.name)
                notify(stage.name, "not-built")
            else:
                inputs = _inputs(recipe, stage, run)
                notify(stage.name, "start")
                res = _from_base(source, run, stage.name, digest(inputs)) if source is not None else None
                if res is None:
                    stage_ctx = replace(ctx, callbacks=list(callbacks.get(stage.name, ())))
                    res = run.run_stage(stage.name, inputs, lambda out, st=stage, c=stage_ctx: st.fn(c, out),
                                        resume=resume)
                done.append(res)
                notify(stage.name, "reused" if res.skipped else "done")
            if stage.name == until:
                break
        shutdown()
        return RunSummary(run.path, done, not_built)


def _from_base(base: RunDir, run: RunDir, name: str, in_digest: str) -> Optional[StageResult]:
    """Link base's completed stage `name` into run when its inputs digest is in_digest and its files
    verify; None (nothing changed in run) otherwise. Rank 0 decides and writes, as in run_stage."""
    own = run.read()["stages"].get(name) or {}
    linked = False
    if is_rank_zero() and not (own.get("status") == "complete" and own.get("inputs_sha256") == in_digest):
        rec = base.read()["stages"].get(name) or {}
        if (rec.get("status") == "complete" and rec.get("inputs_sha256") == in_digest
                and rec.get("outputs") is not None and (base.path / name).is_dir()):
            tmp = run.path / f".{name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            _link_tree(base.path / name, tmp)
            if hash_tree(tmp) == rec["outputs"]:  # the linked files themselves, so no race with base
                replace_dir(tmp, run.path / name)
                run.record(name, **rec)
                linked = True
                log.info("stage %s: inputs as in %s, outputs verified; linked from there", name, base.path)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
                log.warning("stage %s: files in %s differ from their recorded sha256; running it here", name, base.path)
    if not from_rank_zero(linked):
        return None
    barrier()  # no rank reads the stage before rank 0 has linked it into place
    return StageResult(name, run.path / name, True, 0.0)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of src into dst (a copy where the filesystem cannot link)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.rglob("*")):
        target = dst / p.relative_to(src)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, target)
        except OSError:
            shutil.copy2(p, target)
