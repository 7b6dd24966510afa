"""One measurement in one fresh process: `python -m bench.worker SPEC.json OUT.json`.

The parent (bench.measure) starts this already pinned to the target's cores and with the thread
environment set; here the runtime's own thread count is applied, the model is loaded and timed,
and the result is written as JSON. Timing several runtimes in one process distorted results up to
3x on this machine, so nothing else ever runs in this process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

from export.sessions import session  # light: imports nothing until a session is built

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

    level = spec.get("ort", {}).get("graph_optimization_level", "all")
    config = dict(spec.get("ort", {}).get("config", {}))
    if not spec.get("spin", True):
        # A phone's scheduler parks idle cores; busy-waiting worker threads would flatter the figure.
        config.setdefault("session.intra_op.allow_spinning", "0")
        config.setdefault("session.inter_op.allow_spinning", "0")
    # the tokenizer inside the graph (onnxruntime-e2e): ONNX Runtime Extensions' ops
    sess = session(spec["path"], custom_ops=spec["runtime"] == "onnxruntime-e2e", threads=spec["threads"],
                   sequential=True, level=level, config=config)
    inputs = sess.get_inputs()
    dtypes = {i.name: (np.int32 if "int32" in i.type else np.int64) for i in inputs}
    if spec["runtime"] == "onnxruntime-e2e":
        text_input = inputs[0].name
        outputs = [o.name for o in sess.get_outputs()]
        scores = "probabilities" if "probabilities" in outputs else outputs[-1]

        def run(feeds: dict) -> Any:  # feeds: {"text": array of str}
            return sess.run([scores], {text_input: np.asarray(feeds["text"], dtype=object)})[0]
    else:
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


def _load_tfidf(spec: dict) -> tuple[Callable[[dict], Any], dict]:
    """The TF-IDF + logistic-regression floor, fitted here on the run's training rows as the evaluate stage
    fits it (its fit time is reported as its load time)."""
    from distill.evaluate import tfidf_pipeline

    rows = _read_rows(Path(spec["train"]))
    clf = tfidf_pipeline(spec.get("seed", 0)).fit([r["text"] for r in rows], [r["label"] for r in rows])

    def run(feeds: dict) -> Any:
        return clf.predict_proba(list(feeds["text"]))

    return run, {"fitted_on": len(rows)}


def load(spec: dict) -> tuple[Callable[[dict], Any], dict]:
    return {"pytorch": _load_pytorch, "tfidf": _load_tfidf}.get(spec["runtime"], _load_onnxruntime)(spec)


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def takes_text(spec: dict) -> bool:
    """Rows whose input is the text itself (tokenizer inside), not token ids."""
    return spec["runtime"] in ("onnxruntime-e2e", "tfidf")


def _current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _timed_load(spec: dict, first_feeds: Callable[[], dict]) -> tuple[Callable[[dict], Any], dict, dict]:
    """Load, then run once: session creation time, first inference time, and the memory each adds."""
    rss0 = _current_rss_mb()
    t0 = time.perf_counter()
    run, applied = load(spec)
    load_s = time.perf_counter() - t0
    rss1 = _current_rss_mb()
    feeds = first_feeds()
    t1 = time.perf_counter()
    run(feeds)
    first_ms = (time.perf_counter() - t1) * 1e3
    rss2 = _current_rss_mb()
    cold = {"load_s": load_s, "first_run_ms": first_ms, "rss_before_load_mb": rss0,
            "load_growth_mb": rss1 - rss0, "first_run_growth_mb": rss2 - rss1, "memory_growth_mb": rss2 - rss0}
    return run, applied, cold


def _stats(times: list[float]) -> dict:
    import numpy as np

    ms = np.asarray(times)
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return {"p50": p50, "p90": p90, "p99": p99, "mean": float(ms.mean()),
            "std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0, "min": float(ms.min()), "max": float(ms.max())}


def synthetic_text(batch: int, seq: int) -> dict[str, Any]:
    """For rows that take text: `seq - 2` words that are one token each, so the graph sees `seq` tokens."""
    return {"text": [" ".join(["movie"] * max(0, seq - 2))] * batch}


def latency(spec: dict) -> dict:
    """Fixed shape: the same synthetic batch every iteration."""
    if takes_text(spec):
        feeds = synthetic_text(spec["batch"], spec["seq"])
    else:
        feeds = synthetic_inputs(spec["batch"], spec["seq"], spec["vocab_size"], spec.get("seed", 0))
    run, applied, cold = _timed_load(spec, lambda: feeds)
    for _ in range(spec["warmup"]):
        run(feeds)
    times = []
    for _ in range(spec["iterations"]):
        t = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return _latency_result(spec, times, applied, cold)


def _latency_result(spec: dict, times: list[float], applied: dict, cold: dict, *, fixed: bool = True) -> dict:
    """fixed: the same input every iteration, so a wide spread means a busy machine; over real texts of
    different lengths the spread is the texts' own, and is not flagged."""
    lat = _stats(times)
    p50, p90, p99, mean = lat["p50"], lat["p90"], lat["p99"], lat["mean"]
    spread = (p90 - p50) / p50 if p50 > 0 else 0.0
    return {
        "latency_ms": lat,
        "samples_ms": [round(x, 4) for x in times],
        "throughput_per_s": spec.get("batch", 1) * 1e3 / mean if mean > 0 else None,
        "spread": spread,
        "noisy": bool(fixed and (spread > NOISY_SPREAD or (p50 > 0 and p99 / p50 > NOISY_TAIL))),
        **cold,
        "peak_rss_mb": _rss_bytes() / 2**20,
        "applied": applied,
    }


