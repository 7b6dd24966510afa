"""distill/checkpointing.py: wall-clock checkpoints, the checkpoint a stage resumes from, and the
training log trimmed on resume. Real Trainer, tiny real model (tests/tiny.py), CPU."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from distill.checkpointing import (DEFAULT_EVERY_S, ENV_EVERY_S, MARKER, checkpoint_every_s, enable_checkpoints,
                                   resume_checkpoint, trim_train_log)


def test_the_callback_asks_for_a_save_once_every_s_passed_and_a_save_resets_its_clock():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from distill.checkpointing import WallClockCheckpoint

    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    state = TrainerState()
    every = WallClockCheckpoint(0.3)
    never = WallClockCheckpoint(0)
    every.on_train_begin(args, state, TrainerControl())
    control = TrainerControl()
    every.on_step_end(args, state, control)
    assert not control.should_save  # just started
    time.sleep(0.35)
    every.on_step_end(args, state, control)
    assert control.should_save
    every.on_save(args, state, control)
    control = TrainerControl()
    every.on_step_end(args, state, control)
    assert not control.should_save  # the save restarted the clock
    never.on_step_end(args, state, control)
    assert not control.should_save  # every_s <= 0: off


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENV_EVERY_S, raising=False)
    assert checkpoint_every_s() == DEFAULT_EVERY_S
    monkeypatch.setenv(ENV_EVERY_S, "2.5")
    assert checkpoint_every_s() == 2.5
    monkeypatch.setenv(ENV_EVERY_S, "0")
    assert checkpoint_every_s() == 0
    monkeypatch.setenv(ENV_EVERY_S, "soon")
    assert checkpoint_every_s() == DEFAULT_EVERY_S


def _trainer(tiny_bert: Path, out: Path, every_s: float):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from distill.checkpointing import EpochStartRng, WallClockCheckpoint
    from distill.device import DeviceChoice
    from distill.recipe import Student
    from distill.training import tokenized, training_arguments

    from tiny import CORPUS

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [{"text": f"{t} {i}", "label": j % 2} for i in range(3) for j, t in enumerate(CORPUS)]  # 24 rows
    cfg = Student(epochs=2, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0)
    args = enable_checkpoints(training_arguments(cfg, out, DeviceChoice("cpu"), 7, has_eval=False, save=False),
                              total_limit=None)  # the student stage's arguments, keeping every checkpoint
    args.disable_tqdm = True
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)  # dropout 0.1: the RNG state matters
    return Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tok),
                   train_dataset=tokenized(tok, rows, 16, ["label"]).rename_column("label", "labels"),
                   callbacks=[WallClockCheckpoint(every_s), EpochStartRng(out)])


def _steps(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))


def test_a_trainer_resumed_from_a_mid_epoch_wall_clock_checkpoint_ends_with_the_same_weights(tiny_bert, tmp_path):
    import torch

    full = _trainer(tiny_bert, tmp_path / "full", every_s=1e-9)  # due after every step
    full.train()
    assert _steps(tmp_path / "full") == list(range(1, 13))  # 6 steps an epoch, 2 epochs
    epochs_only = _trainer(tiny_bert, tmp_path / "epochs", every_s=3600)
    epochs_only.train()
    assert _steps(tmp_path / "epochs") == [6, 12]
    assert all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(),
                                                 epochs_only.model.state_dict().values()))  # saving changes nothing

    # a run killed after step 8, 2 steps into epoch 2: its folder as the kill left it
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "full", killed, ignore=shutil.ignore_patterns(*[f"checkpoint-{n}" for n in range(9, 13)]))
    assert sorted(p.name for p in killed.glob("rng-epoch-*")) == ["rng-epoch-0.pth", "rng-epoch-1.pth"]
    resumed = _trainer(tiny_bert, killed, every_s=0)
    resumed.train(resume_from_checkpoint=str(killed / "checkpoint-8"))
    assert resumed.state.global_step == 12
    want, got = full.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_resume_checkpoint_wants_the_same_inputs_and_skips_a_checkpoint_cut_short(tmp_path):
    folder = tmp_path / "student" / "round-1"
    (folder / "checkpoint-5").mkdir(parents=True)
    (folder / "checkpoint-5" / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    (folder / "checkpoint-7").mkdir()
    (folder / "checkpoint-7" / "model.safetensors").write_bytes(b"")  # killed while it was written
    assert resume_checkpoint(folder, "abc") is None  # no marker: not this stage's checkpoints
    (folder / MARKER).write_text("abc")
    assert resume_checkpoint(folder, "other") is None
    assert Path(resume_checkpoint(folder, "abc")).name == "checkpoint-5"
    assert not (folder / "checkpoint-7").exists()


def _rows(path: Path) -> list[tuple[str, int]]:
    return [(r["stage"], r["step"]) for r in map(json.loads, path.read_text().splitlines())]


def test_trim_train_log_drops_only_the_killed_attempts_rows_past_the_resumed_step(tmp_path):
    log_path = tmp_path / "train.jsonl"
    earlier = [("teacher", 10), ("teacher", 20), ("student", 10), ("student", 17), ("student", 20), ("student", 30)]
    log_path.write_text("".join(json.dumps({"stage": s, "step": n}) + "\n" for s, n in earlier))
    offset = log_path.stat().st_size  # where round 2's first attempt began logging
    killed = [("student", 10), ("student", 19), ("student", 20), ("student", 30)]
    with open(log_path, "a") as f:
        f.write("".join(json.dumps({"stage": s, "step": n}) + "\n" for s, n in killed))
        f.write('{"stage": "student", "st')  # a row the kill cut short
    assert trim_train_log(log_path, "student", 19, offset) == 3
    assert _rows(log_path) == earlier + [("student", 10), ("student", 19)]
    assert trim_train_log(log_path, "student", 19, offset) == 0
    assert trim_train_log(log_path, "teacher", 10) == 1  # no offset: the whole file
    assert _rows(log_path) == [earlier[0], *earlier[2:], ("student", 10), ("student", 19)]
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]  # rewritten in place, no temporary left


@pytest.mark.parametrize("start", [5, 10 ** 6])
def test_trim_train_log_with_an_offset_that_is_no_line_start_trims_the_whole_file(tmp_path, start):
    log_path = tmp_path / "train.jsonl"
    log_path.write_text(json.dumps({"stage": "student", "step": 30}) + "\n")
    assert trim_train_log(log_path, "student", 19, start) == 1
    assert log_path.read_text() == ""


def test_keep_best_loads_the_best_evaluations_checkpoint_and_at_every_eval_follows_eval_steps(tiny_bert, tmp_path):
    """student.keep: best, with the stage's own arguments (one checkpoint kept, greater is better). The metric
    here is the validation loss, so "best" is the highest loss: on rows it trains on, that is the first
    epoch's, which makes the best evaluation differ from the last one."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from distill.checkpointing import best_checkpoint
    from distill.device import DeviceChoice
    from distill.recipe import Student
    from distill.student import _keep_best
    from distill.training import tokenized, training_arguments

    from tiny import CORPUS

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    ds = tokenized(tok, [{"text": t, "label": j % 2} for j, t in enumerate(CORPUS)], 16, ["label"]).rename_column("label", "labels")
    cfg = Student(epochs=3, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0)
    args = enable_checkpoints(training_arguments(cfg, tmp_path, DeviceChoice("cpu"), 7, has_eval=True, save=False,
                                                 metric="loss"), at_every_eval=True)
    args.disable_tqdm = True
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    trainer = Trainer(model=model, args=args, train_dataset=ds, eval_dataset=ds, data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    evals = [(row["step"], row["eval_loss"]) for row in trainer.state.log_history if "eval_loss" in row]
    assert [s for s, _ in evals] == [2, 4, 6] and evals[0][1] > max(loss for _, loss in evals[1:])  # the premise

    best = best_checkpoint(trainer.state)
    assert best["step"] == 2 and best["epoch"] == 1.0 and best["metric"] == evals[0][1]
    assert Path(best["checkpoint"]) == tmp_path / "checkpoint-2" and _steps(tmp_path) == [2]  # kept through rotation
    want = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    last = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert _keep_best(trainer, trainer.model, 1) == best
    got = trainer.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want) and not all(torch.equal(got[k], last[k]) for k in want)

    # the last evaluation best: nothing to load
    trainer.state.best_model_checkpoint, trainer.state.best_metric = str(tmp_path / "checkpoint-6"), evals[-1][1]
    assert best_checkpoint(trainer.state)["checkpoint"] is None

    by_steps = training_arguments(cfg.model_copy(update={"eval_steps": 5}), tmp_path, DeviceChoice("cpu"), 7,
                                  has_eval=True, save=False)
    assert enable_checkpoints(by_steps, at_every_eval=True).save_strategy == "steps" and by_steps.save_steps == 5
    assert enable_checkpoints(by_steps).save_strategy == "epoch"
