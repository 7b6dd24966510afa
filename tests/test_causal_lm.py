"""task: causal-lm on tiny Llamas built offline from configs (the byte-level BPE tokenizer of
tiny.make_tiny_llama): a student of all the teacher's layers is the teacher, the top-k cache and the KL
and perplexity values against direct computations, the whole `distill run`, and ONNX-with-past
greedy generation against PyTorch's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tiny import CORPUS, corpus, make_tiny_llama, write_csv
from typer.testing import CliRunner

from distill.causal_lm import (TopK, lm_ids, lm_losses, perplexity, student_from_layers, teacher_topk, collate_topk,
                               topk_kl)
from distill.cli import app
from distill.errors import RecipeError
from distill.recipe import digest_view, dump_recipe, load_recipe

TEXTS = CORPUS[:6] + ["ok", "a gripping and beautifully acted film, one of the best movies of the year"]


def make_tiny_lm(folder: Path, layers: int = 4, tie: bool = True, seed: int = 0) -> Path:
    """A Llama of `layers` decoder layers (embeddings tied to the head or not) with tiny.make_tiny_llama's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    make_tiny_llama(folder, chat=False)  # the tokenizer files (its 2-layer model is replaced below)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.3, pad_token_id=0, bos_token_id=1, eos_token_id=3,
                         tie_word_embeddings=tie)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_student_of_every_layer_is_the_teacher_and_a_subset_copies_the_chosen_layers(tmp_path, tie):
    import torch

    teacher, tok = _load(make_tiny_lm(tmp_path / "lm", tie=tie))
    ids = torch.tensor([lm_ids(tok, TEXTS[0], 64)])
    full = student_from_layers(teacher, [0, 1, 2, 3]).eval()
    with torch.inference_mode():
        assert torch.equal(full(input_ids=ids).logits, teacher(input_ids=ids).logits)

    half = student_from_layers(teacher, [1, 3])
    assert half.config.num_hidden_layers == 2 and len(half.model.layers) == 2
    t_sd, s_sd = teacher.state_dict(), half.state_dict()
    for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
        assert torch.equal(s_sd[f"model.layers.0.{name}"], t_sd[f"model.layers.1.{name}"])
        assert torch.equal(s_sd[f"model.layers.1.{name}"], t_sd[f"model.layers.3.{name}"])
    assert torch.equal(s_sd["model.norm.weight"], t_sd["model.norm.weight"])
    assert torch.equal(s_sd["lm_head.weight"], t_sd["lm_head.weight"])
    tied = half.lm_head.weight.data_ptr() == half.model.embed_tokens.weight.data_ptr()
    assert tied is tie
    n_layer = sum(p.numel() for p in teacher.model.layers[0].parameters())
    assert sum(p.numel() for p in teacher.parameters()) - sum(p.numel() for p in half.parameters()) == 2 * n_layer


def test_lm_ids_prepend_bos_once_and_cut(tiny_lm):
    _, tok = _load(tiny_lm)
    ids = lm_ids(tok, TEXTS[0], 64)
    assert ids[0] == tok.bos_token_id == 1 and ids[1:] == tok(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert lm_ids(tok, TEXTS[0], 3) == ids[:3]


def test_perplexity_equals_a_direct_computation(tiny_lm):
    """Batched, right-padded and length-sorted against one unpadded forward per text (the model's own loss)."""
    import torch

    model, tok = _load(tiny_lm)
    ids = [lm_ids(tok, t, 64) for t in TEXTS]
    got = perplexity(model, ids, batch_size=3)
    total = 0.0
    with torch.inference_mode():
        for x in ids:
            t = torch.tensor([x])
            total += float(model(input_ids=t, labels=t).loss) * (len(x) - 1)
    n = sum(len(x) - 1 for x in ids)
    assert got["tokens"] == n and got["texts"] == len(TEXTS)
    assert got["nll"] == pytest.approx(total / n, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / n), rel=1e-5)
    assert 1.0 < got["perplexity"] < len(tok) * 10  # a random wide-init model: bad, but a perplexity


