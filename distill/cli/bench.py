"""`distill bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from distill.cli.common import Arm64OptLevel, OptLevel, _show_progress, guarded, out


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
    from distill.tasks import task_of_run

    # The run's task picks the entry point (bench.api.run_bench, or bench.causal_lm.bench_lm, which takes
    # only the targets) and the view of its result (distill/tasks.py).
    task = task_of_run(path)
    res = task.bench(path, targets=target or None, batch=batch or None, seq=seq or None, iterations=iterations,
                    warmup=warmup, report_dir=report, compare_optimum=compare_optimum,
                    arm64_opt_level=None if arm64_opt_level is OptLevel.all else arm64_opt_level.value, texts=texts)
    task.show_bench(out, path, res)

