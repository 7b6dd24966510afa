"""`distill tune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from distill.cli import views
from distill.cli.common import SetOpt, Which, _load, err, guarded, out


@guarded
def tune(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML with a tune.space; default: the shipped default recipe.")] = None,
    trials: Annotated[Optional[int], typer.Option(min=1, help="Finished trials the study should hold (a resumed search runs only the missing ones). Default: the recipe's tune.trials.")] = None,
    timeout: Annotated[Optional[float], typer.Option(min=1, help="Start no new trial after this many seconds. Default: the recipe's tune.timeout.")] = None,
    objective: Annotated[Optional[Which], typer.Option(help="Whose validation accuracy to maximize. Default: the recipe's tune.objective.")] = None,
    set_: SetOpt = [],  # noqa: B006 - Typer reads the default, never mutates it
    name: Annotated[Optional[str], typer.Option(help="Run name (folder under --models-dir); default: the recipe's name.")] = None,
    models_dir: Annotated[Path, typer.Option(help="Where run directories land.")] = Path("models"),
    force: Annotated[bool, typer.Option(help="Delete RUN/tune (the study and its trials) and start the search over.")] = False,
) -> None:
    """Hyperparameter search with Optuna over the recipe's tune.space, maximizing validation accuracy.

    The study lives in RUN/tune/study.db, so rerunning the same command resumes an interrupted search.
    """
    from distill.tune import tune as run_tune

    rec = _load(recipe, set_)
    run_dir = models_dir / (name or rec.name)
    goal = objective.value if objective else rec.tune.objective
    out.print(f"[bold]distill tune[/] {recipe or 'default recipe'} -> {run_dir / 'tune'} (maximizing {goal} validation accuracy)")
    try:
        res = run_tune(rec, run_dir, trials=trials or rec.tune.trials, timeout=timeout or rec.tune.timeout,
                       objective=goal, force=force)
    except KeyboardInterrupt:
        err.print(f"interrupted; finished trials are kept in {run_dir / 'tune' / 'study.db'}: rerun the same command to continue.")
        raise typer.Exit(130) from None
    views.print_tune(out, res, goal)