def test_topk_cache_round_trip_and_kl_against_a_direct_computation(tmp_path, tiny_lm):
    import torch

    teacher, tok = _load(tiny_lm)
    student = student_from_layers(teacher, [0, 3]).eval()
    texts = TEXTS + [TEXTS[0]]  # a repeated text is cached once
    ids = [lm_ids(tok, t, 64) for t in texts]
    k, T = 5, 2.0
    cache = teacher_topk(teacher, texts, ids, k, batch_size=3)
    assert len(cache.index) == len(TEXTS) and len(cache.input_ids) == sum(len(x) for x in ids[:-1])
    cache.save(tmp_path)
    back = TopK.load(tmp_path)
    for a, b in ((cache.input_ids, back.input_ids), (cache.ids, back.ids), (cache.logits, back.logits),
                 (cache.mass, back.mass)):
        assert np.array_equal(a, b)
    assert back.index == cache.index and back.k == k

    for text, x in zip(TEXTS, ids):  # the cached rows are the teacher's own top-k, text by text
        got_ids, top_ids, top_logits = back.get(text)
        assert got_ids.tolist() == x
        with torch.inference_mode():
            full = teacher(input_ids=torch.tensor([x])).logits[0].double()
        ref_vals, _ = full.topk(k, -1)
        np.testing.assert_allclose(top_logits, ref_vals.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(full.gather(-1, torch.from_numpy(top_ids.astype(np.int64))).numpy(), top_logits,
                                   rtol=1e-5, atol=1e-5)
        mass = (ref_vals - full.logsumexp(-1, keepdim=True)).exp().sum(-1).numpy()
        np.testing.assert_allclose(back.mass[back.span(text)[0]:][:len(x)], mass, rtol=1e-5)

    # the loss of a batch against a position-by-position computation in float64
    rows = [back.get(t) for t in TEXTS[:4]]
    batch = collate_topk(rows)
    with torch.inference_mode():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        parts = lm_losses(logits, batch["input_ids"], batch["attention_mask"], batch["topk_ids"],
                          batch["topk_logits"], T)
        kls, ces = [], []
        for x, top_ids, top_logits in rows:
            s = student(input_ids=torch.tensor([x.tolist()])).logits[0].double()
            for pos in range(len(x) - 1):
                q = np.exp(top_logits[pos] / T - np.logaddexp.reduce(top_logits[pos].astype(np.float64) / T))
                z = s[pos].numpy()[top_ids[pos]] / T
                log_p_t = z - np.logaddexp.reduce(z)
                kls.append(T * T * float((q * (np.log(q) - log_p_t)).sum()))
                ces.append(-float(s[pos].log_softmax(-1)[int(x[pos + 1])]))
    assert float(parts["kl"]) == pytest.approx(np.mean(kls), rel=1e-4)
    assert float(parts["ce"]) == pytest.approx(np.mean(ces), rel=1e-5)
    assert topk_kl(student, back, TEXTS[:4], T) == pytest.approx(np.mean(kls), rel=1e-4)
    # the teacher is at distance 0 from its own cache (the student is not)
    assert abs(topk_kl(teacher, back, TEXTS)) < 1e-5 and topk_kl(student, back, TEXTS) > 0.01


def test_recipe_task_causal_lm_keys_and_cross_problems():
    default = load_recipe()
    assert "task: classification" in dump_recipe(default)  # every key in the dump; digests leave task and lm out
    assert not {"task", "lm"} & set(digest_view(default))
    r = load_recipe(None, ["task=causal-lm", "lm.top_k=7", "teacher.model=x", "data.augment.multiplier=0"])
    assert r.task == "causal-lm" and r.lm.top_k == 7 and len(r.lm.prompts) == 5
    assert "task: causal-lm" in dump_recipe(r) and "top_k: 7" in dump_recipe(r)
    with pytest.raises(RecipeError) as e:
        load_recipe(None, ["task=causal-lm", "distill.losses={kl: 1, hidden_mse: 1}", "distill.rounds=2",
                           "export.quantize=static", "lm.top_kk=3"])
    msg = str(e.value)
    assert "lm.top_kk: unknown key. Did you mean 'top_k'?" in msg
    with pytest.raises(RecipeError) as e:
        load_recipe(None, ["task=causal-lm", "distill.losses={kl: 1, hidden_mse: 1}", "distill.rounds=2",
                           "export.quantize=static"])
    msg = str(e.value)
    assert "kl and ce only, not hidden_mse" in msg and "distill.rounds: 1" in msg and "not static" in msg
    assert "data.augment.multiplier: 0" in msg  # the default recipe augments; an LM must not learn corrupted text


def _run(tmp_path: Path, teacher: Path, *extra: str, flags: tuple[str, ...] = ()):
    csv = tmp_path / "d.csv"
    if not csv.exists():
        write_csv(tmp_path, corpus(4))
    args = ["run", "--models-dir", str(tmp_path / "models")]
    for s in (f"data.source={csv}", "data.augment.multiplier=0", "name=lm", "task=causal-lm", f"teacher.model={teacher}", "teacher.train=false",
              "student.layers=[0, 3]", "student.epochs=2", "student.batch_size=4", "student.learning_rate=3e-3",
              "lm.top_k=8", "distill.temperature=1.0", *extra):
        args += ["--set", s]
    return CliRunner().invoke(app, args + list(flags))


LORA_TEACHER = ("teacher.lora={r: 4}", "teacher.train=true", "teacher.epochs=1", "teacher.batch_size=4",
                "teacher.learning_rate=1e-2")


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, tiny_lm) -> Path:
    """One `distill run` with task causal-lm: a LoRA-tuned 4-layer teacher, a student of its layers 0 and 3."""
    tmp = tmp_path_factory.mktemp("lm-run")
    r = _run(tmp, tiny_lm, *LORA_TEACHER)
    assert r.exit_code == 0, r.output
    return tmp


