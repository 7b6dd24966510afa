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

from distill.batch_fit import fitted, train_fitting_memory
from distill.checkpointing import (MARKER, best_checkpoint, checkpoint_every_s, claim_checkpoints_on_rank_zero, checkpoint_step, enable_checkpoints, resume_checkpoint,
                                 trim_train_log)
from distill.curriculum import make_sampler
from distill.data.prepare import read_labels, read_split
from distill.device import choose_device
from distill.distributed import barrier, from_rank_zero, is_rank_zero, world_size
from distill.errors import DistillError
from distill.faults import step_callback
from distill.losses import LossInputs, combine
from distill.modeling import count_parameters, load_classifier, load_tokenizer, num_layers
from distill.progress import quiet_trainer
from distill.soft_labels import SoftLabels, label_texts, student_pool, text_key
from distill.student_init import default_layer_map
from distill.tokenizing import first_split_difference, head_tokens
from distill.training import (class_weights, compute_metrics_fn, effective_epochs, evaluate_rows, jsonl_logger,
                              length_ordered_pass, pick_max_length, predict_logits, selection_metric, tokenized, training_arguments)

log = logging.getLogger(__name__)

HIDDEN = ("hidden_mse", "hidden_cos")


def _trainer_class():
    import torch
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """The Trainer with a distillation loss and a curriculum sampler; nothing else overridden."""

        def __init__(self, *args: Any, loss_weights: dict[str, float], temperature: float,
                     curriculum: Any = None, projections: Any = None, class_weights: Any = None,
                     relations: Optional[dict[str, Any]] = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.loss_weights, self.temperature = loss_weights, temperature
            self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
            self.curriculum, self.projections = curriculum, projections
            self.need_hidden = any(loss_weights.get(h) for h in HIDDEN)
            self.relations = None
            if relations:  # attn_relations: the teacher runs beside the student (distill/relations.py)
                teacher = relations["teacher"].to(self.args.device).eval().requires_grad_(False)
                self.relations = dict(relations, teacher=teacher, ids=relations["ids"].to(self.args.device))

        def train(self, *args: Any, **kwargs: Any) -> Any:
            """attn_relations: Q/K/V hooks on teacher and student for the length of training only."""
            if not self.relations:
                return super().train(*args, **kwargs)
            from distill.relations import QKVCapture

            rel = self.relations
            rel["teacher_qkv"] = QKVCapture(rel["teacher"], rel["layer"], stop=True)
            rel["student_qkv"] = QKVCapture(self.model, -1)
            try:
                return super().train(*args, **kwargs)
            finally:
                rel["teacher_qkv"].remove()
                rel["student_qkv"].remove()

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
                           list(teacher_hidden.unbind(1)) if teacher_hidden is not None else None, self.projections,
                           self.class_weights)
            if self.relations:
                rel = self.relations
                x.student_qkv = rel["student_qkv"].take()
                with torch.no_grad():
                    x.teacher_qkv = rel["teacher_qkv"].run(rel["teacher"], input_ids=rel["ids"][inputs["input_ids"]],
                                                           attention_mask=inputs["attention_mask"])
                x.attention_mask, x.relation_heads = inputs["attention_mask"], rel["heads"]
            loss, _ = combine(self.loss_weights, x, weight)
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


def _collator(tokenizer: Any, hidden: Optional[np.ndarray] = None):
    """Pads the tokens and stacks the per-row extras; hidden: the teacher's pooled hidden states [N, L, H]
    of the round's pool, looked up by each row's idx (kept as one float32 array, not in the rows: with
    them in the rows as lists, mpnet-base's 6 mapped layers over 17k texts took the student stage
    to 7.2 GiB, against 1.8 without hidden losses)."""
    import torch
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer)
    extra = ("teacher_logits", "weight", "idx")

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        taken = {k: [f.pop(k) for f in features] for k in extra if k in features[0]}
        batch = pad(features)
        for k, v in taken.items():
            batch[k] = torch.tensor(np.asarray(v), dtype=torch.long if k == "idx" else torch.float32)
        if hidden is not None and "idx" in batch:
            batch["teacher_hidden"] = torch.from_numpy(hidden[batch["idx"].numpy()])
        return batch

    return collate


