"""`export_onnx`: the one public entry point of the export stage (the CLI only forwards to it).

Into a run directory the output is a stage of the run, RUN/onnx/ (RUN/onnx-teacher/ for the
teacher), written under the run's lock by RunDir.run_stage: built in a hidden temporary sibling,
renamed into place when complete, replacing the previous export. Anywhere else (a plain model
folder, or an explicit `output`) the same temporary-sibling-then-rename rule applies, and an
existing output folder is replaced only with force=True. With arm64 set, the ARM check
(export/arm64.py) runs on the finished artifacts before the rename and writes arm64-check.json.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from distill.errors import ExportError, ParityError
from distill.rundir import staged_dir

from export.pipeline import Options, build
from export.source import resolve

log = logging.getLogger(__name__)

ARM64_FILE = "arm64-check.json"


@dataclass
class ExportResult:
    output: Path
    manifest: dict
    lines: list[str] = field(default_factory=list)  # one ✓/✗ line per parity check
    arm64: Optional[dict] = None  # the ARM check (arm64-check.json) when asked for

    @property
    def artifacts(self) -> dict[str, dict]:
        return self.manifest["artifacts"]

    @property
    def passed(self) -> bool:
        return all(a["parity"]["passed"] for a in self.artifacts.values())


def export_onnx(path: Path | str, *, which: str = "student", output: Path | str | None = None, force: bool = False,
                data: Path | str | None = None, arm64: Optional[dict] = None, allow_mismatch: bool = False,
                **options) -> ExportResult:
    """Export a run's student/teacher (or a model folder) to ONNX, fused, int8, parity-checked, .ort.

    path: a run directory (models/NAME) or a Hugging Face model folder. data: for a model folder,
    an optional JSONL of {"text", "label"} rows for the parity gate and accuracy (default: built-in
    sentences, no accuracy). Raises ParityError (exit 3) when an artifact fails the parity gate,
    after writing the output with that artifact marked failed, unless allow_mismatch.
    arm64: options of the ARM check ({"qemu_cpu": "max", "graph_optimization_level": "all"}), None for
    none; its failure (labels that differ between ARM and this host) is a ParityError too.
    options: keys of a recipe's `export:` section (quantize, isa, optimize, opset, calibration_samples,
    per_channel, ort, fp32_atol, int8_min_agreement, vocab, vocab_top_n, embeddings,
    embeddings_block_size, e2e; docs/recipe-reference.md). Those not given come from the run's
    recipe.yaml for a run directory, else from the section's defaults: the one set of defaults
    `distill export onnx` uses too (its flags are these options).
    """
    if which not in ("student", "teacher"):
        raise ExportError(f"Invalid export options: which={which!r} (student or teacher).")
    path = Path(path)
    settings = export_settings(path, options)
    opts = Options(which=which, allow_mismatch=allow_mismatch, **settings.model_dump())
    path = Path(path)
    src = resolve(path, which=which, data=Path(data) if data else None)
    if arm64 is not None:
        from distill.arm64_env import require_built

        require_built()  # before the export, not after minutes of it
    if src.run_dir is not None and output is None:
        manifest, out, arm = _into_run(src, opts, arm64)
    else:
        out = Path(output) if output is not None else Path.cwd() / f"{src.model_dir.name}-onnx"
        manifest, arm = _into_folder(src, opts, out, force=force, arm64=arm64)
    result = ExportResult(out, manifest, manifest["parity_gate"]["lines"], arm)
    if arm is not None and not arm["passed"]:
        if allow_mismatch:
            log.warning("ARM check failed; kept because allow_mismatch is set: %s", arm["verdict"])
        else:
            raise ParityError(f"The ARM check failed: {arm['verdict']} The export is saved in {out} (details in "
                              f"{ARM64_FILE}); pass --allow-mismatch to accept it.")
    if not result.passed:
        failed = [k for k, a in result.artifacts.items() if not a["parity"]["passed"]]
        if allow_mismatch:
            log.warning("parity gate failed for %s; kept because allow_mismatch is set", ", ".join(failed))
        else:
            raise ParityError(f"The parity gate failed for {', '.join(failed)} (" + "; ".join(
                line for line in result.lines if line.startswith("✗")) + f"). The export is saved in {out} with "
                "those artifacts marked \"failed\" in export.json. Check the model (an int8 failure often means "
                "near-tied logits: try --per-channel or --quantize static), or pass --allow-mismatch to keep them.")
    return result


def export_settings(path: Path, given: dict):
    """The export section in force: given options over the run's recipe.yaml `export:` (a run directory),
    over the section's defaults; a bad key or value is an ExportError naming it."""
    from pydantic import ValidationError

    from distill.recipe import Export, load_recipe

    recipe_file = Path(path) / "recipe.yaml"
    base = load_recipe(recipe_file).export.model_dump() if recipe_file.is_file() else {}
    try:
        return Export.model_validate({**base, **given})
    except ValidationError as e:
        def problem(err: dict) -> str:
            key = ".".join(map(str, err["loc"]))
            if err["type"] == "extra_forbidden":
                return f"{key} is not an export option (valid: {', '.join(Export.model_fields)})"
            return f"{key}={err.get('input')!r}: {err['msg']}" if key else err["msg"]

        problems = "; ".join(problem(err) for err in e.errors())
        raise ExportError(f"Invalid export options: {problems}. The options are the keys of a recipe's export "
                          "section (`distill recipe schema`, docs/recipe-reference.md).") from None


