"""The data stage: source -> clean -> split -> few-shot -> transfer pool -> augment -> files + report."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from distill.data import augment as aug
from distill.data.clean import CleanReport, PoolCleaner, clean_frame, normalized_key
from distill.data.sources import iter_unlabeled, load_source
from distill.data.split import check_splits, few_shot, given_splits, label_names, make_splits, subsample

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
POOL_CHUNK_ROWS = 65_536  # data.unlabeled is read, cleaned and de-duplicated this many rows at a time


@dataclass
class Prepared:
    splits: dict[str, pd.DataFrame]
    transfer: pd.DataFrame  # text, gold (label name or None)
    augmented: list[tuple[str, str, int]]  # (text, source split, source row)
    names: list[str]
    report: dict[str, Any] = field(default_factory=dict)


def prepare(data: Any, seed: int) -> Prepared:
    """Everything the data stage decides, in memory (also used by `distill data inspect`)."""
    loaded = load_source(data)
    rep = CleanReport()
    rep.dropped.update(loaded.dropped)
    rows_read = len(loaded.frame) + sum(loaded.dropped.values())
    df = clean_frame(loaded.frame, min_chars=data.min_chars, max_chars=data.max_chars, report=rep)
    grouped = loaded.group_by is not None
    carved: dict[str, dict[str, Any]] = {}
    if loaded.given_splits:
        parts, carved = given_splits(df, data.splits, data.split_seed, grouped, loaded.source, loaded.carve_test)
    else:
        if df["label"].nunique() < 2:
            check_splits({"train": df, "validation": df.iloc[0:0], "test": df.iloc[0:0]}, loaded.source)
        parts = make_splits(df, data.splits, data.split_seed, grouped)
    check_splits(parts, loaded.source)
    names = label_names(parts["train"]["label"])

    train = subsample(parts["train"], data.max_rows, seed)
    fs_info: Optional[dict[str, Any]] = None
    if data.few_shot:
        train, rest, fs_info = few_shot(train, data.few_shot, seed)
        transfer = pd.DataFrame({"text": rest["text"].tolist(), "gold": rest["label"].tolist()})
    else:
        transfer = pd.DataFrame({"text": [], "gold": []})
    parts["train"] = train

    held_keys = {normalized_key(t) for name in ("validation", "test") for t in parts[name]["text"]}
    extra_report: dict[str, Any] = {}
    if data.unlabeled:
        # Read, cleaned and de-duplicated in chunks: the file may hold millions of rows.
        seen = held_keys | {normalized_key(t) for t in parts["train"]["text"]} | {normalized_key(t) for t in transfer["text"]}
        cleaner = PoolCleaner(min_chars=data.min_chars, max_chars=data.max_chars, report=CleanReport(),
                              exclude_keys=seen)
        extra: list[str] = []
        for chunk in iter_unlabeled(data.unlabeled, data, POOL_CHUNK_ROWS):
            extra.extend(cleaner.feed(chunk))
        # object dtype: the frame holds the list's own strings (pandas' default string dtype would copy
        # them into Arrow, and concatenating with the object column would copy them back).
        transfer = pd.concat([transfer, pd.DataFrame({"text": pd.Series(extra, dtype=object), "gold": None})],
                             ignore_index=True)
        del extra
        extra_report = cleaner.finish()
    if data.transfer_max and len(transfer) > data.transfer_max:
        transfer = transfer.sample(n=data.transfer_max, random_state=seed).sort_index()
    transfer = transfer.reset_index(drop=True)

    augmented: list[tuple[str, str, int]] = []
    augment_sampled: Optional[dict[str, int]] = None
    if data.augment.multiplier:
        pool = [("train", i, t) for i, t in enumerate(parts["train"]["text"])] + \
               [("transfer", i, t) for i, t in enumerate(transfer["text"])]
        cap = data.augment.max_texts
        if cap is not None and len(pool) > cap:
            log.warning("data: augmenting a seeded sample of %d of the %d training and transfer texts "
                        "(data.augment.max_texts)", cap, len(pool))
            augment_sampled = {"sources": cap, "of": len(pool)}
            pool = [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), cap))]
        vocab = aug.corpus_vocab(t for _, _, t in pool)
        held_texts = set(parts["validation"]["text"]) | set(parts["test"]["text"])
        made = aug.augment([t for _, _, t in pool], ops=data.augment.ops, rate=data.augment.rate,
                           multiplier=data.augment.multiplier, seed=seed, vocab=vocab, exclude=held_texts)
        # An augmented text that normalizes to a held-out text would leak it into training.
        augmented = [(t, pool[i][0], pool[i][1]) for t, i in made if normalized_key(t) not in held_keys]

    report = {
        "source": loaded.source,
        "rows_read": rows_read,
        "rows_kept": len(df),
        **rep.as_dict(),
        "labels": names,
        "split_seed": data.split_seed,
        "splits_given": loaded.given_splits,
        "group_by": loaded.group_by,
        "splits": {name: _split_summary(parts[name], names) for name in SPLITS},
        "transfer": {"rows": len(transfer), "with_gold": int(transfer["gold"].notna().sum())},
        "augmented": len(augmented),
    }
    for name, info in carved.items():
        report[f"{name}_carved"] = info
    if loaded.ignored_files is not None:
        report["ignored_files"] = loaded.ignored_files
    if augment_sampled:
        report["augment_sampled"] = augment_sampled
    if fs_info:
        report["few_shot"] = fs_info
    if extra_report:
        report["unlabeled"] = extra_report
    if grouped:
        report["groups_straddling"] = _straddling(parts)
    return Prepared(parts, transfer, augmented, names, report)


def _split_summary(df: pd.DataFrame, names: list[str]) -> dict[str, Any]:
    counts = df["label"].value_counts()
    out: dict[str, Any] = {"rows": len(df), "by_class": {n: int(counts.get(n, 0)) for n in names}}
    if "group" in df:
        out["groups"] = int(df["group"].nunique())
    return out


def _straddling(parts: dict[str, pd.DataFrame]) -> dict[str, int]:
    g = {name: set(parts[name]["group"]) for name in SPLITS}
    return {"train&validation": len(g["train"] & g["validation"]), "train&test": len(g["train"] & g["test"]),
            "validation&test": len(g["validation"] & g["test"])}


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write(prep: Prepared, out: Path) -> None:
    """The stage's files (formats in models/README.md)."""
    ids = {n: i for i, n in enumerate(prep.names)}
    for name in SPLITS:
        df = prep.splits[name]
        rows = [{"text": t, "label": ids[lab]} for t, lab in zip(df["text"], df["label"])]
        if "group" in df:
            for row, grp in zip(rows, df["group"]):
                row["group"] = grp
        _write_jsonl(out / f"{name}.jsonl", rows)
    _write_jsonl(out / "transfer.jsonl",  # rows made as they are written: the pool may be millions
                 ({"text": t, "gold": ids.get(g) if isinstance(g, str) else None}
                  for t, g in zip(prep.transfer["text"], prep.transfer["gold"])))
    _write_jsonl(out / "augmented.jsonl", ({"text": t, "split": s, "source": i} for t, s, i in prep.augmented))
    (out / "labels.json").write_text(json.dumps({"names": prep.names}, indent=2) + "\n")
    (out / "data_report.json").write_text(json.dumps(prep.report, indent=2, ensure_ascii=False) + "\n")


def read_split(folder: Path, name: str) -> list[dict[str, Any]]:
    with open(folder / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_labels(folder: Path) -> list[str]:
    return json.loads((folder / "labels.json").read_text())["names"]


def source_fingerprint(data: Any) -> Optional[str]:
    """sha256 of the local data (a changed file must re-run the stage); None for builtins."""
    from distill.rundir import hash_tree, sha256_file, digest

    if data.train is not None:
        files = {name: getattr(data, name) for name in SPLITS if getattr(data, name) is not None}
        return digest({name: sha256_file(Path(p)) if Path(p).is_file() else None for name, p in files.items()})
    p = Path(data.source)
    if data.source.startswith("builtin:"):
        return None
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        return digest(hash_tree(p))
    return None


def data_stage(ctx: Any, out: Path) -> None:
    prep = prepare(ctx.recipe.data, ctx.recipe.seed)
    write(prep, out)
    r = prep.report
    log.info("data: %d rows read, %d kept; train %d / validation %d / test %d; transfer %d; augmented %d",
             r["rows_read"], r["rows_kept"], len(prep.splits["train"]), len(prep.splits["validation"]),
             len(prep.splits["test"]), len(prep.transfer), len(prep.augmented))
