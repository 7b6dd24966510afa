"""`distill run` and `distill summary`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from distill.cli import views
from distill.cli.common import SetOpt, _load, _run_recipe, _show_progress, guarded, out


@guarded
def run(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML; default: the shipped default recipe.")] = None,
    set_: SetOpt = [],  # noqa: B006 - Typer reads the default, never mutates it
    name: Annotated[Optional[str], typer.Option(help="Run name (folder under --models-dir); default: the recipe's name.")] = None,
    models_dir: Annotated[Path, typer.Option(help="Where run directories land.")] = Path("models"),
    resume: Annotated[bool, typer.Option(help="Continue an existing run: reuse stages whose inputs are unchanged.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
) -> None:
    """Run a recipe: data -> teacher -> soft labels -> student -> evaluation, into models/NAME/."""
    _show_progress()
    from distill.pipeline import run_recipe

    rec = _load(recipe, set_)
    run_dir = models_dir / (name or rec.name)
    out.print(f"[bold]distill run[/] {recipe or 'default recipe'} -> {run_dir}")

    def on_stage(stage: str, event: str) -> None:
        views.print_stage(out, stage, event)

    summary = run_recipe(rec, run_dir, resume=resume, force=force, on_stage=on_stage)
    if summary.not_built:
        out.print(f"[yellow]Stages not built yet in this version:[/] {', '.join(summary.not_built)}. "
                  f"What ran is in {summary.run_dir}.")
        return
    _print_summary(summary.run_dir)
    out.print(f"next: distill export onnx {summary.run_dir}   then: distill bench {summary.run_dir}")


def _print_summary(run_dir: Path) -> None:
    from distill.advice import advise
    from distill.summary import run_summary

    s = run_summary(run_dir)
    views.print_summary(out, run_dir, s)
    if s["rows"]:
        views.print_advice(out, run_dir, advise(run_dir, _run_recipe(run_dir)))


@guarded
def summary(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (models/NAME).")],
) -> None:
    """One table: teacher, student, student int8 and the TF-IDF floor, with the report and .ort paths."""
    from distill.errors import RunDirError

    if not (run_dir / "run.json").exists():
        raise RunDirError(f"{run_dir} is not a run directory (no run.json). Run `distill run` first, or pass models/NAME.")
    _print_summary(run_dir)
