"""The whole `distill run` on a tiny BERT and a small CSV, through the real CLI."""

from __future__ import annotations

import json

import pytest
from tiny import FAST, corpus, write_csv
from typer.testing import CliRunner

from distill.cli import app
from distill.recipe import load_recipe


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data"), corpus(8))


def run(tmp_path, tiny_bert, csv_path, *extra, name="t", flags=()):
    args = ["run", "--models-dir", str(tmp_path / "models"), *flags]
    for s in [f"data.source={csv_path}", f"teacher.model={tiny_bert}", f"name={name}", *FAST, *extra]:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


def test_full_run_writes_every_stage_and_resume_reuses_them(tmp_path, tiny_bert, csv_path):
    r = run(tmp_path, tiny_bert, csv_path)
    assert r.exit_code == 0, r.output
    rd = tmp_path / "models" / "t"
    ledger = json.loads((rd / "run.json").read_text())["stages"]
    assert [ledger[s]["status"] for s in ("data", "teacher", "soft_labels", "student", "evaluate")] == ["complete"] * 5
    t = json.loads((rd / "teacher" / "metrics.json").read_text())
    s = json.loads((rd / "student" / "metrics.json").read_text())
    assert t["layers"] == 2 and s["layers"] == 1 and s["parameters"] < t["parameters"]
    assert t["test"]["n"] == s["test"]["n"] > 0 and 0 <= s["test"]["accuracy"] <= 1
    # the tiny teacher learns this separable toy task
    assert t["test"]["accuracy"] >= 0.9, t["test"]
    assert (rd / "student" / "model.safetensors").exists() and (rd / "student" / "README.md").exists()
    assert "keeps" in (rd / "student" / "README.md").read_text()
    summary = json.loads((rd / "evaluate" / "summary.json").read_text())
    assert set(summary["rows"]) == {"teacher", "student", "tfidf_logreg"}
    soft = json.loads((rd / "soft_labels" / "report.json").read_text())
    assert soft["texts"] == len((rd / "data" / "train.jsonl").read_text().splitlines())
    logs = [json.loads(x) for x in (rd / "logs" / "train.jsonl").read_text().splitlines()]
    assert {x["stage"] for x in logs} == {"teacher", "student"}
    assert not (rd / "checkpoints" / "teacher").exists()

    ledger_teacher_wall = ledger["teacher"]["wall_s"]
    args = ["run", "--models-dir", str(tmp_path / "models"), "--resume"]
    for x in [f"data.source={csv_path}", f"teacher.model={tiny_bert}", "name=t", *FAST]:
        args += ["--set", x]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and r.output.count("reused") == 5, r.output
    # changing only the student re-runs student and evaluate, nothing upstream
    r = CliRunner().invoke(app, args + ["--set", "distill.temperature=4"])
    assert r.exit_code == 0 and r.output.count("reused") == 3, r.output
    # augmentation changes the data stage's output but not the teacher's training files: the
    # teacher is reused, the soft labels cover the new texts
    r = CliRunner().invoke(app, args + ["--set", "distill.temperature=4", "--set", "data.augment.multiplier=1"])
    assert r.exit_code == 0 and r.output.count("reused") == 1, r.output
    ledger = json.loads((rd / "run.json").read_text())["stages"]
    assert ledger["teacher"]["wall_s"] == ledger_teacher_wall
    soft = json.loads((rd / "soft_labels" / "report.json").read_text())
    assert soft["by_origin"]["augmented"] > 0


