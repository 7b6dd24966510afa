"""One table per run: teacher, student, student int8 and the TF-IDF floor, from the files the
stages wrote (evaluate/summary.json, onnx/export.json, bench/results.json). Reads only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _bench_p50(results: Optional[dict[str, Any]], *names: str) -> Optional[float]:
    """p50 ms at batch 1 on the `cpu` target for the first matching row name (None when not measured)."""
    if not results:
        return None
    rows = results.get("rows") or results.get("results") or []
    for name in names:
        for row in rows:
            if row.get("artifact") == name and row.get("target") == "cpu" and row.get("batch", 1) == 1:
                lat = row.get("latency_ms") or {}
                value = lat.get("p50") if isinstance(lat, dict) else row.get("p50_ms")
                if value is not None:
                    return float(value)
    return None


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Rows (name -> figures) and the paths a user looks at next."""
    run_dir = Path(run_dir)
    ev = _read(run_dir / "evaluate" / "summary.json") or {}
    ex = _read(run_dir / "onnx" / "export.json") or {}
    bench = _read(run_dir / "bench" / "results.json")
    rows: dict[str, dict[str, Any]] = {}
    for name in ("teacher", "student"):
        r = (ev.get("rows") or {}).get(name)
        if r:
            rows[name] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "parameters": r["parameters"],
                          "size_mb": r["size_mb"],
                          "p50_ms": _bench_p50(bench, f"{name}-pytorch", f"pytorch-{name}", name)}
    for key, art in (ex.get("artifacts") or {}).items():
        if not key.startswith("int8") or key.endswith("ort"):
            continue
        acc = (art.get("accuracy") or {}).get("test") or {}
        rows[f"student {key}"] = {"accuracy": acc.get("accuracy"), "macro_f1": acc.get("macro_f1"),
                                  "parameters": rows.get("student", {}).get("parameters"),
                                  "size_mb": round(art["size_bytes"] / 1e6, 2) if art.get("size_bytes") else None,
                                  "p50_ms": _bench_p50(bench, key),
                                  "status": "failed" if art.get("status") == "failed"
                                  or (art.get("parity") or {}).get("passed") is False else art.get("status")}
    floor = (ev.get("rows") or {}).get("tfidf_logreg")
    if floor:
        rows["TF-IDF + LR floor"] = {"accuracy": floor["accuracy"], "macro_f1": floor["macro_f1"]}
    paths = {}
    for label, rel in (("report", "bench/report.html"), ("ort", "onnx/model.int8-dynamic.ort"),
                       ("student", "student"), ("card", "student/README.md")):
        if (run_dir / rel).exists():
            paths[label] = str(run_dir / rel)
    return {"run": str(run_dir), "split_seed": ev.get("split_seed"), "test_n": ev.get("test_n"), "rows": rows,
            "paths": paths}
