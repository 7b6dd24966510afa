"""Pass 4: the parity gate, each artifact's logits against PyTorch's on the same inputs.

One check per artifact, one ✓/✗ line per check (optimum's validate_models_outputs does the same):
fp32 artifacts must match within an absolute logit tolerance, int8 ones must agree on the label
for at least a fraction of the texts (their logits move by design; the decision must not).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Check:
    artifact: str
    max_abs_diff: float
    label_agreement: float
    n: int
    criterion: str  # "max_abs_diff" | "label_agreement" | "same_labels" (an e2e graph vs its token-id artifact)
    threshold: float
    against: str = "PyTorch"

    @property
    def passed(self) -> bool:
        if self.criterion == "max_abs_diff":
            return self.max_abs_diff <= self.threshold
        return self.label_agreement >= self.threshold

    def line(self) -> str:
        mark = "✓" if self.passed else "✗"
        if self.criterion == "same_labels":
            return (f"{mark} {self.artifact}: same labels as {self.against} fed by the Python tokenizer on "
                    f"{round(self.label_agreement * self.n)}/{self.n} texts ({self.label_agreement:.2%}; must be 100%)")
        if self.criterion == "max_abs_diff":
            return (f"{mark} {self.artifact}: max |logit diff| {self.max_abs_diff:.2e} "
                    f"{'<=' if self.passed else '>'} {self.threshold:.0e} (n={self.n})")
        return (f"{mark} {self.artifact}: label agreement {self.label_agreement:.2%} "
                f"{'>=' if self.passed else '<'} {self.threshold:.2%} (max |logit diff| {self.max_abs_diff:.3f}, "
                f"n={self.n})")

    def to_json(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "label_agreement": self.label_agreement, "n": self.n,
                "passed": self.passed, "criterion": self.criterion, "threshold": self.threshold,
                **({"against": self.against} if self.against != "PyTorch" else {})}


def check(artifact: str, reference: np.ndarray, logits: np.ndarray, *, int8: bool, fp32_atol: float,
          int8_min_agreement: float) -> Check:
    if reference.shape != logits.shape:
        raise ValueError(f"{artifact}: logits of shape {logits.shape}, PyTorch gives {reference.shape}")
    n = len(reference)
    diff = float(np.abs(reference - logits).max()) if n else 0.0
    agree = float((reference.argmax(-1) == logits.argmax(-1)).mean()) if n else 1.0
    c = Check(artifact, diff, agree, n, "label_agreement" if int8 else "max_abs_diff",
              int8_min_agreement if int8 else fp32_atol)
    log.debug("parity %s", c.line())  # the lines reach the user once: ExportResult.lines, which the CLI prints
    return c



def same_labels(artifact: str, against: str, expected: np.ndarray, labels: np.ndarray) -> Check:
    """The end-to-end graph (tokenizer inside) against the token-id artifact it wraps: every label equal."""
    if expected.shape != labels.shape:
        raise ValueError(f"{artifact}: {labels.shape[0]} labels, {against} gives {expected.shape[0]}")
    n = len(expected)
    agree = float((expected == labels).mean()) if n else 1.0
    c = Check(artifact, 0.0, agree, n, "same_labels", 1.0, against=against)
    log.debug("parity %s", c.line())
    return c
