"""Ablation of a recipe's student settings over seeds: the default recipe (issue 5) and the quality pair
mpnet-to-minilm (issue 17, `--recipe mpnet-to-minilm`; needs `distill assets install mpnet-base`).

For each seed, one full `distill run` (the baseline: the recipe's first variant), then each variant
as a copy of that run directory resumed with one override, so the teacher and its soft labels are
shared and only what the override touches is rebuilt. Accuracy figures only; the wall times in the
run ledgers are not comparable when other work shares the machine.

    .venv/bin/python experiments/ablation.py --seeds 0 1 2 --out bench/results/ablation-default.md
    .venv/bin/python experiments/ablation.py --recipe mpnet-to-minilm --seeds 0 --variants shipped lr1e-4 tuned
    .venv/bin/python experiments/ablation.py --recipe default-batch --seeds 0 1 2 --variants shipped batch16 batch64 --out bench/results/ablation-batch.md
    .venv/bin/python experiments/ablation.py --recipe default-student --seeds 0 1 2 --out bench/results/ablation-student-lr.md

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
# The default recipe's student settings until 9d7aa59 (lr 1e-4, T 2, kl 0.5 + ce 0.5), pinned in every
# default-recipe ablation measured with them, so their tables reproduce ("shipped": the default then).
OLD_STUDENT = ["student.learning_rate=1e-4", "distill.temperature=2.0", "distill.losses={kl: 0.5, ce: 0.5}"]
# what `distill tune` found for the default pair on one seed (docs/tuning.md), 4 epochs left out
TUNED = ["student.learning_rate=2.6e-4", "distill.temperature=1.5", "distill.losses={kl: 0.62, ce: 0.38}"]


def _pinned(table: dict[str, list[str]], pins: list[str] = OLD_STUDENT) -> dict[str, list[str]]:
    """Every variant with pins first, so its own overrides still win."""
    return {k: [*pins, *v] for k, v in table.items()}


# Each variant changes one thing against "kd": kl 0.5 + ce 0.5, T=2, no curriculum, no augmentation
# (the default recipe as it was when this ablation was measured; augmentation is now on by default).
VARIANTS: dict[str, list[str]] = _pinned({
    "kd": [NO_AUG, *FP32_RANDOM],
    "plain-ft": [NO_AUG, *FP32_RANDOM, "distill.losses={ce: 1.0}"],
    "curriculum-margin": [NO_AUG, *FP32_RANDOM, "distill.curriculum.scorer=margin"],
    "augment-x1": ["data.augment.multiplier=1", *FP32_RANDOM],
    # the speed levers of `make demo` (bench/results/ablation-speed.md): length-grouped student batches, and
    # teacher and student trained under bf16 autocast (faster only where the CPU has bf16 units, avx512_bf16
    # or AMX; teacher, soft labels and student rebuilt); the last was the default recipe on such a CPU until
    # the student settings moved (9d7aa59)
    "augment-x1-grouped": ["data.augment.multiplier=1", "device=cpu", "student.group_by_length=true"],
    "augment-x1-bf16": ["data.augment.multiplier=1", "device=cpu-bf16", "student.group_by_length=false"],
    "augment-x1-bf16-grouped": ["data.augment.multiplier=1", "device=cpu-bf16", "student.group_by_length=true"],
})
COPY_FROM = {"augment-x1-grouped": "augment-x1", "augment-x1-bf16": "augment-x1",
             "augment-x1-bf16-grouped": "augment-x1-bf16"}  # a copy of this variant's run (its soft labels); else of kd's

# The quality pair (issue 17): mpnet-to-minilm as shipped, then one lever each, on copies of its run.
# Pinned to the recipe as measured until augment-x2 won on 3 seeds (augmentation x1) and before the
# student kept its best epoch (keep: last), so "shipped" and every lever measured against it reproduce;
# the augment and best variants set their own multiplier and keep.
MPNET_VARIANTS: dict[str, list[str]] = _pinned({
    "shipped": [],
    "lr1e-4": ["student.learning_rate=1e-4"],
    # what `distill tune` found for the default pair (one seed), tried on this pair
    "tuned": [*TUNED, "student.epochs=4"],
    "kl-only": ["distill.losses={kl: 1.0}"],
    "teacher-all": ["teacher.max_train_samples=null"],  # the teacher on all 8,897 training rows, not 4,000
    # a larger transfer set labelled by the teacher alone (TinyBERT's lever): the teacher reads only the
    # labelled splits, so it is reused; soft labels and student are rebuilt
    "augment-x2": ["data.augment.multiplier=2"],
    "augment-x3": ["data.augment.multiplier=3"],
    # the teacher on all 8,897 training rows on top of augment-x2 (a copy of that run: data reused; the
    # teacher, its soft labels and the student rebuilt)
    "augment-x2-teacher-all": ["data.augment.multiplier=2", "teacher.max_train_samples=null"],
    # the student keeping its best epoch on validation (student.keep: best), on top of augment-x2 (copies of it:
    # only the student is rebuilt); its validation figure is then a maximum over epochs, so it is judged on test.
    # With a 4th epoch too (the linear schedule then decays over 4)
    "augment-x2-best": ["data.augment.multiplier=2", "student.keep=best"],
    "augment-x2-best-4ep": ["data.augment.multiplier=2", "student.keep=best", "student.epochs=4"],
    # and with the teacher's logits softened less (T 1 instead of 2)
    "augment-x2-best-t1": ["data.augment.multiplier=2", "student.keep=best", "distill.temperature=1.0"],
    # and the higher learning rate, which was up on test over 3 seeds with augmentation x1 but peaked at epoch 2
    "augment-x2-best-lr1e-4": ["data.augment.multiplier=2", "student.keep=best", "student.learning_rate=1e-4"],
    # the teacher on all rows, with the student keeping its best epoch (a copy of augment-x2-best: the
    # teacher, soft labels and student are rebuilt, and the keep-last student of teacher-all is not needed)
    "augment-x2-teacher-all-best": ["data.augment.multiplier=2", "teacher.max_train_samples=null", "student.keep=best"],
    # intermediate layers (TinyBERT, Patient KD): each student layer's pooled hidden state to the teacher
    # layer at the same relative depth (1, 3, ..., 11), through a learned 384 -> 768 projection
    "hidden-cos": ["distill.losses={kl: 0.5, ce: 0.5, hidden_cos: 0.5}"],
}, pins=["data.augment.multiplier=1", "student.keep=last"])
MPNET_COPY_FROM = {**{v: "augment-x2" for v in MPNET_VARIANTS if v.startswith("augment-x2-")},  # only what differs rebuilt
                   "augment-x2-teacher-all-best": "augment-x2-best"}
# The student's batch size (issue 17), on the default recipe as shipped then: half, double (two accumulated
# batches of 32, so memory stays that of 32) at the same peak rate, and double with the rate doubled too.
BATCH_VARIANTS: dict[str, list[str]] = _pinned({
    "shipped": [],
    "batch16": ["student.batch_size=16"],
    "batch64": ["student.grad_accum=2"],
    "batch64-lr2e-4": ["student.grad_accum=2", "student.learning_rate=2e-4"],
})
# The student's learning rate and what `distill tune` found (one seed, docs/tuning.md), on the default recipe
# as shipped then, over 3 seeds (issue 17); "tuned-2ep" won and is the default recipe since. Same run-name
# prefix as the batch ablation: its "shipped" runs are the base these copy.
STUDENT_VARIANTS: dict[str, list[str]] = _pinned({
    "shipped": [],
    "lr2e-4": ["student.learning_rate=2e-4"],
    "tuned-2ep": TUNED,
    "tuned": [*TUNED, "student.epochs=4"],
})
# ablation -> (the shipped recipe it runs, its variants, the first one the base every other copies,
# their copy sources, run-name prefix)
ABLATIONS: dict[str, tuple[str, dict[str, list[str]], dict[str, str], str]] = {
    "default": ("default", VARIANTS, COPY_FROM, "abl"),
    "mpnet-to-minilm": ("mpnet-to-minilm", MPNET_VARIANTS, MPNET_COPY_FROM, "mpabl"),
    "default-batch": ("default", BATCH_VARIANTS, {}, "bat"),
    "default-student": ("default", STUDENT_VARIANTS, {}, "bat"),
}


def _distill(recipe: str, models: Path, name: str, sets: list[str]) -> None:
    cmd = [str(Path(sys.executable).with_name("distill")), "run", recipe, "--models-dir", str(models), "--name", name, "--resume"]
    for s in sets:
        cmd += ["--set", s]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


MARK = "ablation-sets.json"  # in a variant's run: the overrides it finished with, or null while it is a copy


def _complete(run: Path, sets: list[str]) -> bool:
    """Every stage complete, and, where the run carries a mark, finished with these overrides: a copy of
    the base run is complete by its run.json until its own distill run has rebuilt what changed."""
    try:
        stages = json.loads((run / "run.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return False
    if not stages or any(st.get("status") != "complete" for st in stages.values()):
        return False
    try:
        return json.loads((run / MARK).read_text()) == sets
    except FileNotFoundError:
        return True  # finished before marks existed
    except ValueError:
        return False


def run_all(ablation: str, seeds: list[int], variants: list[str], models: Path) -> dict:
    recipe, table_of, copy_from, prefix = ABLATIONS[ablation]
    first = next(iter(table_of))
    results: dict = {}
    for seed in seeds:
        base = models / f"{prefix}-s{seed}-{first}"
        base_sets = [f"seed={seed}", *table_of[first]]
        if not _complete(base, base_sets):
            _distill(recipe, models, base.name, base_sets)
            (base / MARK).write_text(json.dumps(base_sets))
        for v in sorted(set(variants) | {first} | {copy_from[v] for v in variants if v in copy_from},
                        key=list(table_of).index):
            run = models / f"{prefix}-s{seed}-{v}"
            sets = [f"seed={seed}", *table_of[v]]
            if v != first and not _complete(run, sets):
                if not run.exists():
                    src = models / f"{prefix}-s{seed}-{copy_from[v]}" if v in copy_from else base
                    shutil.copytree(src, run, ignore=shutil.ignore_patterns(".lock*", ".*.tmp-*", "checkpoints", MARK))
                    (run / MARK).write_text("null")
                _distill(recipe, models, run.name, sets)
                (run / MARK).write_text(json.dumps(sets))
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
    first = next(iter(results))
    teachers = ", ".join(f"seed {s}: {pct(results[first][s]['teacher_test'])}" for s in seeds if s in results[first])
    return "\n".join(lines) + (f"\n\nTeacher test accuracy of {first} ({teachers}).\n" if teachers else "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="default", choices=list(ABLATIONS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=None,
                    help="default: all of the recipe's; " + "; ".join(f"{r}: {' '.join(v[1])}" for r, v in ABLATIONS.items()))
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    ap.add_argument("--merge", type=Path, default=None,
                    help="an earlier --out JSON: its seeds (runs since deleted) join the table beside this call's")
    a = ap.parse_args()
    known = list(ABLATIONS[a.recipe][1])
    if a.variants and set(a.variants) - set(known):
        ap.error(f"--variants: {a.recipe} has {' '.join(known)}")
    earlier: dict = {}
    if a.merge:  # read before any run starts: a bad file must not cost hours first
        try:
            earlier = {v: {int(s): r for s, r in by_seed.items()} for v, by_seed in json.loads(a.merge.read_text()).items()}
        except (OSError, ValueError, AttributeError) as e:
            ap.error(f"--merge {a.merge}: not an earlier --out JSON of this script ({e}); give the .json written beside its --out table")
    res = run_all(a.recipe, a.seeds, a.variants or known, a.models_dir)
    seeds = list(a.seeds)
    if a.merge:
        old = sorted(set.intersection(*(set(earlier.get(v, {})) for v in res)) - set(seeds))
        for v in res:
            res[v].update({s: earlier[v][s] for s in old})
        seeds = sorted(old + seeds)
    md = (f"Ablation of `{a.recipe}` (student settings; data split seed 0; training seeds {seeds}).\n"
          f"Command: `.venv/bin/python experiments/ablation.py --recipe {a.recipe} --seeds {' '.join(map(str, a.seeds))}"
          f"{' --variants ' + ' '.join(a.variants) if a.variants else ''}"
          f"{f' --merge {a.merge}' if a.merge else ''}`\n\n"
          + table(res, seeds))
    print(md)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(md)
        (a.out.with_suffix(".json")).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