def test_a_raised_stage_revision_rebuilds_that_stage_and_what_reads_it(tmp_path, tiny_bert, csv_path, monkeypatch):
    import dataclasses

    from distill import stages

    assert run(tmp_path, tiny_bert, csv_path).exit_code == 0
    rd = tmp_path / "models" / "t"
    before = json.loads((rd / "run.json").read_text())["stages"]
    i = next(i for i, s in enumerate(stages.STAGES) if s.name == "teacher")
    raised = [dataclasses.replace(s, revision=s.revision + 1) if j == i else s for j, s in enumerate(stages.STAGES)]
    monkeypatch.setattr(stages, "STAGES", raised)
    r = run(tmp_path, tiny_bert, csv_path, flags=("--resume",))
    assert r.exit_code == 0, r.output
    after = json.loads((rd / "run.json").read_text())["stages"]
    assert after["data"] == before["data"]  # reused
    assert after["teacher"]["inputs_sha256"] != before["teacher"]["inputs_sha256"]
    assert after["teacher"]["started"] != before["teacher"]["started"]  # rebuilt
    # What reads the teacher is keyed on its output: a bit-identical retrain (a fixed thread count
    # reproduces the tiny teacher exactly) lets the rest be reused; any other output rebuilds it.
    same = after["teacher"]["output_sha256"] == before["teacher"]["output_sha256"]
    for s in ("soft_labels", "student", "evaluate"):
        assert (after[s]["started"] == before[s]["started"]) == same, s
    assert r.output.count("reused") == (4 if same else 1), r.output


def test_few_shot_with_augmentation_curriculum_rounds_and_noise_drop(tmp_path, tiny_bert, csv_path):
    r = run(tmp_path, tiny_bert, csv_path, "data.few_shot=4", "data.augment.multiplier=1",
            "distill.curriculum.scorer=margin", "distill.rounds=2", "data.label_noise=drop",
            "distill.losses={kl: 0.5, ce: 0.3, hidden_mse: 0.2}", name="fs")
    assert r.exit_code == 0, r.output
    rd = tmp_path / "models" / "fs"
    soft = json.loads((rd / "soft_labels" / "report.json").read_text())
    assert soft["by_origin"]["train"] == 8 and soft["by_origin"]["transfer"] > 0 and soft["by_origin"]["augmented"] > 0
    assert 0 <= soft["pseudo_label_accuracy"] <= 1 and soft["pseudo_label_n"] == soft["by_origin"]["transfer"]
    s = json.loads((rd / "student" / "metrics.json").read_text())
    assert [x["round"] for x in s["rounds"]] == [1, 2]
    assert s["rounds"][1]["pool"] > s["rounds"][0]["pool"]  # round 2 added re-augmented hard examples
    assert (rd / "teacher" / "label_noise.json").exists()


def test_self_paced_curriculum_runs(tmp_path, tiny_bert, csv_path, monkeypatch):
    """The student's sampler starts from the teacher's margins, is re-scored by the student's own KL
    to the teacher at the second epoch's start, and widens its pool in the four steps of `step` pacing."""
    import numpy as np

    from distill import student as student_stage

    made = []  # (sampler, its first scores, the scores of every update_scores call)
    real = student_stage.make_sampler

    def spy(*args, **kwargs):
        sampler = real(*args, **kwargs)
        updates: list = []
        update = sampler.update_scores

        def recorded(scores):
            updates.append(np.array(scores))
            update(scores)

        sampler.update_scores = recorded
        made.append((sampler, np.array(sampler.scores), updates))
        return sampler

    monkeypatch.setattr(student_stage, "make_sampler", spy)
    r = run(tmp_path, tiny_bert, csv_path, "distill.curriculum.scorer=self-paced", "distill.curriculum.pacing=step",
            name="sp")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "models" / "sp" / "student" / "metrics.json").read_text())
    cur = s["curriculum"]
    assert cur["scorer"] == "self-paced" and cur["pacing"] == "step"
    assert len(made) == 1  # one round, one sampler
    sampler, first, updates = made[0]
    n = s["rounds"][0]["pool"]
    assert len(first) == n and np.all((first >= 0) & (first <= 1))  # 1 - teacher margin
    # student.epochs=2: re-scored once, at the second epoch's start, by a KL (>= 0) that differs from the margins
    assert len(updates) == 1 and updates[0].shape == (n,) and np.all(updates[0] >= 0)
    assert not np.allclose(updates[0], first)
    # step pacing: the easiest `start` share first, then four equal steps up to the whole pool, never narrowing
    want = {min(max(round((cur["start"] + (1 - cur["start"]) * k / 4) * n), sampler.batch_size), n) for k in range(5)}
    assert set(sampler.pool_sizes) == want and sampler.pool_sizes == sorted(sampler.pool_sizes)
    assert sampler.pool_sizes[0] < n == sampler.pool_sizes[-1]


