"""Glue around the Hugging Face Trainer shared by teacher and student: arguments, tokenized
datasets, metrics, the JSONL log, batched prediction."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

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


def tokenized(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int, columns: Iterable[str] = ()) -> Any:
    """A datasets.Dataset of input_ids/attention_mask (unpadded; the collator pads per batch) plus columns."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()  # a bar per map() call is noise next to the Trainer's own bar
    data: dict[str, list[Any]] = {"text": [r["text"] for r in rows]}
    for col in columns:
        data[col] = [r[col] for r in rows]
    ds = Dataset.from_dict(data)
    return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
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


def training_arguments(cfg: Any, output_dir: Path, device: DeviceChoice, seed: int, *, has_eval: bool,
                       save: bool = True) -> Any:
    from transformers import TrainingArguments

    strategy = ("steps" if cfg.eval_steps else "epoch") if has_eval else "no"
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
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
        metric_for_best_model="accuracy" if has_eval else None,
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
                   batch_size: int = 64) -> np.ndarray:
    """Logits for texts, batched in order of length (less padding), returned in the input order."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt").to(device)
            out[idx] = model(**batch).logits.float().cpu().numpy()
    return out


def evaluate_rows(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int,
                  num_labels: int) -> tuple[dict[str, Any], np.ndarray]:
    logits = predict_logits(model, tokenizer, [r["text"] for r in rows], max_length)
    return classification_metrics([r["label"] for r in rows], logits.argmax(-1), num_labels), logits


def last_checkpoint(folder: Path, inputs_digest: str) -> Optional[str]:
    """The Trainer's last checkpoint in folder, if it was written for the same stage inputs."""
    from transformers.trainer_utils import get_last_checkpoint

    marker = folder / "inputs.sha256"
    if not folder.is_dir() or not marker.exists() or marker.read_text().strip() != inputs_digest:
        return None
    return get_last_checkpoint(str(folder))
