"""`run_bench`: the one entry point behind `distill bench`.

Every (artifact x target x batch x sequence length) is measured in its own fresh process
(bench.measure); accuracy comes from export.json / metrics.json and is computed on data/test.jsonl
when missing. ARM targets (arm64-emulated*) measure no latency: they run the export's .onnx files
with aarch64 onnxruntime under qemu and compare them with this host (export/arm64.py). Into a run directory the output is the `bench` stage: written to a temporary sibling
under the run's lock and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from distill import progress
from distill.errors import DistillError
from distill.rundir import staged_dir

from bench.artifacts import Artifact, discover_file, discover_run, onnx_artifact
from bench.targets import Target, resolve_targets

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("cpu", "mobile-1t")
DEFAULT_TEXTS = 200  # test texts timed one by one at their own length (evenly spaced over the split)
FALLBACK_SEQ = 128
WORKER_TIMEOUT_S = 900  # one measurement; a teacher at 1 thread, batch 8 x 512 stays well under
INPUT_SEED = 0
BENCHED_STAGES = ("teacher", "student", "onnx", "onnx-teacher")  # a run's stages whose files the bench times


@dataclass
class BenchResult:
    results: dict[str, Any]  # the content of results.json
    report_dir: Path
    files: dict[str, Path] = field(default_factory=dict)  # json, md, html, and one entry per plot

    @property
    def rows(self) -> list[dict[str, Any]]:
        from bench.report import summary

        return summary(self.results)


def run_bench(path: str | os.PathLike, *, targets: Optional[Sequence[str]] = None,
              batch: Optional[Sequence[int]] = None, seq: Optional[Sequence[int]] = None,
              iterations: Optional[int] = None, warmup: Optional[int] = None,
              report_dir: Optional[str | os.PathLike] = None, compare_optimum: Optional[bool] = None,
              recipe: Any = None, arm64_opt_level: Optional[str] = "all", texts: Optional[int] = None) -> BenchResult:
    """Benchmark a run directory (every artifact of onnx/export.json plus the PyTorch references) or one
    .onnx / .ort file.

    Arguments left as None come from `recipe.bench` (the run's own recipe.yaml when `recipe` is None),
    else from the built-in defaults (targets cpu and mobile-1t, batch 1, the deployed length (the export's
    max_length; 128 for a file without tokenizer files), 50 iterations, 10 warm-up, 500 real test texts
    timed at their own length, no optimum comparison). arm64_opt_level: onnxruntime graph optimization level of the
    ARM check, the same on both sides (disable, basic, extended, all). Output: RUN/bench/ for a run directory, FILE_DIR/bench-STEM/
    for a single file, or report_dir.
    """
    path, arm64_opt_level = Path(path), arm64_opt_level or "all"
    if not path.exists():
        raise DistillError(f"{path} does not exist; pass a run directory (models/NAME) or an .onnx / .ort file.")
    is_run = path.is_dir()
    if not is_run and path.suffix not in (".onnx", ".ort"):
        raise DistillError(f"{path} is neither a run directory nor an .onnx / .ort file.")
    if recipe is None and is_run and (path / "recipe.yaml").exists():
        from distill.recipe import load_recipe

        recipe = load_recipe(path / "recipe.yaml")
    cfg = getattr(recipe, "bench", None)
    pick = lambda given, attr, default: given if given is not None else (getattr(cfg, attr) if cfg else default)  # noqa: E731
    targets_ = resolve_targets(pick(targets, "targets", None) or DEFAULT_TARGETS, cfg.custom_targets if cfg else ())
    batch_ = list(pick(batch, "batch", [1]))
    iterations_, warmup_ = int(pick(iterations, "iterations", 50)), int(pick(warmup, "warmup", 10))
    compare = bool(pick(compare_optimum, "compare_optimum", False))
    texts_ = int(pick(texts, "texts", DEFAULT_TEXTS))

    if is_run:
        artifacts, notes = discover_run(path)
    else:
        artifacts, notes = discover_file(path), []
    deployed = next((a.max_length for a in artifacts if a.runtime != "pytorch" and a.max_length), None)
    seq_ = list(pick(seq, "seq", None) or [deployed or FALLBACK_SEQ])
    if deployed is None and not seq:
        notes.append(f"no deployed length found (no tokenizer files beside the model): fixed rows at {FALLBACK_SEQ} tokens")
    if min(batch_ + seq_) < 1 or iterations_ < 1 or warmup_ < 0 or texts_ < 0:
        raise DistillError(f"batch, seq and iterations must be at least 1, warmup and texts at least 0 "
                           f"(got batch {batch_}, seq {seq_}, iterations {iterations_}, warmup {warmup_}, texts {texts_}).")
    if any(t.qemu_cpu for t in targets_):
        if is_run:
            from distill.arm64_env import require_built

            require_built()  # before any measurement: building it takes minutes and root
        else:
            notes.append("ARM targets need a run directory (its data/ splits and onnx/ export); not checked")
    plan = dict(path=path, is_run=is_run, artifacts=artifacts, notes=notes, targets=targets_, batch=batch_,
                seq=seq_, iterations=iterations_, warmup=warmup_, compare=compare, arm64_opt_level=arm64_opt_level,
                texts=texts_ if is_run else 0)

    if is_run and report_dir is None:
        from distill.rundir import RunDir

        rd = RunDir(path)
        inputs = {"artifacts": {a.key: a.to_dict() for a in artifacts}, "targets": [t.to_dict() for t in targets_],
                  "batch": batch_, "seq": seq_, "iterations": iterations_, "warmup": warmup_, "compare": compare,
                  "arm64_opt_level": arm64_opt_level, "texts": texts_}
        holder: dict[str, Any] = {}
        with rd.lock():
            rd.run_stage("bench", inputs, lambda tmp: holder.update(_bench_into(tmp, path / "bench", **plan)),
                         resume=False)
        final = path / "bench"
        return BenchResult(holder["results"], final, {k: final / v.name for k, v in holder["files"].items()})

    final = Path(report_dir) if report_dir is not None else path.parent / f"bench-{path.stem}"
    final.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(final) as tmp:
        done = _bench_into(tmp, final, **plan)
    return BenchResult(done["results"], final, {k: final / v.name for k, v in done["files"].items()})


def _bench_into(out: Path, final: Path, *, path: Path, is_run: bool, artifacts: list[Artifact], notes: list[str],
                targets: list[Target], batch: list[int], seq: list[int], iterations: int, warmup: int,
                compare: bool, arm64_opt_level: str, texts: int = 0) -> dict[str, Any]:
    from bench import plots, report
    from bench.host import machine_info
    from bench.measure import run_worker
    from distill import __version__
    from distill.rundir import now

    host = machine_info()
    root = path if is_run else path.parent
    artifacts = list(artifacts)
    notes = list(notes)
    if compare:
        artifacts += _optimum_default(path, is_run, out, final, host["quantization_preset"], notes)
        if is_run:
            artifacts += _tfidf_floor(path)
    arm_targets = [t for t in targets if t.qemu_cpu]
    targets = [t for t in targets if not t.qemu_cpu]
    if is_run:
        _fill_accuracy(artifacts, path / "data" / "test.jsonl", (targets or resolve_targets(["cpu"]))[0], notes)
    vocab = min((a.vocab_size for a in artifacts if a.vocab_size and a.runtime != "tfidf"), default=None)
    if vocab is None:
        vocab = 100
        notes.append("no vocabulary size found (no config.json beside the model): token ids drawn from [0, 100)")

    rows: list[dict[str, Any]] = []
    fixed = [a for a in artifacts if a.runtime != "tfidf"]  # the floor has no token shape
    test = path / "data" / "test.jsonl"
    by_text = artifacts if is_run and texts and test.exists() else []
    total = len(fixed) * len(targets) * len(batch) * len(seq) + len(by_text) * len(targets)
    skipped: set[tuple[str, int]] = set()
    # Each row is measured in its own worker process: progress is counted here, a step per row.
    with progress.task("bench: latency rows", total=total) as advance:
        for b in batch:
            for s in seq:
                for t in targets:
                    for a in fixed:
                        if a.runtime == "onnxruntime-e2e" and a.max_length and s > a.max_length:
                            skipped.add((a.label, s))  # its in-graph tokenizer cuts every text at the deployed length
                            advance()
                            continue
                        log.info("[%d/%d] %s on %s, batch %d x seq %d", len(rows) + 1, total, a.label, t.name, b, s)
                        advance.describe(f"bench: {a.label} on {t.name}")
                        spec = {"task": "latency", "runtime": a.runtime, "path": str(a.path), "batch": b, "seq": s,
                                "vocab_size": vocab, "seed": INPUT_SEED, "iterations": iterations, "warmup": warmup}
                        r = run_worker(spec, t, timeout=WORKER_TIMEOUT_S)
                        rows.append({"artifact": a.key, "target": t.name, "batch": b, "seq": s, "inputs": "synthetic",
                                     "size_bytes": a.size_bytes, **r})
                        advance()
        with tempfile.TemporaryDirectory(prefix="bench-texts-") as ids_dir:
            ids_files = _text_ids_files(by_text, test, texts, seq[0], Path(ids_dir))
            for t in targets:
                for a in by_text:
                    log.info("[%d/%d] %s on %s, %d test texts one by one", len(rows) + 1, total, a.label, t.name, texts)
                    advance.describe(f"bench: {a.label} on {t.name}, test texts")
                    spec = {"task": "latency-texts", "runtime": a.runtime, "path": str(a.path), "data": str(test),
                            "max_texts": texts, "warmup": min(warmup, texts), "max_length": a.max_length or seq[0],
                            "head": a.head,
                            "tokenizer": str(a.tokenizer) if a.tokenizer else None,
                            "ids_file": ids_files.get(a.key),
                            "train": str(path / "data" / "train.jsonl"), "seed": INPUT_SEED}
                    r = run_worker(spec, t, timeout=WORKER_TIMEOUT_S)
                    rows.append({"artifact": a.key, "target": t.name, "batch": 1, "seq": None, "inputs": "texts",
                                 "size_bytes": a.size_bytes, **r})
                    advance()
        advance.describe("bench: latency rows")
    for label, s in sorted(skipped):
        notes.append(f"{label}: no fixed row at {s} tokens, above its deployed length (its tokenizer truncates there)")
    peaks = _peaks(targets, notes) if any(a.onnx_graph for a in artifacts) else {}
    _hardware_columns(rows, {a.key: a for a in artifacts}, peaks)

    warnings = []
    arm64 = _arm64(path, arm_targets, arm64_opt_level, warnings) if is_run else []
    noisy = [r for r in rows if r.get("noisy")]
    if noisy:
        warnings.append(f"{len(noisy)} of {len(rows)} measurements had a large spread (p90 more than 25% above p50, "
                        "or p99 over twice p50): the machine was busy. Compare medians, and rerun on a quiet "
                        "machine before quoting them: " + ", ".join(f"{r['artifact']}@{r['target']}" for r in noisy))
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        warnings.append(f"{len(failed)} measurement(s) failed: " + "; ".join(
            f"{r['artifact']}@{r['target']}: {r.get('error', '')[:120]}" for r in failed))
    if len({r.get("pid") for r in rows if r["status"] == "ok"}) != len([r for r in rows if r["status"] == "ok"]):
        warnings.append("two measurements shared a process id; the one-process-per-measurement rule was broken")
    emulated = [t.name for t in targets if t.emulated]
    results = {
        "schema": report.SCHEMA, "tool": "edge-distill", "version": __version__, "created": now(),
        "source": {"path": str(path), "kind": "run" if is_run else "file",
                   **({"measured": measured_stages(path)} if is_run else {})},
        "host": host,
        "config": {"targets": [t.to_dict() for t in targets + arm_targets], "batch": batch, "seq": seq, "iterations": iterations,
                   "warmup": warmup, "input_seed": INPUT_SEED, "vocab_size": vocab, "texts": len(by_text) and texts,
                   "deployed_length": next((a.max_length for a in artifacts if a.runtime.startswith("onnxruntime")
                                            and a.max_length), None),
                   "inputs": f"synthetic token ids (seed {INPUT_SEED}, uniform over [0, {vocab})) of exactly the given "
                             "length, attention mask all ones, the same for every row (text-in rows: the word "
                             "'movie' repeated to that many tokens)",
                   "texts_inputs": "up to the given number of test texts, evenly spaced over data/test.jsonl, one at a "
                                   "time (batch 1), each at its own token length cut at the artifact's deployed length, "
                                   "no padding; token-id rows get ids from the Python tokenizer outside the timing "
                                   "(an app tokenizes natively), text-in rows time their tokenizer too"},
        "peaks": peaks,
        "emulation_note": (f"{', '.join(emulated)}: phone-class budgets emulated on this host ({host['cpu_model']}, "
                           f"{', '.join(host['isa']) or 'no SIMD extensions detected'}) by restricting cores and "
                           "threads. They are not measurements on a phone: memory bandwidth, caches, clocks and the "
                           "instruction set (ARM NEON / dot-product on a phone) all differ."
                           if emulated else f"All latency targets ran on this host ({host['cpu_model']}, "
                           f"{', '.join(host['isa'])}); none is an emulation.")
                          + (f" {', '.join(t.name for t in arm_targets)}: aarch64 onnxruntime under qemu, checked for "
                             "label agreement with this host and accuracy only (ARM section); no latency."
                             if arm_targets else ""),
        "artifacts": [a.to_dict() for a in artifacts],
        "rows": rows, "notes": notes, "warnings": warnings, "arm64": arm64,
    }
    pngs = [p for p in (plots.latency_plot(results, out / "latency.png"),
                        plots.accuracy_latency_plot(results, out / "accuracy_vs_latency.png"),
                        plots.training_plot(path / "logs" / "train.jsonl", out / "training.png") if is_run else None)
            if p is not None]
    results["plots"] = [p.name for p in pngs]
    files = {"json": report.write_json(results, out / "results.json"),
             "md": report.write_markdown(results, out / "report.md", pngs),
             "html": report.write_html(results, out / "report.html", pngs)}
    files.update({p.stem: p for p in pngs})
    for w in warnings:
        log.warning(w)
    return {"results": results, "files": files}


def measured_stages(run: Path) -> dict[str, Optional[str]]:
    """The output digests of the run's stages whose models the bench measures, so that a later
    summary can tell a bench of an earlier export or student from one of the current files."""
    from distill.rundir import RunDir

    rd = RunDir(run)
    return {name: rd.output_digest(name) for name in BENCHED_STAGES}


def _text_ids_files(artifacts: Sequence[Artifact], test: Path, texts: int, seq: int, folder: Path) -> dict[str, str]:
    """The timed test texts tokenized once per (tokenizer, deployed length, head) and written to folder,
    so the text rows' worker processes read ids instead of loading transformers (and torch) each: what
    an app tokenizes natively stays out of the timing and out of the measured process. {artifact key: file}."""
    from bench.worker import bench_texts, text_ids

    chosen = bench_texts(test, texts) if artifacts else []
    files: dict[tuple, str] = {}
    by_key: dict[str, str] = {}
    for a in artifacts:
        if not a.tokenizer:
            continue
        key = (str(a.tokenizer), a.max_length or seq, a.head)
        if key not in files:
            try:
                ids = text_ids(str(a.tokenizer), chosen, key[1], a.head)
            except Exception as e:  # noqa: BLE001 - the row's own worker then fails on it and is reported failed
                log.warning("%s: its tokenizer (%s) did not load here: %s", a.label, a.tokenizer, e)
                files[key] = ""
                continue
            f = folder / f"ids-{len(files)}.json"
            f.write_text(json.dumps({"texts": chosen, "ids": ids}), encoding="utf-8")
            files[key] = str(f)
        if files[key]:
            by_key[a.key] = files[key]
    return by_key


def _optimum_default(path: Path, is_run: bool, out: Path, final: Path, preset: str, notes: list[str]) -> list[Artifact]:
    """The student and the teacher as a user would ship them without edge-distill: `optimum-cli export onnx` +
    `optimum-cli onnxruntime quantize --<preset>` (dynamic, per-tensor, no fusions)."""
    from bench.artifacts import trained_head, trained_max_length
    from bench.optimum_default import export_optimum_default

    if not is_run or not (path / "student" / "config.json").exists():
        notes.append("--compare-optimum needs the run's student/ folder (a Hugging Face model); not measured")
        return []
    made = []
    for key, which in (("optimum-default", "student"), ("teacher-optimum-int8", "teacher")):
        model = path / which
        if not (model / "config.json").exists():
            notes.append(f"no {which}/ Hugging Face folder: its optimum int8 row is missing")
            continue
        file = export_optimum_default(model, out / key, preset)
        a = onnx_artifact(key, file, path, tokenizer=model, max_length=trained_max_length(model),
                          head=trained_head(model))
        # Reports name the final location, not the temporary folder it is measured in.
        a.display_path = (final / key / file.name).relative_to(path).as_posix() if final.is_relative_to(path) \
            else str(final / key / file.name)
        made.append(a)
    notes.append(f"optimum default int8: the student and the teacher through `optimum-cli export onnx` + `optimum-cli "
                 f"onnxruntime quantize --{preset}` (dynamic, per-tensor, no fusions), as a user would without "
                 "edge-distill; their accuracy is computed here at each model's trained length")
    return made


def _tfidf_floor(path: Path) -> list[Artifact]:
    """The TF-IDF + logistic-regression floor as a row: accuracy from the evaluate stage, latency measured."""
    import json

    from bench.artifacts import LABELS

    summary = path / "evaluate" / "summary.json"
    if not (path / "data" / "train.jsonl").exists():
        return []
    acc = None
    if summary.exists():
        floor = (json.loads(summary.read_text()).get("rows") or {}).get("tfidf_logreg") or {}
        acc = {"accuracy": floor.get("accuracy"), "macro_f1": floor.get("macro_f1"), "n": None} if floor else None
    return [Artifact("tfidf-floor", LABELS["tfidf-floor"], "tfidf", path / "data" / "train.jsonl", 0, acc,
                     "evaluate/summary.json" if acc else None, display_path="data/train.jsonl (fitted in the worker)")]


def _peaks(targets: list[Target], notes: list[str]) -> dict[str, dict]:
    """This host's int8 and fp32 matrix-multiply peak at each target's cores and threads, measured once."""
    from bench.measure import run_worker

    out = {}
    for t in targets:
        log.info("matrix-multiply peak on %s (%d thread(s))", t.name, t.threads)
        r = run_worker({"task": "peak", "seconds": 1.0}, t, timeout=WORKER_TIMEOUT_S)
        if r["status"] == "ok":
            out[t.name] = {k: v for k, v in r.items() if k not in ("status", "pid", "affinity", "env_threads", "os_threads")}
        else:
            notes.append(f"peak microbenchmark on {t.name} failed: {r.get('error', '')[:200]}")
    return out


def _hardware_columns(rows: list[dict[str, Any]], artifacts: dict[str, Artifact], peaks: dict[str, dict]) -> None:
    """Per ONNX row: the MACs of one inference at its shape (real-text rows: at their median length) and the
    achieved rate as a fraction of the target's measured peak."""
    from bench.macs import count_macs
    from bench.peak import fraction_of_peak

    cache: dict[tuple, dict] = {}
    for r in rows:
        a = artifacts[r["artifact"]]
        if r["status"] != "ok" or a.onnx_graph is None:
            continue
        seq = r["seq"] if r["seq"] is not None else int(round((r.get("tokens") or {}).get("p50", 0)))
        if seq < 1:
            continue
        key = (str(a.onnx_graph), r["batch"], seq)
        if key not in cache:
            try:
                cache[key] = count_macs(a.onnx_graph, batch=r["batch"], seq=seq)
            except Exception as e:  # noqa: BLE001 - a graph we cannot count still gets its latency row
                log.warning("MACs of %s not counted: %s", a.onnx_graph, e)
                cache[key] = {}
        macs = cache[key]
        if not macs:
            continue
        r["macs"] = {k: macs[k] for k in ("total", "int8", "fp32", "seq") if k in macs}
        if r["target"] in peaks:
            r["hardware"] = fraction_of_peak(macs, r["latency_ms"]["p50"], peaks[r["target"]])


def _arm64(path: Path, targets: list[Target], level: str, warnings: list[str]) -> list[dict[str, Any]]:
    """The ARM check of the run's export, once per ARM target (each a QEMU_CPU profile). A failed check
    is recorded and warned about, as a failed measurement is, so the latency rows are kept."""
    from export.arm64 import check_export, read_splits

    out = []
    for t in targets:
        try:
            out.append({"target": t.name, **check_export(path / "onnx", read_splits(path), qemu_cpu=t.qemu_cpu,
                                                         graph_optimization_level=level)})
        except DistillError as e:
            out.append({"target": t.name, "qemu_cpu": t.qemu_cpu, "error": str(e)})
            warnings.append(f"ARM check on {t.name} failed: {e}")
    return out


def _fill_accuracy(artifacts: Iterable[Artifact], test: Path, target: Target, notes: list[str]) -> None:
    from bench.measure import run_worker

    artifacts = list(artifacts)
    runnable = lambda a: test.exists() and (a.tokenizer is not None or a.runtime == "onnxruntime-e2e")  # noqa: E731
    # one worker process per artifact: progress is counted here, a step per artifact
    with progress.task("bench: accuracy", total=sum(a.accuracy is None and runnable(a) for a in artifacts)) as advance:
        for a in artifacts:
            if a.accuracy is not None:
                continue
            if not runnable(a):
                notes.append(f"{a.label}: no accuracy ({'no data/test.jsonl' if not test.exists() else 'no tokenizer'})")
                continue
            length = a.max_length or FALLBACK_SEQ
            log.info("accuracy of %s on %s at %d tokens", a.label, test, length)
            r = run_worker({"task": "accuracy", "runtime": a.runtime, "path": str(a.path), "max_length": length,
                            "head": a.head,
                            "tokenizer": str(a.tokenizer) if a.tokenizer else None, "data": str(test),
                            "train": str(test.parent / "train.jsonl")}, target, timeout=WORKER_TIMEOUT_S)
            advance()
            if r["status"] == "ok":
                a.accuracy = {k: r[k] for k in ("accuracy", "macro_f1", "n")}
                a.accuracy_source = f"computed at {length} tokens"
            else:
                notes.append(f"{a.label}: accuracy failed: {r.get('error', '')[:200]}")
