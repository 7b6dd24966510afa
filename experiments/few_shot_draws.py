"""The few-shot recipe over draws of its 64 labels (issue 17): our teacher and student beside SetFit and
SetFit's own distillation, per draw and as mean ± std.

For each seed (the draw of the labels and the training seed; the split stays at split seed 0), one
`distill run few-shot` without its two levers (`plain`; it computes the SetFit rows), then each variant as a copy of the run
it builds on, resumed with its overrides, so that what a variant does not touch is reused:

    plain     the few-shot recipe without its two levers (as shipped until 2026-12-07: no contrastive
              phase, no augmentation)                                             models/fs-sN
    con       teacher.contrastive_iterations=20 (a copy of plain: new teacher)   models/fs-sN-con
    con-sc    + student.contrastive_iterations=20 (a copy of con: its teacher)   models/fs-sN-con-sc
    con-aug   + data.augment.multiplier=1 (a copy of con: its teacher; the recipe as shipped since 2026-12-07)
                                                                                  models/fs-sN-con-aug
    con-sc-aug  both student levers (a copy of con-aug: its soft labels)           models/fs-sN-con-sc-aug
    con-aug-t1, con-aug-mse, con-aug-2ep  the student of con-aug with distill.temperature=1, with the
              logits matched by mean squared error instead of KL, with 2 epochs (copies of con-aug)
    con-aug2  two augmented copies per text (a copy of con-aug: the teacher labels only the new copy)
    con-aug-t05, con-aug-2ep-t05  sharper targets: distill.temperature=0.5, with 1 and 2 epochs (copies of con-aug)

    .venv/bin/python experiments/few_shot_draws.py --seeds 0 1 2 --variants plain con
    .venv/bin/python experiments/few_shot_draws.py --seeds 0 1 2 --table-only   # what exists so far

On 2 cores one draw of `plain` takes about two hours (an hour of it SetFit), `con` about an hour
more; every run resumes where it stopped (`--resume`), so the command can be repeated across sessions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

# every variant pins the student's one epoch it was measured with (the recipe ships 2 since 2026-12-07 night),
# so that a new draw's rows mean what the tables in bench/results/few-shot.md say; con-aug-2ep overrides it
ONE = "student.epochs=1"
CON = ["teacher.contrastive_iterations=20", "baselines.setfit=false", ONE]
# variant -> (the variant whose run it copies, its overrides)
VARIANTS: dict[str, tuple[Optional[str], list[str]]] = {
    "plain": (None, ["teacher.contrastive_iterations=0", "data.augment.multiplier=0", ONE]),
    "con": ("plain", CON),
    "con-sc": ("con", [*CON, "student.contrastive_iterations=20"]),
    "con-aug": ("con", [*CON, "data.augment.multiplier=1"]),
    "con-sc-aug": ("con-aug", [*CON, "data.augment.multiplier=1", "student.contrastive_iterations=20"]),
    "con-aug-t1": ("con-aug", [*CON, "data.augment.multiplier=1", "distill.temperature=1"]),
    "con-aug-mse": ("con-aug", [*CON, "data.augment.multiplier=1", "distill.losses={mse: 1.0}"]),
    "con-aug-2ep": ("con-aug", [*CON, "data.augment.multiplier=1", "student.epochs=2"]),
    "con-aug2": ("con-aug", [*CON, "data.augment.multiplier=2"]),
    "con-aug-t05": ("con-aug", [*CON, "data.augment.multiplier=1", "distill.temperature=0.5"]),
    "con-aug-2ep-t05": ("con-aug", [*CON, "data.augment.multiplier=1", "student.epochs=2", "distill.temperature=0.5"]),
}


def run_name(seed: int, variant: str) -> str:
    return f"fs-s{seed}" if variant == "plain" else f"fs-s{seed}-{variant}"


def _status(run: Path) -> dict[str, str]:
    try:
        return {k: v.get("status", "?") for k, v in json.loads((run / "run.json").read_text())["stages"].items()}
    except (OSError, ValueError, KeyError):
        return {}


def _complete(run: Path, variant: str) -> bool:
    st = _status(run)
    return st.get("evaluate") == "complete" and (variant != "plain" or st.get("baselines") == "complete")


def _distill(models: Path, name: str, sets: list[str]) -> None:
    # an existing run (or a variant's copy) resumes from its own recipe.yaml, so that a default changed
    # since it was made (class_weights: auto) does not retrain what it already has
    own = models / name / "recipe.yaml"
    cmd = [str(Path(sys.executable).with_name("distill")), "run", str(own) if own.exists() else "few-shot",
           "--models-dir", str(models), "--name", name, "--resume"]
    for s in sets:
        cmd += ["--set", s]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _needed(variants: list[str]) -> set[str]:
    """The variants asked for and every run they are copies of, transitively."""
    out: set[str] = set()
    for v in variants:
        while v is not None and v not in out:
            out.add(v)
            v = VARIANTS[v][0]
    return out


def run_all(seeds: list[int], variants: list[str], models: Path) -> None:
    for seed in seeds:
        for v in VARIANTS:  # in dependency order: a variant's base runs first
            needed = v in _needed(variants)
            run = models / run_name(seed, v)
            base, sets = VARIANTS[v]
            # a copy stopped before its student was rebuilt still carries its base's finished stages
            if not needed or (_complete(run, v) and _rebuilt(run, models / run_name(seed, base) if base else None)):
                continue
            if base and not run.exists():
                shutil.copytree(models / run_name(seed, base), run,
                                ignore=shutil.ignore_patterns(".lock*", ".*.tmp-*", "checkpoints"))
            _distill(models, run.name, [f"seed={seed}", *sets])


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rebuilt(run: Path, base: Optional[Path]) -> bool:
    """The run's student is its own: complete, and (for a copy) built from other inputs than its base's,
    not the copied one a resume has yet to replace."""
    def student(r: Path) -> dict[str, Any]:
        return ((_read(r / "run.json") or {}).get("stages") or {}).get("student") or {}

    mine = student(run)
    return mine.get("status") == "complete" and (base is None or mine.get("inputs_sha256") != student(base).get("inputs_sha256"))


def collect(seeds: list[int], variants: list[str], models: Path) -> dict[str, dict[int, float]]:
    """row name -> seed -> test accuracy, for what has finished."""
    rows: dict[str, dict[int, float]] = {}
    for seed in seeds:
        plain = models / run_name(seed, "plain")
        summary = _read(plain / "baselines" / "summary.json") or {"rows": {}}
        for key, label in (("setfit", "SetFit (mpnet-base)"), ("setfit_distilled", "SetFit distilled (minilm-l6)")):
            if key in summary["rows"]:
                rows.setdefault(label, {})[seed] = summary["rows"][key]["accuracy"]
        for v in variants:
            run = models / run_name(seed, v)
            if not _rebuilt(run, models / run_name(seed, VARIANTS[v][0]) if VARIANTS[v][0] else None):
                continue
            t, s = _read(run / "teacher" / "metrics.json"), _read(run / "student" / "metrics.json")
            if t and v in ("plain", "con"):  # the other variants reuse con's teacher
                rows.setdefault(f"teacher ({v})", {})[seed] = t["test"]["accuracy"]
            if s:
                rows.setdefault(f"student ({v})", {})[seed] = s["test"]["accuracy"]
    return rows


def table(rows: dict[str, dict[int, float]], seeds: list[int]) -> str:
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    out = ["| model (test accuracy, %) | " + " | ".join(f"draw {s}" for s in seeds) + " | mean ± std (draws) |",
           "|---" * (len(seeds) + 2) + "|"]
    for name, by_seed in rows.items():
        cells = [pct(by_seed[s]) if s in by_seed else "-" for s in seeds]
        vals = [by_seed[s] for s in seeds if s in by_seed]
        mean = f"{pct(statistics.mean(vals))} ± {pct(statistics.stdev(vals))} ({len(vals)})" if len(vals) > 1 \
            else f"{pct(vals[0])} (1)"
        out.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["plain", "con"], choices=list(VARIANTS))
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--table-only", action="store_true", help="only the table of the runs that exist")
    a = ap.parse_args()
    if not a.table_only:
        run_all(a.seeds, a.variants, a.models_dir)
    print(table(collect(a.seeds, a.variants, a.models_dir), a.seeds))


if __name__ == "__main__":
    main()
