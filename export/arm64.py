"""The ARM check: each .onnx artifact run by aarch64 onnxruntime under qemu and by this host's onnxruntime.

onnxruntime's int8 kernels differ between x86 and ARM, so an accuracy measured here is proven only for
this CPU. Both sides get the same token ids (tokenized here with the export folder's tokenizer and
passed as .npy files, so the aarch64 side needs only numpy and onnxruntime) and the same session
options (export/arm64_side.py runs on both). Per artifact and split: label agreement with the host,
max |logit difference|, and accuracy on ARM. Emulation makes the aarch64 side 100-1000x slower, so its
wall time is recorded only as such and never reported as a speed.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from distill.arm64_env import PROFILES
from distill.errors import DistillError

log = logging.getLogger(__name__)

SCHEMA = 1
SPLITS = ("validation", "test")
# ARM vs x86 labels of the same artifact. Stricter than the int8 parity gate (99% against PyTorch): here
# the model is the same file and only the CPU's kernels differ, so a lower agreement is a real finding.
MIN_AGREEMENT = 0.995
MAX_LENGTH = 256  # as export's parity and accuracy passes (export/runtime.py)
BATCH_SIZE = 32
EMULATED_NOTE = ("aarch64 onnxruntime under qemu user-mode on this x86 host: a correctness check only. Emulation "
                 "runs 100-1000x slower than an ARM CPU, so its wall times are not speeds.")


# ----------------------------------------------------------------------------------------------- input


def export_artifacts(folder: Path) -> dict[str, Path]:
    """KEY -> .onnx file for every artifact export.json lists as ok (a .ort twin holds the same graph)."""
    manifest = Path(folder) / "export.json"
    try:
        entries = json.loads(manifest.read_text())["artifacts"]
    except (OSError, ValueError, KeyError):
        raise DistillError(f"{manifest} is missing or unreadable, so there are no artifacts to check on ARM. Run "
                           "`distill export onnx` first.") from None
    out = {}
    for key, e in entries.items():
        e = e or {}
        if e.get("status", "ok") != "ok" or not str(e.get("file", "")).endswith(".onnx"):
            continue
        file = Path(folder) / e["file"]
        if not file.is_file():
            raise DistillError(f"export.json lists {key} as {e['file']!r}, but {file} does not exist. Rerun the export.")
        out[key] = file
    if not out:
        raise DistillError(f"{manifest} lists no usable .onnx artifact; rerun the export.")
    return out


def read_splits(run_dir: Path, names: tuple[str, ...] = SPLITS) -> dict[str, list[dict]]:
    """{"text", "label"} rows of a run directory's data/SPLIT.jsonl (models/README.md)."""
    from export.source import read_jsonl

    return {n: read_jsonl(Path(run_dir) / "data" / f"{n}.jsonl", required=True) for n in names}


