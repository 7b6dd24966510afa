"""Export a causal-LM run's student with its KV cache, int8, and a greedy-generation check.

optimum's `main_export` with task text-generation-with-past writes one decoder graph taking
`past_key_values.*` and returning `present.*` (a first step gets an empty past). Dynamic int8
is ONNX Runtime's `quantize_dynamic` (weights int8, activations quantized on the fly). The check
generates greedily from the recipe's prompts (lm.prompts, lm.new_tokens tokens, no stop at EOS)
with optimum's `ORTModelForCausalLM.generate` and with PyTorch's `generate`, and compares the
tokens. fp32 must match on every prompt (ExportError otherwise, unless allow_mismatch); int8 is
reported, prompt by prompt, with the first position where it leaves PyTorch's path.

    distill export onnx models/NAME   # -> models/NAME/onnx/ (model.onnx, model.int8-dynamic.onnx, export.json)
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from distill.errors import ExportError
from distill.rundir import sha256_file

log = logging.getLogger(__name__)

FP32, INT8 = "model.onnx", "model.int8-dynamic.onnx"
DEFAULT_OPSET = 18  # optimum recommends at least 18 for Llama


def onnx_export(model_dir: Path, out_dir: Path, opset: int = DEFAULT_OPSET) -> Path:
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        try:
            main_export(str(model_dir), out_dir, task="text-generation-with-past", opset=opset, device="cpu",
                        do_validation=False, local_files_only=True, trust_remote_code=False,
                        library_name="transformers")
        except Exception as e:  # noqa: BLE001 - optimum raises many types; the user needs the cause either way
            raise ExportError(f"optimum could not export {model_dir} with its KV cache: {type(e).__name__}: {e}") from e
    path = out_dir / FP32
    if not path.exists():
        raise ExportError(f"optimum's export of {model_dir} wrote no {FP32} into {out_dir}.")
    return path


def fold_transposed_weights(src: Path, dst: Path) -> list[str]:
    """Write src with every Transpose of an initializer replaced by the transposed initializer.

    A tied LM head exports as MatMul(x, Transpose(embedding)). quantize_dynamic skips a MatMul
    whose weight is not a constant, and once the embedding Gather is quantized ONNX Runtime
    dequantizes and transposes the whole table at every decode step (measured: 70 tokens/s
    against 105 for fp32, 6-layer SmolLM2 student, one thread). Folded, the head is an int8
    MatMul of its own: the table is stored twice (int8), decode ran at 257 tokens/s."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    folded = []
    for node in list(model.graph.node):
        if node.op_type == "Transpose" and node.input[0] in inits:
            w = numpy_helper.to_array(inits[node.input[0]])
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            t = np.ascontiguousarray(w.transpose(perm) if perm else w.T)
            model.graph.initializer.append(numpy_helper.from_array(t, node.output[0]))
            model.graph.node.remove(node)
            folded.append(node.output[0])
    onnx.save(model, str(dst))
    return folded


