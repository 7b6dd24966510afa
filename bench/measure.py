"""Run one measurement in a fresh subprocess pinned to a target's cores with its thread count."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.targets import Target

log = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def worker_env(threads: int, spin: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    if not spin:  # PyTorch rows: OpenMP threads sleep instead of busy-waiting, as ORT's do with spinning off
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    # OpenMP / BLAS pools inside numpy and torch size themselves from these at import time.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_worker(spec: dict[str, Any], target: Target, *, timeout: float | None = None) -> dict[str, Any]:
    """Start `python -m bench.worker` pinned to target.cores; return its JSON result.

    On failure returns {"status": "failed", "error": <last lines of stderr>} rather than raising,
    so one broken artifact does not throw away the other measurements.
    """
    spec = {**spec, "threads": target.threads, "spin": target.spin}
    cores = set(target.cores)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "bench.worker", str(spec_file), str(out_file)]
        try:
            # Pinned before exec, so every thread the runtimes create inherits the mask.
            proc = subprocess.run(cmd, env=worker_env(target.threads, target.spin), capture_output=True, text=True,
                                  timeout=timeout, preexec_fn=lambda: os.sched_setaffinity(0, cores))
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not out_file.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
            log.warning("measurement of %s on %s failed (exit %s): %s", spec.get("path"), target.name,
                        proc.returncode, tail)
            return {"status": "failed", "error": tail or f"exit {proc.returncode}"}
        result = json.loads(out_file.read_text())
    result["status"] = "ok"
    return result
