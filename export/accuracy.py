"""Pass 5: accuracy and macro-F1 of an artifact on the labelled test texts.

The training stages' definition, by calling it (distill.training.classification_metrics): macro-F1 over
every class of the model, a class never predicted counting as F1 0, so that an artifact's figures
and its PyTorch model's are comparable digit for digit.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def accuracy(labels, scores, num_labels: Optional[int] = None) -> dict:
    """Accuracy, macro-F1 and n from the logits (or probabilities) of every test text; the classes are the
    scores' columns unless num_labels says more."""
    from distill.training import classification_metrics

    scores = np.asarray(scores)
    m = classification_metrics(labels, scores.argmax(-1), num_labels or int(scores.shape[-1]))
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
