"""Is CPU training bit-reproducible? Trains the packaged minilm-l6 for a few steps with the Trainer
and prints the final loss and a hash of the weights; run it twice (and with another thread count).

    .venv/bin/python experiments/determinism.py models/abl-s0-kd                        # twice: same hash?
    OMP_NUM_THREADS=1 .venv/bin/python experiments/determinism.py models/abl-s0-kd      # another thread count

Needs a run directory of the default recipe (its data/train.jsonl) and the minilm-l6 asset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(run_dir: str, rows: int = 640) -> None:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from distill.modeling import load_classifier, load_tokenizer

    with open(os.path.join(run_dir, "data", "train.jsonl"), encoding="utf-8") as f:
        data = [json.loads(line) for line in f][:rows]
    tok = load_tokenizer("packaged:minilm-l6")
    set_seed(0)
    model = load_classifier("packaged:minilm-l6", ["negative", "positive"])
    ds = Dataset.from_list([{"text": r["text"], "labels": r["label"]} for r in data]).map(
        lambda b: tok(b["text"], truncation=True, max_length=48), batched=True, remove_columns=["text"])
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=32, num_train_epochs=1, seed=0,
                                 report_to=[], save_strategy="no", disable_tqdm=True)
        res = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok)).train()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]
    print(f"threads {torch.get_num_threads()}  steps {res.global_step}  loss {res.training_loss!r}  weights {digest}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", default="models/default", help="run directory of the default recipe")
    ap.add_argument("--rows", type=int, default=640, help="training rows taken from its data/train.jsonl")
    a = ap.parse_args()
    main(a.run_dir, a.rows)
