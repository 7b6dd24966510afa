"""A head on a frozen sentence encoder, fitted on a few-shot run's pseudo-labels: the floor that SetFit's
own distillation (its DistillationTrainer, which also trains the student's body) should clear.

For a finished few-shot run (models/fs-sN): the student's model (minilm-l6 by default) encodes the
unlabelled transfer texts and the test split with its sentence-transformers pooling, untrained; a
logistic regression (SetFit's default head) is fitted on the run's teacher's argmax over those texts,
and, for reference, on their gold labels (the data stage keeps them for the pseudo-label accuracy).
Test accuracy of both, on the run's test split. One thread, so it can run beside a training.

    .venv/bin/python experiments/frozen_head_baseline.py models/fs-s1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished few-shot run directory")
    ap.add_argument("--model", default="packaged:minilm-l6", help="the frozen encoder (default: the few-shot student's)")
    a = ap.parse_args()
    missing = [f for f in ("data/transfer.jsonl", "data/test.jsonl", "soft_labels/index.json") if not (a.run / f).exists()]
    if missing:
        raise SystemExit(f"{a.run} is not a finished few-shot run (missing {', '.join(missing)}); pass models/fs-sN "
                         "after `distill run few-shot` has completed its soft_labels stage.")

    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from distill.setfit_runs import load_setfit
    from distill.soft_labels import SoftLabels

    torch.set_num_threads(1)
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]  # noqa: E731
    transfer, test = read(a.run / "data" / "transfer.jsonl"), read(a.run / "data" / "test.jsonl")
    texts = [r["text"] for r in transfer]
    pseudo = SoftLabels.load(a.run / "soft_labels").get(texts).argmax(-1)
    gold = np.array([r["gold"] for r in transfer])
    y_test = np.array([r["label"] for r in test])

    body = load_setfit(a.model).model_body
    t0 = time.perf_counter()
    x, x_test = body.encode(texts, batch_size=64), body.encode([r["text"] for r in test], batch_size=64)
    print(f"{a.run}: encoded {len(texts)} + {len(test)} texts with {a.model} in {time.perf_counter() - t0:.0f} s")
    print(f"pseudo-labels right: {100 * (pseudo == gold).mean():.2f}%")
    for what, y in (("the teacher's argmax", pseudo), ("gold labels", gold)):
        clf = LogisticRegression(max_iter=1000).fit(x, y)
        print(f"head on the frozen encoder, fitted on {what}: test {100 * (clf.predict(x_test) == y_test).mean():.2f}%")


if __name__ == "__main__":
    main()
