"""Self-attention relation transfer (MiniLMv2, Wang et al. 2021) for the `attn_relations` loss.

The student's last layer learns the teacher's query-query, key-key and value-value relations of one
teacher layer: for each of Q, K and V, the scaled dot products of every token with every other token,
split into relation heads and softmaxed over the keys. Relations are L x L per head, so they compare
across hidden widths and attention-head counts; they need the same tokens at the same positions, so
student and teacher must cut texts into the same word pieces (the teacher's ids are the student's
mapped through the two vocabularies, special tokens by role).

The teacher runs online, beside the student, on every training batch, up to its relation layer only
(a forward hook stops it there); its Q/K/V are not cached, as they would be tokens x 3 x width per
text.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from distill.errors import DistillError

# The names of the query/key/value projections in an encoder layer's self-attention, by model family.
_QKV_NAMES = (("query", "key", "value"),  # BERT, RoBERTa, XLM-R, ELECTRA, MiniLM
              ("q", "k", "v"),  # MPNet
              ("q_lin", "k_lin", "v_lin"))  # DistilBERT


def encoder_layers(model: Any) -> Any:
    """The list of transformer layers of an encoder classifier (BERT-like, MPNet, DistilBERT)."""
    base = model.base_model
    for path in ("encoder.layer", "transformer.layer"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    raise DistillError(f"distill.losses attn_relations: cannot find the transformer layers of a "
                       f"{type(model).__name__}; it works with BERT-like, MPNet and DistilBERT encoders. "
                       "Drop attn_relations from distill.losses.")


def qkv_modules(model: Any, layer: int) -> tuple[Any, Any, Any]:
    """The query, key and value projections (nn.Linear) of a layer; negative layer counts from the top."""
    layers = encoder_layers(model)
    try:
        block = layers[layer]
    except IndexError:
        raise DistillError(f"distill.relation_layer {layer}: the model has layers 0..{len(layers) - 1} "
                           f"(or -1..-{len(layers)} from the top); set distill.relation_layer within that range.") from None
    by_leaf: dict[str, list[Any]] = {}
    for name, module in block.named_modules():
        by_leaf.setdefault(name.rsplit(".", 1)[-1], []).append(module)
    for names in _QKV_NAMES:
        if all(len(by_leaf.get(n, ())) == 1 for n in names):
            return tuple(by_leaf[n][0] for n in names)  # type: ignore[return-value]
    raise DistillError(f"distill.losses attn_relations: no query/key/value projections found in layer {layer} "
                       f"of a {type(model).__name__}. Drop attn_relations from distill.losses.")


class _Stop(Exception):
    """Raised by a hook once the teacher's relation layer has produced Q, K and V: the layers above are not run."""


class QKVCapture:
    """Forward hooks that keep the last Q, K and V outputs of one layer ([B, L, H] each).

    stop=True ends the model's forward once all three are produced (call it through `run`)."""

    def __init__(self, model: Any, layer: int, stop: bool = False):
        self.stop = stop
        self.out: dict[int, Any] = {}
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(qkv_modules(model, layer))]

    def _hook(self, i: int):
        def hook(module: Any, args: Any, output: Any) -> None:
            self.out[i] = output
            if self.stop and len(self.out) == 3:
                raise _Stop

        return hook

    def take(self) -> tuple[Any, Any, Any]:
        out, self.out = self.out, {}
        return out[0], out[1], out[2]

    def run(self, model: Any, **inputs: Any) -> tuple[Any, Any, Any]:
        """Run the model until the hooked layer's Q, K and V exist, and return them."""
        self.out = {}
        try:
            model(**inputs)
        except _Stop:
            pass
        return self.take()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def relation_log_probs(x: Any, mask: Any, heads: int) -> Any:
    """log softmax over keys of the scaled dot products of x with itself, per relation head: [B, R, L, L].
    x: [B, L, H] (H divisible by heads); mask: [B, L], 1 for tokens, 0 for padding (never a key)."""
    import torch

    b, length, width = x.shape
    d = width // heads
    xh = x.view(b, length, heads, d).transpose(1, 2).float()  # [B, R, L, d]
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(d)
    keys = mask[:, None, None, :].bool()
    scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)
    return torch.log_softmax(scores, dim=-1)


def relation_kl(student_qkv: tuple[Any, Any, Any], teacher_qkv: tuple[Any, Any, Any], mask: Any,
                heads: int) -> Any:
    """Per example: the sum over Q, K and V of KL(teacher relation || student relation), averaged over
    the relation heads and the text's tokens (padding is neither a query nor a key). Shape [B]."""
    mask = mask.float()
    queries = mask[:, None, :]  # [B, 1, L]
    n = (mask.sum(-1) * heads).clamp(min=1)
    total = None
    for s, t in zip(student_qkv, teacher_qkv):
        log_p = relation_log_probs(s, mask, heads)
        log_q = relation_log_probs(t.detach(), mask, heads)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # [B, R, L]
        per_example = (kl * queries).sum((-1, -2)) / n
        total = per_example if total is None else total + per_example
    return total


def relation_heads(student: Any, teacher: Any, heads: Optional[int]) -> int:
    """The number of relation heads: `heads`, else the student's attention heads; both widths must divide by it."""
    ws, wt = student.config.hidden_size, teacher.config.hidden_size
    r = heads or student.config.num_attention_heads
    if ws % r or wt % r:
        raise DistillError(f"distill.relation_heads {r}: the student's width {ws} and the teacher's {wt} must both "
                           f"divide by it; set distill.relation_heads to a divisor of {math.gcd(ws, wt)}.")
    return r


_ROLES = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token")


def id_map(student_tok: Any, teacher_tok: Any, used_ids: Any) -> Any:
    """A LongTensor mapping each student token id to the teacher's id of the same word piece (special
    tokens by role: the student's [CLS] becomes the teacher's <s>). Raises when a token the student's
    texts use has no teacher counterpart: the relations would then compare different word pieces."""
    import torch

    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    table = torch.full((max(sv.values()) + 1,), -1, dtype=torch.long)
    for token, i in sv.items():
        if token in tv:
            table[i] = tv[token]
    for role in _ROLES:
        s, t = getattr(student_tok, role, None), getattr(teacher_tok, role, None)
        if s is not None and t is not None and s in sv and t in tv:
            table[sv[s]] = tv[t]
    missing = sorted({int(i) for i in used_ids if table[int(i)] < 0})
    if missing:
        pieces = student_tok.convert_ids_to_tokens(missing[:5])
        raise DistillError(f"distill.losses attn_relations compares the student's and the teacher's attention token by "
                           f"token, so both must use the same word pieces; {len(missing)} tokens of the student's texts "
                           f"are not in the teacher's vocabulary (e.g. {pieces}). Use a student that shares the "
                           "teacher's tokenizer (student.init: teacher-layers, or a model of the same vocabulary) or "
                           "drop attn_relations from distill.losses.")
    fill = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else 0
    return table.masked_fill(table < 0, fill)  # ids the texts never use (padding is masked anyway)
