"""One causal-LM generation measurement in one fresh process: `python -m bench.lm_worker SPEC.json OUT.json`.

Started by bench.causal_lm, already pinned to the target's cores with its thread environment
(as bench.worker is for classifiers: one runtime per process). A synthetic prompt of
`prompt_tokens` random ids is prefilled, then `new_tokens - 1` tokens are decoded greedily one at
a time through the KV cache. Time to first token = the prefill call plus its argmax; decode
tokens/s = (new_tokens - 1) / the time of the one-token steps. ONNX Runtime is driven directly
(numpy in, numpy out, presents fed back as the next past), so optimum's Python overhead is not in
the figure; PyTorch runs the same loop with a DynamicCache.
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


def _ort_step(spec: dict) -> tuple[Callable[[Any, int], Any], dict]:
    import numpy as np

    sess = session(spec["path"], threads=spec["threads"], sequential=True,
                   config=None if spec.get("spin", True) else {"session.intra_op.allow_spinning": "0"})
    inputs = {i.name: i for i in sess.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    out_names = [o.name for o in sess.get_outputs()]
    # present.i.key -> past_key_values.i.key
    feed_back = {o: "past_key_values." + o[len("present."):] for o in out_names if o.startswith("present.")}
    state: dict[str, Any] = {}

    def empty(name: str) -> Any:
        shape = [d if isinstance(d, int) else 0 for d in inputs[name].shape]
        shape[0] = 1
        return np.zeros(shape, dtype=np.float32)

    def step(ids: Any, total: int) -> Any:
        if total == ids.shape[1]:  # a new sequence: empty past
            state.clear()
            state.update({n: empty(n) for n in past_names})
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((1, total), np.int64)}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(total - ids.shape[1], total, dtype=np.int64)[None]
        outs = dict(zip(out_names, sess.run(None, {**feeds, **state})))
        state.update({feed_back[o]: v for o, v in outs.items() if o in feed_back})
        return outs["logits"][0, -1]

    return step, {"intra_op_num_threads": sess.get_session_options().intra_op_num_threads, "past_inputs": len(past_names)}


def _torch_step(spec: dict) -> tuple[Callable[[Any, int], Any], dict]:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    model = AutoModelForCausalLM.from_pretrained(spec["path"], use_safetensors=True).eval()
    state: dict[str, Any] = {}

    def step(ids: Any, total: int) -> Any:
        if total == ids.shape[1]:
            state["cache"] = DynamicCache(config=model.config)
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(ids.astype("int64")), past_key_values=state["cache"], use_cache=True)
        state["cache"] = out.past_key_values
        return out.logits[0, -1].numpy()

    return step, {"torch_num_threads": torch.get_num_threads()}


def generation(spec: dict) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    step, applied = (_torch_step if spec["runtime"] == "pytorch" else _ort_step)(spec)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(spec.get("seed", 0))
    prompt = rng.integers(3, spec["vocab_size"], size=(1, spec["prompt_tokens"]))
    n_new = spec["new_tokens"]
    ttft, decode = [], []
    for r in range(spec["warmup"] + spec["repeats"]):
        t = time.perf_counter()
        token = int(np.argmax(step(prompt, prompt.shape[1])))
        t1 = time.perf_counter()
        total = prompt.shape[1]
        for _ in range(n_new - 1):
            total += 1
            token = int(np.argmax(step(np.array([[token]]), total)))
        t2 = time.perf_counter()
        if r >= spec["warmup"]:
            ttft.append((t1 - t) * 1e3)
            decode.append((n_new - 1) / (t2 - t1))
    ttft_a, dec_a = np.asarray(ttft), np.asarray(decode)
    return {"ttft_ms": {"p50": float(np.median(ttft_a)), "p90": float(np.percentile(ttft_a, 90)),
                        "min": float(ttft_a.min())},
            "decode_tokens_per_s": {"p50": float(np.median(dec_a)), "p10": float(np.percentile(dec_a, 10)),
                                    "max": float(dec_a.max())},
            "samples": {"ttft_ms": [round(x, 3) for x in ttft], "decode_tokens_per_s": [round(x, 2) for x in decode]},
            "load_s": load_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "applied": applied}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = {"pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0)), **generation(spec)}
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
