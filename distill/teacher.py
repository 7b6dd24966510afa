"""The teacher stage: fine-tune any sequence classifier with the Hugging Face Trainer (full weights,
LoRA, or QLoRA through bitsandbytes on CUDA), evaluate it, and list likely label noise."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill.batch_fit import fitted, train_fitting_memory
from distill.checkpointing import (EpochStartRng, WallClockCheckpoint, checkpoint_every_s, checkpoint_step,
                                   claim_checkpoints_on_rank_zero, reset_checkpoints, resume_checkpoint, trim_train_log)
from distill.data.prepare import read_labels, read_split
from distill.device import choose_device
from distill.distributed import barrier, is_rank_zero
from distill.errors import DistillError
from distill.faults import step_callback
from distill.modeling import count_parameters, load_classifier, load_tokenizer, num_layers
from distill.progress import quiet_trainer
from distill.rundir import digest
from distill.setfit_runs import BODY_DIR
from distill.soft_labels import TRAIN_LOGITS, SoftLabels
from distill.tokenizing import head_tokens
from distill.training import (class_weights, compute_metrics_fn, evaluate_rows, jsonl_logger,
                              pick_max_length, planned_steps, selection_metric, tokenized, training_arguments,
                              truncated_share, validation_curve, weighted_cross_entropy)

log = logging.getLogger(__name__)

ADAPTER_INFO = "adapter_base.json"


def _apply_lora(model: Any, lora: Any, quantized: bool) -> Any:
    try:
        from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    except ImportError:
        raise DistillError("teacher.lora needs peft: pip install -c requirements/constraints.txt 'edge-distill[gpu]'") from None
    if quantized:
        model = prepare_model_for_kbit_training(model)
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=lora.target_modules)
    model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA: %d trainable parameters of %d", trainable, count_parameters(model))
    return model


def subsample(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """At most n rows, a seeded choice kept in order (all when n is falsy): the rows a teacher trains on."""
    if not n or len(rows) <= n:
        return rows
    rng = np.random.default_rng(seed)
    return [rows[i] for i in sorted(rng.choice(len(rows), size=n, replace=False))]


_subsample = subsample  # the old name, which tests/test_student_init.py imports


def label_noise(rows: list[dict[str, Any]], logits: np.ndarray, names: list[str], threshold: float) -> list[dict[str, Any]]:
    """Training rows where the teacher gives another label a probability above threshold."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = []
    for i, (row, p) in enumerate(zip(rows, probs)):
        pred = int(p.argmax())
        if pred != row["label"] and p[pred] >= threshold:
            out.append({"row": i, "text": row["text"], "gold": names[row["label"]], "teacher": names[pred],
                        "teacher_prob": round(float(p[pred]), 4)})
    return sorted(out, key=lambda r: -r["teacher_prob"])