def test_distill_run_task_causal_lm(lm_run, tiny_lm):
    tmp_path = lm_run
    rd = tmp_path / "models" / "lm"
    ledger = json.loads((rd / "run.json").read_text())["stages"]
    assert [ledger[s]["status"] for s in ("data", "teacher", "soft_labels", "student", "evaluate")] == ["complete"] * 5
    t = json.loads((rd / "teacher" / "metrics.json").read_text())
    n_test = len((rd / "data" / "test.jsonl").read_text().splitlines())
    assert t["task"] == "causal-lm" and t["train"]["trained"] and t["train"]["lora"] and t["train"]["steps"] > 0
    assert t["perplexity"]["test"]["texts"] == n_test and t["layers"] == 4
    assert not list((rd / "teacher").glob("adapter*"))  # LoRA merged: a plain model

    # the cache holds every pool text and the validation texts, at the teacher's own top-k
    cache = TopK.load(rd / "soft_labels")
    rep = json.loads((rd / "soft_labels" / "report.json").read_text())
    n_train = len((rd / "data" / "train.jsonl").read_text().splitlines())
    n_val = len((rd / "data" / "validation.jsonl").read_text().splitlines())
    assert rep["top_k"] == cache.k == 8 and rep["texts"] == len(cache.index) == n_train + n_val
    assert 0 < rep["topk_mass_mean"] <= 1

    s = json.loads((rd / "student" / "metrics.json").read_text())
    assert s["layers"] == 2 and s["teacher_layers"] == 4 and s["parameters"] < t["parameters"]
    assert s["train"]["texts"] == n_train and s["train"]["steps"] == math.ceil(n_train / 4) * 2
    # distillation moved the student towards the teacher on held-out texts
    assert s["after"]["kl_to_teacher_validation"] < s["before"]["kl_to_teacher_validation"]
    ev = json.loads((rd / "evaluate" / "metrics.json").read_text())
    assert ev["test"]["perplexity"] == {"teacher": round(t["perplexity"]["test"]["perplexity"], 4),
                                        "student_before": round(s["before"]["test"]["perplexity"], 4),
                                        "student_after": round(s["after"]["test"]["perplexity"], 4)}
    logs = [json.loads(line) for line in (rd / "logs" / "train.jsonl").read_text().splitlines()]
    assert {"teacher", "student"} <= {row["stage"] for row in logs}

    r = _run(tmp_path, tiny_lm, *LORA_TEACHER, flags=("--resume",))
    assert r.exit_code == 0 and r.output.count("reused") == 5, r.output
    # every teacher layer kept: before distillation the student is the teacher, perplexity and all
    r = _run(tmp_path, tiny_lm, *LORA_TEACHER, "student.layers=[0, 1, 2, 3]", flags=("--resume",))
    assert r.exit_code == 0 and r.output.count("reused") == 3, r.output
    s = json.loads((rd / "student" / "metrics.json").read_text())
    assert s["before"]["test"]["perplexity"] == pytest.approx(t["perplexity"]["test"]["perplexity"], rel=1e-6)
    assert s["before"]["kl_to_teacher_validation"] == pytest.approx(0, abs=1e-5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_lm) -> tuple[Path, dict]:
    from export.causal_lm import export_lm

    out = tmp_path_factory.mktemp("onnx-lm")
    prompts = ["a gripping", "the plot is", "one of the best", "boring slow", "warm funny and"]
    return out, export_lm(tiny_lm, out, prompts=prompts, new_tokens=12)


