"""Baseline on real weights: minilm-l6 (2-label head), PyTorch fp32 vs our int8 path vs optimum's default.

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/compare_minilm.py [--repeats 5] [--iterations 100] [--work DIR]

Batch 1, sequence 128, target `cpu` (all cores, one thread each) unless --target says otherwise. Every (variant x repeat) is its own
fresh pinned process (bench.measure); repeats are interleaved round-robin so that background load
hits every variant alike; the figure is the median of the per-process p50s, with their min-max.
Writes WORK/compare.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from bench.measure import run_worker
from bench.targets import resolve_targets

log = logging.getLogger(__name__)


def build(work: Path) -> dict[str, dict]:
    """Every variant's file (built once, reused); name -> worker spec fragment."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.assets import resolve

    pt, raw, opt = work / "pytorch", work / "onnx", work / "optimum"
    if not (pt / "config.json").exists():
        src = resolve("packaged:minilm-l6")
        torch.manual_seed(0)  # the 2-label head is new; seed it so reruns measure the same weights
        AutoModelForSequenceClassification.from_pretrained(src, num_labels=2).save_pretrained(pt)
        AutoTokenizer.from_pretrained(src).save_pretrained(pt)
    if not (raw / "model.onnx").exists():
        main_export(str(pt), raw, task="text-classification", local_files_only=True, do_validation=False)
    opt.mkdir(parents=True, exist_ok=True)
    # optimum's default: `optimum-cli onnxruntime quantize --avx512_vnni` (dynamic, per-tensor).
    for per_channel, suffix in ((False, "quantized"), (True, "per_channel")):
        if not (opt / f"model_{suffix}.onnx").exists():
            q = ORTQuantizer.from_pretrained(raw, file_name="model.onnx")
            q.quantize(save_dir=opt, file_suffix=suffix,
                       quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=per_channel))
    fused = work / "fused.onnx"
    if not fused.exists():
        cfg = json.loads((pt / "config.json").read_text())
        optimize_model(str(raw / "model.onnx"), model_type="bert", num_heads=cfg["num_attention_heads"],
                       hidden_size=cfg["hidden_size"]).save_model_to_file(str(fused))
    ours = {"fused-int8": {}, "fused-int8-per-channel": {"per_channel": True},
            "fused-int8-matmul-only": {"op_types_to_quantize": ["MatMul"]},
            "fused-int8-reduce-range": {"reduce_range": True}}
    for name, kw in ours.items():
        f = work / f"{name}.onnx"
        if not f.exists():
            # A fused graph has contrib ops without type info: DefaultTensorType=FLOAT (export/quantize.py).
            quantize_dynamic(fused, f, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **kw)
    spin_off = {"config": {"session.intra_op.allow_spinning": "0"}}
    return {
        "pytorch-fp32": {"runtime": "pytorch", "path": str(pt)},
        "onnx-fp32": {"runtime": "onnxruntime", "path": str(raw / "model.onnx")},
        "optimum-default-int8": {"runtime": "onnxruntime", "path": str(opt / "model_quantized.onnx")},
        "optimum-int8-per-channel": {"runtime": "onnxruntime", "path": str(opt / "model_per_channel.onnx")},
        **{f"ours-{n}": {"runtime": "onnxruntime", "path": str(work / f"{n}.onnx")} for n in ours},
        "optimum-default-int8-no-spin": {"runtime": "onnxruntime", "path": str(opt / "model_quantized.onnx"),
                                         "ort": spin_off},
        "ours-fused-int8-no-spin": {"runtime": "onnxruntime", "path": str(work / "fused-int8.onnx"), "ort": spin_off},
        "ours-fused-int8-opt-basic": {"runtime": "onnxruntime", "path": str(work / "fused-int8.onnx"),
                                      "ort": {"graph_optimization_level": "basic"}},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("models/_compare-minilm"), help="where the variants are built")
    ap.add_argument("--repeats", type=int, default=5, help="processes per variant")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--only", nargs="*", help="variant names to measure (default: all)")
    ap.add_argument("--target", default="cpu", help="bench target: cpu, mobile-2t, mobile-1t")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    variants = build(args.work)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    (target,) = resolve_targets([args.target])
    p50s: dict[str, list[float]] = {k: [] for k in variants}
    noisy: dict[str, int] = {k: 0 for k in variants}
    pids = set()
    for rep in range(args.repeats):
        for name, v in variants.items():
            r = run_worker({"task": "latency", "batch": 1, "seq": args.seq, "vocab_size": 30522, "seed": 0,
                            "iterations": args.iterations, "warmup": args.warmup, **v}, target)
            if r["status"] != "ok":
                log.error("%s failed: %s", name, r["error"])
                continue
            pids.add(r["pid"])
            p50s[name].append(r["latency_ms"]["p50"])
            noisy[name] += r["noisy"]
            log.info("repeat %d %-28s p50 %7.2f ms  p90 %7.2f ms%s", rep + 1, name, r["latency_ms"]["p50"],
                     r["latency_ms"]["p90"], "  (noisy)" if r["noisy"] else "")
    ref = p50s.get("optimum-default-int8") or []
    base, base_min = (statistics.median(ref), min(ref)) if ref else (None, None)
    summary = {}
    print(f"\nminilm-l6, batch 1 x seq {args.seq}, target {target.name} ({target.threads} threads, cores {list(target.cores)}), "
          f"{args.repeats} processes per variant, {args.iterations} iterations each\n")
    print("| variant | median p50 ms | min p50 ms | max p50 ms | median vs optimum default | min vs optimum default "
          "| noisy runs |\n|---|---|---|---|---|---|---|")
    for name, xs in p50s.items():
        if not xs:
            continue
        med = statistics.median(xs)
        summary[name] = {"median_p50_ms": med, "p50s_ms": xs, "noisy_runs": noisy[name]}
        rel = f"{base / med:.2f}x" if base else "-"
        rel_min = f"{base_min / min(xs):.2f}x" if base_min else "-"
        print(f"| {name} | {med:.2f} | {min(xs):.2f} | {max(xs):.2f} | {rel} | {rel_min} | {noisy[name]}/{len(xs)} |")
    out = args.work / "compare.json"
    out.write_text(json.dumps({"seq": args.seq, "target": target.to_dict(), "distinct_processes": len(pids),
                               "variants": summary}, indent=2))
    print(f"\n{len(pids)} distinct processes; written to {out}")


if __name__ == "__main__":
    main()
