"""A prompted teacher's test accuracy on the first N test texts, with and without contextual
calibration (one scoring pass gives both), and its seconds per text: the teacher stage's scoring
without the rest of a run, for a quick measurement on a CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/prompted_teacher_subset.py prompted-smollm --n 300

Writes the recipe's data split (the data stage's own code) to models/_prompted-subset-NAME/data
and the result to models/_prompted-subset-NAME/result-N[_KEY=VALUE...].json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distill.data.prepare import prepare, read_labels, read_split, write
from distill.device import choose_device
from distill.prompted import PromptedTeacher, build_spec, load_lm
from distill.recipe import load_recipe
from distill.training import classification_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", help="recipe file or shipped name (teacher.kind: prompted)")
    ap.add_argument("--n", type=int, default=300, help="score the first N test texts")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override KEY=VALUE")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    args = ap.parse_args()
    r = load_recipe(args.recipe, args.sets)
    folder = args.models_dir / f"_prompted-subset-{r.name}"
    data_dir = folder / "data"
    if not (data_dir / "test.jsonl").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        write(prepare(r.data, r.seed), data_dir)
    names, test = read_labels(data_dir), read_split(data_dir, "test")[: args.n]
    device = choose_device(r.device)
    t0 = time.perf_counter()
    model, tok = load_lm(r.teacher.model, quantization=r.teacher.quantization, device=device.device)
    load_s = time.perf_counter() - t0
    teacher = PromptedTeacher(build_spec(r.teacher, names, read_split(data_dir, "train"), tok, r.seed, r.device), model, tok)
    t0 = time.perf_counter()
    teacher.ready()  # the shared prefix's KV cache, once
    prefix_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = teacher.scores([row["text"] for row in test])
    wall = time.perf_counter() - t0
    cf = teacher.content_free_scores()
    gold = [row["label"] for row in test]
    result = {"recipe": args.recipe, "sets": args.sets, "model": r.teacher.model, "n": len(test),
              "shots": len(teacher.spec.shots), "prefix_tokens": len(teacher.prefix_ids), "chat": teacher.spec.chat,
              "verbalizer_tokens": [len(v) for v in teacher.verbalizer_ids], "max_length": teacher.spec.max_length,
              "load_s": round(load_s, 1), "prefix_s": round(prefix_s, 2), "s_per_text": round(wall / len(test), 4),
              "batch_size": r.teacher.batch_size, "content_free_probs": dict(zip(names, (round(float(x), 4) for x in np.exp(teacher.logits(cf[None], False)[0]))))}
    for mode, shift in (("uncalibrated", 0.0), ("calibrated", cf)):
        m = classification_metrics(gold, (scores - shift).argmax(-1), len(names))
        result[mode] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "confusion": m["confusion"]}
    tag = "".join(f"_{s.rsplit('.', 1)[-1]}" for s in args.sets)  # e.g. result-300_chat_template=false.json
    out = folder / f"result-{args.n}{tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