def test_onnx_with_past_greedy_generation_equals_pytorch(exported):
    import onnxruntime as ort

    out, m = exported
    fp32 = m["artifacts"]["fp32"]
    assert fp32["status"] == "ok" and fp32["greedy"]["matched"] == fp32["greedy"]["n"] == 5
    assert all(p["first_mismatch"] is None and p["pytorch"] == p["onnx"] for p in fp32["greedy"]["prompts"])
    forced = fp32["greedy"]["teacher_forced"]
    assert forced["argmax_agreement"] == 1.0 and forced["max_abs_logit_diff"] < 1e-4 and forced["positions"] == 5 * 12
    names = [i.name for i in ort.InferenceSession(str(out / fp32["file"])).get_inputs()]
    assert "past_key_values.0.key" in names and "past_key_values.3.value" in names  # the KV cache is an input
    int8 = m["artifacts"]["int8-dynamic"]
    assert int8["greedy"]["n"] == 5 and len(int8["kept_fp32"]["folded_transposes"]) == 1  # the tied head, folded
    import onnx

    ops = [n.op_type for n in onnx.load(str(out / int8["file"]), load_external_data=False).graph.node]
    # int8: q, k, v, o, gate, up of 4 layers and the head; the 4 down_proj stay fp32 (lm.int8_exclude)
    assert ops.count("MatMulInteger") == 4 * 6 + 1 and ops.count("MatMul") >= 4
    assert json.loads((out / "export.json").read_text())["artifacts"]["fp32"]["sha256"] == fp32["sha256"]


@pytest.mark.heavy
def test_lm_worker_measures_time_to_first_token_and_decode_rate(exported, tiny_lm):
    from bench.causal_lm import run_lm_worker
    from bench.targets import resolve_targets

    out, m = exported
    target = resolve_targets(["mobile-1t"])[0]
    for runtime, path in (("onnxruntime", out / "model.onnx"), ("pytorch", tiny_lm)):
        res = run_lm_worker({"runtime": runtime, "path": str(path), "prompt_tokens": 16, "new_tokens": 8, "repeats": 3,
                             "warmup": 1, "vocab_size": 300}, target)
        assert res["status"] == "ok", res
        assert res["ttft_ms"]["p50"] > 0 and res["decode_tokens_per_s"]["p50"] > 0
        assert len(res["samples"]["ttft_ms"]) == 3 and res["affinity"] == list(target.cores)


def test_qlora_teacher_path_runs_where_bitsandbytes_can(tmp_path, tiny_lm):
    """teacher.quantization: 4bit with LoRA (QLoRA; meant for CUDA): the adapter is trained on the 4-bit
    base and merged into a full-precision copy. Skips where bitsandbytes cannot load 4-bit layers."""
    pytest.importorskip("bitsandbytes")
    from distill.prompted import load_lm

    try:
        load_lm(str(tiny_lm), quantization="4bit")
    except Exception as e:  # noqa: BLE001 - any failure of the optional backend means: not here
        pytest.skip(f"bitsandbytes 4-bit does not load here: {type(e).__name__}: {e}")
    r = _run(tmp_path, tiny_lm, *LORA_TEACHER, "teacher.quantization=4bit", "student.epochs=1")
    assert r.exit_code == 0, r.output
    t = json.loads((tmp_path / "models" / "lm" / "teacher" / "metrics.json").read_text())
    assert t["train"]["quantization"] == "4bit" and t["train"]["steps"] > 0
    cfg = json.loads((tmp_path / "models" / "lm" / "teacher" / "config.json").read_text())
    assert "quantization_config" not in cfg  # merged into a plain full-precision model


def test_export_and_bench_of_a_causal_lm_run(lm_run):
    """The run-directory entry points: `distill export onnx` hands the run to export.causal_lm, which
    writes RUN/onnx as a stage of the run; bench.causal_lm writes RUN/bench."""
    from bench.causal_lm import bench_lm
    from export.causal_lm import export_run

    rd = lm_run / "models" / "lm"
    r = CliRunner().invoke(app, ["export", "onnx", str(rd)])  # the CLI hands a causal-lm run to export.causal_lm
    assert r.exit_code == 0 and "fp32" in r.output and "PyTorch on 5/5 prompts" in r.output, r.output
    m = export_run(rd)
    assert m["artifacts"]["fp32"]["greedy"]["matched"] == 5 and (rd / "onnx" / "model.int8-dynamic.onnx").exists()
    assert json.loads((rd / "run.json").read_text())["stages"]["onnx"]["status"] == "complete"
    res = bench_lm(rd, targets=["mobile-1t"], prompt_tokens=8, new_tokens=4, repeats=2, artifacts=["int8-dynamic"])
    assert [(row["artifact"], row["target"], row["status"]) for row in res["rows"]] == [("int8-dynamic", "mobile-1t", "ok")]
    saved = json.loads((rd / "bench" / "results.json").read_text())
    assert saved["rows"][0]["decode_tokens_per_s"]["p50"] > 0 and "| int8-dynamic | mobile-1t |" in (rd / "bench" / "report.md").read_text()