def _build(tmp: Path, src, opts: Options, arm64: Optional[dict]) -> tuple[dict, Optional[dict]]:
    manifest = build(tmp, src, opts)
    if arm64 is None:
        return manifest, None
    from export.arm64 import check_export

    rows = {k: src.texts.get(k) or [] for k in ("validation", "test")}
    if [r["text"] for r in rows["test"]] == [r["text"] for r in rows["validation"]]:
        rows["validation"] = []  # a plain folder's data file is both: run it once
    arm = check_export(tmp, rows, **arm64)
    (tmp / ARM64_FILE).write_text(json.dumps(arm, indent=2) + "\n")
    return manifest, arm


def _into_run(src, opts: Options, arm64: Optional[dict] = None) -> tuple[dict, Path, Optional[dict]]:
    from distill.rundir import RunDir

    rd = RunDir(src.run_dir)
    name = "onnx" if opts.which == "student" else "onnx-teacher"
    box: dict = {}
    with rd.lock():
        src.model_sha256 = rd.output_digest(opts.which)  # export.json says which student it is (distill summary)
        inputs = {"model": src.model_sha256, "options": opts.__dict__, **({"arm64": arm64} if arm64 else {})}
        rd.run_stage(name, inputs, lambda tmp: box.update(zip(("manifest", "arm64"), _build(tmp, src, opts, arm64))),
                     resume=False)
        manifest = box["manifest"]
        if not all(a["parity"]["passed"] for a in manifest["artifacts"].values()) and not opts.allow_mismatch:
            rd.record(name, status="parity-failed")
    return manifest, rd.path / name, box["arm64"]


def _into_folder(src, opts: Options, out: Path, *, force: bool, arm64: Optional[dict] = None) -> tuple[dict, Optional[dict]]:
    if out.exists() and not force:
        raise ExportError(f"The output folder {out} already exists. Pass --force to replace it, or --output "
                          "another folder.")
    if out.resolve() == src.model_dir.resolve() or src.model_dir.resolve() in out.resolve().parents:
        raise ExportError(f"The output folder {out} is inside the model folder {src.model_dir}; choose another.")
    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_dead_temporaries(out)
    with staged_dir(out) as tmp:
        manifest, arm = _build(tmp, src, opts, arm64)
    return manifest, arm


def _clear_dead_temporaries(out: Path) -> None:
    """Remove .NAME.tmp-PID siblings left by a killed export (their pid no longer exists)."""
    from distill.rundir import _pid_alive

    for child in out.parent.glob(f".{out.name}.tmp-*"):
        pid = child.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            log.info("removing %s, left by an interrupted export", child)
            shutil.rmtree(child, ignore_errors=True)
