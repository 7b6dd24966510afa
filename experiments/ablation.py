"""Ablation of the default recipe's student settings over seeds (issue 5).

For each seed, one full `distill run` (the baseline: KD as the recipe ships it), then each variant
as a copy of that run directory resumed with one override, so the teacher and its soft labels are
shared and only what the override touches is rebuilt. Accuracy figures only; the wall times in the
run ledgers are not comparable when other work shares the machine.

    .venv/bin/python experiments/ablation.py --seeds 0 1 2 --out bench/results/ablation-default.md

Reruns pick up where they stopped (completed runs are reused through --resume).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

NO_AUG = "data.augment.multiplier=0"
# The settings these variants were measured with, pinned so the rows reproduce after the defaults moved:
# fp32 training (`device: auto` now trains under bf16 autocast on CPUs with bf16 units) and the student's
# batches in random order (`student.group_by_length` is now on by default).
FP32_RANDOM = ["device=cpu", "student.group_by_length=false"]
# Each variant changes one thing against "kd": kl 0.5 + ce 0.5, T=2, no curriculum, no augmentation
# (the default recipe as it was when this ablation was measured; augmentation is now on by default).
VARIANTS: dict[str, list[str]] = {
    "kd": [NO_AUG, *FP32_RANDOM],
    "plain-ft": [NO_AUG, *FP32_RANDOM, "distill.losses={ce: 1.0}"],
    "curriculum-margin": [NO_AUG, *FP32_RANDOM, "distill.curriculum.scorer=margin"],
    "augment-x1": ["data.augment.multiplier=1", *FP32_RANDOM],
    # the speed levers of `make demo` (bench/results/ablation-speed.md): length-grouped student batches, and
    # teacher and student trained under bf16 autocast (faster only where the CPU has bf16 units, avx512_bf16
    # or AMX; teacher, soft labels and student rebuilt); the last is the default recipe on such a CPU now
    "augment-x1-grouped": ["data.augment.multiplier=1", "device=cpu", "student.group_by_length=true"],
    "augment-x1-bf16": ["data.augment.multiplier=1", "device=cpu-bf16", "student.group_by_length=false"],
    "augment-x1-bf16-grouped": ["data.augment.multiplier=1", "device=cpu-bf16", "student.group_by_length=true"],
}
COPY_FROM = {"augment-x1-grouped": "augment-x1", "augment-x1-bf16": "augment-x1",
             "augment-x1-bf16-grouped": "augment-x1-bf16"}  # a copy of this variant's run (its soft labels); else of kd's


def _distill(recipe: str, models: Path, name: str, sets: list[str]) -> None:
    cmd = [str(Path(sys.executable).with_name("distill")), "run", recipe, "--models-dir", str(models), "--name", name, "--resume"]
    for s in sets:
        cmd += ["--set", s]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _complete(run: Path) -> bool:
    try:
        stages = json.loads((run / "run.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return False
    return stages.get("evaluate", {}).get("status") == "complete"


def run_all(recipe: str, seeds: list[int], variants: list[str], models: Path) -> dict:
    results: dict = {}
    for seed in seeds:
        base = models / f"abl-s{seed}-kd"
        if not _complete(base):
            _distill(recipe, models, base.name, [f"seed={seed}", *VARIANTS["kd"]])
        for v in sorted(set(variants) | {COPY_FROM[v] for v in variants if v in COPY_FROM}, key=list(VARIANTS).index):
            run = models / f"abl-s{seed}-{v}"
            if v != "kd" and not _complete(run):
                if not run.exists():
                    src = models / f"abl-s{seed}-{COPY_FROM[v]}" if v in COPY_FROM else base
                    shutil.copytree(src, run, ignore=shutil.ignore_patterns(".lock*", ".*.tmp-*", "checkpoints"))
                _distill(recipe, models, run.name, [f"seed={seed}", *VARIANTS[v]])
            t = json.loads((run / "teacher" / "metrics.json").read_text())
            s = json.loads((run / "student" / "metrics.json").read_text())
            stages = json.loads((run / "run.json").read_text())["stages"]
            results.setdefault(v, {})[seed] = {
                "teacher_test": t["test"]["accuracy"], "val": s["validation"]["accuracy"],
                "test": s["test"]["accuracy"], "test_f1": s["test"].get("macro_f1"),
                "kept": s["kept_of_teacher"],
                # where a variant reuses the teacher, its wall is the base run's
                "wall_s": {k: stages[k].get("wall_s") for k in ("teacher", "soft_labels", "student")}}
    return results


def table(results: dict, seeds: list[int]) -> str:
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    lines = ["| variant | " + " | ".join(f"seed {s} val / test" for s in seeds) + " | mean val | mean test | mean kept of teacher |",
             "|---" * (len(seeds) + 4) + "|"]
    for v, by_seed in results.items():
        cells = [f"{pct(by_seed[s]['val'])} / {pct(by_seed[s]['test'])}" for s in seeds]
        mv = statistics.mean(by_seed[s]["val"] for s in seeds)
        mt = statistics.mean(by_seed[s]["test"] for s in seeds)
        sd = statistics.stdev(by_seed[s]["test"] for s in seeds) if len(seeds) > 1 else 0.0
        mk = statistics.mean(by_seed[s]["kept"] for s in seeds)
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {pct(mv)} | {pct(mt)} ± {pct(sd)} | {pct(mk)}% |")
    walls = ["", "Stage wall times, mean over the seeds in seconds (comparable only when the runs had the machine "
             "to themselves); teacher test accuracy, mean:", "",
             "| variant | teacher s | soft labels s | student s | teacher test |", "|---|---|---|---|---|"]
    for v, by_seed in results.items():
        w = [statistics.mean(by_seed[s]["wall_s"][k] or 0 for s in seeds) for k in ("teacher", "soft_labels", "student")]
        tt = statistics.mean(by_seed[s]["teacher_test"] for s in seeds)
        walls.append(f"| {v} | {w[0]:.0f} | {w[1]:.0f} | {w[2]:.0f} | {pct(tt)} |")
    lines += walls
    teachers = ", ".join(f"seed {s}: {pct(results['kd'][s]['teacher_test'])}" for s in seeds if s in results.get("kd", {}))
    return "\n".join(lines) + (f"\n\nTeacher test accuracy of kd ({teachers}).\n" if teachers else "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    a = ap.parse_args()
    res = run_all(a.recipe, a.seeds, a.variants, a.models_dir)
    md = (f"Ablation of `{a.recipe}` (student settings; data split seed 0; training seeds {a.seeds}).\n"
          f"Command: `.venv/bin/python experiments/ablation.py --recipe {a.recipe} --seeds {' '.join(map(str, a.seeds))}`\n\n"
          + table(res, a.seeds))
    print(md)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(md)
        (a.out.with_suffix(".json")).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
