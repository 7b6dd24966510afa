"""The passes in order, into one folder: [vocabulary pruning] -> export -> fuse -> int8 -> end-to-end graph ->
.ort -> parity -> accuracy -> export.json.

`build` writes into a folder that the caller renames into place when it returns (api.py), so this
module never deals with atomicity; it only decides what each artifact is and whether it passed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from export import accuracy, mobile, onnx_export, optimize, parity, quantize, runtime
from export.source import Source

log = logging.getLogger(__name__)

SCHEMA = 1
FILES = {"fp32": "model.onnx", "int8-dynamic": "model.int8-dynamic.onnx", "int8-static": "model.int8-static.onnx"}
E2E_INT8, E2E_FP32 = "model.e2e.int8.onnx", "model.e2e.onnx"  # strings in, label and probabilities out
PRUNED = ".pruned-model"
E2E_CONFIG = "required_operators.e2e.config"  # the e2e .ort's operators (a reduced build plus ONNX Runtime Extensions)  # the student with its vocabulary pruned, while the export runs


@dataclass(frozen=True)
class Options:
    """What `build` does: which model, the recipe's export section (distill.recipe.Export, where every
    default and its reason live; export.api.export_settings resolves it) and whether a failed gate stops."""

    which: str
    quantize: str  # dynamic | static | none
    isa: str  # auto | avx512_vnni | avx2 | arm64
    optimize: bool
    opset: int
    calibration_samples: int
    per_channel: bool
    ort: bool
    allow_mismatch: bool
    fp32_atol: float
    int8_min_agreement: float
    vocab: str  # full | domain (embedding rows pruned to the tokens the run's texts use)
    vocab_top_n: Optional[int]  # domain: keep only the N most frequent of those (plus specials, characters)
    e2e: bool  # also the end-to-end graph: strings in (tokenizer inside), label and probabilities out
    embeddings: str  # int8 | int4 (dynamic int8 only: the word-embedding table block-quantized to 4 bits)
    embeddings_block_size: int


def fault(step: str) -> None:
    """Deterministic kill for fault tests: DISTILL_FAULT=export:STEP."""
    if os.environ.get("DISTILL_FAULT") == f"export:{step}":
        log.warning("DISTILL_FAULT=export:%s: killing this process", step)
        os.kill(os.getpid(), signal.SIGKILL)


def build(out: Path, src: Source, opts: Options) -> dict:
    """Run every pass into out; returns the export.json content (also written there)."""
    t0 = time.perf_counter()
    isa = quantize.resolve_isa(opts.isa) if opts.quantize != "none" else None
    length = src.max_length  # the deployed length: every tokenization below, the tokenizer files, export.json
    head = src.head  # > 0: head+tail cut of long texts, as the run trained (same places as length)
    if head:
        log.warning("this model was trained on the first %d and last %d tokens of long texts (truncation: head_tail): "
                    "the end-to-end graph cuts texts that way; an app tokenizing with tokenizer.json must too "
                    "(export.json 'truncation')", head, length - 2 - head)
    reference = runtime.load_torch_classifier(src.model_dir)  # first: a base model without a head fails fast
    val_texts = [r["text"] for r in src.parity_rows]
    test_rows = [r for r in src.texts.get("test", []) if "label" in r]
    test_texts = [r["text"] for r in test_rows]
    same_texts = test_texts == val_texts
    ref_val = runtime.torch_logits(reference, runtime.tokenize(src.model_dir, val_texts, max_length=length, head=head))
    del reference

    model_dir, vocab_info, embed_info = src.model_dir, {"mode": "full"}, None
    if opts.vocab == "domain":
        # The artifacts get the pruned model and tokenizer; the parity gate still compares them with the
        # unpruned PyTorch model fed by the original tokenizer (ref_val above).
        from export import vocab

        model_dir = out / PRUNED
        stats = vocab.prune_model(src.model_dir, src.vocab_texts, model_dir, top_n=opts.vocab_top_n)
        vocab_info = {"mode": "domain", **stats.to_json()}
    val_batches = runtime.tokenize(model_dir, val_texts, max_length=length, head=head)
    test_batches = [] if same_texts else runtime.tokenize(model_dir, test_texts, max_length=length, head=head)

    model = onnx_export.run(model_dir, out, opset=opts.opset)
    runtime.write_deployed_length(out, length)
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
        source = unfused
        if opts.embeddings == "int4":
            # the word-embedding table to 4 bits (GatherBlockQuantized) first, then int8 for the rest:
            # quantize_dynamic leaves the block-quantized gather alone
            from export.embed4 import word_embeddings_4bit

            source = out / "model.embed4.onnx"
            embed_info = word_embeddings_4bit(unfused, source, block_size=opts.embeddings_block_size)
        quantize.dynamic(source, artifacts["int8-dynamic"], isa=isa, per_channel=opts.per_channel)
        if source != unfused:
            source.unlink()
    elif opts.quantize == "static":
        calib = [r["text"] for r in src.texts.get("train", [])][: opts.calibration_samples]
        artifacts["int8-static"] = out / FILES["int8-static"]
        quantize.static(model, artifacts["int8-static"], isa=isa, per_channel=opts.per_channel,
                        calibration=runtime.tokenize(model_dir, calib, batch_size=16, max_length=length, head=head))
    if unfused != model:
        unfused.unlink()
    shipped = list(artifacts)[-1]  # the int8 file when there is one: that is what ships to a phone
    if opts.e2e:
        from export import e2e

        e2e_key = f"e2e-{shipped}"
        artifacts[e2e_key] = out / (E2E_INT8 if shipped.startswith("int8") else E2E_FP32)
        e2e.build_e2e(artifacts[shipped], out, artifacts[e2e_key], max_length=length, head=head)
    fault("quantized")

    mobile_info: dict = {}
    if opts.ort:
        for key in [k for k in (shipped, f"e2e-{shipped}") if k in artifacts]:
            ort_file = artifacts[key].with_suffix(".ort")
            artifacts[f"{key}-ort"] = mobile.to_ort(artifacts[key], ort_file, **_custom_ops(key))
        mobile_info = mobile.usability(artifacts[shipped], out / mobile.REPORT)
        mobile_info.update(ort_file=artifacts[f"{shipped}-ort"].name, required_operators=mobile.CONFIG)
        if f"e2e-{shipped}-ort" in artifacts:
            mobile_info.update(e2e_ort_file=artifacts[f"e2e-{shipped}-ort"].name, e2e_required_operators=E2E_CONFIG)

    entries, checks = {}, []
    test_labels = np.array([int(r["label"]) for r in test_rows], dtype=np.int64)
    token_id_labels: dict[str, np.ndarray] = {}  # per token-id artifact: its labels on validation + test
    for key, path in artifacts.items():
        is_e2e = key.startswith("e2e-")
        if is_e2e:
            val_out = _e2e_scores(path, val_texts)
            ref = _softmax(ref_val)  # the e2e graph outputs probabilities: compare them with PyTorch's
        else:
            val_out, ref = runtime.onnx_logits(path, val_batches), ref_val
        c = parity.check(key, ref, val_out, int8=key.startswith("int8") or "-int8" in key,
                         fp32_atol=opts.fp32_atol, int8_min_agreement=opts.int8_min_agreement)
        checks.append(c)
        test_out = val_out if same_texts else (_e2e_scores(path, test_texts) if is_e2e
                                                else runtime.onnx_logits(path, test_batches))
        labels = _labels(val_out) if same_texts else np.concatenate([_labels(val_out), _labels(test_out)])
        entry: dict = {}
        if is_e2e:
            # the app's artifact must decide exactly as the token-id artifact fed by the Python tokenizer
            base = key[len("e2e-"):].removesuffix("-ort")
            same = parity.same_labels(key, base, token_id_labels[base], labels)
            checks.append(same)
            entry["same_labels_as"] = {"artifact": base, **same.to_json()}
        else:
            token_id_labels[key.removesuffix("-ort")] = labels
        acc = {}
        if test_rows:  # a plain folder's data file is both parity and test set: run it once
            acc = {"test": accuracy.accuracy(test_labels, test_out)}
        ok = c.passed and all(x.passed for x in checks if x.artifact == key)
        entries[key] = {"file": path.name, "sha256": None, "size_bytes": path.stat().st_size,
                        "status": "ok" if ok or opts.allow_mismatch else "failed",
                        "parity": {**c.to_json(), "passed": ok}, "accuracy": acc, **entry}
    fault("validated")

    from distill.rundir import library_versions, sha256_file

    shutil.rmtree(out / PRUNED, ignore_errors=True)
    for e in entries.values():
        e["sha256"] = sha256_file(out / e["file"])
    manifest = {"schema": SCHEMA, "source": src.describe(), "opset": opts.opset, "isa": isa,
                "max_length": length, "vocab": vocab_info,
                **({"truncation": {"side": "head_tail", "head_tokens": head, "tail_tokens": length - 2 - head}}
                   if head else {}),
                "embeddings": {"bits": 4, **embed_info} if embed_info else {"bits": 8 if opts.quantize != "none" else 32},
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


def _custom_ops(key: str) -> dict:
    if not key.startswith("e2e-"):
        return {}
    from export import e2e

    return {"custom_op_library": Path(e2e.custom_ops_library()), "config_name": E2E_CONFIG}


def _e2e_scores(path: Path, texts: list[str]) -> np.ndarray:
    from export import e2e

    if not texts:
        return np.zeros((0, 0), np.float32)
    return e2e.e2e_predict(path, texts)[1]


def _labels(scores: np.ndarray) -> np.ndarray:
    return scores.argmax(-1) if len(scores) else np.zeros(0, np.int64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)
