"""`distill export onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from distill import choices
from distill.cli.common import Arm64OptLevel, OptLevel, Which, _show_progress, choice_type, guarded, out

export_app = typer.Typer(no_args_is_help=True, help="Export a run's student (or any model folder).")


# The choices of the recipe's export section (distill.recipe.Export), one list for recipe and CLI.
Quantize = choice_type("Quantize", choices.QUANTIZE)
Vocab = choice_type("Vocab", choices.VOCAB)
Embeddings = choice_type("Embeddings", choices.EMBEDDINGS)
Isa = choice_type("Isa", choices.ISA)


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
    from distill.tasks import task_of_run

    # The run's task picks the entry point (export.api.export_onnx, or export.causal_lm.export_run, which
    # takes only which and allow_mismatch) and the view of its result (distill/tasks.py).
    task = task_of_run(path)
    # A flag the user gave overrides the run's recipe `export:` section, which overrides the section's defaults
    # (export.api.export_settings does the merge, for the Python API too).
    given = {"quantize": quantize and quantize.value, "isa": isa and isa.value, "optimize": optimize, "opset": opset,
             "calibration_samples": calibration_samples, "per_channel": per_channel, "ort": ort,
             "vocab": vocab and vocab.value, "vocab_top_n": vocab_top_n, "e2e": e2e,
             "embeddings": embeddings and embeddings.value}
    res = task.export(path, which=which.value, **{k: v for k, v in given.items() if v is not None},
                     allow_mismatch=allow_mismatch, output=output, force=force,
                     arm64={"qemu_cpu": arm64_cpu, "graph_optimization_level": arm64_opt_level.value} if check_arm64 else None)
    task.show_export(out, res)
