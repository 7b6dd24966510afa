"""Teacher logits for every text the student trains on, computed once and cached by text hash.

The student then trains without the teacher in memory, and teacher and student may tokenize
differently. Pool = labelled train rows + transfer pool + augmented texts (data/*.jsonl).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from distill.data.prepare import read_labels

log = logging.getLogger(__name__)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


ORIGINS = ("train", "transfer", "augmented")  # the data stage's files of the student's pool, in pool order


def pool_rows(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Every text the student sees, read line by line: text, origin, its gold label where training may
    use it (`label`, else None) and, for transfer texts, the held-back label of a few-shot run (`gold`)."""
    for origin in ORIGINS:
        path = data_dir / f"{origin}.jsonl"
        if not path.exists():
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    row = {"text": r["text"], "label": r["label"] if origin == "train" else None, "origin": origin}
                    if origin == "transfer":
                        row["gold"] = r.get("gold")
                    yield row


def student_pool(data_dir: Path) -> list[dict[str, Any]]:
    """The student's pool in memory (the student stage); the soft-labels stage streams pool_rows."""
    return list(pool_rows(data_dir))


# The teacher stage's logits on its own training rows (its label-noise pass), a SoftLabels folder in
# the teacher's output: the soft-labels stage starts from them instead of scoring those rows again.
TRAIN_LOGITS = "train_logits"


class SoftLabels:
    """logits.safetensors + index.json: text sha256 -> row."""

    def __init__(self, logits: np.ndarray, index: dict[str, int]):
        self.logits, self.index = logits, index

    @classmethod
    def empty(cls, num_labels: int) -> "SoftLabels":
        return cls(np.zeros((0, num_labels), np.float32), {})

    @classmethod
    def load(cls, folder: Path) -> "SoftLabels":
        from safetensors.numpy import load_file

        return cls(load_file(str(folder / "logits.safetensors"))["logits"],
                   json.loads((folder / "index.json").read_text()))

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"logits": np.ascontiguousarray(self.logits, dtype=np.float32)}, str(folder / "logits.safetensors"))
        (folder / "index.json").write_text(json.dumps(self.index) + "\n")

    def get(self, texts: Sequence[str]) -> np.ndarray:
        return self.logits[[self.index[text_key(t)] for t in texts]]

    def missing(self, texts: Sequence[str]) -> list[str]:
        return [t for t in texts if text_key(t) not in self.index]

    def extended(self, texts: Sequence[str], logits: np.ndarray) -> "SoftLabels":
        return self._appended(zip((text_key(t) for t in texts), logits))

    def merged(self, other: "SoftLabels") -> "SoftLabels":
        """These rows plus other's rows for the texts these lack."""
        return self._appended((k, other.logits[i]) for k, i in other.index.items())

    def _appended(self, keyed_rows: Iterable[tuple[str, np.ndarray]]) -> "SoftLabels":
        """These rows plus the given (text key, logits) rows for keys not yet here, first one winning."""
        index = dict(self.index)
        rows = []
        for k, row in keyed_rows:
            if k not in index:
                index[k] = len(self.logits) + len(rows)
                rows.append(row)
        if not rows:
            return self
        return SoftLabels(np.concatenate([self.logits, np.stack(rows)]), index)


def _teacher_identity(ctx: Any, tmetrics: dict[str, Any]) -> dict[str, Any]:
    """What decides a text's logits: the teacher stage's inputs and output digests, and the cut."""
    rec = ctx.run.read()["stages"].get("teacher") or {}
    return {"inputs_sha256": rec.get("inputs_sha256"), "output_sha256": rec.get("output_sha256"),
            "max_length": tmetrics["max_length"], "head_tokens": tmetrics.get("head_tokens", 0)}


def _previous(folder: Path, teacher: dict[str, Any]) -> Optional[SoftLabels]:
    """The soft labels this run's last completed attempt wrote, where the same teacher made them at the
    same cut (`--resume` after the pool grew, e.g. a larger data.augment.multiplier): only new texts
    then go through the teacher. None otherwise, or where the folder does not read back."""
    try:
        if json.loads((folder / "report.json").read_text()).get("teacher") != teacher or None in teacher.values():
            return None
        return SoftLabels.load(folder)
    except (OSError, ValueError, KeyError):
        return None