@pytest.mark.heavy
def test_same_recipe_and_seed_give_identical_student_metrics(tmp_path, tiny_bert, csv_path):
    a = run(tmp_path / "a", tiny_bert, csv_path)
    b = run(tmp_path / "b", tiny_bert, csv_path)
    assert a.exit_code == b.exit_code == 0
    ma = json.loads((tmp_path / "a" / "models" / "t" / "student" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "models" / "t" / "student" / "metrics.json").read_text())
    assert ma["test"] == mb["test"] and ma["rounds"][0]["train_loss"] == mb["rounds"][0]["train_loss"]


def test_lora_teacher_on_cpu_is_merged_into_a_plain_model(tmp_path, tiny_bert, csv_path):
    pytest.importorskip("peft")
    r = run(tmp_path, tiny_bert, csv_path, "teacher.lora={r: 4, target_modules: [query, value]}", name="lora")
    assert r.exit_code == 0, r.output
    rd = tmp_path / "models" / "lora"
    assert (rd / "teacher" / "model.safetensors").exists() and not (rd / "teacher" / "adapter_config.json").exists()


def test_pickle_only_teacher_is_refused(tmp_path, tiny_bert, csv_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_bert, folder)
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    r = run(tmp_path, folder, csv_path, name="pk")
    assert r.exit_code == 2 and "pickle" in r.output and "allow_pickle" in r.output


