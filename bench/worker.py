"""One measurement in one fresh process: `python -m bench.worker SPEC.json OUT.json`.

The parent (bench.measure) starts this already pinned to the target's cores and with the thread
environment set; here the runtime's own thread count is applied, the model is loaded and timed,
and the result is written as JSON. Timing several runtimes in one process distorted results up to
3x on this machine (SOURCES.md), so nothing else ever runs in this process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

NOISY_SPREAD = 0.25  # (p90 - p50) / p50 above this: the machine was busy, rerun on a quiet one
NOISY_TAIL = 2.0  # p99 / p50 above this: same (a lone spike alone, e.g. a page fault, does not count)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def synthetic_inputs(batch: int, seq: int, vocab_size: int, seed: int) -> dict[str, Any]:
    """Random token ids of exactly `seq` tokens, attention mask all ones: the same for every row."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, vocab_size, size=(batch, seq), dtype=np.int64),
            "attention_mask": np.ones((batch, seq), dtype=np.int64),
            "token_type_ids": np.zeros((batch, seq), dtype=np.int64)}


def _load_onnxruntime(spec: dict) -> tuple[Callable[[dict], Any], dict]:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = spec.get("ort", {}).get("graph_optimization_level", "all")
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    config = dict(spec.get("ort", {}).get("config", {}))
    if not spec.get("spin", True):
        # A phone's scheduler parks idle cores; busy-waiting worker threads would flatter the figure.
        config.setdefault("session.intra_op.allow_spinning", "0")
        config.setdefault("session.inter_op.allow_spinning", "0")
    for k, v in config.items():
        opts.add_session_config_entry(k, str(v))
    sess = ort.InferenceSession(spec["path"], opts, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    dtypes = {i.name: (np.int32 if "int32" in i.type else np.int64) for i in inputs}

    def run(feeds: dict) -> Any:
        return sess.run(None, {n: feeds[n].astype(dtypes[n], copy=False) for n in dtypes})[0]

    applied = {"intra_op_num_threads": sess.get_session_options().intra_op_num_threads,
               "graph_optimization_level": level, "session_config": config,
               "inputs": [i.name for i in inputs]}
    return run, applied


def _load_pytorch(spec: dict) -> tuple[Callable[[dict], Any], dict]:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    model = AutoModelForSequenceClassification.from_pretrained(spec["path"]).eval()
    accepted = set(model.forward.__code__.co_varnames)

    def run(feeds: dict) -> Any:
        with torch.inference_mode():
            args = {k: torch.from_numpy(v) for k, v in feeds.items() if k in accepted}
            return model(**args).logits.numpy()

    return run, {"torch_num_threads": torch.get_num_threads(), "torch_num_interop_threads": torch.get_num_interop_threads()}


def load(spec: dict) -> tuple[Callable[[dict], Any], dict]:
    return (_load_pytorch if spec["runtime"] == "pytorch" else _load_onnxruntime)(spec)


def latency(spec: dict) -> dict:
    import numpy as np

    rss_start = _rss_bytes()
    t0 = time.perf_counter()
    run, applied = load(spec)
    load_s = time.perf_counter() - t0
    feeds = synthetic_inputs(spec["batch"], spec["seq"], spec["vocab_size"], spec.get("seed", 0))
    for _ in range(spec["warmup"]):
        run(feeds)
    times = []
    for _ in range(spec["iterations"]):
        t = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - t) * 1e3)
    ms = np.asarray(times)
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    mean, std = float(ms.mean()), float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    spread = (p90 - p50) / p50 if p50 > 0 else 0.0
    return {
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "mean": mean, "std": std,
                       "min": float(ms.min()), "max": float(ms.max())},
        "samples_ms": [round(x, 4) for x in times],
        "throughput_per_s": spec["batch"] * 1e3 / mean if mean > 0 else None,
        "spread": spread,
        "noisy": bool(spread > NOISY_SPREAD or (p50 > 0 and p99 / p50 > NOISY_TAIL)),
        "load_s": load_s,
        "peak_rss_mb": _rss_bytes() / 2**20,
        "rss_before_load_mb": rss_start / 2**20,
        "applied": applied,
    }


def accuracy(spec: dict) -> dict:
    """Accuracy and macro-F1 on a {"text", "label"} JSONL file (the run's test split)."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    rows = [json.loads(line) for line in Path(spec["data"]).read_text(encoding="utf-8").splitlines() if line.strip()]
    run, applied = load(spec)
    preds = []
    for i in range(0, len(rows), 32):
        enc = tok([r["text"] for r in rows[i:i + 32]], padding=True, truncation=True,
                  max_length=spec.get("max_length", 128), return_tensors="np")
        feeds = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}
        feeds["token_type_ids"] = np.asarray(enc["token_type_ids"], dtype=np.int64) if "token_type_ids" in enc \
            else np.zeros_like(feeds["input_ids"])
        preds.extend(np.asarray(run(feeds)).argmax(-1).tolist())
    gold = [int(r["label"]) for r in rows]
    labels = sorted(set(gold) | set(preds))
    f1s = []
    for c in labels:
        tp = sum(p == c and g == c for p, g in zip(preds, gold))
        fp = sum(p == c and g != c for p, g in zip(preds, gold))
        fn = sum(p != c and g == c for p, g in zip(preds, gold))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    n = len(gold)
    return {"accuracy": sum(p == g for p, g in zip(preds, gold)) / n if n else None,
            "macro_f1": sum(f1s) / len(f1s) if f1s else None, "n": n, "applied": applied}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = {"pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0)),
              "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}}
    result.update(latency(spec) if spec["task"] == "latency" else accuracy(spec))
    try:
        import psutil

        result["os_threads"] = psutil.Process().num_threads()
    except ImportError:  # pragma: no cover
        pass
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
