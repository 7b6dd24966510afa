"""Progress of long passes: silent without a reporter, rich bars with one, a Trainer without log dicts."""

from __future__ import annotations

import io
import logging
import re

import pytest

from distill import progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def console_reporter():
    """A real RichReporter on a terminal-like rich Console writing into a string."""
    from rich.console import Console

    buf = io.StringIO()
    reporter = progress.RichReporter(Console(file=buf, force_terminal=True, width=120, color_system=None))
    previous = progress.set_reporter(reporter)
    try:
        yield reporter, buf
    finally:
        reporter.close()
        progress.set_reporter(previous)


def plain(buf: io.StringIO) -> str:
    return ANSI.sub("", buf.getvalue())


def test_without_a_reporter_everything_passes_through_silently(capsys):
    assert progress.get_reporter() is None
    items = [object() for _ in range(5)]
    assert list(progress.track(items, description="soft labels")) == items
    assert list(progress.track(iter(items), size=lambda _: 3)) == items
    with progress.task("predicting", total=10) as advance:
        advance(4)
        advance.describe("renamed")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_soft_label_pass_shows_its_description_and_final_count(tiny_bert, console_reporter, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.soft_labels import label_texts
    from tiny import CORPUS

    reporter, buf = console_reporter
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    soft = label_texts(model, tok, CORPUS, max_length=32)
    assert len(soft.index) == len(CORPUS) == 8
    text = plain(buf)
    assert "soft labels" in text and "8/8" in text
    assert reporter._progress is None  # the live display stopped with the pass
    assert capsys.readouterr().out == ""  # the bar went to the reporter's console, nothing to stdout


def test_nested_line_is_removed_and_outer_one_stays_finished(console_reporter):
    reporter, buf = console_reporter
    with progress.task("outer pass", total=2) as outer:
        with progress.task("inner pass", total=3) as inner:
            inner(3)
            assert len(reporter._progress.tasks) == 2
        assert [t.description for t in reporter._progress.tasks] == ["outer pass"]
        outer(2)
    assert reporter._progress is None
    with progress.task("open-ended") as advance:  # unknown total: finished with its count
        advance(5)
    final = plain(buf)
    assert "outer pass" in final and "2/2" in final and "5/5" in final
    with progress.task("empty", total=0):  # an empty pass gets no line at all
        assert reporter._progress is None


def test_non_terminal_console_prints_only_the_finished_lines():
    from rich.console import Console

    buf = io.StringIO()
    reporter = progress.RichReporter(Console(file=buf, width=100))
    previous = progress.set_reporter(reporter)
    try:
        for _ in progress.track(range(4), description="augmenting"):
            pass
        with pytest.raises(RuntimeError):
            with progress.task("failing pass", total=9) as advance:
                advance()
                raise RuntimeError("boom")
    finally:
        reporter.close()
        progress.set_reporter(previous)
    text = buf.getvalue()
    assert "\x1b" not in text  # no cursor movement in a file or a pipe
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 2 and "augmenting" in lines[0] and "4/4" in lines[0] and "1/9" in lines[1]


def _tiny_trainer(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, \
        TrainingArguments

    from distill.training import compute_metrics_fn, tokenized
    from tiny import CORPUS

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(CORPUS)]
    ds = tokenized(tok, rows, 32, ["label"]).rename_column("label", "labels")
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), num_train_epochs=1, per_device_train_batch_size=4,
                             per_device_eval_batch_size=4, logging_steps=1, eval_strategy="epoch", save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=False, seed=0)
    return Trainer(model=AutoModelForSequenceClassification.from_pretrained(tiny_bert), args=args, train_dataset=ds,
                   eval_dataset=ds, data_collator=DataCollatorWithPadding(tok), compute_metrics=compute_metrics_fn(2))


def test_quiet_trainer_keeps_dicts_out_and_logs_one_line_per_evaluation(tiny_bert, tmp_path, capsys, caplog):
    from transformers.trainer_callback import ProgressCallback

    trainer = _tiny_trainer(tiny_bert, tmp_path)
    assert progress.quiet_trainer(trainer, "teacher") is trainer
    progress.quiet_trainer(trainer, "teacher")  # twice: still one progress callback
    assert sum(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks) == 1
    with caplog.at_level(logging.INFO, logger="distill.progress"):
        trainer.train()
    assert sum("loss" in h for h in trainer.state.log_history) == 2  # logged every step, as the Trainer prints them
    captured = capsys.readouterr()
    assert "{'loss'" not in captured.out + captured.err and "'eval_" not in captured.out + captured.err
    lines = [r.getMessage() for r in caplog.records if r.name == "distill.progress" and r.levelno == logging.INFO]
    assert len(lines) == 1 and re.fullmatch(r"teacher epoch 1/1: validation accuracy 0\.\d{4}, macro-F1 0\.\d{4}",
                                             lines[0]), lines


def test_quiet_trainer_with_a_reporter_draws_a_rich_bar(tiny_bert, tmp_path, capsys, console_reporter):
    reporter, buf = console_reporter
    progress.quiet_trainer(_tiny_trainer(tiny_bert, tmp_path), "student round 1").train()
    captured = capsys.readouterr()
    assert "{'loss'" not in captured.out + captured.err
    text = plain(buf)
    assert "student round 1 training" in text and "2/2" in text  # 8 texts, batch 4: two steps
    assert "student round 1 validation" not in text.splitlines()[-1]  # the nested evaluation line is gone
    assert reporter._progress is None


def test_cli_installs_the_reporter_for_a_command_and_removes_it(tiny_bert, tmp_path):
    from typer.testing import CliRunner

    from distill.cli import app

    r = CliRunner().invoke(app, ["export", "onnx", str(tiny_bert), "--output", str(tmp_path / "out"),
                                 "--quantize", "none", "--no-ort", "--no-e2e", "--no-optimize"])
    assert r.exit_code == 0, r.output
    assert progress.get_reporter() is None
    assert "✓ fp32" in r.output and "Traceback" not in r.output
    bars = [ln for ln in r.output.splitlines() if "ONNX Runtime model.onnx" in ln]
    assert bars and all("\x1b" not in ln for ln in bars), r.output