def teacher_stage(ctx: Any, out: Path) -> None:
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, set_seed

    r, t = ctx.recipe, ctx.recipe.teacher
    if t.kind == "prompted":  # an instruct LM labels few-shot: no training (distill/prompted.py)
        from distill.prompted import prompted_teacher_stage

        return prompted_teacher_stage(ctx, out)
    data_dir = ctx.data_dir
    names = read_labels(data_dir)
    train = subsample(read_split(data_dir, "train"), t.max_train_samples, r.seed)
    val, test = read_split(data_dir, "validation"), read_split(data_dir, "test")
    device = choose_device(r.device, cpu_autocast=t.quantization == "none")
    tok = load_tokenizer(t.model, t.trust_remote_code)
    max_length = pick_max_length(tok, [row["text"] for row in train], t.max_length)
    head = head_tokens(tok, max_length, t.truncation)
    ckpt_dir, stage_digest = ctx.checkpoints("teacher"), ctx.inputs_digest("teacher")
    if t.train:  # this attempt's folder: kept only if written for the same stage inputs
        claim_checkpoints_on_rank_zero(ckpt_dir, stage_digest)
    base, contrastive = t.model, None
    if t.train and t.contrastive_iterations:  # the body on pairs of the labelled rows first (SetFit's phase)
        from distill.setfit_runs import kept_contrastive_body

        body, contrastive = kept_contrastive_body("teacher", t.model, train, iterations=t.contrastive_iterations,
                                                  seed=r.seed, ckpt_dir=ckpt_dir)
        base = str(body)
    # The new classifier head's initial weights come from the global RNG: seed it here, so the
    # result does not depend on what ran earlier in this process (a fresh run vs a --resume).
    set_seed(r.seed)
    model = load_classifier(base, names, trust_remote_code=t.trust_remote_code, allow_pickle=t.allow_pickle,
                            dropout=t.dropout, quantization=t.quantization)
    if t.quantization != "none" and device.device != "cuda":
        log.warning("teacher.quantization=%s on CPU: bitsandbytes' CPU backend is slow and partial", t.quantization)
    if t.lora:
        model = _apply_lora(model, t.lora, t.quantization != "none")
    log.info("teacher %s: %d layers, %d parameters, max_length %d, %s %s", t.model, num_layers(model) or -1,
             count_parameters(model), max_length, device.device, device.precision)

    t0 = time.perf_counter()
    train_info: dict[str, Any] = {"trained": t.train}
    if contrastive:
        train_info["contrastive"] = contrastive
    if t.train:
        resume_from = resume_checkpoint(ckpt_dir, stage_digest)
        train_log = ctx.train_log
        # The killed attempt's rows past the checkpoint (all earlier teacher rows on a fresh start)
        # go, so the log, and training.png, read as one run.
        trim_train_log(train_log, "teacher", checkpoint_step(resume_from) if resume_from else 0)
        callbacks = [jsonl_logger(train_log, "teacher"), step_callback("teacher"),
                     WallClockCheckpoint(checkpoint_every_s()), EpochStartRng(ckpt_dir)]
        if t.early_stopping_patience and val:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
        callbacks += ctx.callbacks  # the caller's (run_recipe(callbacks=...)), e.g. distill tune's pruning
        gold = [row["label"] for row in train]
        metric = selection_metric(gold, len(names))
        weights = class_weights(gold, len(names), t.class_weights)
        train_ds = tokenized(tok, train, max_length, ["label"], head).rename_column("label", "labels")
        eval_ds = tokenized(tok, val, max_length, ["label"], head).rename_column("label", "labels") if val else None

        def make_trainer(cfg: Any) -> Any:
            trainer = Trainer(
                model=model,
                args=training_arguments(cfg, ckpt_dir, device, r.seed, has_eval=bool(val), n_rows=len(train),
                                        metric=metric),
                compute_loss_func=weighted_cross_entropy(weights) if weights else None,
                train_dataset=train_ds, eval_dataset=eval_ds,
                data_collator=DataCollatorWithPadding(tok),
                compute_metrics=compute_metrics_fn(len(names)),
                callbacks=callbacks,
            )
            return quiet_trainer(trainer, "teacher")

        def restart() -> None:  # the attempt that ran out of memory leaves no checkpoint or log row behind
            if is_rank_zero():  # the contrastive body stays: it was not trained at this batch
                reset_checkpoints(ckpt_dir, stage_digest, keep=(BODY_DIR,))
            barrier()
            trim_train_log(train_log, "teacher", 0)

        if resume_from:
            log.info("teacher: resuming from %s", resume_from)
        trainer, result, used = train_fitting_memory(make_trainer, fitted(t, ckpt_dir), model, ckpt_dir, resume_from,
                                                     restart, "teacher")
        model = trainer.model
        if (used.batch_size, used.grad_accum) != (t.batch_size, t.grad_accum):
            train_info["fitted_batch"] = {"batch_size": used.batch_size, "grad_accum": used.grad_accum}
        train_info.update(steps=result.global_step, train_loss=result.training_loss, world_size=trainer.args.world_size,
                          best_checkpoint=Path(trainer.state.best_model_checkpoint or "").name or None,
                          epochs_run=round(float(trainer.state.epoch or 0), 2),
                          steps_from_epochs=planned_steps(t, len(train), trainer.args.world_size)[0],
                          min_steps=t.min_steps, selection_metric=metric, class_weights=weights,
                          validation_curve=validation_curve(trainer.state.log_history, metric))
    train_info["wall_s"] = round(time.perf_counter() - t0, 1)

    if t.lora and t.quantization == "none":
        model = model.merge_and_unload()  # a plain model: exportable, loadable without peft
    model.eval()
    metrics: dict[str, Any] = {"model": t.model, "max_length": max_length,
                               "truncated_share": truncated_share(tok, [row["text"] for row in train], max_length),
                               "device": device.device,
                               "precision": device.precision, "train": train_info,
                               "parameters": count_parameters(model), "layers": num_layers(model)}
    if head:  # absent = cut on the right, so a default run's metrics.json is what it was
        metrics.update(truncation=t.truncation, head_tokens=head)
    t1 = time.perf_counter()
    metrics["validation"], _ = evaluate_rows(model, tok, val, max_length, len(names), "teacher: validation", head) if val else ({}, None)
    metrics["test"], _ = evaluate_rows(model, tok, test, max_length, len(names), "teacher: test", head)
    noise_metrics, train_logits = evaluate_rows(model, tok, train, max_length, len(names),
                                                 "teacher: training rows (label noise)", head)
    metrics["train_fit"] = {k: noise_metrics[k] for k in ("accuracy", "n")}
    metrics["eval_wall_s"] = round(time.perf_counter() - t1, 1)
    noisy = label_noise(train, train_logits, names, r.data.label_noise_threshold)
    metrics["label_noise"] = {"flagged": len(noisy), "threshold": r.data.label_noise_threshold,
                              "policy": r.data.label_noise}
    log.info("teacher: test accuracy %.4f, macro-F1 %.4f; %d training rows flagged as likely label noise",
             metrics["test"]["accuracy"], metrics["test"]["macro_f1"], len(noisy))

    if t.quantization != "none":
        model.save_pretrained(out)  # the adapter; the quantized base is reloaded from its reference
        (out / ADAPTER_INFO).write_text(json.dumps({"base": t.model, "quantization": t.quantization,
                                                    "names": names}) + "\n")
    else:
        model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if r.data.label_noise != "keep":
        (out / "label_noise.json").write_text(json.dumps(noisy, indent=2, ensure_ascii=False) + "\n")
    # The label-noise pass's logits are the soft labels of these rows: the soft-labels stage starts from them.
    (out / TRAIN_LOGITS).mkdir()
    SoftLabels.empty(len(names)).extended([row["text"] for row in train], train_logits).save(out / TRAIN_LOGITS)
    shutil.rmtree(ctx.checkpoints("teacher"), ignore_errors=True)


def load_teacher(folder: Path) -> tuple[Any, Any]:
    """The teacher of a run: a fine-tuned classifier (a full model, or a quantized base plus its
    LoRA adapter), or a prompted LM, which loads on first use and tokenizes its own prompts (its
    tokenizer here is None)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.prompted import SPEC_FILE, load_prompted

    if (folder / SPEC_FILE).exists():
        return load_prompted(folder), None
    tok = AutoTokenizer.from_pretrained(folder)
    info = folder / ADAPTER_INFO
    if info.exists():
        from peft import PeftModel

        meta = json.loads(info.read_text())
        base = load_classifier(meta["base"], meta["names"], quantization=meta["quantization"])
        return PeftModel.from_pretrained(base, folder).eval(), tok
    return AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval(), tok


def teacher_fingerprint(recipe: Any) -> Any:
    """A local teacher folder's files decide the stage's output too."""
    from distill.rundir import hash_tree

    p = Path(recipe.teacher.model)
    return digest(hash_tree(p)) if p.is_dir() else None
