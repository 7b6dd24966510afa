"""Glue around the Hugging Face Trainer shared by teacher and student: arguments, tokenized
datasets, metrics, the JSONL log, batched prediction."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from distill.device import DeviceChoice

log = logging.getLogger(__name__)

MAX_LENGTH_CAP = 256  # p95 of the data's token lengths, never above this unless the recipe says so


def pick_max_length(tokenizer: Any, texts: Sequence[str], requested: Optional[int]) -> int:
    """The recipe's max_length, else the p95 token length rounded up to a multiple of 8, capped."""
    if requested:
        return requested
    sample = list(texts[:5000])
    lengths = [len(ids) for ids in tokenizer(sample, add_special_tokens=True)["input_ids"]] or [16]
    p95 = int(np.percentile(lengths, 95))
    limit = min(MAX_LENGTH_CAP, getattr(tokenizer, "model_max_length", MAX_LENGTH_CAP) or MAX_LENGTH_CAP)
    return int(min(limit, max(8, math.ceil(p95 / 8) * 8)))


def truncated_share(tokenizer: Any, texts: Sequence[str], max_length: int) -> float:
    """Fraction of texts (the first 5,000) whose token length exceeds max_length."""
    sample = list(texts[:5000])
    if not sample:
        return 0.0
    lengths = [len(ids) for ids in tokenizer(sample, add_special_tokens=True)["input_ids"]]
    return round(float(np.mean([n > max_length for n in lengths])), 4)


def tokenized(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int, columns: Iterable[str] = (),
              head: int = 0) -> Any:
    """A datasets.Dataset of input_ids/attention_mask (unpadded; the collator pads per batch) plus columns.
    head > 0: long texts keep their first head tokens and their last ones (distill.tokenizing)."""
    from datasets import Dataset, disable_progress_bars

    from distill.tokenizing import encode

    disable_progress_bars()  # a bar per map() call is noise next to the Trainer's own bar
    data: dict[str, list[Any]] = {"text": [r["text"] for r in rows]}
    for col in columns:
        data[col] = [r[col] for r in rows]
    ds = Dataset.from_dict(data)
    return ds.map(lambda b: dict(encode(tokenizer, b["text"], max_length=max_length, head=head)), batched=True,
                  remove_columns=["text"], desc=None)


def classification_metrics(labels: Sequence[int], preds: Sequence[int], num_labels: int) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    labels, preds = np.asarray(labels), np.asarray(preds)
    return {"accuracy": float(accuracy_score(labels, preds)),
            "macro_f1": float(f1_score(labels, preds, average="macro", labels=list(range(num_labels)), zero_division=0)),
            "n": int(len(labels)),
            "confusion": confusion_matrix(labels, preds, labels=list(range(num_labels))).tolist()}


def compute_metrics_fn(num_labels: int):
    def compute(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        m = classification_metrics(pred.label_ids, logits.argmax(-1), num_labels)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    return compute


SKEWED_RATIO = 3.0  # largest / smallest class in the training rows at or above which classes count as skewed


def _class_counts(labels: Sequence[int], num_labels: int) -> np.ndarray:
    """Rows per class among the gold labels (None and -100, i.e. no gold label, left out)."""
    return np.bincount(np.asarray([y for y in labels if y is not None and y >= 0], dtype=int), minlength=num_labels)


def class_skew(labels: Sequence[int], num_labels: int) -> float:
    """Largest over smallest class count among the training labels (inf when a class has no row)."""
    counts = _class_counts(labels, num_labels)
    return float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")


def selection_metric(labels: Sequence[int], num_labels: int) -> str:
    """What early stopping and the best checkpoint go by: macro-F1 where classes are skewed (accuracy
    there rewards a model that never predicts the small classes), else accuracy."""
    return "macro_f1" if class_skew(labels, num_labels) >= SKEWED_RATIO else "accuracy"


def class_weights(labels: Sequence[int], num_labels: int, mode: str) -> Optional[list[float]]:
    """Per-class loss weights: "balanced" = n / (classes x count), as scikit-learn defines it; None for
    "none"; "auto" = balanced where the classes are skewed (the test selection_metric uses), else none."""
    if mode == "auto":
        mode = "balanced" if class_skew(labels, num_labels) >= SKEWED_RATIO else "none"
    if mode == "none":
        return None
    counts = np.maximum(_class_counts(labels, num_labels), 1)
    return (counts.sum() / (num_labels * counts)).astype(float).tolist()


def weighted_cross_entropy(weights: Sequence[float]):
    """The Trainer's `compute_loss_func`: cross-entropy with per-class weights."""
    import torch

    w = torch.tensor(list(weights), dtype=torch.float32)

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=w.to(logits.device))

    return loss


