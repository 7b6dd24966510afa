"""`distill data inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from distill.cli import views
from distill.cli.common import SetOpt, _load, guarded, out

data_app = typer.Typer(no_args_is_help=True, help="Look at the data a recipe would use.")


@data_app.command("inspect")
@guarded
def data_inspect(
    source: Annotated[Optional[Path], typer.Argument(help="A recipe (.yaml) or a data file; default: the default recipe.")] = None,
    set_: SetOpt = [],  # noqa: B006
) -> None:
    """Class counts per split, token-length percentiles, and what cleaning dropped and why."""
    from distill.data.inspect import inspect

    if source is not None and source.suffix.lower() not in (".yaml", ".yml"):
        rec = _load(None, [f"data.source={source}", *set_])
    else:
        rec = _load(source, set_)
    views.print_data_inspect(out, inspect(rec))
