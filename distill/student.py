"""The student stage: build the student, distill it from cached soft labels with the Trainer
(curriculum as its sampler), optionally over several rounds, evaluate it, write its model card."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from distill.curriculum import make_sampler
from distill.data.prepare import read_labels, read_split
from distill.device import choose_device
from distill.errors import DistillError
from distill.faults import step_callback
from distill.losses import LossInputs, combine
from distill.modeling import count_parameters, load_classifier, load_tokenizer, num_layers
from distill.soft_labels import SoftLabels, label_texts, student_pool, text_key
from distill.training import (compute_metrics_fn, evaluate_rows, jsonl_logger, pick_max_length, predict_logits,
                              tokenized, training_arguments)

log = logging.getLogger(__name__)

HIDDEN = ("hidden_mse", "hidden_cos")


def _trainer_class():
    import torch
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """The Trainer with a distillation loss and a curriculum sampler; nothing else overridden."""

        def __init__(self, *args: Any, loss_weights: dict[str, float], temperature: float,
                     curriculum: Any = None, projections: Any = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.loss_weights, self.temperature = loss_weights, temperature
            self.curriculum, self.projections = curriculum, projections
            self.need_hidden = any(loss_weights.get(h) for h in HIDDEN)

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return self.curriculum if self.curriculum is not None else super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            teacher_logits = inputs.pop("teacher_logits", None)
            weight = inputs.pop("weight", None)
            teacher_hidden = inputs.pop("teacher_hidden", None)
            labels = inputs.pop("labels")
            inputs.pop("idx", None)
            outputs = model(**inputs, output_hidden_states=self.need_hidden and teacher_logits is not None)
            if teacher_logits is None:  # evaluation on gold labels
                loss = torch.nn.functional.cross_entropy(outputs.logits, labels)
                return (loss, outputs) if return_outputs else loss
            student_hidden = None
            if self.need_hidden:
                mask = inputs["attention_mask"].unsqueeze(-1).to(outputs.logits.dtype)
                student_hidden = [(outputs.hidden_states[i + 1] * mask).sum(1) / mask.sum(1)
                                  for i in range(len(outputs.hidden_states) - 1)]
                student_hidden = [student_hidden[i] for i in self._student_layers]
            x = LossInputs(outputs.logits, teacher_logits, labels, self.temperature, student_hidden,
                           list(teacher_hidden.unbind(1)) if teacher_hidden is not None else None, self.projections)
            loss, _ = combine(self.loss_weights, x, weight)
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


def _collator(tokenizer: Any):
    import torch
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer)
    extra = ("teacher_logits", "weight", "teacher_hidden", "idx")

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        taken = {k: [f.pop(k) for f in features] for k in extra if k in features[0]}
        batch = pad(features)
        for k, v in taken.items():
            batch[k] = torch.tensor(np.asarray(v), dtype=torch.long if k == "idx" else torch.float32)
        return batch

    return collate


def _pooled_teacher_hidden(run: Path, texts: list[str], layers: list[int], max_length: int) -> np.ndarray:
    """Masked-mean hidden states of the mapped teacher layers, [N, L, H]; the teacher is freed after."""
    import torch

    from distill.teacher import load_teacher

    teacher, tok = load_teacher(run / "teacher")
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), 64):
            b = tok(texts[s:s + 64], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            hs = teacher(**b, output_hidden_states=True).hidden_states
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append(torch.stack([(hs[i + 1] * m).sum(1) / m.sum(1) for i in layers], 1).numpy())
    del teacher
    return np.concatenate(out)


def build_student(r: Any, teacher: Any, teacher_tok: Any, names: list[str]) -> tuple[Any, Any]:
    from distill.student_init import from_config, from_teacher_layers

    s = r.student
    if s.init == "teacher-layers":
        return from_teacher_layers(teacher, s.layers), teacher_tok
    if s.init == "config":
        return from_config(teacher, s.config or {}), teacher_tok
    return load_classifier(s.model, names), load_tokenizer(s.model)


def _round_rows(pool: list[dict[str, Any]], soft: SoftLabels, weights: np.ndarray, hidden: Optional[np.ndarray]) -> list[dict[str, Any]]:
    logits = soft.get([p["text"] for p in pool])
    rows = []
    for i, (p, lg, w) in enumerate(zip(pool, logits, weights)):
        row = {"text": p["text"], "labels": p["label"] if p["label"] is not None else -100,
               "teacher_logits": lg.tolist(), "weight": float(w), "idx": i}
        if hidden is not None:
            row["teacher_hidden"] = hidden[i].tolist()
        rows.append(row)
    return rows


def student_stage(ctx: Any, out: Path) -> None:
    import torch
    from transformers import set_seed

    from distill.teacher import load_teacher

    r, s, d = ctx.recipe, ctx.recipe.student, ctx.recipe.distill
    run = ctx.run.path
    data_dir = run / "data"
    names = read_labels(data_dir)
    val, test = read_split(data_dir, "validation"), read_split(data_dir, "test")
    device = choose_device(r.device)
    teacher, teacher_tok = load_teacher(run / "teacher")
    set_seed(r.seed)  # a new head or projection draws from the global RNG (see teacher_stage)
    student, tok = build_student(r, teacher, teacher_tok, names)
    tmetrics = json.loads((run / "teacher" / "metrics.json").read_text())
    pool = student_pool(data_dir)
    if r.data.label_noise == "drop" and (run / "teacher" / "label_noise.json").exists():
        dropped = drop_noisy_labels(pool, json.loads((run / "teacher" / "label_noise.json").read_text()))
        log.info("label_noise=drop: %d rows keep their soft label but lose the gold-label term", dropped)
    max_length = pick_max_length(tok, [p["text"] for p in pool], s.max_length)
    soft = SoftLabels.load(run / "soft_labels")

    hidden_layers: list[int] = []  # teacher layers, in the order of student_layers
    student_layers: list[int] = []
    projections = None
    need_hidden = any(d.losses.get(h) for h in HIDDEN)
    if need_hidden:
        if s.init == "pretrained" and tok.get_vocab() != teacher_tok.get_vocab():
            raise DistillError("distill.losses hidden_mse/hidden_cos compare hidden states token by token, which "
                               "needs the student to tokenize exactly as the teacher; "
                               f"{s.model} does not. Drop the hidden losses or use student.init: teacher-layers.")
        lm = d.layer_map or {j: layer for j, layer in enumerate(s.layers)}
        student_layers = sorted(lm)
        hidden_layers = [lm[j] for j in student_layers]
        ws, wt = student.config.hidden_size, teacher.config.hidden_size
        if ws != wt:
            projections = torch.nn.ModuleList([torch.nn.Linear(ws, wt) for _ in hidden_layers])
            student.distill_projections = projections  # trained with the student, dropped before saving
    del teacher  # never beside the student while it trains

    DistillTrainer = _trainer_class()
    weights = np.ones(len(pool), dtype=np.float32)
    rounds: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for rnd in range(1, d.rounds + 1):
        t0 = time.perf_counter()
        hidden = _pooled_teacher_hidden(run, [p["text"] for p in pool], hidden_layers, max_length) if need_hidden else None
        rows = _round_rows(pool, soft, weights, hidden)
        cols = ["labels", "teacher_logits", "weight", "idx"] + (["teacher_hidden"] if hidden is not None else [])
        train_ds = tokenized(tok, rows, max_length, cols)
        sampler = make_sampler(d.curriculum, np.asarray([rw["teacher_logits"] for rw in rows]),
                               [len(x) for x in train_ds["input_ids"]], s.batch_size * s.grad_accum, s.epochs,
                               r.seed + rnd)
        callbacks = [jsonl_logger(run / "logs" / "train.jsonl", "student"), step_callback("student")]
        if sampler is not None and d.curriculum.scorer == "self-paced":
            callbacks.append(_self_paced_callback(sampler, tok, rows, max_length, d.temperature))
        ckpt = run / "checkpoints" / "student"
        shutil.rmtree(ckpt, ignore_errors=True)
        trainer = DistillTrainer(
            model=student,
            args=training_arguments(s, ckpt, device, r.seed + rnd, has_eval=bool(val), save=False),
            train_dataset=train_ds,
            eval_dataset=tokenized(tok, val, max_length, ["label"]).rename_column("label", "labels") if val else None,
            data_collator=_collator(tok), compute_metrics=compute_metrics_fn(len(names)), callbacks=callbacks,
            loss_weights=d.losses, temperature=d.temperature, curriculum=sampler, projections=projections)
        trainer._student_layers = student_layers
        result = trainer.train()
        student = trainer.model
        val_m, _ = evaluate_rows(student, tok, val, max_length, len(names)) if val else ({}, None)
        test_m, _ = evaluate_rows(student, tok, test, max_length, len(names))
        rounds.append({"round": rnd, "pool": len(pool), "steps": result.global_step, "train_loss": result.training_loss,
                       "validation": val_m, "test": test_m, "wall_s": round(time.perf_counter() - t0, 1)})
        log.info("student round %d: validation %.4f, test %.4f", rnd, val_m.get("accuracy", float("nan")), test_m["accuracy"])
        if rnd < d.rounds:
            pool, soft, weights = _next_round(run, r, student, tok, pool, soft, weights, max_length, rnd)
    shutil.rmtree(run / "checkpoints" / "student", ignore_errors=True)

    if hasattr(student, "distill_projections"):
        del student.distill_projections
    student.eval()
    student.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    final = rounds[-1]
    metrics = {"init": s.init, "layers": num_layers(student), "teacher_layers": tmetrics.get("layers"),
               "parameters": count_parameters(student), "teacher_parameters": tmetrics.get("parameters"),
               "max_length": max_length, "device": device.device, "precision": device.precision,
               "losses": d.losses, "temperature": d.temperature, "curriculum": d.curriculum.model_dump(),
               "rounds": rounds, "validation": final["validation"], "test": final["test"],
               "teacher_test": tmetrics["test"], "wall_s": round(time.perf_counter() - t_start, 1)}
    metrics["kept_of_teacher"] = final["test"]["accuracy"] / max(tmetrics["test"]["accuracy"], 1e-9)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from distill.model_card import write_card

    write_card(out, r, metrics, names)


def drop_noisy_labels(pool: list[dict[str, Any]], flagged: list[dict[str, Any]]) -> int:
    """Remove the gold label of the training rows the teacher flagged (teacher/label_noise.json).

    Matched by text hash, as soft labels are: the flagged "row" numbers index the teacher's own training
    set, which is a subsample of data/train.jsonl when teacher.max_train_samples is set.
    """
    noisy = {text_key(n["text"]) for n in flagged}
    dropped = 0
    for row in pool:
        if row.get("origin") == "train" and row["label"] is not None and text_key(row["text"]) in noisy:
            row["label"] = None
            dropped += 1
    return dropped


def _self_paced_callback(sampler: Any, tok: Any, rows: list[dict[str, Any]], max_length: int, temperature: float):
    """At each epoch start, re-score the pool by the student's own KL to the teacher."""
    from transformers import TrainerCallback

    texts = [rw["text"] for rw in rows]
    teacher = np.asarray([rw["teacher_logits"] for rw in rows])

    class SelfPaced(TrainerCallback):
        def on_epoch_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            if state.epoch and model is not None:
                student = predict_logits(model, tok, texts, max_length)
                sampler.update_scores(_kl(teacher, student, temperature))
                model.train()

    return SelfPaced()


