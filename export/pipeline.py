"""The passes in order, into one folder: export -> fuse -> int8 -> parity -> accuracy -> .ort -> export.json.

`build` writes into a folder that the caller renames into place when it returns (api.py), so this
module never deals with atomicity; it only decides what each artifact is and whether it passed.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export import accuracy, mobile, onnx_export, optimize, parity, quantize, runtime
from export.source import Source

log = logging.getLogger(__name__)

SCHEMA = 1
FILES = {"fp32": "model.onnx", "int8-dynamic": "model.int8-dynamic.onnx", "int8-static": "model.int8-static.onnx"}


@dataclass(frozen=True)
class Options:
    which: str = "student"
    quantize: str = "dynamic"  # dynamic | static | none
    isa: str = "auto"  # auto | avx512_vnni | avx2 | arm64
    optimize: bool = True
    opset: int = 17
    calibration_samples: int = 256
    per_channel: bool = False
    ort: bool = True
    allow_mismatch: bool = False
    fp32_atol: float = 1e-4
    int8_min_agreement: float = 0.99


def fault(step: str) -> None:
    """Deterministic kill for fault tests: DISTILL_FAULT=export:STEP (DESIGN.md)."""
    if os.environ.get("DISTILL_FAULT") == f"export:{step}":
        log.warning("DISTILL_FAULT=export:%s: killing this process", step)
        os.kill(os.getpid(), signal.SIGKILL)


def build(out: Path, src: Source, opts: Options) -> dict:
    """Run every pass into out; returns the export.json content (also written there)."""
    t0 = time.perf_counter()
    isa = quantize.resolve_isa(opts.isa) if opts.quantize != "none" else None
    reference = runtime.load_torch_classifier(src.model_dir)  # first: a base model without a head fails fast
    val_texts = [r["text"] for r in src.parity_rows]
    test_rows = [r for r in src.texts.get("test", []) if "label" in r]
    val_batches = runtime.tokenize(src.model_dir, val_texts)
    same_texts = [r["text"] for r in test_rows] == val_texts
    test_batches = [] if same_texts else runtime.tokenize(src.model_dir, [r["text"] for r in test_rows])
    ref_val = runtime.torch_logits(reference, val_batches)
    del reference

    model = onnx_export.run(src.model_dir, out, opset=opts.opset)
    fault("exported")
    fusions: dict[str, int] = {}
    unfused = model
    if opts.optimize:
        unfused = model.with_name("model.raw.onnx")
        os.replace(model, unfused)
        fusions = optimize.run(unfused, model, src.config)
    artifacts = {"fp32": model}
    if opts.quantize == "dynamic":
        # Dynamic int8 starts from the graph before the transformer fusions: ONNX Runtime's own
        # session-level fusions of the quantized MatMuls (MatMulIntegerToFloat, DynamicQuantizeMatMul)
        # then beat QAttention. Measured on the default run's student, same session, alternating:
        # mobile-1t 2.20 vs 2.55 ms, cpu 1.29-1.32 vs 1.37-1.39 ms; validation agreement 99.15% vs 98.76%.
        artifacts["int8-dynamic"] = out / FILES["int8-dynamic"]
        quantize.dynamic(unfused, artifacts["int8-dynamic"], isa=isa, per_channel=opts.per_channel)
    elif opts.quantize == "static":
        calib = [r["text"] for r in src.texts.get("train", [])][: opts.calibration_samples]
        artifacts["int8-static"] = out / FILES["int8-static"]
        quantize.static(model, artifacts["int8-static"], isa=isa, per_channel=opts.per_channel,
                        calibration=runtime.tokenize(src.model_dir, calib, batch_size=16))
    if unfused != model:
        unfused.unlink()
    fault("quantized")

    mobile_info: dict = {}
    if opts.ort:
        key = list(artifacts)[-1]  # the int8 file when there is one: that is what ships to a phone
        ort_file = artifacts[key].with_suffix(".ort")
        artifacts[f"{key}-ort"] = mobile.to_ort(artifacts[key], ort_file)
        mobile_info = mobile.usability(artifacts[key], out / mobile.REPORT)
        mobile_info.update(ort_file=ort_file.name, required_operators=mobile.CONFIG)

    entries, checks = {}, []
    test_labels = np.array([int(r["label"]) for r in test_rows], dtype=np.int64)
    for key, path in artifacts.items():
        val_logits = runtime.onnx_logits(path, val_batches)
        c = parity.check(key, ref_val, val_logits, int8=key.startswith("int8"),
                         fp32_atol=opts.fp32_atol, int8_min_agreement=opts.int8_min_agreement)
        checks.append(c)
        acc = {}
        if test_rows:  # a plain folder's data file is both parity and test set: run it once
            logits = val_logits if same_texts else runtime.onnx_logits(path, test_batches)
            acc = {"test": accuracy.accuracy(test_labels, logits)}
        entries[key] = {"file": path.name, "sha256": None, "size_bytes": path.stat().st_size,
                        "status": "ok" if c.passed or opts.allow_mismatch else "failed",
                        "parity": c.to_json(), "accuracy": acc}
    fault("validated")

    from distill.rundir import library_versions, sha256_file

    for e in entries.values():
        e["sha256"] = sha256_file(out / e["file"])
    manifest = {"schema": SCHEMA, "source": src.describe(), "opset": opts.opset, "isa": isa,
                "quantize": opts.quantize, "per_channel": opts.per_channel, "optimize": opts.optimize,
                "int8_from": "unfused graph" if opts.quantize == "dynamic" else ("fused graph" if fusions else "graph"),
                "fusions": fusions, "artifacts": entries, "mobile": mobile_info,
                "parity_gate": {"fp32_atol": opts.fp32_atol, "int8_min_agreement": opts.int8_min_agreement,
                                "allow_mismatch": opts.allow_mismatch, "lines": [c.line() for c in checks]},
                "options": asdict(opts), "wall_s": round(time.perf_counter() - t0, 2),
                "versions": library_versions()}
    from distill.rundir import write_json_atomic

    write_json_atomic(out / "export.json", manifest)
    return manifest