def _pooled_teacher_hidden(run: Path, texts: list[str], layers: list[int], max_length: int,
                           head: int = 0) -> np.ndarray:
    """Masked-mean hidden states of the mapped teacher layers, [N, L, H], in the order of texts (one
    length-ordered pass, as the soft labels'); the teacher is freed after."""
    import torch

    from distill.teacher import load_teacher

    teacher, tok = load_teacher(run / "teacher")

    def pooled(batch: Any) -> Any:
        hs = teacher(**batch, output_hidden_states=True).hidden_states
        m = batch["attention_mask"].unsqueeze(-1).float()
        return torch.stack([(hs[i + 1] * m).sum(1) / m.sum(1) for i in layers], 1)

    out = length_ordered_pass(teacher, tok, texts, max_length, (len(layers), teacher.config.hidden_size), pooled,
                              description="teacher hidden states", head=head)
    del teacher
    return out


def _relation_setup(r: Any, student: Any, teacher: Any, teacher_tok: Any) -> dict[str, Any]:
    """What the attn_relations loss needs: the teacher (kept beside the student), the layer whose Q/K/V
    it reads (checked here, before training), the relation heads and the teacher's tokenizer."""
    from distill.relations import encoder_layers, qkv_modules, relation_heads

    if hasattr(teacher, "label_logits"):
        raise DistillError("distill.losses attn_relations needs a fine-tuned encoder teacher; a prompted teacher "
                           "has no attention to transfer. Drop attn_relations from distill.losses.")
    d = r.distill
    qkv_modules(teacher, d.relation_layer)
    qkv_modules(student, -1)
    layer = d.relation_layer % len(encoder_layers(teacher))
    return {"teacher": teacher, "tokenizer": teacher_tok, "layer": layer,
            "heads": relation_heads(student, teacher, d.relation_heads)}


def build_student(r: Any, teacher: Any, teacher_tok: Any, names: list[str], body: Optional[Path] = None) -> tuple[Any, Any]:
    """The student before distillation; body: a contrastively trained encoder of student.model to build
    a pretrained student's classifier from (student.contrastive_iterations)."""
    from distill.student_init import from_config, from_teacher_layers

    s = r.student
    if s.init == "teacher-layers":
        return from_teacher_layers(teacher, s.layers), teacher_tok
    if s.init == "config":
        return from_config(teacher, s.config or {}), teacher_tok
    return load_classifier(str(body or s.model), names), load_tokenizer(s.model)


