"""What every `distill` command shares: the consoles, logging, progress bars, the error guard, the
root callback (--version, --debug), recipe loading and the option types used by more than one command.

Errors the user can fix are printed as one paragraph on stderr with the exit code from distill.errors;
anything else is a bug (exit 1), with the traceback only under --debug.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from distill import __version__
from distill.distributed import is_rank_zero

# Piped into a file or a CI log, rich would wrap every table at 80 columns; COLUMNS still wins.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
out = Console(quiet=not is_rank_zero(), width=_WIDTH)  # under torchrun, rank 0 alone reports progress
err = Console(stderr=True, width=_WIDTH)
_state = {"debug": False}

SetOpt = Annotated[list[str], typer.Option("--set", help="Override a recipe key: --set student.epochs=3 (repeatable).")]


def choice_type(name: str, values: tuple[str, ...]) -> Any:
    """A Typer choice type (a str Enum) of one of distill.choices' lists."""
    return Enum(name, {v: v for v in values}, type=str)


class Which(str, Enum):
    student = "student"
    teacher = "teacher"


class OptLevel(str, Enum):
    disable = "disable"
    basic = "basic"
    extended = "extended"
    all = "all"


Arm64OptLevel = Annotated[OptLevel, typer.Option(help="ONNX Runtime graph optimization level of the ARM check, the same on the host and on ARM (int8 logits drift between x86 and ARM at extended/all, where x86 fuses int8 kernels).")]


def _setup_logging(debug: bool) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else logging.INFO if is_rank_zero() else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=debug, show_time=False)], force=True)
    for noisy in ("urllib3", "filelock", "matplotlib", "PIL", "fsspec", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        # bitsandbytes warns at import about optional CPU kernels we do not use; transformers'
        # "newly initialized: classifier" is expected (a fresh head is what fine-tuning trains).
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _show_progress() -> None:
    """Progress bars (description, M/N, elapsed, ETA) for this command's long passes, drawn on stderr
    beside the log; rank 0 only. Removed, with any bar left open, when the command ends."""
    if not is_rank_zero():
        return
    try:
        from click import get_current_context
    except ImportError:  # typer releases that carry their own copy of click
        from typer.main import get_current_context

    from distill import progress

    reporter = progress.RichReporter(err)
    previous = progress.set_reporter(reporter)

    def restore() -> None:
        reporter.close()
        progress.set_reporter(previous)

    ctx = get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(restore)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn DistillError into its message and exit code; any other exception is a bug (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from distill.errors import EXIT_INTERNAL, DistillError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except DistillError as e:
            if _state["debug"]:
                err.print_exception()
            err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; completed stages are kept, rerun with --resume to continue.")
            raise typer.Exit(130) from None
        except Exception as e:  # noqa: BLE001 - the last line of defence, reported as a bug
            if _state["debug"]:
                err.print_exception()
            else:
                err.print(f"[bold red]internal error:[/] {type(e).__name__}: {e}\nThis is a bug in edge-distill. "
                          "Rerun with --debug for the traceback and report it with the command you ran.",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        out.print(f"edge-distill {__version__}")
        raise typer.Exit()


def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """edge-distill: [bold]distill run[/] -> [bold]distill export onnx[/] -> [bold]distill bench[/]."""
    _state["debug"] = debug or os.environ.get("DISTILL_DEBUG") == "1"
    _setup_logging(_state["debug"])


def _load(recipe: Optional[Path], overrides: list[str]):
    from distill.recipe import load_recipe

    return load_recipe(recipe, overrides)


def _run_recipe(path: Path) -> Any:
    """The resolved recipe of a run directory, or None for anything else (a model folder, a file)."""
    from distill.recipe import load_recipe

    f = Path(path) / "recipe.yaml"
    return load_recipe(f) if f.is_file() else None