def bench_texts(data: Path, max_texts: int | None) -> list[str]:
    """Up to max_texts texts of a {"text", ...} JSONL file, evenly spaced over it."""
    texts = [r["text"] for r in _read_rows(Path(data))]
    step = max(1, len(texts) // max_texts) if max_texts else 1
    return texts[::step][: max_texts or None]


def text_ids(tokenizer_dir: str, texts: list[str], max_length: int, head: int = 0) -> list[list[int]]:
    """The token ids of each text as the artifact's app gets them: cut at its deployed length, unpadded."""
    from transformers import AutoTokenizer

    from distill.tokenizing import encode

    return list(encode(AutoTokenizer.from_pretrained(tokenizer_dir), texts, max_length=max_length, head=head)["input_ids"])


def text_feeds(spec: dict) -> tuple[list[dict], list[int]]:
    """One unpadded batch of 1 per text, as an app runs them: token ids cut at the artifact's deployed
    length (the tokenizer is not timed: an app runs its own), or the text itself for rows that take text.
    spec["ids_file"], where given: the texts and their ids, tokenized once by the bench for every row that
    shares a tokenizer and length, so this process needs neither transformers nor torch."""
    import numpy as np

    if spec.get("ids_file"):
        given = json.loads(Path(spec["ids_file"]).read_text(encoding="utf-8"))
        texts, ids = given["texts"], given["ids"]
    else:
        texts = bench_texts(Path(spec["data"]), spec.get("max_texts"))
        ids = (text_ids(spec["tokenizer"], texts, spec["max_length"], spec.get("head", 0))
               if spec.get("tokenizer") else None)
    if takes_text(spec):
        return [{"text": [t]} for t in texts], [len(x) for x in ids] if ids else []
    feeds, lengths = [], []
    for row in ids:
        n = len(row)
        feeds.append({"input_ids": np.asarray([row], dtype=np.int64), "attention_mask": np.ones((1, n), np.int64),
                      "token_type_ids": np.zeros((1, n), np.int64)})
        lengths.append(n)
    return feeds, lengths


def latency_texts(spec: dict) -> dict:
    """Real texts at their own lengths, batch 1, no padding: p50 / p90 over the texts."""
    import numpy as np

    feeds, lengths = text_feeds(spec)
    run, applied, cold = _timed_load(spec, lambda: feeds[0])
    for f in feeds[: spec["warmup"]]:
        run(f)
    times = []
    for f in feeds:
        t = time.perf_counter()
        run(f)
        times.append((time.perf_counter() - t) * 1e3)
    # Cold start is the fixed rows' figure (a worker run without the bench's ids_file loads the Python
    # tokenizer before the model).
    result = _latency_result({"batch": 1}, times, applied, {"load_s": cold["load_s"]}, fixed=False)
    result["texts"] = len(feeds)
    if lengths:
        result["tokens"] = {"p50": float(np.percentile(lengths, 50)), "p90": float(np.percentile(lengths, 90)),
                            "mean": float(np.mean(lengths)), "max": int(max(lengths))}
    return result


def accuracy(spec: dict) -> dict:
    """Accuracy and macro-F1 on a {"text", "label"} JSONL file (the run's test split), tokenized as the
    artifact is deployed (its max_length), with the one metrics definition the export uses too."""
    import numpy as np

    from distill.tokenizing import encode
    from export.accuracy import accuracy as metrics

    rows = _read_rows(Path(spec["data"]))
    run, applied = load(spec)
    tok = None
    if not takes_text(spec):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    scores = []
    for i in range(0, len(rows), 32):
        texts = [r["text"] for r in rows[i:i + 32]]
        if tok is None:
            scores.append(np.asarray(run({"text": texts})))
            continue
        enc = encode(tok, texts, max_length=spec["max_length"], head=spec.get("head", 0), padding=True,
                     return_tensors="np")
        feeds = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}
        feeds["token_type_ids"] = np.asarray(enc["token_type_ids"], dtype=np.int64) if "token_type_ids" in enc \
            else np.zeros_like(feeds["input_ids"])
        scores.append(np.asarray(run(feeds)))
    scores_ = np.concatenate(scores)
    gold = [int(r["label"]) for r in rows]
    m = metrics(gold, scores_, max(scores_.shape[-1], max(gold) + 1))
    return {**m, "max_length": spec.get("max_length"), "applied": applied}


def peak(spec: dict) -> dict:
    from bench.peak import measure_peak

    return measure_peak(spec["threads"], seconds=spec.get("seconds", 1.0))


TASKS = {"latency": latency, "latency-texts": latency_texts, "accuracy": accuracy, "peak": peak}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = {"pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0)),
              "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}}
    result.update(TASKS[spec["task"]](spec))
    try:
        import psutil

        result["os_threads"] = psutil.Process().num_threads()
    except ImportError:  # pragma: no cover
        pass
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