def _round_rows(pool: list[dict[str, Any]], soft: SoftLabels, weights: np.ndarray) -> list[dict[str, Any]]:
    logits = soft.get([p["text"] for p in pool])
    rows = []
    for i, (p, lg, w) in enumerate(zip(pool, logits, weights)):
        row = {"text": p["text"], "labels": p["label"] if p["label"] is not None else -100,
               "teacher_logits": lg.tolist(), "weight": float(w), "idx": i}
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
    if s.keep == "best" and not val:
        raise DistillError(f"student.keep: best picks the student's weights by their validation score, but {data_dir} "
                           "has no validation rows: give some (data.splits.validation, or a data.validation file) or use "
                           "student.keep: last")
    device = choose_device(r.device, cpu_autocast=True)
    teacher, teacher_tok = load_teacher(run / "teacher")
    # Checkpoints per round (checkpoints/student/round-N), each epoch and every checkpoint_every_s()
    # seconds, for this stage's inputs only: a killed stage resumes inside its last round.
    ckpt_root = run / "checkpoints" / "student"
    stage_digest = ctx.inputs_digest("student")
    claim_checkpoints_on_rank_zero(ckpt_root, stage_digest)
    body, contrastive = None, None
    if s.contrastive_iterations:  # a pretrained student's body on pairs of the labelled rows first
        from distill.setfit_runs import kept_contrastive_body

        body, contrastive = kept_contrastive_body("student", s.model, read_split(data_dir, "train"),
                                                  iterations=s.contrastive_iterations, seed=r.seed, ckpt_dir=ckpt_root)
    set_seed(r.seed)  # a new head or projection draws from the global RNG (see teacher_stage)
    student, tok = build_student(r, teacher, teacher_tok, names, body)
    tmetrics = ctx.metrics("teacher")
    pool = student_pool(data_dir)
    if r.data.label_noise == "drop" and (run / "teacher" / "label_noise.json").exists():
        dropped = drop_noisy_labels(pool, json.loads((run / "teacher" / "label_noise.json").read_text()))
        log.info("label_noise=drop: %d rows keep their soft label but lose the gold-label term", dropped)
    max_length = pick_max_length(tok, [p["text"] for p in pool], s.max_length)
    head = head_tokens(tok, max_length, s.truncation)
    soft = SoftLabels.load(run / "soft_labels")

    hidden_layers: list[int] = []  # teacher layers, in the order of student_layers
    student_layers: list[int] = []
    projections = None
    need_hidden = any(d.losses.get(h) for h in HIDDEN)
    if need_hidden:
        if s.init == "pretrained" and tok.get_vocab() != teacher_tok.get_vocab():
            diff = first_split_difference(tok, teacher_tok, [p["text"] for p in pool])
            if diff is not None:
                raise DistillError(
                    "distill.losses hidden_mse/hidden_cos compare the student's and the teacher's hidden states "
                    "averaged over the same word pieces, which needs both to cut texts alike; "
                    f"{s.model} and the teacher cut {diff[0][:80]!r} into {diff[1][:8]} and {diff[2][:8]}. "
                    "Drop the hidden losses, or use a student of the teacher's tokenizer (student.init: teacher-layers).")
        lm = d.layer_map or default_layer_map(s.init, s.layers, student, teacher)
        ns, nt = num_layers(student), num_layers(teacher)
        bad = {j: t for j, t in lm.items() if not (0 <= j < ns and 0 <= t < nt)}
        if bad:
            raise DistillError(f"distill.layer_map {bad} names layers the models do not have: the student has layers "
                               f"0-{ns - 1}, the teacher 0-{nt - 1}. Fix the map, or leave distill.layer_map unset for "
                               "a uniform one.")
        student_layers = sorted(lm)
        hidden_layers = [lm[j] for j in student_layers]
        ws, wt = student.config.hidden_size, teacher.config.hidden_size
        if ws != wt:
            projections = torch.nn.ModuleList([torch.nn.Linear(ws, wt) for _ in hidden_layers])
            student.distill_projections = projections  # trained with the student, dropped before saving
    relations = _relation_setup(r, student, teacher, teacher_tok) if d.losses.get("attn_relations") else None
    del teacher  # beside the student while it trains only for attn_relations (held in `relations`)

    from distill.checkpointing import EpochStartRng, WallClockCheckpoint  # TrainerCallbacks: import transformers

    DistillTrainer = _trainer_class()
    gold = [p["label"] for p in pool if p["label"] is not None]
    metric = selection_metric(gold, len(names)) if gold else "accuracy"
    weights_by_class = class_weights(gold, len(names), s.class_weights) if gold else None
    weights = np.ones(len(pool), dtype=np.float32)
    rounds: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    train_log = run / "logs" / "train.jsonl"
    for rnd in range(1, d.rounds + 1):
        rdir = ckpt_root / f"round-{rnd}"
        finished = _finished_round(rdir)
        if finished is not None:  # trained by an earlier attempt: its weights, not a retraining
            _load_weights(student, rdir / FINAL / WEIGHTS)
            rounds.append(finished)
            log.info("student round %d: finished by an earlier attempt; its weights reused", rnd)
            if rnd < d.rounds:
                pool, soft, weights = _next_round(run, r, student, tok, pool, soft, weights, max_length, rnd, head)
            continue
        t0 = time.perf_counter()
        hidden = _pooled_teacher_hidden(run, [p["text"] for p in pool], hidden_layers, max_length, head) if need_hidden else None
        rows = _round_rows(pool, soft, weights)
        cols = ["labels", "teacher_logits", "weight", "idx"]
        train_ds = tokenized(tok, rows, max_length, cols, head)
        if relations is not None:  # the teacher reads the student's tokens, mapped to its own ids
            from distill.relations import id_map

            used = {i for ids in train_ds["input_ids"] for i in ids}
            relations["ids"] = id_map(tok, relations["tokenizer"], used)
        sampler = make_sampler(d.curriculum, np.asarray([rw["teacher_logits"] for rw in rows]),
                               [len(x) for x in train_ds["input_ids"]], s.batch_size * s.grad_accum,
                               effective_epochs(s, len(rows), world_size()),
                               r.seed + rnd)
        resume_from = _start_round(rdir, stage_digest, train_log)
        callbacks = [jsonl_logger(train_log, "student"), step_callback("student")]
        if sampler is not None and d.curriculum.scorer == "self-paced":
            callbacks.append(_self_paced_callback(sampler, tok, rows, max_length, d.temperature, head))
            callbacks.append(_epoch_scores_callback(sampler, rdir))  # after it: the scores it set, kept
        callbacks += [WallClockCheckpoint(checkpoint_every_s()), EpochStartRng(rdir)]
        if s.keep == "best" and s.early_stopping_patience:  # training on past the best would be thrown away
            from transformers import EarlyStoppingCallback

            callbacks.append(EarlyStoppingCallback(early_stopping_patience=s.early_stopping_patience))
        callbacks += ctx.callbacks  # the caller's (run_recipe(callbacks=...)), e.g. distill tune's pruning
        eval_ds = tokenized(tok, val, max_length, ["label"], head).rename_column("label", "labels") if val else None

        def make_trainer(cfg: Any) -> Any:
            args = enable_checkpoints(training_arguments(cfg, rdir, device, r.seed + rnd, has_eval=bool(val),
                                                         save=False, n_rows=len(rows), metric=metric),
                                      at_every_eval=s.keep == "best")
            trainer = DistillTrainer(
                model=student, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                data_collator=_collator(tok, hidden), compute_metrics=compute_metrics_fn(len(names)), callbacks=callbacks,
                loss_weights=d.losses, temperature=d.temperature, curriculum=sampler, projections=projections,
                class_weights=weights_by_class, relations=relations)
            trainer._student_layers = student_layers
            return quiet_trainer(trainer, f"student round {rnd}")

        resumed_step = checkpoint_step(resume_from) if resume_from else None
        if resume_from:
            log.info("student round %d: resuming from %s", rnd, resume_from)
        first = fitted(s, rdir)
        trainer, result, used = train_fitting_memory(make_trainer, first, student, rdir, resume_from,
                                                     lambda: _restart_round(rdir, train_log), f"student round {rnd}")
        if used is not first:  # trained again from step 0 at a smaller batch
            resumed_step = None
        student = trainer.model
        kept = _keep_best(trainer, student, rnd) if s.keep == "best" else None
        val_m, _ = evaluate_rows(student, tok, val, max_length, len(names), "student: validation", head) if val else ({}, None)
        test_m, _ = evaluate_rows(student, tok, test, max_length, len(names), "student: test", head)
        rounds.append({"round": rnd, "pool": len(pool), "steps": result.global_step,
                       "train_loss": _attempt_train_loss(result, resumed_step), "resumed_from_step": resumed_step,
                       "validation": val_m, "test": test_m, "wall_s": round(time.perf_counter() - t0, 1)})
        if kept is not None:
            rounds[-1]["kept"] = {k: v for k, v in kept.items() if k != "checkpoint"}
        if (used.batch_size, used.grad_accum) != (s.batch_size, s.grad_accum):
            rounds[-1]["fitted_batch"] = {"batch_size": used.batch_size, "grad_accum": used.grad_accum}
        log.info("student round %d: validation %.4f, test %.4f", rnd, val_m.get("accuracy", float("nan")), test_m["accuracy"])
        _finish_round(rdir, student, rounds[-1])
        if rnd < d.rounds:
            pool, soft, weights = _next_round(run, r, student, tok, pool, soft, weights, max_length, rnd, head)

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
               "selection_metric": metric, "class_weights": weights_by_class, "min_steps": s.min_steps,
               "rounds": rounds, "validation": final["validation"], "test": final["test"],
               "teacher_test": tmetrics["test"], "wall_s": round(time.perf_counter() - t_start, 1)}
    if head:  # absent = cut on the right (the export and the bench read it from here)
        metrics.update(truncation=s.truncation, head_tokens=head)
    if contrastive:
        metrics["contrastive"] = contrastive
    if relations is not None:
        metrics["relations"] = {"teacher_layer": relations["layer"], "heads": relations["heads"]}
    if need_hidden:
        metrics["hidden"] = {"layer_map": dict(zip(student_layers, hidden_layers)), "projected": projections is not None}
    metrics["kept_of_teacher"] = final["test"]["accuracy"] / max(tmetrics["test"]["accuracy"], 1e-9)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from distill.model_card import write_card

    write_card(out, r, metrics, names)
    shutil.rmtree(ckpt_root, ignore_errors=True)  # the stage is complete: no resume needs them


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


