"""Distilling a causal LM into a smaller one, token by token (`task: causal-lm`): the parts.

Every text is tokenized once, the same way for teacher, student and perplexity (`lm_ids`): the
tokenizer's own special tokens, BOS in front where the tokenizer adds none (so the first word is
predicted too), cut to max_length tokens. A text of n tokens gives n - 1 predictions.

The teacher's k largest next-token logits at every position are cached once
(soft_labels/topk.safetensors, texts keyed by the sha256 of their UTF-8 text, as classification
soft labels are), so the student trains without the teacher in memory. The KL term compares the
teacher's distribution renormalized over its top k tokens with the student's distribution over
the same k tokens, both at temperature T, T^2-scaled as in Hinton et al. 2015 (arXiv:1503.02531).
Renormalizing the student too makes the term 0 for a student that is the teacher, whatever k;
the mass outside the top k is left to the cross-entropy term, the usual next-token loss on the
text itself. (Reading the student's full-vocabulary log-probabilities at the k tokens instead
would push all its mass into the teacher's top k: a teacher-copy student would score -log of
the top-k mass, not 0, and learn to be over-confident.)
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distill.errors import DistillError
from distill.soft_labels import text_key

log = logging.getLogger(__name__)

TOPK_FILE = "topk.safetensors"
INDEX_FILE = "index.json"


def lm_ids(tok: Any, text: str, max_length: int) -> list[int]:
    """The token ids of a text as every causal-LM step here reads it."""
    ids = list(tok(text, add_special_tokens=True)["input_ids"])
    bos = tok.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids[:max_length]


def pad_batch(id_lists: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Any, Any]:
    """Right-padded input_ids and attention_mask. Right padding keeps every real token at the
    position it has alone (Llama-style models count positions from 0 whatever the mask says)."""
    import torch

    width = max(len(x) for x in id_lists)
    ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for i, x in enumerate(id_lists):
        ids[i, :len(x)] = torch.as_tensor(list(x), dtype=torch.long)
        mask[i, :len(x)] = 1
    return ids, mask


def _batches(id_lists: Sequence[Sequence[int]], batch_size: int) -> list[np.ndarray]:
    order = np.argsort([len(x) for x in id_lists], kind="stable")  # less padding per batch
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def perplexity(model: Any, id_lists: Sequence[Sequence[int]], batch_size: int = 8) -> dict[str, Any]:
    """exp(mean next-token negative log-likelihood) over every predicted token of every text."""
    import torch

    model.eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for idx in _batches(id_lists, batch_size):
            ids, mask = pad_batch([id_lists[i] for i in idx])
            ids, mask = ids.to(dev), mask.to(dev)
            logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
            nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            keep = mask[:, 1:].bool()
            total += float(nll[keep].double().sum())
            count += int(keep.sum())
    nll_mean = total / max(count, 1)
    return {"perplexity": math.exp(nll_mean), "nll": nll_mean, "tokens": count, "texts": len(id_lists)}


@dataclass
class TopK:
    """The teacher's top-k next-token logits at every position of every cached text."""

    input_ids: np.ndarray  # int32 [T]: all texts' token ids, concatenated
    ids: np.ndarray  # int32 [T, k]: the teacher's k most likely next tokens at each position
    logits: np.ndarray  # float32 [T, k]: their logits, descending
    mass: np.ndarray  # float32 [T]: their probability under the teacher's full softmax (T = 1)
    index: dict[str, list[int]]  # sha256(text) -> [start, length]

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"input_ids": np.ascontiguousarray(self.input_ids, dtype=np.int32),
                   "topk_ids": np.ascontiguousarray(self.ids, dtype=np.int32),
                   "topk_logits": np.ascontiguousarray(self.logits, dtype=np.float32),
                   "mass": np.ascontiguousarray(self.mass, dtype=np.float32)}, str(folder / TOPK_FILE))
        (folder / INDEX_FILE).write_text(json.dumps(self.index) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "TopK":
        from safetensors.numpy import load_file

        t = load_file(str(folder / TOPK_FILE))
        return cls(t["input_ids"], t["topk_ids"], t["topk_logits"], t["mass"],
                   json.loads((folder / INDEX_FILE).read_text()))

    def span(self, text: str) -> tuple[int, int]:
        try:
            start, n = self.index[text_key(text)]
        except KeyError:
            raise DistillError(f"no cached teacher logits for the text {text[:60]!r}: rerun the soft_labels stage "
                               "(distill run --force)") from None
        return start, n

    def get(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids [n], top-k ids [n, k], top-k logits [n, k]) of one text."""
        s, n = self.span(text)
        return self.input_ids[s:s + n], self.ids[s:s + n], self.logits[s:s + n]


def teacher_topk(model: Any, texts: Sequence[str], id_lists: Sequence[Sequence[int]], k: int,
                 batch_size: int = 8) -> TopK:
    """Run the teacher once over the texts and keep its top-k logits at every position."""
    import torch

    model.eval()
    dev = next(model.parameters()).device
    keys = [text_key(t) for t in texts]
    first = {}
    for i, key in enumerate(keys):  # one row per distinct text
        first.setdefault(key, i)
    todo = sorted(first.values())
    lengths = [len(id_lists[i]) for i in todo]
    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1].astype(int)
    total = int(sum(lengths))
    out_ids = np.zeros((total, k), np.int32)
    out_logits = np.zeros((total, k), np.float32)
    out_mass = np.zeros(total, np.float32)
    with torch.inference_mode():
        for idx in _batches([id_lists[i] for i in todo], batch_size):
            ids, mask = pad_batch([id_lists[todo[j]] for j in idx])
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
            values, top = logits.topk(k, dim=-1)
            mass = (values - logits.logsumexp(-1, keepdim=True)).exp().sum(-1)
            for row, j in enumerate(idx):
                s, n = starts[j], lengths[j]
                out_ids[s:s + n] = top[row, :n].cpu().numpy()
                out_logits[s:s + n] = values[row, :n].cpu().numpy()
                out_mass[s:s + n] = mass[row, :n].cpu().numpy()
    flat = np.concatenate([np.asarray(id_lists[i], np.int32) for i in todo]) if todo else np.zeros(0, np.int32)
    index = {keys[i]: [int(starts[j]), int(lengths[j])] for j, i in enumerate(todo)}
    return TopK(flat, out_ids, out_logits, out_mass, index)


def lm_losses(student_logits: Any, input_ids: Any, attention_mask: Any, topk_ids: Any, topk_logits: Any,
              temperature: float) -> dict[str, Any]:
    """Per-token means over the predicted positions (position t predicts token t + 1):
    `kl` = T^2 KL(teacher || student), both softmaxed at T over the teacher's top-k tokens;
    `ce` = next-token cross-entropy on the text. topk_* are [B, L, k], aligned with input_ids."""
    t = temperature
    s = student_logits[:, :-1].float()
    keep = attention_mask[:, 1:].to(s.dtype)
    n = keep.sum().clamp(min=1)
    ce = -s.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    log_p = (s.gather(-1, topk_ids[:, :-1].long()) / t).log_softmax(-1)
    log_q = (topk_logits[:, :-1].float() / t).log_softmax(-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1) * t * t
    return {"kl": (kl * keep).sum() / n, "ce": (ce * keep).sum() / n}


def topk_kl(model: Any, cache: TopK, texts: Sequence[str], temperature: float = 1.0,
            batch_size: int = 8) -> float:
    """The `kl` term of lm_losses over texts (per token): how far a model is from the teacher."""
    import torch

    model.eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    rows = [cache.get(t) for t in texts]
    with torch.inference_mode():
        for idx in _batches([r[0] for r in rows], batch_size):
            batch = collate_topk([rows[i] for i in idx])
            batch = {k: v.to(dev) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            n = int(batch["attention_mask"][:, 1:].sum())
            total += float(lm_losses(logits, batch["input_ids"], batch["attention_mask"], batch["topk_ids"],
                                     batch["topk_logits"], temperature)["kl"]) * n
            count += n
    return total / max(count, 1)


def collate_topk(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], pad_id: int = 0) -> dict[str, Any]:
    """A training batch from cached rows: right-padded ids and mask, top-k ids and logits padded alike."""
    import torch

    ids, mask = pad_batch([r[0] for r in rows], pad_id)
    k = rows[0][1].shape[1]
    top_ids = torch.zeros((len(rows), ids.shape[1], k), dtype=torch.long)
    top_logits = torch.zeros((len(rows), ids.shape[1], k), dtype=torch.float32)
    for i, (x, ti, tl) in enumerate(rows):
        top_ids[i, :len(x)] = torch.from_numpy(ti.astype(np.int64))
        top_logits[i, :len(x)] = torch.from_numpy(tl)
    return {"input_ids": ids, "attention_mask": mask, "topk_ids": top_ids, "topk_logits": top_logits}


def plain_model(model: Any) -> Any:
    """The same weights in a plain model of the same class: a GGUF-loaded model (dequantized on load)
    refuses save_pretrained until it is rebuilt without its quantization_config."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if getattr(config, "quantization_config", None) is None and getattr(model, "hf_quantizer", None) is None:
        return model
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    plain = AutoModelForCausalLM.from_config(config, dtype=next(iter(state.values())).dtype)
    with torch.no_grad():
        plain.load_state_dict(state)
    plain.tie_weights()
    return plain.eval()


def student_from_layers(teacher: Any, layers: list[int]) -> Any:
    """A causal LM of the chosen teacher decoder layers, with the teacher's embeddings, final norm
    and LM head (one tensor when the teacher ties embeddings and head, as SmolLM2 does)."""
    from transformers import AutoModelForCausalLM

    from distill.student_init import from_teacher_layers

    student = from_teacher_layers(teacher, layers, auto_class=AutoModelForCausalLM)
    student.tie_weights()
    if getattr(student.config, "tie_word_embeddings", False):
        head, emb = student.get_output_embeddings(), student.get_input_embeddings()
        if head is not None and head.weight.data_ptr() != emb.weight.data_ptr():
            raise DistillError("the student's LM head is not tied to its embeddings though its config says so")
    return student


def same_vocab(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab() and a.bos_token_id == b.bos_token_id


def lm_collator(pad_id: int = 0):
    """Causal-LM batches for fine-tuning the teacher: labels are the ids, -100 on padding."""

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        ids, mask = pad_batch([f["input_ids"] for f in features], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    return collate


def topk_trainer_class():
    from transformers import Trainer

    class TopKDistillTrainer(Trainer):
        """The Trainer with the token-level distillation loss; nothing else overridden."""

        def __init__(self, *args: Any, loss_weights: dict[str, float], temperature: float, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.loss_weights, self.temperature = loss_weights, temperature

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            parts = lm_losses(out.logits, inputs["input_ids"], inputs["attention_mask"], inputs["topk_ids"],
                              inputs["topk_logits"], self.temperature)
            loss = sum(w * parts[name] for name, w in self.loss_weights.items() if w)
            return (loss, out) if return_outputs else loss

    return TopKDistillTrainer


def topk_collator(cache: TopK, pad_id: int = 0):
    """Dataset rows {"start", "length"} -> a training batch from the cache."""

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = []
        for f in features:
            s, n = int(f["start"]), int(f["length"])
            rows.append((cache.input_ids[s:s + n], cache.ids[s:s + n], cache.logits[s:s + n]))
        return collate_topk(rows, pad_id)

    return collate


def apply_lora(model: Any, lora: Any, quantized: bool) -> Any:
    try:
        from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    except ImportError:
        raise DistillError("teacher.lora needs peft: pip install -c requirements/constraints.txt 'edge-distill[gpu]'") from None
    if quantized:
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=lora.target_modules)
    return get_peft_model(model, cfg)


def merged_lora(trained: Any, base: Any, tmp: Path) -> Any:
    """A trained LoRA model (its base possibly 4/8-bit) merged into a full-precision base: the
    adapter is saved, loaded onto `base`, merged, and unloaded."""
    from peft import PeftModel

    trained.save_pretrained(tmp)
    return PeftModel.from_pretrained(base, tmp).merge_and_unload().eval()