def prepare_inputs(tokenizer: Path, splits: dict[str, list[dict]], work: Path,
                   max_length: int = MAX_LENGTH) -> dict[str, dict[str, Any]]:
    """Tokenize each split here and save it as .npy, rows sorted by length (so each batch is cut to its
    own longest row: emulation time goes with the tokens); labels in the same order, or None."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    tok.padding_side = "right"  # arm64_side.split_logits cuts each batch on the right
    limit = min(max_length, tok.model_max_length or max_length)
    out = {}
    for split, rows in splits.items():
        enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=limit, return_tensors="np")
        lengths = np.asarray(enc["attention_mask"]).sum(1)
        order = np.argsort(lengths, kind="stable")
        folder = work / "inputs" / split
        folder.mkdir(parents=True)
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            if name in enc:
                np.save(folder / f"{name}.npy", np.asarray(enc[name], dtype=np.int64)[order])
        np.save(folder / "lengths.npy", lengths[order])
        labelled = all("label" in r for r in rows)
        out[split] = {"dir": folder, "n": len(rows), "tokens": int(lengths.sum()),
                      "labels": np.array([int(r["label"]) for r in rows], dtype=np.int64)[order] if labelled else None}
    return out


# ---------------------------------------------------------------------------------------------- output


def parse_result(out: Path, spec: dict, *, machine: Optional[str] = None,
                 proc: Optional[subprocess.CompletedProcess] = None) -> dict:
    """Read what arm64_side wrote into out: result.json plus logits[KEY][SPLIT] arrays; checks it is all there."""
    where = "the emulated aarch64 side" if machine == "aarch64" else "the host side"
    tail = "\n".join((proc.stderr if proc else "").strip().splitlines()[-8:])
    try:
        res = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        code = f" (exit {proc.returncode})" if proc else ""
        raise DistillError(f"{where} of the ARM check wrote no result{code}. Rerun with --debug; if the aarch64 "
                           f"environment is broken, rebuild it with `distill assets install arm64-env --force`."
                           f"{chr(10) + tail if tail else ''}") from None
    if res.get("schema") != SCHEMA:
        raise DistillError(f"{out / 'result.json'} has schema {res.get('schema')!r}, expected {SCHEMA}.")
    if machine and res.get("machine") != machine:
        raise DistillError(f"{where} reported machine {res.get('machine')!r}, not {machine!r}: it did not run under "
                           "emulation. Check that qemu-aarch64-static runs ROOT/usr/bin/python3.")
    logits: dict[str, dict[str, np.ndarray]] = {}
    for key in spec["artifacts"]:
        entry = res.get("artifacts", {}).get(key)
        if entry is None:
            raise DistillError(f"{where} gave no logits for {key}.{chr(10) + tail if tail else ''}")
        logits[key] = {}
        for split in spec["splits"]:
            info = entry["splits"].get(split) or {}
            arr = np.load(out / info["file"]) if info.get("file") and (out / info["file"]).exists() else None
            if arr is None or list(arr.shape) != info.get("shape"):
                raise DistillError(f"{where} wrote no readable logits for {key} on {split}.")
            logits[key][split] = arr
    res["logits"] = logits
    return res


def compare(host: np.ndarray, arm: np.ndarray) -> dict[str, Any]:
    """Label agreement, how many labels differ, max |logit difference|, and whether the logits are bit-identical."""
    if host.shape != arm.shape:
        raise DistillError(f"ARM logits have shape {arm.shape}, the host's {host.shape}: the two sides did not run "
                           "the same inputs.")
    n = len(host)
    same = int((host.argmax(-1) == arm.argmax(-1)).sum()) if n else 0
    return {"n": n, "label_agreement": same / n if n else 1.0, "disagreements": n - same,
            "max_abs_diff": float(np.abs(host.astype(np.float64) - arm).max()) if host.size else 0.0,
            "bit_identical": bool(np.array_equal(host, arm))}


def combine(host: dict, arm: dict, labels: dict[str, Optional[np.ndarray]], files: dict[str, str]) -> dict[str, dict]:
    """Per artifact: comparison per split, accuracy on ARM and on the host per labelled split, emulated time."""
    from export.accuracy import accuracy

    out = {}
    for key, by_split in host["logits"].items():
        entry = {"file": files.get(key, key), "splits": {}, "accuracy": {}}
        for split, h in by_split.items():
            a = arm["logits"][key][split]
            entry["splits"][split] = compare(h, a)
            if labels.get(split) is not None:
                entry["accuracy"][split] = {"arm": accuracy(labels[split], a), "host": accuracy(labels[split], h)}
        t = arm.get("artifacts", {}).get(key, {})
        entry["emulated_wall_s"] = round(t.get("load_s", 0.0) + t.get("run_s", 0.0), 1)
        out[key] = entry
    return out


def overall(entry: dict) -> tuple[float, int, int]:
    """(label agreement, disagreements, n) of an artifact over all its splits."""
    n = sum(s["n"] for s in entry["splits"].values())
    bad = sum(s["disagreements"] for s in entry["splits"].values())
    return ((n - bad) / n if n else 1.0), bad, n


def passed(artifacts: dict[str, dict], min_agreement: float = MIN_AGREEMENT) -> bool:
    return all(overall(e)[0] >= min_agreement for e in artifacts.values())


# ------------------------------------------------------------------------------------------------ check


def check(artifacts: dict[str, Path], tokenizer: Path, splits: dict[str, list[dict]], *, qemu_cpu: str = "max",
          graph_optimization_level: str = "all", threads: int = 1, batch_size: int = BATCH_SIZE,
          timeout: Optional[float] = None) -> dict[str, Any]:
    """Run artifacts (KEY -> .onnx) on the splits' texts here and on emulated aarch64; the comparison.

    The aarch64 environment must be built (`distill assets install arm64-env`). threads: onnxruntime
    intra-op threads on both sides (1 keeps emulation off the other cores).
    """
    from distill import arm64_env
    from export import arm64_side

    if graph_optimization_level not in arm64_side.LEVELS:
        raise DistillError(f"Unknown graph optimization level {graph_optimization_level!r}; choose one of "
                           f"{', '.join(arm64_side.LEVELS)}.")
    splits = {k: v for k, v in splits.items() if v}
    if not artifacts or not splits:
        raise DistillError("The ARM check needs at least one .onnx artifact and one non-empty split of texts.")
    root = arm64_env.require_built()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="distill-arm64-"))
    try:
        paths = {k: Path(p).resolve() for k, p in artifacts.items()}
        for p in (work, *paths.values()):
            _not_shadowed(root, p)
        inputs = prepare_inputs(Path(tokenizer), splits, work)
        spec = {"artifacts": {k: str(p) for k, p in paths.items()}, "splits": {s: str(i["dir"]) for s, i in inputs.items()},
                "graph_optimization_level": graph_optimization_level, "threads": threads, "batch_size": batch_size}
        arm64_side.run({**spec, "out": str(work / "host")})  # here first: a bad input fails in seconds
        host = parse_result(work / "host", spec)
        script = shutil.copy(arm64_side.__file__, work / "arm64_side.py")  # a folder of its own on sys.path
        (work / "spec.json").write_text(json.dumps({**spec, "out": str(work / "arm")}))
        tokens = sum(i["tokens"] for i in inputs.values())
        log.info("ARM check: %d artifact(s) x %d texts (%d tokens) on emulated aarch64, QEMU_CPU=%s, graph "
                 "optimization %s; emulation is slow (minutes)", len(paths), sum(i["n"] for i in inputs.values()),
                 tokens, qemu_cpu, graph_optimization_level)
        try:
            proc = arm64_env.run_python(root, [str(script), str(work / "spec.json")], qemu_cpu=qemu_cpu, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DistillError(f"The emulated aarch64 run did not finish within {timeout:.0f} s. Check fewer texts or "
                               "artifacts, or allow more time.") from None
        arm = parse_result(work / "arm", spec, machine="aarch64", proc=proc)
        result = {
            "schema": SCHEMA, "qemu_cpu": qemu_cpu, "profile": PROFILES.get(qemu_cpu, f"QEMU_CPU={qemu_cpu}"),
            "graph_optimization_level": graph_optimization_level, "threads": threads, "batch_size": batch_size,
            "max_length": MAX_LENGTH, "min_agreement": MIN_AGREEMENT,
            "env": {"path": str(root), "pins_sha256": arm64_env.pins_hash(arm64_env.pins())},
            "arm": {k: arm.get(k) for k in ("machine", "python", "onnxruntime", "numpy", "hwcaps", "qemu_cpu")},
            "host": {k: host.get(k) for k in ("machine", "python", "onnxruntime", "numpy")},
            "splits": {s: i["n"] for s, i in inputs.items()},
            "artifacts": combine(host, arm, {s: i["labels"] for s, i in inputs.items()},
                                 {k: p.name for k, p in paths.items()}),
            "note": EMULATED_NOTE,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["passed"] = passed(result["artifacts"])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["verdict"] = verdict(result)
    (log.info if result["passed"] else log.warning)("ARM check: %s", result["verdict"])
    return result


def check_export(folder: Path, splits: dict[str, list[dict]], **kw: Any) -> dict[str, Any]:
    """The check on every .onnx artifact an export folder lists, with the tokenizer saved in that folder."""
    return check(export_artifacts(folder), Path(folder), splits, **kw)


def _not_shadowed(root: Path, path: Path) -> None:
    # qemu -L opens ROOT/PATH when it exists, else the host's PATH: a file of the same path
    # inside ROOT would be read instead of the host's.
    if (root / Path(path).relative_to("/")).exists():
        raise DistillError(f"{path} also exists inside the aarch64 environment ({root}), which would read its own "
                           "copy instead; move the file elsewhere.")


# ------------------------------------------------------------------------------------------- reporting


def _acc(entry: dict, split: str = "test") -> tuple[Optional[float], Optional[float]]:
    a = entry["accuracy"].get(split)
    return (a["arm"]["accuracy"], a["host"]["accuracy"]) if a else (None, None)


def verdict(result: dict) -> str:
    """The outcome in one sentence."""
    arts = result["artifacts"]
    where = (f"On emulated aarch64 (QEMU_CPU={result['qemu_cpu']}, onnxruntime {result['arm']['onnxruntime']}, "
             f"graph optimization {result['graph_optimization_level']})")
    n = max(overall(e)[2] for e in arts.values())
    if all(s["bit_identical"] for e in arts.values() for s in e["splits"].values()):
        return f"{where}, every artifact gave bit-identical logits to x86 on all {n:,} texts, so the accuracy measured on this host holds on ARM."
    key, diff = max(((k, max(s["max_abs_diff"] for s in e["splits"].values())) for k, e in arts.items()), key=lambda x: x[1])
    if all(overall(e)[1] == 0 for e in arts.values()):
        return (f"{where}, every artifact picked the same label as on x86 for all {n:,} texts (largest |logit diff| "
                f"{diff:.1e}, {key}), so the accuracy measured on this host holds on ARM.")
    worst = min(arts, key=lambda k: overall(arts[k])[0])
    agree, bad, total = overall(arts[worst])
    arm_acc, host_acc = _acc(arts[worst])
    acc = f"; test accuracy {arm_acc:.1%} on ARM vs {host_acc:.1%} on x86" if arm_acc is not None else ""
    if result.get("passed", passed(arts, result.get("min_agreement", MIN_AGREEMENT))):
        return (f"{where}, labels agree with x86 on at least {agree:.2%} of texts ({worst}: {bad} of {total:,} differ"
                f"{acc}), above the {result.get('min_agreement', MIN_AGREEMENT):.1%} bar, so the host's accuracy "
                "holds on ARM to within that difference.")
    failing = [k for k, e in arts.items() if overall(e)[0] < result.get("min_agreement", MIN_AGREEMENT)]
    return (f"{where}, {', '.join(failing)} agree{'s' if len(failing) == 1 else ''} with x86 on only {agree:.2%} of "
            f"texts ({worst}: {bad} of {total:,} differ{acc}), below the {result.get('min_agreement', MIN_AGREEMENT):.1%} "
            "bar: measure accuracy on an ARM device before trusting the host's figure.")


TABLE_HEAD = ["artifact", "split", "n", "labels agree with x86", "max abs logit diff", "bit-identical", "ARM accuracy",
              "x86 accuracy", "emulated wall s (not a speed)"]


def table(result: dict, labels: Optional[dict[str, str]] = None) -> list[list[str]]:
    """Rows under TABLE_HEAD: one per artifact and split."""
    rows = []
    for key, e in result["artifacts"].items():
        for i, (split, s) in enumerate(e["splits"].items()):
            arm_acc, host_acc = _acc(e, split)
            rows.append([(labels or {}).get(key, key) if i == 0 else "", split, f"{s['n']:,}",
                         f"{s['label_agreement']:.2%}" + (f" ({s['disagreements']} differ)" if s["disagreements"] else ""),
                         f"{s['max_abs_diff']:.1e}", "yes" if s["bit_identical"] else "no",
                         "–" if arm_acc is None else f"{arm_acc:.2%}", "–" if host_acc is None else f"{host_acc:.2%}",
                         f"{e['emulated_wall_s']:.0f}" if i == 0 else ""])
    return rows
