"""The stages of `distill run` for `task: causal-lm` (distill/tasks.py names them for the task).

- teacher: load the teacher LM (packaged:NAME, a folder or a Hub id; a GGUF is dequantized), optionally
  fine-tune it on the training texts (all weights, LoRA, or QLoRA with teacher.quantization on CUDA;
  adapters are merged into a full-precision copy), measure its perplexity, save it as safetensors.
- soft_labels: the teacher's top-k next-token logits on every text the student sees (and on the
  validation texts, to measure the student's distance to the teacher), cached once.
- student: teacher layers (or a pretrained LM with the same tokenizer, or a config), perplexity before,
  distillation with the Trainer (kl + ce, distill.losses and distill.temperature), perplexity after.
- evaluate: teacher, student before and student after on the held-out texts, in evaluate/metrics.json.

Texts are the data stage's splits; their labels are not used.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from distill.causal_lm import (TopK, apply_lora, lm_collator, lm_ids, merged_lora, perplexity, plain_model,
                               same_vocab, student_from_layers, teacher_topk, topk_collator, topk_kl,
                               topk_trainer_class)
from distill.data.prepare import read_split
from distill.device import choose_device
from distill.errors import DistillError
from distill.faults import step_callback
from distill.modeling import count_parameters, num_layers
from distill.soft_labels import student_pool, text_key
from distill.training import jsonl_logger, pick_max_length, training_arguments, without_autocast

log = logging.getLogger(__name__)

SPEC_FILE = "causal_lm.json"  # teacher/: what the later stages need to read the teacher's texts alike


def lm_fingerprint(recipe: Any) -> dict[str, Any]:
    """The keys of section lm that decide the teacher stage's output (the rest is export and bench)."""
    return {"top_k": recipe.lm.top_k, "eval_texts": recipe.lm.eval_texts}


def teacher_fingerprint(recipe: Any) -> dict[str, Any]:
    """The teacher stage's fingerprint input (distill/tasks.py): the classification teacher's, plus the task
    and the keys of section lm the LM teacher stage reads."""
    from distill.teacher import teacher_fingerprint as model_fingerprint

    return {"task": recipe.task, "lm": lm_fingerprint(recipe), "model": model_fingerprint(recipe)}


def _dtype(device: Any) -> Any:
    import torch

    return torch.bfloat16 if device.bf16 else torch.float16 if device.fp16 else torch.float32


