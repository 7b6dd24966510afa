"""The `distill` command: thin Typer signatures over plain functions.

This package is the one place that composes `distill`, `export` and `bench`, each imported lazily inside
the command that needs it so that `distill --help` stays fast. One module per command group (run.py: run
and summary; export.py; bench.py; tune.py; data.py; assets.py; recipe.py), what they share in common.py,
and every table and report the commands print in views.py. Registration order below is the order
`distill --help` lists the commands in.
"""

from __future__ import annotations

import typer

from distill.cli import assets, bench, data, export, recipe, run, tune
from distill.cli.common import err, guarded, main_callback, out

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Distill a big model into a tiny int8 ONNX one, and prove it with a latency and accuracy report.")
app.add_typer(export.export_app, name="export")
app.add_typer(assets.assets_app, name="assets")
app.add_typer(recipe.recipe_app, name="recipe")
app.add_typer(data.data_app, name="data")
app.callback()(main_callback)
app.command()(run.run)
app.command()(run.summary)
app.command()(bench.bench)
app.command()(tune.tune)

__all__ = ["app", "err", "guarded", "main", "out"]


def main() -> None:
    app()
