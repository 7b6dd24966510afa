"""Splits (stratified, seeded, grouped), few-shot selection and label ids."""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import pandas as pd

from distill.errors import DataError

log = logging.getLogger(__name__)


def label_names(labels: pd.Series) -> list[str]:
    """One stable order: numeric labels by value, other labels alphabetically."""
    uniq = sorted(set(labels))
    try:
        return sorted(uniq, key=lambda s: float(s))
    except ValueError:
        return uniq


def _stratify_ok(y: pd.Series, parts: int) -> bool:
    return y.value_counts().min() >= parts


def _stratified(df: pd.DataFrame, frac: float, grouped: bool) -> bool:
    """Whether _group_split can keep the label proportions (every class has enough rows or groups)."""
    return bool(_stratify_ok(df["label"], max(2, int(round(1 / frac))) if grouped else 2))


def _group_split(df: pd.DataFrame, frac: float, seed: int, grouped: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off about `frac` of df; with groups, whole groups move; stratified by label where possible."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

    if frac <= 0:
        return df, df.iloc[0:0]
    if grouped:
        n_groups = df["group"].nunique()
        n_splits = max(2, int(round(1 / frac)))
        if n_groups < n_splits:
            raise DataError(f"data.group_by: only {n_groups} groups, too few to hold out {frac:.0%} of them; "
                            "use a coarser split or no group_by.")
        if _stratified(df, frac, grouped):
            sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            keep, held = next(sgkf.split(df, df["label"], df["group"]))
        else:
            gss = GroupShuffleSplit(n_splits=1, test_size=frac, random_state=seed)
            keep, held = next(gss.split(df, groups=df["group"]))
        return df.iloc[keep], df.iloc[held]
    strat = df["label"] if _stratified(df, frac, grouped) else None
    keep, held = train_test_split(np.arange(len(df)), test_size=frac, random_state=seed, stratify=strat)
    return df.iloc[np.sort(keep)], df.iloc[np.sort(held)]


def make_splits(df: pd.DataFrame, splits: Any, seed: int, grouped: bool) -> dict[str, pd.DataFrame]:
    """train/validation/test from one table: test first, then validation out of the rest."""
    rest, test = _group_split(df, splits.test, seed, grouped)
    val_frac = splits.validation / (splits.train + splits.validation)
    train, val = _group_split(rest, val_frac, seed + 1, grouped)
    return {"train": train, "validation": val, "test": test}


def given_splits(df: pd.DataFrame, splits: Any, seed: int, grouped: bool, source: str,
                 carve_test: bool = False) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """Respect the data's own splits; carve a missing validation (and, with carve_test, test) split out of
    train as make_splits would. Returns the splits and, per carved split, what was done."""
    out = {name: df[df["split"] == name].drop(columns="split") for name in ("train", "validation", "test")}
    carved: dict[str, dict[str, Any]] = {}
    if out["test"].empty and not carve_test:
        raise DataError(f"{source}: given splits have no test rows; add a test file/split, or remove the split "
                        "column to let distill split the data.")
    if out["test"].empty:
        # Without a given validation split the fractions are make_splits' own (test first, of all rows).
        frac = splits.test if out["validation"].empty else splits.test / (splits.train + splits.test)
        out["train"], out["test"], carved["test"] = _carve(out["train"], "test", frac, seed, grouped)
    if out["validation"].empty:
        val_frac = splits.validation / (splits.train + splits.validation)
        out["train"], out["validation"], carved["validation"] = _carve(out["train"], "validation", val_frac,
                                                                       seed + 1, grouped)
    return out, carved


def _carve(train: pd.DataFrame, name: str, frac: float, seed: int,
           grouped: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    stratified = frac > 0 and _stratified(train, frac, grouped)
    kept, held = _group_split(train, frac, seed, grouped)
    info = {"from": "train", "fraction": round(frac, 4), "rows": len(held), "stratified": stratified, "grouped": grouped}
    log.info("%s: %d rows carved from the given train rows, %s; give data.%s to use your own", name, len(held),
             "stratified by label" if stratified else "not stratified (a class has too few rows)", name)
    return kept, held, info


def check_splits(parts: dict[str, pd.DataFrame], source: str) -> None:
    train_labels = set(parts["train"]["label"])
    if len(train_labels) < 2:
        raise DataError(f"{source}: the training data has a single class ({', '.join(map(str, train_labels)) or 'none'}); "
                        "a classifier needs at least two. Check data.label_column.")
    for name in ("validation", "test"):
        unseen = sorted(set(parts[name]["label"]) - train_labels)
        if unseen:
            raise DataError(f"{source}: label(s) {', '.join(map(repr, unseen))} occur in {name} but never in train, "
                            "so no model can learn them. Add training rows for them or drop those rows.")


def subsample(df: pd.DataFrame, n: Optional[int], seed: int) -> pd.DataFrame:
    """At most n rows, stratified by label when there is one, seeded."""
    if n is None or len(df) <= n:
        return df
    if "label" in df and df["label"].notna().all() and _stratify_ok(df["label"], 2):
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(np.arange(len(df)), train_size=n, random_state=seed, stratify=df["label"])
        return df.iloc[np.sort(keep)]
    return df.sample(n=n, random_state=seed).sort_index()


def few_shot(train: pd.DataFrame, k: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Keep exactly k rows per class (all of a smaller class, reported); the rest is the transfer pool."""
    rng = np.random.default_rng(seed)
    keep_idx: list[int] = []
    short: dict[str, int] = {}
    for label, rows in train.groupby("label", sort=True):
        idx = rows.index.to_numpy()
        if len(idx) < k:
            short[str(label)] = len(idx)
            log.warning("few_shot=%d: class %r has only %d training rows; keeping all of them", k, label, len(idx))
            keep_idx.extend(idx.tolist())
        else:
            keep_idx.extend(rng.choice(idx, size=k, replace=False).tolist())
    kept = train.loc[sorted(keep_idx)]
    rest = train.drop(index=kept.index)
    return kept, rest, {"k": k, "classes_short_of_k": short, "labelled": len(kept), "to_transfer": len(rest)}