def load_saved(folder: Path, device: Any = None) -> tuple[Any, Any]:
    """A causal LM a stage saved (safetensors) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or choose_device("cpu")
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=_dtype(device))
    return model.to(device.device).eval(), AutoTokenizer.from_pretrained(folder)


def _ids(tok: Any, texts: list[str], max_length: int) -> tuple[list[str], list[list[int]]]:
    """Texts with at least one prediction (two tokens), and their ids."""
    pairs = [(t, lm_ids(tok, t, max_length)) for t in texts]
    kept = [(t, ids) for t, ids in pairs if len(ids) >= 2]
    if len(kept) < len(pairs):
        log.info("causal LM: %d of %d texts have fewer than two tokens and are skipped", len(pairs) - len(kept),
                 len(pairs))
    return [t for t, _ in kept], [ids for _, ids in kept]


def held_out(data_dir: Path, spec: dict[str, Any], tok: Any) -> dict[str, tuple[list[str], list[list[int]]]]:
    """The validation and test texts perplexity is measured on (the first lm.eval_texts of each)."""
    n = spec.get("eval_texts")
    return {split: _ids(tok, [r["text"] for r in read_split(data_dir, split)][:n], spec["max_length"])
            for split in ("validation", "test")}


def _ppl(model: Any, ids: list[list[int]]) -> Any:
    return perplexity(model, ids) if ids else None


def teacher_stage(ctx: Any, out: Path) -> None:
    from datasets import Dataset
    from transformers import Trainer, set_seed

    from distill.prompted import load_lm
    from distill.teacher import subsample

    r, t = ctx.recipe, ctx.recipe.teacher
    data_dir = ctx.data_dir
    device = choose_device(r.device)
    set_seed(r.seed)
    t0 = time.perf_counter()
    model, tok = load_lm(t.model, quantization=t.quantization, trust_remote_code=t.trust_remote_code,
                         allow_pickle=t.allow_pickle, device=device.device, dtype=_dtype(device))
    quantized = t.quantization != "none"
    if not quantized:
        model = plain_model(model)
    elif device.device != "cuda":
        log.warning("teacher.quantization=%s on CPU: bitsandbytes' CPU backend is slow and partial", t.quantization)
    load_s = time.perf_counter() - t0
    train_rows = subsample(read_split(data_dir, "train"), t.max_train_samples, r.seed)
    max_length = pick_max_length(tok, [row["text"] for row in train_rows], t.max_length)
    spec = {"model": t.model, "max_length": max_length, "top_k": r.lm.top_k, "eval_texts": r.lm.eval_texts}
    log.info("LM teacher %s: %d layers, %d parameters, max_length %d, loaded in %.1f s", t.model,
             num_layers(model) or -1, count_parameters(model), max_length, load_s)

    train_info: dict[str, Any] = {"trained": t.train, "load_s": round(load_s, 1)}
    t1 = time.perf_counter()
    if t.train:
        _, train_ids = _ids(tok, [row["text"] for row in train_rows], max_length)
        trainee = apply_lora(model, t.lora, quantized) if t.lora else model
        ckpt = ctx.checkpoints("teacher")
        shutil.rmtree(ckpt, ignore_errors=True)
        trainer = Trainer(model=trainee, args=training_arguments(t, ckpt, device, r.seed, has_eval=False, save=False),
                          train_dataset=Dataset.from_dict({"input_ids": train_ids}),
                          data_collator=lm_collator(tok.pad_token_id or 0),
                          callbacks=[jsonl_logger(ctx.train_log, "teacher"),
                                     step_callback("teacher")])
        result = trainer.train()
        without_autocast(trainer)
        train_info.update(steps=result.global_step, train_loss=result.training_loss, texts=len(train_ids),
                          tokens=sum(len(x) for x in train_ids), lora=t.lora is not None, quantization=t.quantization)
        if quantized:  # QLoRA: the adapter goes onto a full-precision copy of the base, merged
            base, _ = load_lm(t.model, trust_remote_code=t.trust_remote_code, allow_pickle=t.allow_pickle,
                              device=device.device, dtype=_dtype(device))
            with tempfile.TemporaryDirectory(prefix="adapter-") as tmp:
                model = merged_lora(trainer.model, plain_model(base), Path(tmp))
        elif t.lora:
            model = trainer.model.merge_and_unload()
        else:
            model = trainer.model
        shutil.rmtree(ckpt, ignore_errors=True)
    train_info["wall_s"] = round(time.perf_counter() - t1, 1)
    model.eval()

    texts = held_out(data_dir, spec, tok)
    ppl = {split: _ppl(model, ids) for split, (_, ids) in texts.items()}
    metrics = {"task": "causal-lm", "model": t.model, "max_length": max_length, "device": device.device,
               "precision": device.precision, "train": train_info, "parameters": count_parameters(model),
               "layers": num_layers(model), "perplexity": ppl}
    log.info("LM teacher: test perplexity %s", ppl["test"] and round(ppl["test"]["perplexity"], 3))
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def soft_labels_stage(ctx: Any, out: Path) -> None:
    run = ctx.run.path
    spec = json.loads((run / "teacher" / SPEC_FILE).read_text())
    teacher, tok = load_saved(run / "teacher", choose_device(ctx.recipe.device))
    pool = [p["text"] for p in student_pool(run / "data")]
    texts, ids = _ids(tok, pool + held_out(run / "data", spec, tok)["validation"][0], spec["max_length"])
    t0 = time.perf_counter()
    cache = teacher_topk(teacher, texts, ids, spec["top_k"])
    wall = time.perf_counter() - t0
    cache.save(out)
    report = {"task": "causal-lm", "texts": len(cache.index), "tokens": int(len(cache.input_ids)),
              "top_k": cache.k, "max_length": spec["max_length"], "wall_s": round(wall, 1),
              "tokens_per_s": round(len(cache.input_ids) / max(wall, 1e-9), 1),
              "topk_mass_mean": float(cache.mass.mean()) if len(cache.mass) else None}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("LM soft labels: top-%d logits at %d positions of %d texts in %.1f s (top-k mass %.3f)", cache.k,
             report["tokens"], report["texts"], wall, report["topk_mass_mean"] or 0)


def build_student(r: Any, teacher: Any, teacher_tok: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    from distill.prompted import load_lm
    from distill.student_init import from_config

    s = r.student
    if s.init == "teacher-layers":
        return student_from_layers(teacher, s.layers), teacher_tok
    if s.init == "config":
        return from_config(teacher, s.config or {}, auto_class=AutoModelForCausalLM), teacher_tok
    student, tok = load_lm(s.model)
    if not same_vocab(tok, teacher_tok):
        raise DistillError(f"student.model {s.model} does not tokenize as the teacher does (another vocabulary or BOS); "
                           "the token-level KL needs the same tokenizer. Use student.init: teacher-layers.")
    return plain_model(student), teacher_tok


def student_stage(ctx: Any, out: Path) -> None:
    from datasets import Dataset
    from transformers import set_seed

    r, s, d = ctx.recipe, ctx.recipe.student, ctx.recipe.distill
    run = ctx.run.path
    spec = json.loads((run / "teacher" / SPEC_FILE).read_text())
    tmetrics = ctx.metrics("teacher")
    device = choose_device(r.device)
    teacher, tok = load_saved(run / "teacher")
    set_seed(r.seed)
    student, tok = build_student(r, teacher, tok)
    del teacher  # never beside the student while it trains
    cache = TopK.load(run / "soft_labels")
    pool = list(dict.fromkeys(p["text"] for p in student_pool(run / "data")))
    spans = [cache.index[k] for k in (text_key(t) for t in pool) if k in cache.index]
    texts = held_out(run / "data", spec, tok)
    val_texts = texts["validation"][0]

    def measure() -> dict[str, Any]:
        m = {split: _ppl(student, ids) for split, (_, ids) in texts.items()}
        m["kl_to_teacher_validation"] = topk_kl(student, cache, val_texts) if val_texts else None
        return m

    before = measure()
    t0 = time.perf_counter()
    ckpt = run / "checkpoints" / "student"
    shutil.rmtree(ckpt, ignore_errors=True)
    trainer = topk_trainer_class()(
        model=student, args=training_arguments(s, ckpt, device, r.seed + 1, has_eval=False, save=False),
        train_dataset=Dataset.from_dict({"start": [x[0] for x in spans], "length": [x[1] for x in spans]}),
        data_collator=topk_collator(cache, tok.pad_token_id or 0),
        callbacks=[jsonl_logger(run / "logs" / "train.jsonl", "student"), step_callback("student")],
        loss_weights=d.losses, temperature=d.temperature)
    result = trainer.train()
    student = without_autocast(trainer).eval()
    train_wall = time.perf_counter() - t0
    after = measure()
    shutil.rmtree(ckpt, ignore_errors=True)
    student.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    metrics = {"task": "causal-lm", "init": s.init, "layers": num_layers(student), "teacher_layers": tmetrics["layers"],
               "student_layers": s.layers if s.init == "teacher-layers" else None,
               "parameters": count_parameters(student), "teacher_parameters": tmetrics["parameters"],
               "max_length": spec["max_length"], "device": device.device, "precision": device.precision,
               "losses": d.losses, "temperature": d.temperature, "top_k": cache.k,
               "train": {"texts": len(spans), "tokens": int(sum(x[1] for x in spans)), "steps": result.global_step,
                         "train_loss": result.training_loss, "wall_s": round(train_wall, 1)},
               "before": before, "after": after, "teacher_perplexity": tmetrics["perplexity"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("LM student: test perplexity %.3f before, %.3f after distillation (teacher %.3f)",
             *(m["test"]["perplexity"] if m.get("test") else float("nan")
               for m in (before, after, tmetrics["perplexity"])))


def evaluate_stage(ctx: Any, out: Path) -> None:
    """Perplexity of teacher, student before and student after on the held-out texts, side by side."""
    from distill.evaluate import weights_mb

    run = ctx.run.path
    t = ctx.metrics("teacher")
    s = ctx.metrics("student")

    def fig(m: Any) -> Any:
        return None if m is None else round(m["perplexity"], 4)

    splits = {}
    for split in ("validation", "test"):
        if t["perplexity"].get(split):
            splits[split] = {"texts": t["perplexity"][split]["texts"], "tokens": t["perplexity"][split]["tokens"],
                             "perplexity": {"teacher": fig(t["perplexity"][split]),
                                            "student_before": fig(s["before"].get(split)),
                                            "student_after": fig(s["after"].get(split))}}
    metrics = {"task": "causal-lm", "split_seed": ctx.recipe.data.split_seed, "seed": ctx.recipe.seed,
               "max_length": s["max_length"], **splits,
               "kl_to_teacher_validation": {"before": s["before"].get("kl_to_teacher_validation"),
                                            "after": s["after"].get("kl_to_teacher_validation")},
               "models": {name: {"parameters": m["parameters"], "layers": m["layers"],
                                 "size_mb": weights_mb(run / name)} for name, m in (("teacher", t), ("student", s))}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    # the classification summary's shape, so `distill summary` lists parameters and sizes (no accuracy)
    rows = {name: {"accuracy": None, "macro_f1": None, **metrics["models"][name],
                   "perplexity": splits.get("test", {}).get("perplexity", {}).get("teacher" if name == "teacher"
                                                                                    else "student_after")}
            for name in ("teacher", "student")}
    (out / "summary.json").write_text(json.dumps({"task": "causal-lm", "split_seed": metrics["split_seed"],
                                                  "test_n": splits.get("test", {}).get("texts"), "rows": rows},
                                                 indent=2) + "\n")
    if "test" in splits:
        log.info("evaluate (causal LM): test perplexity teacher %s, student before %s, after %s",
                 *splits["test"]["perplexity"].values())

