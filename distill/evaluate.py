"""The evaluate stage: teacher vs student on the test split, beside a TF-IDF + logistic-regression
floor on the same split, with parameters, size on disk and a quick single-thread latency."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from distill.data.prepare import read_split
from distill.training import classification_metrics

log = logging.getLogger(__name__)


def tfidf_pipeline(seed: int) -> Any:
    """TF-IDF (1-2 grams, sublinear) + logistic regression, unfitted: the floor every model must beat."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                         LogisticRegression(C=4.0, max_iter=2000, random_state=seed))


def tfidf_floor(data_dir: Path, num_labels: int, seed: int) -> dict[str, Any]:
    """The floor fitted on the labelled training rows, scored on the test split."""
    train, test = read_split(data_dir, "train"), read_split(data_dir, "test")
    clf = tfidf_pipeline(seed)
    clf.fit([r["text"] for r in train], [r["label"] for r in train])
    return classification_metrics([r["label"] for r in test], clf.predict([r["text"] for r in test]), num_labels)


def quick_latency_ms(folder: Path, seq: int, repeats: int = 20) -> float:
    """Median ms per call, batch 1, one thread, PyTorch fp32: a quick figure, not the benchmark
    (`distill bench` measures properly, one process per measurement)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()
        ids = torch.full((1, seq), 100, dtype=torch.long)
        mask = torch.ones_like(ids)
        times = []
        with torch.inference_mode():
            for i in range(repeats + 3):
                t = time.perf_counter()
                model(input_ids=ids, attention_mask=mask)
                if i >= 3:
                    times.append((time.perf_counter() - t) * 1000)
        return round(statistics.median(times), 2)
    finally:
        torch.set_num_threads(threads)


def weights_mb(folder: Path) -> float:
    """MB of the model's *.safetensors files in folder."""
    return round(sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6, 2)


def evaluate_stage(ctx: Any, out: Path) -> None:
    run = ctx.run.path
    t = ctx.metrics("teacher")
    s = ctx.metrics("student")
    seq = s["max_length"]
    rows = {}
    for name, m in (("teacher", t), ("student", s)):
        folder = run / name
        rows[name] = {"accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"],
                      "parameters": m["parameters"], "layers": m["layers"], "size_mb": weights_mb(folder),
                      "latency_ms_1thread": quick_latency_ms(folder, seq) if (folder / "config.json").exists() else None}
    floor = tfidf_floor(run / "data", len(t["test"]["confusion"]), ctx.recipe.seed)
    rows["tfidf_logreg"] = {"accuracy": floor["accuracy"], "macro_f1": floor["macro_f1"]}
    summary = {"split_seed": ctx.recipe.data.split_seed, "seed": ctx.recipe.seed, "test_n": s["test"]["n"],
               "latency_seq": seq, "rows": rows,
               "student_kept_of_teacher": s["kept_of_teacher"],
               "speedup_1thread": (rows["teacher"]["latency_ms_1thread"] / rows["student"]["latency_ms_1thread"]
                                   if rows["teacher"]["latency_ms_1thread"] and rows["student"]["latency_ms_1thread"] else None)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("evaluate: teacher %.4f, student %.4f (%.1f%% of teacher), TF-IDF floor %.4f",
             rows["teacher"]["accuracy"], rows["student"]["accuracy"], 100 * s["kept_of_teacher"], floor["accuracy"])