def _self_paced_callback(sampler: Any, tok: Any, rows: list[dict[str, Any]], max_length: int, temperature: float,
                         head: int = 0):
    """At each epoch start, re-score the pool by the student's own KL to the teacher."""
    from transformers import TrainerCallback

    texts = [rw["text"] for rw in rows]
    teacher = np.asarray([rw["teacher_logits"] for rw in rows])

    class SelfPaced(TrainerCallback):
        def on_epoch_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            if state.epoch and model is not None:
                student = predict_logits(model, tok, texts, max_length, head=head)
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
                weights: np.ndarray, max_length: int, rnd: int,
                head: int = 0) -> tuple[list[dict[str, Any]], SoftLabels, np.ndarray]:
    """Augment the examples where student and teacher disagree most, label them with the teacher
    (loaded only for that), and weight them up."""
    from distill.data.augment import augment, corpus_vocab
    from distill.stage import read_metrics
    from distill.teacher import load_teacher

    texts = [p["text"] for p in pool]
    gap = _kl(soft.get(texts), predict_logits(student, tok, texts, max_length, head=head), r.distill.temperature)
    hard = np.argsort(-gap)[: max(1, int(len(pool) * r.distill.hard_fraction))]
    held = {row["text"] for split in ("validation", "test") for row in read_split(run / "data", split)}
    cfg = r.data.augment
    made = augment([texts[i] for i in hard], ops=cfg.ops, rate=cfg.rate, multiplier=max(1, cfg.multiplier),
                   seed=r.seed + 1000 * rnd, vocab=corpus_vocab(texts), exclude=held | set(texts))
    teacher, ttok = load_teacher(run / "teacher")
    tmetrics = read_metrics(run, "teacher")
    soft = label_texts(teacher, ttok, [t for t, _ in made], tmetrics["max_length"], previous=soft,
                       head=tmetrics.get("head_tokens", 0))
    del teacher
    weights = weights.copy()
    weights[hard] *= 2.0
    pool = pool + [{"text": t, "label": None, "origin": f"round{rnd}"} for t, _ in made]
    weights = np.concatenate([weights, np.full(len(made), 2.0, dtype=np.float32)])
    log.info("round %d: %d hardest examples re-augmented into %d new texts", rnd, len(hard), len(made))
    return pool, soft, weights


