"""Pass 5: accuracy and macro-F1 of an artifact on the labelled test texts.

The same definition as the training stages' (distill.training.classification_metrics): macro-F1 over
every class of the model, a class never predicted counting as F1 0, so that an artifact's figures
and its PyTorch model's are comparable digit for digit.
"""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, logits: np.ndarray) -> dict:
    """Accuracy, macro-F1 and n from the logits (or probabilities) of every test text."""
    return from_predictions(labels, np.asarray(logits).argmax(-1), int(np.asarray(logits).shape[-1]))


def from_predictions(labels, preds, num_labels: int) -> dict:
    from distill.training import classification_metrics

    m = classification_metrics(labels, preds, num_labels)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