def quantize_int8(src: Path, dst: Path, per_channel: bool = True, exclude: Sequence[str] = (),
                  embeddings: bool = True) -> dict[str, Any]:
    """Dynamic int8; MatMul nodes whose name contains a string of `exclude` stay fp32, and the
    embedding Gather too unless `embeddings`. A tied head is folded into a weight of its own
    first, unless it stays fp32 (then folding would only store the table twice)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.runtime import quiet_onnxruntime

    folded: list[str] = []
    tmp = dst.with_name(f".{dst.name}.folded.onnx")
    if not any(x in "/lm_head/MatMul" for x in exclude) and src.stat().st_size < 1.8e9:  # protobuf's 2 GB limit
        folded = fold_transposed_weights(src, tmp)
        src = tmp
    graph = onnx.load(str(src), load_external_data=False).graph
    kept = [n.name for n in graph.node if n.op_type == "MatMul" and any(x in n.name for x in exclude)]
    ops = ["MatMul", "Gather"] if embeddings else ["MatMul"]
    try:
        with quiet_onnxruntime():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=ops, nodes_to_exclude=kept,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        tmp.unlink(missing_ok=True)
    return {"fp32_matmuls": kept, "op_types": ops, "folded_transposes": folded}


def _session_options() -> Any:
    from export.sessions import session_options

    threads = os.environ.get("OMP_NUM_THREADS")
    return session_options(threads=int(threads) if threads and threads.isdigit() else None)


def prompt_ids(tok: Any, prompts: Sequence[str]) -> list[list[int]]:
    from distill.causal_lm import lm_ids

    return [lm_ids(tok, p, 10**6) for p in prompts]


def greedy(model: Any, ids: Sequence[int], new_tokens: int, pad_id: int) -> list[int]:
    """Greedy continuation of exactly new_tokens tokens (EOS suppressed), PyTorch or optimum's ORT model."""
    import torch

    x = torch.tensor([list(ids)])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id)
    return out[0, x.shape[1]:].tolist()


def _logits(model: Any, ids: Sequence[int]) -> Any:
    import torch

    x = torch.tensor([list(ids)])
    with torch.inference_mode():
        return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy()


def greedy_check(model_dir: Path, onnx_dir: Path, files: Sequence[str], prompts: Sequence[str],
                 new_tokens: int) -> dict[str, dict[str, Any]]:
    """Per ONNX file: on how many prompts its greedy tokens equal PyTorch's (and where each first
    differs); and, feeding PyTorch's greedy sequence back in one pass, how often its next-token
    argmax agrees with PyTorch's and the largest logit difference there."""
    import numpy as np
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = prompt_ids(tok, prompts)
    pt = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    reference = [greedy(pt, x, new_tokens, pad) for x in ids]
    ref_logits = [_logits(pt, x + ref)[len(x) - 1:-1] for x, ref in zip(ids, reference)]
    del pt
    out = {}
    for name in files:
        ort_model = ORTModelForCausalLM.from_pretrained(onnx_dir, file_name=name, use_cache=True, use_io_binding=False,
                                                        provider="CPUExecutionProvider",
                                                        session_options=_session_options())
        rows, agree, diff = [], [], 0.0
        for prompt, x, ref, want in zip(prompts, ids, reference, ref_logits):
            got = greedy(ort_model, x, new_tokens, pad)
            first = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), None)
            forced = _logits(ort_model, x + ref)[len(x) - 1:-1]
            agree.append(forced.argmax(-1) == want.argmax(-1))
            diff = max(diff, float(np.abs(forced - want).max()))
            rows.append({"prompt": prompt, "match": got == ref, "first_mismatch": first,
                         "pytorch": tok.decode(ref), "onnx": tok.decode(got)})
        out[name] = {"matched": sum(r["match"] for r in rows), "n": len(rows), "new_tokens": new_tokens,
                     "teacher_forced": {"argmax_agreement": float(np.concatenate(agree).mean()),
                                        "max_abs_logit_diff": diff, "positions": int(sum(len(a) for a in agree))},
                     "prompts": rows}
        del ort_model
    return out