def test_remote_code_teacher_is_refused_and_its_code_never_runs(tmp_path, tiny_bert, csv_path):
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(tiny_bert, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    r = run(tmp_path, folder, csv_path, name="rc")
    assert r.exit_code == 2 and "evil.py" in r.output and "trust_remote_code: true" in r.output, r.output
    assert not marker.exists() and not (tmp_path / "models" / "rc" / "teacher").exists()


def test_device_choice():
    from distill.device import choose_device
    from distill.errors import DistillError

    assert choose_device("auto", cuda_available=False, bf16_supported=False, cpu_units=[]).precision == "fp32"
    # a CPU with bf16 matrix units trains the classifiers under bf16 autocast by default; `cpu` keeps
    # fp32 there, and callers that load weights in the chosen dtype (causal LM, prompted) stay fp32
    bf16_cpu = {"cuda_available": False, "bf16_supported": False, "cpu_units": ["avx512_bf16"]}
    assert choose_device("auto", **bf16_cpu, cpu_autocast=True).precision == "bf16"
    assert choose_device("auto", **bf16_cpu).precision == "fp32"
    assert choose_device("cpu", **bf16_cpu, cpu_autocast=True).precision == "fp32"
    assert choose_device("auto", cuda_available=False, bf16_supported=False, cpu_units=[], cpu_autocast=True).precision == "fp32"
    assert choose_device("auto", cuda_available=True, bf16_supported=True).precision == "bf16"
    assert choose_device("auto", cuda_available=True, bf16_supported=False).precision == "fp16"
    assert choose_device("cpu", cuda_available=True, bf16_supported=True).device == "cpu"
    with pytest.raises(DistillError, match="no CUDA"):
        choose_device("cuda", cuda_available=False, bf16_supported=False)


def test_cpu_bf16_is_chosen_by_name_and_warns_without_bf16_units(caplog):
    from distill.device import choose_device, cpu_bf16_units

    zen4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    assert cpu_bf16_units(zen4) == ["avx512_bf16"] and cpu_bf16_units("flags\t: fpu avx2\n") == []
    got = choose_device("cpu-bf16", cuda_available=True, bf16_supported=True, cpu_units=["amx_bf16"])
    assert (got.device, got.precision) == ("cpu", "bf16") and not caplog.records
    got = choose_device("cpu-bf16", cuda_available=False, bf16_supported=False, cpu_units=[])
    assert (got.device, got.precision) == ("cpu", "bf16")
    assert "without bf16 matrix units" in caplog.text and "use device: cpu" in caplog.text


def test_a_cpu_bf16_run_trains_under_autocast_and_says_so(tmp_path, tiny_bert, csv_path):
    r = run(tmp_path, tiny_bert, csv_path, "device=cpu-bf16", name="bf")
    assert r.exit_code == 0, r.output
    rd = tmp_path / "models" / "bf"
    for which in ("teacher", "student"):
        m = json.loads((rd / which / "metrics.json").read_text())
        assert (m["device"], m["precision"]) == ("cpu", "bf16") and 0 <= m["test"]["accuracy"] <= 1
    # the saved weights stay fp32 (autocast computes in bf16, the parameters are kept in fp32)
    from safetensors import safe_open

    with safe_open(str(rd / "student" / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}


def test_eight_bit_teacher_loads_on_cpu_where_bitsandbytes_allows(tiny_bert):
    pytest.importorskip("bitsandbytes")
    from distill.modeling import load_classifier

    try:
        model = load_classifier(str(tiny_bert), ["a", "b"], quantization="8bit")
    except Exception as e:  # noqa: BLE001 - bitsandbytes' CPU backend support varies by build
        pytest.skip(f"bitsandbytes 8-bit loading is not available on this CPU: {e}")
    assert any("Linear8bitLt" in type(m).__name__ for m in model.modules())


def test_recipe_validation_catches_hidden_loss_typos():
    from distill.errors import RecipeError

    # the key, where it came from (--set) and the fix (the near name and the valid ones)
    with pytest.raises(RecipeError, match=r"--set: distill\.losses: unknown loss 'hiden_mse' \(did you mean "
                                          r"'hidden_mse'\?\); valid: kl, ce, mse, hidden_mse, hidden_cos") as e:
        load_recipe(None, ["distill.losses={hiden_mse: 1.0}"])
    assert len(e.value.problems) == 1


def test_new_head_init_does_not_depend_on_what_ran_before_in_the_process(tmp_path, tiny_bert, csv_path):
    """A checkpoint without a classifier head (like the packaged minilm-l6) gets a fresh head; its
    weights must come from the recipe's seed, not from the RNG state earlier stages left behind."""
    import shutil

    import torch
    from transformers import BertModel

    base = tmp_path / "base"
    BertModel.from_pretrained(tiny_bert).save_pretrained(base)
    for f in tiny_bert.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            shutil.copy(f, base / f.name)
    args = [f"teacher.model={base}", "teacher.epochs=1"]
    torch.manual_seed(1)
    a = run(tmp_path / "a", tiny_bert, csv_path, *args)
    torch.rand(1000)  # a different global RNG state before the second, identical run
    b = run(tmp_path / "b", tiny_bert, csv_path, *args)
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    ta, tb = (json.loads((tmp_path / x / "models" / "t" / "teacher" / "metrics.json").read_text()) for x in "ab")
    assert ta["train"]["train_loss"] == tb["train"]["train_loss"] and ta["test"] == tb["test"]


def test_student_keep_best_keeps_the_best_validated_epoch(tmp_path, tiny_bert, csv_path):
    """The first of the best validation evaluations is kept, and with patience 1 training ends one evaluation
    after it (or at the 4th epoch)."""
    r = run(tmp_path, tiny_bert, csv_path, "student.keep=best", "student.epochs=4", "student.early_stopping_patience=1",
            name="kb")
    assert r.exit_code == 0, r.output
    rd = tmp_path / "models" / "kb"
    evals = [(row["step"], row["epoch"], row["eval_accuracy"]) for row in map(json.loads, open(rd / "logs" / "train.jsonl"))
             if row.get("stage") == "student" and "eval_accuracy" in row]
    first_best = next(e for e in evals if e[2] == max(a for _, _, a in evals))
    assert len(evals) == min(evals.index(first_best) + 2, 4)
    s = json.loads((rd / "student" / "metrics.json").read_text())
    assert s["rounds"][0]["kept"] == {"step": first_best[0], "epoch": first_best[1], "metric": first_best[2]}
    assert s["validation"]["accuracy"] == pytest.approx(first_best[2])  # the weights scored are the kept ones
    assert f"the weights of step {first_best[0]} (epoch {first_best[1]:.3g}), the best on validation" in \
        (rd / "student" / "README.md").read_text()
    assert not (rd / "checkpoints" / "student").exists()

    bad = run(tmp_path, tiny_bert, csv_path, "student.keep=best", "data.splits.train=0.8", "data.splits.validation=0",
              name="kb0")
    assert bad.exit_code != 0 and "student.keep" in bad.output and "data.splits.validation" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "models" / "kb0" / "teacher").exists()
