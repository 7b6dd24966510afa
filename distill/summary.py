"""One table per run: teacher, student, student int8, the TF-IDF floor and the SetFit baselines, from
the files the stages wrote (evaluate/summary.json, baselines/summary.json, onnx/export.json,
bench/results.json). Reads only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def latency_basis(results: Optional[dict[str, Any]]) -> str:
    """What the summary's p50 column is: real test texts when the bench timed them, else the fixed shape."""
    rows = (results or {}).get("rows") or []
    if any(r.get("inputs") == "texts" for r in rows):
        return "real test texts one at a time, target cpu"
    seq = next((r.get("seq") for r in rows if r.get("batch", 1) == 1), 128)
    return f"batch 1, seq {seq}, target cpu"


def _bench_p50(results: Optional[dict[str, Any]], *names: str) -> Optional[float]:
    """p50 ms at batch 1 on the `cpu` target for the first matching row name (None when not measured):
    the real-text row when there is one, else the first fixed-shape row."""
    if not results:
        return None
    rows = results.get("rows") or results.get("results") or []
    rows = sorted(rows, key=lambda r: r.get("inputs") != "texts")
    for name in names:
        for row in rows:
            if row.get("artifact") == name and row.get("target") == "cpu" and row.get("batch", 1) == 1:
                lat = row.get("latency_ms") or {}
                value = lat.get("p50") if isinstance(lat, dict) else row.get("p50_ms")
                if value is not None:
                    return float(value)
    return None


def _short(model: Any) -> str:
    """packaged:mpnet-base -> mpnet-base; a folder -> its name."""
    return Path(str(model).split(":", 1)[-1]).name


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
        if not (key.startswith("int8") or key.startswith("e2e-")) or key.endswith("ort"):
            continue
        acc = (art.get("accuracy") or {}).get("test") or {}
        rows[f"student {key}"] = {"accuracy": acc.get("accuracy"), "macro_f1": acc.get("macro_f1"),
                                  "parameters": rows.get("student", {}).get("parameters"),
                                  "size_mb": round(art["size_bytes"] / 1e6, 2) if art.get("size_bytes") else None,
                                  "p50_ms": _bench_p50(bench, key),
                                  "status": "failed" if art.get("status") == "failed"
                                  or (art.get("parity") or {}).get("passed") is False else art.get("status")}
    for a in (bench or {}).get("artifacts") or []:
        if a.get("key") == "teacher-optimum-int8" and a.get("accuracy"):
            rows["teacher int8, optimum default"] = {"accuracy": a["accuracy"].get("accuracy"),
                                                     "macro_f1": a["accuracy"].get("macro_f1"),
                                                     "parameters": rows.get("teacher", {}).get("parameters"),
                                                     "size_mb": round(a["size_bytes"] / 1e6, 2) if a.get("size_bytes") else None,
                                                     "p50_ms": _bench_p50(bench, a["key"])}
    floor = (ev.get("rows") or {}).get("tfidf_logreg")
    if floor:
        rows["TF-IDF + LR floor"] = {"accuracy": floor["accuracy"], "macro_f1": floor["macro_f1"],
                                     "p50_ms": _bench_p50(bench, "tfidf-floor")}
    base = _read(run_dir / "baselines" / "summary.json") or {}
    for key, label in (("setfit", "SetFit"), ("setfit_distilled", "SetFit distilled")):
        r = (base.get("rows") or {}).get(key)
        if r:
            rows[f"{label} ({_short(r.get('model'))})"] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
    paths = {}
    for label, rel in (("report", "bench/report.html"), ("ort", "onnx/model.int8-dynamic.ort"),
                       ("e2e ort", "onnx/model.e2e.int8.ort"),
                       ("student", "student"), ("card", "student/README.md")):
        if (run_dir / rel).exists():
            paths[label] = str(run_dir / rel)
    return {"run": str(run_dir), "split_seed": ev.get("split_seed"), "test_n": ev.get("test_n"), "rows": rows,
            "paths": paths, "latency": latency_basis(bench), "stale_export": stale_export(run_dir, ex),
            "stale_bench": stale_bench(run_dir, bench),
            "stages": stage_costs(run_dir)}


def stage_costs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each stage this run built (reused or linked ones keep the figures of the run that built them):
    its wall time and peak RSS from run.json; the peak is None for stages recorded before it was."""
    stages = (_read(Path(run_dir) / "run.json") or {}).get("stages") or {}
    return {name: {"wall_s": rec["wall_s"], "peak_rss_mib": rec.get("peak_rss_mib"),
                   "peak_rss_scope": rec.get("peak_rss_scope")}
            for name, rec in stages.items() if rec.get("wall_s") is not None}


def stale_bench(run_dir: Path, bench: Optional[dict[str, Any]]) -> list[str]:
    """The stages (student, onnx, ...) rebuilt since the bench timed them: its p50 figures describe
    their earlier files. Empty when current, or for a bench made before it recorded what it timed."""
    return rebuilt_since(run_dir, ((bench or {}).get("source") or {}).get("measured") or {})


def stale_export(run_dir: Path, export: dict[str, Any]) -> bool:
    """True when onnx/ was exported from a student the run has replaced since (retrained by --resume)."""
    return bool(rebuilt_since(run_dir, {"student": (export.get("source") or {}).get("model_sha256")}))


def rebuilt_since(run_dir: Path, recorded: dict[str, Optional[str]]) -> list[str]:
    """The stages whose output digest is no longer the one recorded (None = not recorded: never stale)."""
    from distill.rundir import RunDir

    if not any(recorded.values()) or not (run_dir / "run.json").is_file():
        return []
    rd = RunDir(run_dir)
    return [name for name, was in recorded.items() if was and rd.output_digest(name) != was]