# --- checkpoints of the student stage (see distill/checkpointing.py) ---------------------------------

FINAL = "final"  # round-N/final: a finished round's weights and its `rounds` entry
WEIGHTS = "model.safetensors"
ROUND_INFO = "round.json"
LOG_OFFSET = "train_log.offset"  # byte offset in logs/train.jsonl where the round's first attempt began


def _keep_best(trainer: Any, student: Any, rnd: int) -> dict[str, Any]:
    """student.keep: best: load the weights of the round's best evaluation on validation (the Trainer keeps
    that checkpoint through its rotation) into the student; returns what was kept."""
    best = best_checkpoint(trainer.state)
    if best is None:  # the stage refuses keep: best without validation rows before training
        raise RuntimeError(f"student round {rnd}: no validation evaluation was recorded")
    if best["checkpoint"] is not None:
        _load_weights(student, Path(best["checkpoint"]) / WEIGHTS)
    log.info("student round %d: keeping step %d (epoch %s, validation %s %.4f) of %d", rnd, best["step"],
             best["epoch"], trainer.args.metric_for_best_model, best["metric"], trainer.state.global_step)
    return best


def _finished_round(rdir: Path) -> Optional[dict[str, Any]]:
    final = rdir / FINAL
    if (final / WEIGHTS).exists() and (final / ROUND_INFO).exists():
        return json.loads((final / ROUND_INFO).read_text())
    return None