def validation_curve(log_history: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The validation metric at each evaluation of a Trainer run: [{step, epoch, value}]."""
    key = f"eval_{metric}"
    return [{"step": h.get("step"), "epoch": round(float(h.get("epoch") or 0), 2), "value": round(float(h[key]), 4)}
            for h in log_history if key in h]


def planned_steps(cfg: Any, n_rows: int, world_size: int = 1) -> tuple[int, Optional[int]]:
    """(optimizer steps the epochs give, the max_steps override when that is under cfg.min_steps).

    Training length follows the data: `epochs` passes, but never fewer than `min_steps` optimizer
    updates (a 1,500-row data set gets ~47 steps from one epoch, too few to fit a classifier head
    and adapt the encoder); early stopping on validation ends it when more would not help.
    """
    per_epoch = max(1, math.ceil(n_rows / (cfg.batch_size * cfg.grad_accum * world_size)))
    steps = math.ceil(cfg.epochs * per_epoch)
    floor = getattr(cfg, "min_steps", 0) or 0
    return steps, (floor if steps < floor else None)


def effective_epochs(cfg: Any, n_rows: int, world_size: int = 1) -> float:
    """The passes over the data that training will make: `epochs`, or more where min_steps decides."""
    steps, floor = planned_steps(cfg, n_rows, world_size)
    return cfg.epochs if floor is None else cfg.epochs * floor / steps


def training_arguments(cfg: Any, output_dir: Path, device: DeviceChoice, seed: int, *, has_eval: bool,
                       save: bool = True, n_rows: Optional[int] = None, metric: str = "accuracy") -> Any:
    from transformers import TrainingArguments

    strategy = ("steps" if cfg.eval_steps else "epoch") if has_eval else "no"
    from distill.distributed import world_size

    max_steps = planned_steps(cfg, n_rows, world_size())[1] if n_rows else None
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=max_steps or -1,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        group_by_length=bool(getattr(cfg, "group_by_length", False)),
        per_device_eval_batch_size=max(cfg.batch_size, 64),
        gradient_accumulation_steps=cfg.grad_accum,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type=cfg.scheduler,
        eval_strategy=strategy,
        eval_steps=cfg.eval_steps,
        save_strategy=strategy if save else "no",
        save_steps=cfg.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=has_eval and save,
        metric_for_best_model=metric if has_eval else None,
        greater_is_better=True,
        logging_steps=10,
        report_to=[],
        seed=seed,
        data_seed=seed,
        bf16=device.bf16,
        fp16=device.fp16,
        use_cpu=device.device == "cpu",
        dataloader_num_workers=0,
        save_safetensors=True,
        disable_tqdm=False,
        remove_unused_columns=False,
    )


def without_autocast(trainer: Any) -> Any:
    """trainer.model with the forward it had before training. Under mixed precision (bf16 or fp16) the
    Trainer's accelerator wraps the model's forward in autocast and leaves it wrapped after train(), so
    every later pass (evaluation, the label-noise pass, the next round's scores) would run in bf16 while
    the saved model, the soft-labels stage and the exported graph run in fp32."""
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def jsonl_logger(path: Path, stage: str):
    """A TrainerCallback appending every log call to logs/train.jsonl (rank 0 only)."""
    from transformers import TrainerCallback

    class JsonlLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer's signature
            if not state.is_world_process_zero or not logs:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            row = {"stage": stage, "step": state.global_step, "epoch": state.epoch, **logs}
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    return JsonlLogger()


def predict_logits(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int,
                   batch_size: int = 64, description: str = "predicting", head: int = 0) -> np.ndarray:
    """Logits for texts, batched in order of length (less padding), returned in the input order
    (length_ordered_pass)."""
    return length_ordered_pass(model, tokenizer, texts, max_length, (model.config.num_labels,),
                               lambda batch: model(**batch).logits, batch_size=batch_size,
                               description=description, head=head)


def length_ordered_pass(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, shape: tuple[int, ...],
                        forward: Callable[[Any], Any], batch_size: int = 64, description: str = "predicting",
                        head: int = 0) -> np.ndarray:
    """forward(batch) -> a [b, *shape] tensor for each batch of texts, batched in order of length (less
    padding); rows returned in the input order, as float32.

    Under torchrun every rank must call it with the same texts: the batches are the same whatever the
    number of ranks, each rank computes every world_size-th of them and all gather the whole, so the
    result is the single-process one, bit for bit (a batch's outputs do not depend on which process or
    how many threads computed them; tests/test_distributed.py checks it).
    description names the pass's progress line (counted in texts) where the CLI shows one."""
    import torch

    from distill import progress
    from distill.distributed import all_gather, rank, world_size
    from distill.tokenizing import encode

    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), *shape), dtype=np.float32)
    batches = [order[start:start + batch_size] for start in range(0, len(texts), batch_size)]
    world = world_size()
    mine = batches[rank()::world]
    with torch.inference_mode(), progress.task(description, total=sum(map(len, mine))) as advance:
        for idx in mine:
            batch = encode(tokenizer, [texts[i] for i in idx], max_length=max_length, head=head, padding=True,
                           return_tensors="pt").to(device)
            out[idx] = forward(batch).float().cpu().numpy()
            advance(len(idx))
    if world > 1:
        done = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
        for idx, rows in all_gather((done, out[done])):
            out[idx] = rows
    return out


def evaluate_rows(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int,
                  num_labels: int, description: str = "evaluating", head: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    logits = predict_logits(model, tokenizer, [r["text"] for r in rows], max_length, description=description,
                            head=head)
    return classification_metrics([r["label"] for r in rows], logits.argmax(-1), num_labels), logits


def last_checkpoint(folder: Path, inputs_digest: str) -> Optional[str]:
    """The Trainer's last checkpoint in folder, if it was written for the same stage inputs."""
    from transformers.trainer_utils import get_last_checkpoint

    marker = folder / "inputs.sha256"
    if not folder.is_dir() or not marker.exists() or marker.read_text().strip() != inputs_digest:
        return None
    return get_last_checkpoint(str(folder))