def _kl(teacher: np.ndarray, student: np.ndarray, t: float) -> np.ndarray:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x / t
        return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)

    lq, lp = log_softmax(teacher), log_softmax(student)
    return (np.exp(lq) * (lq - lp)).sum(-1)


def _next_round(run: Path, r: Any, student: Any, tok: Any, pool: list[dict[str, Any]], soft: SoftLabels,
                weights: np.ndarray, max_length: int, rnd: int) -> tuple[list[dict[str, Any]], SoftLabels, np.ndarray]:
    """Augment the examples where student and teacher disagree most, label them with the teacher
    (loaded only for that), and weight them up."""
    from distill.data.augment import augment, corpus_vocab
    from distill.teacher import load_teacher

    texts = [p["text"] for p in pool]
    gap = _kl(soft.get(texts), predict_logits(student, tok, texts, max_length), r.distill.temperature)
    hard = np.argsort(-gap)[: max(1, int(len(pool) * r.distill.hard_fraction))]
    held = {row["text"] for split in ("validation", "test") for row in read_split(run / "data", split)}
    cfg = r.data.augment
    made = augment([texts[i] for i in hard], ops=cfg.ops, rate=cfg.rate, multiplier=max(1, cfg.multiplier),
                   seed=r.seed + 1000 * rnd, vocab=corpus_vocab(texts), exclude=held | set(texts))
    teacher, ttok = load_teacher(run / "teacher")
    tmax = json.loads((run / "teacher" / "metrics.json").read_text())["max_length"]
    soft = label_texts(teacher, ttok, [t for t, _ in made], tmax, previous=soft)
    del teacher
    weights = weights.copy()
    weights[hard] *= 2.0
    pool = pool + [{"text": t, "label": None, "origin": f"round{rnd}"} for t, _ in made]
    weights = np.concatenate([weights, np.full(len(made), 2.0, dtype=np.float32)])
    log.info("round %d: %d hardest examples re-augmented into %d new texts", rnd, len(hard), len(made))
    return pool, soft, weights
