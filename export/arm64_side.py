"""Logits of ONNX artifacts on pre-tokenized splits: `python3 arm64_side.py SPEC.json`.

The one file that runs inside the aarch64 environment (distill/arm64_env.py), so it needs nothing but
numpy and onnxruntime: no tokenizer, no edge-distill. The host runs the same `run` on the same spec
with its own onnxruntime (export/arm64.py), so both sides batch the rows and set the session options
the same way, and any difference in the logits is the CPU's kernels'.

SPEC: {"artifacts": {KEY: onnx path}, "splits": {SPLIT: folder with input_ids.npy, attention_mask.npy
[token_type_ids.npy] and lengths.npy, rows sorted by length}, "graph_optimization_level":
"disable" | "basic" | "extended" | "all", "threads": int, "batch_size": int, "out": folder}.
Writes OUT/KEY.SPLIT.npy (float32 logits, rows in the split's order) and OUT/result.json.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np

SCHEMA = 1
LEVELS = ("disable", "basic", "extended", "all")
# getauxval bits (Linux arch/arm64 uapi hwcap.h): the int8 kernels onnxruntime picks depend on them.
HWCAP = {"asimddp": (16, 1 << 20), "sve": (16, 1 << 22), "i8mm": (26, 1 << 13), "sve2": (26, 1 << 1),
         "bf16": (26, 1 << 14)}


def session(path: str, level: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # fused graphs make ORT warn about unused initializers
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def split_logits(sess, folder: str, batch_size: int) -> np.ndarray:
    """Batches of batch_size rows, each cut to its longest row (rows are sorted by length, padded right)."""
    arrays = {n: np.load(os.path.join(folder, f"{n}.npy"))
              for n in ("input_ids", "attention_mask", "token_type_ids") if os.path.exists(os.path.join(folder, f"{n}.npy"))}
    lengths = np.load(os.path.join(folder, "lengths.npy"))
    inputs = {i.name: (np.int32 if "int32" in i.type else np.int64) for i in sess.get_inputs()}
    for name in inputs:  # a tokenizer without token type ids: zeros, as export/runtime.py feeds them
        arrays.setdefault(name, np.zeros_like(arrays["input_ids"]))
    outs = []
    for start in range(0, len(lengths), batch_size):
        width = max(1, int(lengths[start:start + batch_size].max()))
        feed = {name: np.ascontiguousarray(arrays[name][start:start + batch_size, :width], dtype=dtype)
                for name, dtype in inputs.items()}
        outs.append(sess.run(None, feed)[0].astype(np.float32))
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def hwcaps() -> dict:
    """The CPU features the kernel (here: qemu) reports; empty off aarch64."""
    if platform.machine() != "aarch64":
        return {}
    import ctypes

    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    return {name: bool(getauxval(kind) & bit) for name, (kind, bit) in HWCAP.items()}


def run(spec: dict) -> dict:
    import onnxruntime as ort

    level, threads, batch = spec["graph_optimization_level"], int(spec["threads"]), int(spec["batch_size"])
    if level not in LEVELS:
        raise ValueError(f"graph_optimization_level {level!r} is not one of {LEVELS}")
    os.makedirs(spec["out"], exist_ok=True)
    result = {"schema": SCHEMA, "machine": platform.machine(), "python": platform.python_version(),
              "onnxruntime": ort.__version__, "numpy": np.__version__, "graph_optimization_level": level,
              "threads": threads, "batch_size": batch, "hwcaps": hwcaps(),
              "qemu_cpu": os.environ.get("QEMU_CPU"), "artifacts": {}}
    for key, path in spec["artifacts"].items():
        t0 = time.perf_counter()
        sess = session(path, level, threads)
        entry = {"load_s": time.perf_counter() - t0, "splits": {}}
        t1 = time.perf_counter()
        for split, folder in spec["splits"].items():
            logits = split_logits(sess, folder, batch)
            name = f"{key}.{split}.npy"
            np.save(os.path.join(spec["out"], name), logits)
            entry["splits"][split] = {"file": name, "shape": list(logits.shape)}
        entry["run_s"] = time.perf_counter() - t1
        result["artifacts"][key] = entry
    tmp = os.path.join(spec["out"], ".result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, os.path.join(spec["out"], "result.json"))
    return result


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        run(json.load(f))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
