"""Bench a causal-LM run: time to first token and decode tokens/s per artifact x target.

Every measurement runs in its own process (bench.lm_worker), pinned to the target's cores with
its thread count, as bench/ does for classifiers. Artifacts: the student's ONNX files from
`distill export onnx` (fp32 and int8, KV cache) and the student in PyTorch fp32 as the
reference row. Prompt length: the recipe's bench.seq; tokens generated: lm.new_tokens.

    distill bench models/NAME   # -> models/NAME/bench/results.json, report.md
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from bench.measure import worker_env
from bench.targets import Target, resolve_targets

log = logging.getLogger(__name__)


def run_lm_worker(spec: dict[str, Any], target: Target, *, timeout: float = 600) -> dict[str, Any]:
    """One measurement in a fresh pinned process; {"status": "failed", "error"} instead of raising."""
    spec = {**spec, "threads": target.threads, "spin": target.spin}
    with tempfile.TemporaryDirectory(prefix="bench-lm-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        cores = set(target.cores)
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.lm_worker", str(spec_file), str(out_file)],
                                  env=worker_env(target.threads, target.spin), capture_output=True, text=True,
                                  timeout=timeout, preexec_fn=lambda: os.sched_setaffinity(0, cores))
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not out_file.exists():
            return {"status": "failed", "error": "\n".join(proc.stderr.strip().splitlines()[-6:]) or f"exit {proc.returncode}"}
        return {"status": "ok", **json.loads(out_file.read_text())}


def artifacts_of(run_dir: Path) -> dict[str, tuple[str, Path]]:
    """name -> (runtime, path) for what exists in the run."""
    out: dict[str, tuple[str, Path]] = {}
    if (run_dir / "student" / "config.json").exists():
        out["student-pytorch"] = ("pytorch", run_dir / "student")
    manifest = run_dir / "onnx" / "export.json"
    if manifest.exists():
        for key, a in json.loads(manifest.read_text())["artifacts"].items():
            out[key] = ("onnxruntime", run_dir / "onnx" / a["file"])
    return out


def bench_lm(run_dir: Path | str, *, targets: Optional[Sequence[str]] = None, prompt_tokens: Optional[int] = None,
             new_tokens: Optional[int] = None, repeats: int = 5, warmup: int = 1,
             artifacts: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Measure every artifact on every target; write RUN/bench/results.json and report.md as a run stage."""
    from distill.recipe import load_recipe
    from distill.rundir import RunDir, library_versions

    from bench.host import machine_info

    rd = RunDir(run_dir)
    recipe = load_recipe(rd.path / "recipe.yaml")
    cfg = json.loads((rd.path / "student" / "config.json").read_text())
    found = artifacts_of(rd.path)
    chosen = {k: v for k, v in found.items() if artifacts is None or k in artifacts}
    tgts = resolve_targets(targets or recipe.bench.targets, recipe.bench.custom_targets)
    P, N = prompt_tokens or recipe.bench.seq[0], new_tokens or recipe.lm.new_tokens
    rows = []
    for name, (runtime, path) in chosen.items():
        for t in tgts:
            if t.qemu_cpu:
                continue  # emulated ARM: a correctness check elsewhere, never a speed
            spec = {"runtime": runtime, "path": str(path), "prompt_tokens": P, "new_tokens": N, "repeats": repeats,
                    "warmup": warmup, "vocab_size": cfg["vocab_size"]}
            res = run_lm_worker(spec, t)
            rows.append({"artifact": name, "target": t.name, "threads": t.threads, "prompt_tokens": P,
                         "new_tokens": N, "size_bytes": path.stat().st_size if path.is_file() else
                         sum(p.stat().st_size for p in path.glob("*.safetensors")), **res})
            if res["status"] == "ok":
                log.info("%s on %s: time to first token %.1f ms (prompt %d), decode %.1f tokens/s", name, t.name,
                         res["ttft_ms"]["p50"], P, res["decode_tokens_per_s"]["p50"])
    results = {"schema": 1, "task": "causal-lm", "host": machine_info(), "targets": [t.to_dict() for t in tgts],
               "repeats": repeats, "warmup": warmup, "rows": rows, "versions": library_versions()}

    def write(tmp: Path) -> None:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(report_md(results) + "\n")

    with rd.lock():
        rd.run_stage("bench", {"artifacts": {k: str(v[1]) for k, v in chosen.items()}, "rows": len(rows)}, write,
                     resume=False)
    return results


def report_md(results: dict[str, Any]) -> str:
    lines = ["| artifact | target | MB | time to first token p50 (ms) | decode tokens/s p50 |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['artifact']} | {r['target']} | | failed: {r['error'].splitlines()[-1][:80]} | |")
            continue
        lines.append(f"| {r['artifact']} | {r['target']} | {r['size_bytes'] / 1e6:.1f} | {r['ttft_ms']['p50']:.1f} "
                     f"| {r['decode_tokens_per_s']['p50']:.1f} |")
    first = results["rows"][0] if results["rows"] else {}
    lines.append(f"\nPrompt {first.get('prompt_tokens')} tokens, {first.get('new_tokens')} generated greedily; "
                 f"median of {results['repeats']} runs after {results['warmup']} warm-up, one process per row.")
    return "\n".join(lines)
