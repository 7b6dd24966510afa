"""Pass 5: accuracy and macro-F1 of an artifact on the labelled test texts."""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, logits: np.ndarray) -> dict:
    """Accuracy and macro-F1 (over the classes present in labels or predictions, as scikit-learn)."""
    pred = logits.argmax(-1)
    f1s = []
    for c in np.union1d(labels, pred):
        tp = np.sum((pred == c) & (labels == c))
        denom = np.sum(pred == c) + np.sum(labels == c)
        f1s.append(2 * tp / denom if denom else 0.0)
    return {"accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
            "macro_f1": float(np.mean(f1s)) if f1s else 0.0, "n": int(len(labels))}
