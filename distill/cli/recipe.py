"""`distill recipe show | validate | list | schema`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from distill.cli.common import SetOpt, _load, err, guarded, out

recipe_app = typer.Typer(no_args_is_help=True, help="Show, validate and list recipes.")


@recipe_app.command("show")
@guarded
def recipe_show(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML; default: the shipped default.")] = None,
    set_: SetOpt = [],  # noqa: B006
) -> None:
    """Print the resolved recipe: every default filled in, overrides applied."""
    from distill.recipe import dump_recipe

    sys.stdout.write(dump_recipe(_load(recipe, set_)))


@recipe_app.command("validate")
@guarded
def recipe_validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files.")],
    set_: SetOpt = [],  # noqa: B006
) -> None:
    """Check recipes; report every problem in every file at once."""
    from distill.errors import DistillError, RecipeError

    failed: list[DistillError] = []
    for r in recipes:
        try:
            _load(r, set_)
            out.print(f"[green]✓[/] {r}")
        except RecipeError as e:
            failed.append(e)
            err.print(f"[red]✗[/] {e}", highlight=False)
    if failed:
        raise typer.Exit(failed[0].exit_code)


@recipe_app.command("list")
@guarded
def recipe_list() -> None:
    """The recipes shipped with edge-distill."""
    from distill.recipe import shipped_recipes

    for name, path in sorted(shipped_recipes().items()):
        out.print(f"{name:<24} {path}")


@recipe_app.command("schema")
@guarded
def recipe_schema() -> None:
    """The recipe reference (every key, type, default and description) as Markdown."""
    from distill.recipe import schema_markdown

    sys.stdout.write(schema_markdown() + "\n")