def export_lm(model_dir: Path, out_dir: Path, *, prompts: Sequence[str], new_tokens: int, quantize: str = "dynamic",
              per_channel: bool = True, int8_exclude: Sequence[str] = ("down_proj",), int8_embeddings: bool = True,
              opset: int = DEFAULT_OPSET, allow_mismatch: bool = False) -> dict[str, Any]:
    """model_dir (a causal-LM save_pretrained folder) -> out_dir: ONNX with past, int8, greedy check,
    export.json. Raises ExportError when fp32 ONNX generates other tokens than PyTorch (unless allow_mismatch)."""
    import json

    from distill.rundir import library_versions

    if quantize not in ("dynamic", "none"):
        raise ExportError(f"quantize={quantize!r}: a causal LM exports dynamic int8 or none")
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_export(model_dir, out_dir, opset)
    files, int8_info = [FP32], None
    if quantize == "dynamic":
        int8_info = quantize_int8(out_dir / FP32, out_dir / INT8, per_channel, int8_exclude, int8_embeddings)
        files.append(INT8)
    check = greedy_check(model_dir, out_dir, files, prompts, new_tokens)
    key = {FP32: "fp32", INT8: "int8-dynamic"}
    artifacts = {key[f]: {"file": f, "sha256": sha256_file(out_dir / f), "size_bytes": (out_dir / f).stat().st_size,
                          "status": "ok" if check[f]["matched"] == check[f]["n"] or f != FP32 else "failed",
                          "greedy": check[f]} for f in files}
    if int8_info:
        artifacts["int8-dynamic"]["kept_fp32"] = int8_info
    manifest = {"schema": 1, "task": "causal-lm", "source": str(model_dir), "opset": opset,
                "options": {"quantize": quantize, "per_channel": per_channel, "int8_exclude": list(int8_exclude),
                            "int8_embeddings": int8_embeddings, "prompts": list(prompts), "new_tokens": new_tokens},
                "artifacts": artifacts, "versions": library_versions(), "wall_s": round(time.perf_counter() - t0, 1)}
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    for k, a in artifacts.items():
        g = a["greedy"]
        log.info("%s %s: greedy generation equals PyTorch's on %d of %d prompts (%d tokens each); next-token "
                 "argmax agreement on PyTorch's path %.4f, max |logit diff| %.2g", "✓" if g["matched"] == g["n"] else "✗",
                 k, g["matched"], g["n"], new_tokens, g["teacher_forced"]["argmax_agreement"],
                 g["teacher_forced"]["max_abs_logit_diff"])
    if artifacts["fp32"]["status"] == "failed" and not allow_mismatch:
        raise ExportError(f"fp32 ONNX greedy generation differs from PyTorch's on {check[FP32]['n'] - check[FP32]['matched']}"
                          f" of {check[FP32]['n']} prompts (see {out_dir / 'export.json'}); pass allow_mismatch to keep it.")
    return manifest


def export_run(run_dir: Path | str, *, which: str = "student", allow_mismatch: bool = False,
               opset: Optional[int] = None) -> dict[str, Any]:
    """Export a causal-LM run's student (or teacher) into RUN/onnx (RUN/onnx-teacher) as a stage of
    the run: under its lock, built in a temporary sibling and renamed into place."""
    from distill.recipe import load_recipe
    from distill.rundir import RunDir
    from distill.tasks import CAUSAL_LM, task_of

    rd = RunDir(run_dir)
    recipe = load_recipe(rd.path / "recipe.yaml")
    task = task_of(recipe)
    if task is not CAUSAL_LM:
        raise ExportError(f"{rd.path} is a {task.name} run: use `distill export onnx` for it.")
    if not (rd.path / which / "config.json").exists():
        raise ExportError(f"{rd.path / which} has no model yet: run `distill run` first.")
    kwargs = {"prompts": recipe.lm.prompts, "new_tokens": recipe.lm.new_tokens, "quantize": recipe.export.quantize,
              "per_channel": recipe.export.per_channel, "int8_exclude": recipe.lm.int8_exclude,
              "int8_embeddings": recipe.lm.int8_embeddings, "opset": opset or max(recipe.export.opset, DEFAULT_OPSET)}
    name = "onnx" if which == "student" else "onnx-teacher"
    box: dict[str, Any] = {}
    with rd.lock():
        inputs = {"model": rd.output_digest(which), "options": kwargs}
        rd.run_stage(name, inputs, lambda tmp: box.update(export_lm(rd.path / which, tmp, allow_mismatch=True, **kwargs)),
                     resume=False)
    if box["artifacts"]["fp32"]["status"] == "failed" and not allow_mismatch:
        raise ExportError(f"fp32 ONNX greedy generation differs from PyTorch's (see {rd.path / name / 'export.json'}).")
    return box