def label_texts(teacher: Any, tokenizer: Any, texts: Sequence[str], max_length: int,
                previous: Optional[SoftLabels] = None, head: int = 0) -> SoftLabels:
    """Soft labels for texts, running the teacher only on texts the previous cache lacks, cut as the
    teacher was trained (max_length, and head > 0 for head+tail; its metrics.json says which)."""
    from distill import progress
    from distill.training import predict_logits

    prompted = hasattr(teacher, "label_logits")  # distill.prompted.PromptedTeacher builds its own prompts
    num_labels = teacher.num_labels if prompted else teacher.config.num_labels
    base = previous or SoftLabels.empty(num_labels)
    todo = list(dict.fromkeys(base.missing(texts)))
    if todo:
        if prompted:  # scored in one call (its own length-sorted batches): the line shows the elapsed time
            with progress.task("soft labels", total=len(todo)) as advance:
                logits = teacher.label_logits(todo)
                advance(len(todo))
        else:
            logits = predict_logits(teacher, tokenizer, todo, max_length, description="soft labels", head=head)
        base = base.extended(todo, logits)
    return base


# Texts labelled per pass of the soft-labels stage: the pool is read from its files in chunks of this
# many distinct texts, so a pool of millions never sits in memory as rows; a pool up to this size is
# one chunk, labelled exactly as one call to label_texts would.
CHUNK = 65_536


def soft_labels_stage(ctx: Any, out: Path) -> None:
    from distill.teacher import load_teacher

    run = ctx.run.path
    teacher, tok = load_teacher(run / "teacher")
    tmetrics = ctx.metrics("teacher")
    names = read_labels(run / "data")
    t0 = time.perf_counter()
    by_origin = {o: 0 for o in ORIGINS}
    gold_texts: list[tuple[str, int]] = []  # (text key, gold label) of transfer texts with a gold label
    # The teacher's own training rows were scored by its label-noise pass, as label_texts would score them
    # (same model, max_length and cut); a teacher output made before it kept them has no such folder.
    shared = run / "teacher" / TRAIN_LOGITS
    soft: Optional[SoftLabels] = SoftLabels.load(shared) if (shared / "index.json").exists() else None
    from_teacher = set(soft.index) if soft else set()
    identity = _teacher_identity(ctx, tmetrics)
    previous = _previous(ctx.output("soft_labels"), identity)
    if previous is not None:
        soft = soft.merged(previous) if soft else previous
    cached = set(soft.index) if soft else set()
    seen_cached: set[str] = set()  # the cached texts met in the pool; the others are dropped at the end
    chunk: list[str] = []
    pending: set[str] = set()  # the keys of chunk

    def flush() -> None:
        nonlocal soft, chunk, pending
        if chunk:
            soft = label_texts(teacher, tok, chunk, tmetrics["max_length"], previous=soft,
                               head=tmetrics.get("head_tokens", 0))
            chunk, pending = [], set()

    for row in pool_rows(run / "data"):
        by_origin[row["origin"]] += 1
        key = text_key(row["text"])
        if row.get("gold") is not None:
            gold_texts.append((key, row["gold"]))
        if key in cached:
            seen_cached.add(key)
        if key not in pending and (soft is None or key not in soft.index):
            pending.add(key)
            chunk.append(row["text"])
            if len(chunk) == CHUNK:
                flush()
    flush()
    soft = soft or SoftLabels.empty(len(names))
    if len(seen_cached) < len(cached):  # the cache holds the pool's texts and no others
        keep = sorted((i, k) for k, i in soft.index.items() if k not in cached or k in seen_cached)
        soft = SoftLabels(soft.logits[[i for i, _ in keep]], {k: j for j, (_, k) in enumerate(keep)})
    wall = time.perf_counter() - t0
    soft.save(out)
    report: dict[str, Any] = {"texts": len(soft.index), "wall_s": round(wall, 1),
                              "texts_per_s": round(len(soft.index) / max(wall, 1e-9), 1),
                              "by_origin": by_origin, "from_teacher_pass": len(seen_cached & from_teacher),
                              "from_previous": len(seen_cached - from_teacher), "teacher": identity}
    if gold_texts:  # few-shot simulation: how good are the pseudo-labels the student will learn from?
        pred = soft.logits[[soft.index[k] for k, _ in gold_texts]].argmax(-1)
        report["pseudo_label_accuracy"] = float(np.mean(pred == np.array([g for _, g in gold_texts])))
        report["pseudo_label_n"] = len(gold_texts)
    probs = _softmax(soft.logits)
    report["teacher_confidence_mean"] = float(probs.max(-1).mean()) if len(probs) else None
    report["label_distribution"] = {names[i]: int(c) for i, c in enumerate(np.bincount(probs.argmax(-1), minlength=len(names)))} if len(probs) else {}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("soft labels: %d texts in %.1f s%s%s", len(soft.index), wall,
             f" ({report['from_previous']} kept from the last attempt, same teacher)" if report["from_previous"] else "",
             f"; pseudo-label accuracy {report['pseudo_label_accuracy']:.4f}" if gold_texts else "")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
