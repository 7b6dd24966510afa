"""Distillation losses, registered by name. Each returns one value per example (weights apply per
example), or None where it has nothing to say for the batch (e.g. `ce` with no gold labels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from distill.registry import Registry

LOSSES: Registry = Registry("loss")


@dataclass
class LossInputs:
    student_logits: Any  # [B, C]
    teacher_logits: Any  # [B, C]
    labels: Any  # [B], -100 where there is no gold label the student may use
    temperature: float
    student_hidden: Optional[list[Any]] = None  # pooled [B, Hs] per mapped layer
    teacher_hidden: Optional[list[Any]] = None  # pooled [B, Ht] per mapped layer
    projections: Optional[Any] = None  # ModuleList of Linear(Hs, Ht) when widths differ
    class_weights: Optional[Any] = None  # [C] weights of the gold-label term (student.class_weights)
    student_qkv: Optional[tuple[Any, Any, Any]] = None  # [B, L, Hs] each: the student's last layer (attn_relations)
    teacher_qkv: Optional[tuple[Any, Any, Any]] = None  # [B, L, Ht] each: the teacher's relation layer
    attention_mask: Optional[Any] = None  # [B, L]
    relation_heads: int = 0


@LOSSES.register("kl")
def kl(x: LossInputs) -> Any:
    """Hinton et al.: T^2 * KL(teacher/T || student/T), so gradients keep their scale as T changes."""
    import torch.nn.functional as F

    t = x.temperature
    log_p = F.log_softmax(x.student_logits / t, dim=-1)
    log_q = F.log_softmax(x.teacher_logits / t, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1) * t * t


@LOSSES.register("ce")
def ce(x: LossInputs) -> Optional[Any]:
    import torch
    import torch.nn.functional as F

    mask = x.labels >= 0
    if not bool(mask.any()):
        return None
    w = x.class_weights.to(x.student_logits.device) if x.class_weights is not None else None
    out = F.cross_entropy(x.student_logits, x.labels.clamp(min=0), weight=w, reduction="none")
    return torch.where(mask, out, torch.zeros_like(out))


@LOSSES.register("mse")
def mse(x: LossInputs) -> Any:
    return ((x.student_logits - x.teacher_logits) ** 2).mean(-1)


def _pairs(x: LossInputs) -> list[tuple[Any, Any]]:
    if not x.student_hidden or not x.teacher_hidden:
        raise ValueError("hidden losses need hidden states; they are computed only for students built from the teacher")
    out = []
    for i, (s, t) in enumerate(zip(x.student_hidden, x.teacher_hidden)):
        if x.projections is not None:
            s = x.projections[i](s)
        out.append((s, t))
    return out


@LOSSES.register("hidden_mse")
def hidden_mse(x: LossInputs) -> Any:
    return sum(((s - t) ** 2).mean(-1) for s, t in _pairs(x)) / len(x.student_hidden)


@LOSSES.register("hidden_cos")
def hidden_cos(x: LossInputs) -> Any:
    import torch.nn.functional as F

    return sum(1 - F.cosine_similarity(s, t, dim=-1) for s, t in _pairs(x)) / len(x.student_hidden)


@LOSSES.register("attn_relations")
def attn_relations(x: LossInputs) -> Any:
    """MiniLMv2: KL between the teacher's and the student's Q-Q, K-K and V-V self-attention relations
    (distill/relations.py), summed over the three."""
    from distill.relations import relation_kl

    if x.student_qkv is None or x.teacher_qkv is None:
        raise ValueError("attn_relations needs the query/key/value outputs of student and teacher")
    return relation_kl(x.student_qkv, x.teacher_qkv, x.attention_mask, x.relation_heads)


def combine(weights: dict[str, float], x: LossInputs, example_weight: Optional[Any] = None) -> tuple[Any, dict[str, float]]:
    """Weighted sum of the named losses, averaged over the batch (per-example weights applied)."""
    total = None
    parts: dict[str, float] = {}
    for name, w in weights.items():
        if w == 0:
            continue
        fn: Callable[[LossInputs], Any] = LOSSES.get(name)
        per_example = fn(x)
        if per_example is None:
            continue
        if name == "ce":
            mask = (x.labels >= 0).float()
            ew = mask if example_weight is None else mask * example_weight
        else:
            ew = example_weight
        value = (per_example * ew).sum() / ew.sum().clamp(min=1e-8) if ew is not None else per_example.mean()
        parts[name] = float(value.detach())
        total = w * value if total is None else total + w * value
    return total, parts
