"""teacher.kind: prompted on a tiny Llama built offline from a config (byte-level BPE tokenizer,
with and without a chat template): verbalizer scoring against a direct computation with the
model, calibration, the prompt's shots, recipe errors, and the whole `distill run`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import CORPUS, corpus, make_tiny_llama, write_csv
from typer.testing import CliRunner

from distill.cli import app
from distill.errors import DistillError, RecipeError
from distill.prompted import PromptedTeacher, build_spec, log_softmax
from distill.recipe import digest_view, dump_recipe, load_recipe

NAMES = ["neg", "pos"]
VERBALIZERS = ["verbalizers={neg: terrible, pos: good}"]
TRAIN = [{"text": t, "label": 1} for t in CORPUS[0::2]] + [{"text": t, "label": 0} for t in CORPUS[1::2]]
TEXTS = ["a gripping film", "boring slow and far too long, with a predictable script", "ok", "warm funny and moving"]


@pytest.fixture(scope="module", params=[True, False], ids=["chat-template", "plain-prompt"])
def tiny_llama(request, tmp_path_factory) -> tuple[Path, bool]:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), chat=request.param), request.param


def teacher_for(folder: Path, *sets: str) -> PromptedTeacher:
    from distill.prompted import load_lm

    t = load_recipe(None, ["teacher.kind=prompted", "student.init=pretrained", "student.model=x",
                           f"teacher.model={folder}", "teacher.batch_size=4",
                           *[f"teacher.prompt.{s}" for s in sets]]).teacher
    model, tok = load_lm(t.model)
    return PromptedTeacher(build_spec(t, NAMES, TRAIN, tok, seed=0, device="cpu"), model, tok)


def direct_scores(teacher: PromptedTeacher, text: str) -> np.ndarray:
    """Each label's summed verbalizer log-probability from one plain forward over the whole
    sequence: no cache, no padding, no batching."""
    import torch

    prefix = teacher.prefix_ids + teacher.suffix_ids(text)
    out = []
    for v in teacher.verbalizer_ids:
        with torch.inference_mode():
            logp = teacher.model(input_ids=torch.tensor([prefix + v])).logits[0].log_softmax(-1)
        out.append(sum(float(logp[len(prefix) - 1 + i, tok]) for i, tok in enumerate(v)))
    return np.array(out)


def test_scores_match_a_direct_computation_and_give_a_distribution(tiny_llama):
    folder, chat = tiny_llama
    teacher = teacher_for(folder, *VERBALIZERS)
    scores = teacher.scores(TEXTS)  # 4 texts of different lengths, batch 4 / rows per text
    assert teacher.spec.chat is chat
    # byte-level BPE on a tiny corpus: at least one verbalizer is several tokens, summed
    assert max(len(v) for v in teacher.verbalizer_ids) > 1, teacher.verbalizer_ids
    assert len({len(v) for v in teacher.verbalizer_ids}) == 2  # and the two differ in length
    direct = np.stack([direct_scores(teacher, t) for t in TEXTS])
    np.testing.assert_allclose(scores, direct, atol=2e-4)
    assert (scores < 0).all() and np.ptp(scores, axis=0).max() > 1e-3  # real log-probs, text-dependent
    probs = np.exp(teacher.logits(scores, calibrate=False))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, np.exp(direct) / np.exp(direct).sum(-1, keepdims=True), atol=1e-4)


def test_calibration_divides_by_the_content_free_distribution(tiny_llama):
    folder, _ = tiny_llama
    teacher = teacher_for(folder, *VERBALIZERS, "calibrate=true", "content_free=N/A")
    scores = teacher.scores(TEXTS)
    cf = direct_scores(teacher, "N/A")
    np.testing.assert_allclose(teacher.content_free_scores(), cf, atol=2e-4)
    p, p_cf = np.exp(log_softmax(scores)), np.exp(log_softmax(cf))
    expected = (p / p_cf) / (p / p_cf).sum(-1, keepdims=True)  # Zhao et al. 2021: W = diag(p_cf)^-1
    calibrated = np.exp(teacher.label_logits(TEXTS))
    np.testing.assert_allclose(calibrated, expected, atol=1e-4)
    np.testing.assert_allclose(calibrated.sum(-1), 1.0, atol=1e-5)
    assert np.abs(calibrated - p).max() > 1e-3  # it changed the distribution
    # the content-free text itself comes out uniform after calibration
    np.testing.assert_allclose(np.exp(teacher.label_logits(["N/A"])), [[0.5, 0.5]], atol=1e-4)
    off = teacher_for(folder, *VERBALIZERS, "calibrate=false")
    np.testing.assert_allclose(np.exp(off.label_logits(TEXTS)), p, atol=1e-4)


def test_prompt_holds_k_examples_per_class(tiny_llama):
    folder, chat = tiny_llama
    teacher = teacher_for(folder, *VERBALIZERS, "shots=3")
    shots = teacher.spec.shots
    assert sorted(s["label"] for s in shots) == [0, 0, 0, 1, 1, 1]
    assert [s["label"] for s in shots] != [0, 0, 0, 1, 1, 1]  # shuffled, not one block per label
    prompt = teacher.prompt("a brand new text")
    assert all(f"Text: {s['text']}" in prompt for s in shots) and prompt.count("Text: ") == 7
    assert prompt.index("a brand new text") > max(prompt.index(s["text"]) for s in shots)
    if chat:
        assert prompt.count("<|im_start|>assistant\n") == 7 and prompt.endswith("<|im_start|>assistant\n")
        assert prompt.count("assistant\ngood<|im_end|>") == 3 and prompt.count("assistant\nterrible<|im_end|>") == 3
        assert prompt.startswith("<|im_start|>system\nClassify the text. Answer with one of: terrible, good.")
    else:
        assert prompt.count("\nLabel: good") == 3 and prompt.count("\nLabel: terrible") == 3
        assert prompt.endswith("\nLabel:") and "<|im_start|>" not in prompt
    assert teacher_for(folder, "shots=0").prompt("x").count("Text: ") == 1  # zero-shot
    # a class with fewer rows than shots gives all it has
    assert len(teacher_for(folder, "shots=30").spec.shots) == len(TRAIN)


def test_bad_verbalizers_and_prefix_cap_are_refused(tiny_llama):
    folder, _ = tiny_llama
    with pytest.raises(DistillError, match="not labels of the data"):
        teacher_for(folder, "verbalizers={positive: good}")
    with pytest.raises(DistillError, match="share a verbalizer"):
        teacher_for(folder, "verbalizers={neg: meh, pos: meh}")
    with pytest.raises(DistillError, match="max_prompt_tokens=20"):
        teacher_for(folder, "max_prompt_tokens=20").scores(["x"])


def test_8bit_teacher_scores_close_to_fp32(tmp_path):
    # teacher.quantization loads the LM through bitsandbytes (meant for CUDA; its CPU backend runs
    # 8-bit, and 4-bit only for some shapes). bitsandbytes' blocks need wider layers than 32.
    pytest.importorskip("bitsandbytes")
    folder = make_tiny_llama(tmp_path / "m", chat=True, hidden=128, kv_heads=4, init=0.05)
    fp32 = teacher_for(folder, *VERBALIZERS)
    int8 = teacher_for(folder, *VERBALIZERS)
    from distill.prompted import load_lm

    int8.model, _ = load_lm(str(folder), quantization="8bit")
    assert type(int8.model.model.layers[0].mlp.down_proj).__name__ == "Linear8bitLt"
    a, b = fp32.scores(TEXTS), int8.scores(TEXTS)
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.5, (a, b)
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_recipe_refuses_what_a_prompted_teacher_cannot_do():
    base = ["teacher.kind=prompted", "teacher.model=packaged:smollm2-135m-instruct"]
    with pytest.raises(RecipeError) as e:
        load_recipe(None, base)
    assert "student.init" in str(e.value) and "student.init: pretrained" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe(None, [*base, "student.init=pretrained", "student.model=packaged:minilm-l6",
                           "distill.losses={kl: 1.0, hidden_mse: 0.5}"])
    assert "distill.losses" in str(e.value) and "hidden_mse" in str(e.value)
    with pytest.raises(RecipeError, match="not trained"):
        load_recipe(None, [*base, "student.init=pretrained", "student.model=packaged:minilm-l6", "teacher.lora={r: 4}"])
    ok = load_recipe(None, [*base, "student.init=pretrained", "student.model=packaged:minilm-l6",
                            "teacher.quantization=4bit"])  # 4-bit inference needs no LoRA
    assert ok.teacher.quantization == "4bit" and "kind: prompted" in dump_recipe(ok)


def test_fine_tuned_teacher_section_hashes_as_before():
    # The teacher stage hashes this section: a fine-tuned teacher's must not gain keys, or every
    # existing run folder would retrain its teacher on --resume.
    d = digest_view(load_recipe(), "teacher")
    assert "kind" not in d and "prompt" not in d and d["model"] == "packaged:minilm-l6"


@pytest.mark.heavy
def test_distill_run_with_a_prompted_teacher(tmp_path, tiny_llama, tiny_bert):
    from distill.soft_labels import SoftLabels, student_pool
    from distill.teacher import load_teacher

    folder, chat = tiny_llama
    csv = write_csv(tmp_path, corpus(6))
    args = ["run", "--models-dir", str(tmp_path / "models")]
    sets = [f"data.source={csv}", "data.augment.multiplier=0", "name=p", "teacher.kind=prompted", f"teacher.model={folder}",
            "teacher.prompt.shots=2", "teacher.prompt.verbalizers={neg: terrible, pos: good}", "teacher.batch_size=8",
            "student.init=pretrained", f"student.model={tiny_bert}", "student.epochs=1", "student.batch_size=8",
            "student.learning_rate=5e-3", "distill.rounds=2", "student.min_steps=0"]
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rd = tmp_path / "models" / "p"
    ledger = json.loads((rd / "run.json").read_text())["stages"]
    assert [ledger[s]["status"] for s in ("data", "teacher", "soft_labels", "student", "evaluate")] == ["complete"] * 5
    t = json.loads((rd / "teacher" / "metrics.json").read_text())
    n_test = len((rd / "data" / "test.jsonl").read_text().splitlines())
    assert t["kind"] == "prompted" and t["train"]["trained"] is False and t["test"]["n"] == n_test
    assert t["prompt"]["shots"] == 4 and t["prompt"]["chat_template"] is chat and t["layers"] == 2
    assert t["calibration"]["used"] is True and t["test"]["accuracy"] == t["calibration"]["calibrated"]["test"]["accuracy"]
    assert {"calibrated", "uncalibrated"} <= set(t["calibration"]) and t["s_per_text"] > 0
    assert (rd / "teacher" / "prompt_example.txt").read_text().count("Text: ") == 5
    assert not list((rd / "teacher").glob("*.safetensors"))  # the LM stays where the recipe names it

    # the cached soft labels are the teacher's calibrated log-distribution, text by text
    soft = SoftLabels.load(rd / "soft_labels")
    pool = student_pool(rd / "data")
    teacher, tok = load_teacher(rd / "teacher")
    assert tok is None and teacher.model is None  # loads lazily: the student stage never pays for it
    texts = [p["text"] for p in pool[:6]]
    np.testing.assert_allclose(soft.get(texts), teacher.label_logits(texts), atol=1e-4)
    np.testing.assert_allclose(np.exp(soft.logits).sum(-1), 1.0, atol=1e-4)
    s = json.loads((rd / "student" / "metrics.json").read_text())
    assert s["init"] == "pretrained" and len(s["rounds"]) == 2 and s["teacher_test"] == t["test"]
    assert s["rounds"][1]["pool"] > s["rounds"][0]["pool"]  # round 2 labelled new texts with the prompted LM
    summary = json.loads((rd / "evaluate" / "summary.json").read_text())
    assert summary["rows"]["teacher"]["accuracy"] == t["test"]["accuracy"]

    r = CliRunner().invoke(app, args + ["--resume"])
    assert r.exit_code == 0 and r.output.count("reused") == 5, r.output
    # calibration off changes the teacher's output, so everything downstream reruns
    r = CliRunner().invoke(app, args + ["--resume", "--set", "teacher.prompt.calibrate=false"])
    assert r.exit_code == 0 and r.output.count("reused") == 1, r.output
    t2 = json.loads((rd / "teacher" / "metrics.json").read_text())
    assert t2["test"]["accuracy"] == t["calibration"]["uncalibrated"]["test"]["accuracy"]
