"""A large unlabelled pool (`data.unlabeled`) through the data, teacher and soft-label stages: the peak
memory (largest process RSS) and wall time of each stage, in one process or under torchrun.

The teacher is a 2-layer, 64-wide BERT built from a config with minilm-l6's tokenizer, trained for a
few steps: what is measured is the pipeline around the model (reading, cleaning, de-duplicating,
tokenizing, batching, caching and gathering a million texts), which a real teacher would only slow
down. The pool is synthetic: seeded draws of 8-30 words from the rotten-tomatoes vocabulary.

    python experiments/large_pool.py --rows 1000000            # one process
    python experiments/large_pool.py --rows 1000000 --ranks 2 --base models/pool-1000000-r1
    python experiments/large_pool.py --compare models/pool-1000000-r1 models/pool-1000000-r2
    python experiments/large_pool.py --rows 1000000 --stages data --models /tmp/m   # the data stage alone

--base links the data and teacher stages of an earlier run in (run_recipe(base=...)), so the 2-rank
soft labels come from the same teacher as the 1-rank ones and can be compared byte for byte.

Each stage runs in its own process (`run_recipe(until=STAGE)`, resuming the earlier ones), so each
peak is that stage's alone. Prints one markdown row per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STAGES = ("data", "teacher", "soft_labels")


def make_pool(rows: int, seed: int = 0) -> Path:
    """experiments/data/pool-N.txt: one synthetic text per line."""
    path = HERE / "data" / f"pool-{rows}.txt"
    if path.exists():
        return path
    from distill.data.sources import load_source
    from distill.recipe import load_recipe

    frame = load_source(load_recipe(None, []).data).frame
    vocab = sorted({w for t in frame["text"] for w in t.split()})
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            lengths = rng.integers(8, 31, size=n)
            words = rng.integers(0, len(vocab), size=int(lengths.sum()))
            at = 0
            for k in lengths:
                f.write(" ".join(vocab[i] for i in words[at:at + k]) + "\n")
                at += k
    tmp.rename(path)
    return path


def make_teacher() -> Path:
    path = HERE / "data" / "tiny-teacher"
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from distill.modeling import load_tokenizer

    tok = load_tokenizer("packaged:minilm-l6")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=128, num_labels=2))
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def overrides(pool: Path, teacher: Path, name: str) -> list[str]:
    return [f"name={name}", f"data.unlabeled={pool}", "data.augment.multiplier=0", f"teacher.model={teacher}",
            "teacher.max_train_samples=512", "teacher.epochs=1", "teacher.min_steps=0",
            "teacher.early_stopping_patience=0"]


STAGE_CODE = """
import sys
from pathlib import Path
from distill.pipeline import run_recipe
from distill.recipe import load_recipe
models, base, stage, *sets = sys.argv[1:]
recipe = load_recipe(None, sets)
run_recipe(recipe, Path(models) / recipe.name, resume=True, until=stage, base=base or None)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage(models: Path, stage: str, sets: list[str], ranks: int, base: str = "") -> tuple[float, float]:
    """(peak RSS in MiB of the stage's largest process, wall seconds)."""
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                    str(ranks), "--master_port", str(_free_port())]
    cmd = launcher + ["-c", STAGE_CODE, str(models), base, stage, *sets] if ranks == 1 else \
        launcher + [str(Path(__file__).resolve()), "--stage", str(models), base, stage, *sets]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if ranks > 1:
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {stage} failed ({cmd})")
    # ru_maxrss of wait4 is the child's own peak; under torchrun the ranks are its children, whose peak
    # RUSAGE_CHILDREN of the launcher does not report here: read it from the ranks' own record instead.
    peak_kib = usage.ru_maxrss
    for marker in models.glob(f".peak-{stage}-rank*.json"):
        peak_kib = max(peak_kib, json.loads(marker.read_text()))
        marker.unlink()
    return peak_kib / 1024, wall


def _stage_in_rank(models: str, base: str, stage: str, sets: list[str]) -> None:
    """Under torchrun: one rank's run of the stage, appending its own peak RSS (KiB) to a marker file."""
    from distill.distributed import rank
    from distill.pipeline import run_recipe
    from distill.recipe import load_recipe

    recipe = load_recipe(None, sets)
    run_recipe(recipe, Path(models) / recipe.name, resume=True, until=stage, base=base or None)
    # after run_recipe the process group is gone: each rank leaves its own file
    (Path(models) / f".peak-{stage}-rank{rank()}.json").write_text(
        json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def compare(a: Path, b: Path) -> None:
    from distill.soft_labels import SoftLabels

    for name in ("logits.safetensors", "index.json"):
        same = (a / "soft_labels" / name).read_bytes() == (b / "soft_labels" / name).read_bytes()
        print(f"{name}: {'identical' if same else 'DIFFERENT'} ({a} vs {b})")
    x, y = SoftLabels.load(a / "soft_labels"), SoftLabels.load(b / "soft_labels")
    if x.index == y.index:
        diff = np.abs(x.logits - y.logits)
        print(f"logits: {int((diff > 0).sum())} of {diff.size} values differ, max |diff| {diff.max():.2e}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--stage":
        return _stage_in_rank(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--base", default="", help="a run whose data and teacher stages are linked in")
    p.add_argument("--compare", nargs=2, type=Path)
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="the first stages only")
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    pool, teacher = make_pool(args.rows), make_teacher()
    name = f"pool-{args.rows}-r{args.ranks}"
    sets = overrides(pool, teacher, name)
    print(f"| pool rows | ranks | stage | peak RSS (largest process) | wall |\n|---|---|---|---|---|")
    for stage in STAGES[:max(STAGES.index(s) for s in args.stages) + 1]:
        # base gives the upstream stages only: the soft labels are always computed here
        peak, wall = run_stage(args.models, stage, sets, args.ranks, str(args.base) if stage != "soft_labels" else "")
        print(f"| {args.rows:,} | {args.ranks} | {stage} | {peak:,.0f} MiB | {wall:.0f} s |", flush=True)
    if "soft_labels" not in args.stages:
        return
    report = json.loads((args.models / name / "soft_labels" / "report.json").read_text())
    print(f"\nsoft labels: {report['texts']:,} texts, {report['texts_per_s']:,.0f} texts/s")


if __name__ == "__main__":
    main()