def _load_weights(student: Any, path: Path) -> None:
    """A finished round's weights, projections (if any) included, into the student, exactly."""
    from safetensors.torch import load_model

    load_model(student, str(path), strict=True)


def _finish_round(rdir: Path, student: Any, entry: dict[str, Any]) -> None:
    """Record a trained round (its weights and `rounds` entry) so a resumed stage never retrains it,
    then drop its Trainer checkpoints. Written into a temporary folder renamed into place: a round is
    finished only once both files are complete."""
    from safetensors.torch import save_model

    if is_rank_zero():
        tmp = rdir / f".{FINAL}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(student, str(tmp / WEIGHTS))
        (tmp / ROUND_INFO).write_text(json.dumps(entry, indent=2) + "\n")
        shutil.rmtree(rdir / FINAL, ignore_errors=True)
        tmp.rename(rdir / FINAL)
        for ckpt in rdir.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
    barrier()


def _start_round(rdir: Path, stage_digest: str, train_log: Path) -> Optional[str]:
    """The checkpoint this round resumes from (None: it starts at step 0 in a fresh folder).

    An earlier, killed attempt at the round logged into logs/train.jsonl from the offset recorded
    in the round's folder: its student rows past the step resumed from (all of them when there is
    no checkpoint) are dropped, so the log reads as one run.
    """
    resume_from = None
    if is_rank_zero():
        resume_from = resume_checkpoint(rdir, stage_digest)
        marker, offset = rdir / MARKER, rdir / LOG_OFFSET
        if marker.exists() and marker.read_text().strip() == stage_digest and offset.exists():
            trim_train_log(train_log, "student", checkpoint_step(resume_from) if resume_from else 0,
                           int(offset.read_text()))
        if resume_from is None:
            shutil.rmtree(rdir, ignore_errors=True)
            rdir.mkdir(parents=True)
            marker.write_text(stage_digest)
            offset.write_text(str(train_log.stat().st_size if train_log.exists() else 0))
    return from_rank_zero(resume_from)


def _restart_round(rdir: Path, train_log: Path) -> None:
    """After an attempt that ran out of memory (distill/batch_fit.py): its checkpoints, its log rows and the
    self-paced scores of the epochs it began go; the scores epoch 0 began with stay (they came from the
    teacher, not from training)."""
    if is_rank_zero():
        for ckpt in rdir.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
        for scores in rdir.glob("scores-epoch-*.npy"):
            if scores.name != "scores-epoch-0.npy":
                scores.unlink()
        trim_train_log(train_log, "student", 0, int((rdir / LOG_OFFSET).read_text()))
    barrier()


def _attempt_train_loss(result: Any, resumed_step: Optional[int]) -> Optional[float]:
    """The mean training loss over the steps this attempt ran. The Trainer's training_loss divides
    the losses summed since the resume by every step of the round; the losses before the resume are
    not in its checkpoint, so a resumed round reports the mean from resumed_from_step on (None when
    the checkpoint was the round's last step: nothing trained in this attempt)."""
    if not resumed_step:
        return result.training_loss
    if result.global_step <= resumed_step:
        return None
    return result.training_loss * result.global_step / (result.global_step - resumed_step)


def _epoch_scores_callback(sampler: Any, rdir: Path):
    """Self-paced curriculum: keep the scores each epoch began with (round-N/scores-epoch-E.npy).

    The sampler's order within an epoch is a function of (seed, epoch, scores), and self-paced scores
    come from the student's weights at the epoch's start. A round resumed mid-epoch has later weights,
    so the scores its epoch began with are read back from the file, written before any checkpoint of
    that epoch; without it, the resumed epoch would draw its remaining batches in another order.
    """
    from transformers import TrainerCallback

    class EpochScores(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
            path = rdir / f"scores-epoch-{int(state.epoch or 0)}.npy"
            if path.exists():
                sampler.update_scores(np.load(path))
            elif is_rank_zero():
                tmp = path.with_name(f".{path.name}.tmp")
                with open(tmp, "wb") as f:
                    np.save(f, np.asarray(sampler.scores))
                tmp.rename(path)

    return EpochScores()
