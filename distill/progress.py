"""Progress of long passes, reported only where a front end asks for it.

Library code marks its long loops with `track(...)` or `with task(...) as advance:`. With no reporter
installed (library use, tests, ranks other than 0 under torchrun) both are pure pass-throughs that
write nothing. The CLI installs a `RichReporter` (bars with M/N, elapsed time and ETA on its stderr
console, beside the log) through `set_reporter` for the duration of a command.

`quiet_trainer(trainer, name)` replaces the Hugging Face Trainer's progress callback, which prints
every log dict ({'loss': ...}) into its bar, with one that keeps the bar (a rich one when a reporter
is installed, else tqdm as before) and turns each evaluation into one compact log line. The numbers
themselves reach logs/train.jsonl through distill.training.jsonl_logger.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Handle(Protocol):
    def advance(self, n: float = 1) -> None: ...

    def describe(self, description: str) -> None: ...

    def close(self) -> None: ...


class Reporter(Protocol):
    def start(self, description: str, total: Optional[float]) -> Handle: ...

    def close(self) -> None: ...


_reporter: Optional[Reporter] = None


def set_reporter(reporter: Optional[Reporter]) -> Optional[Reporter]:
    """Install reporter (None: silence); returns the one it replaces, to restore afterwards."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def get_reporter() -> Optional[Reporter]:
    return _reporter


class Advance:
    """What `task` yields: call it with how many items were done; `.describe(text)` renames the line."""

    def __init__(self, handle: Optional[Handle] = None):
        self._handle = handle

    def __call__(self, n: float = 1) -> None:
        if self._handle is not None:
            self._handle.advance(n)

    def describe(self, description: str) -> None:
        if self._handle is not None:
            self._handle.describe(description)


@contextlib.contextmanager
def task(description: str, total: Optional[float] = None) -> Iterator[Advance]:
    """A progress line for a pass of `total` items (None: unknown), closed when the block ends."""
    reporter = _reporter
    if reporter is None or total == 0:  # an empty pass gets no line
        yield Advance()
        return
    handle = reporter.start(description, total)
    try:
        yield Advance(handle)
    finally:
        handle.close()


def track(iterable: Iterable[T], total: Optional[float] = None, description: str = "working",
          size: Optional[Callable[[T], float]] = None) -> Iterator[T]:
    """The items of iterable, unchanged; each advances the line by 1, or by size(item) (a batch's
    number of texts, say). total defaults to len(iterable) where it has one."""
    if _reporter is None:
        yield from iterable
        return
    if total is None and size is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with task(description, total) as advance:
        for item in iterable:
            yield item
            advance(size(item) if size is not None else 1)


# ------------------------------------------------------------------------------------- rich reporter


class RichReporter:
    """Bars on a rich Console: description, bar, M/N, elapsed, remaining (ETA).

    One live display at a time: it starts with the first open pass and stops when the last one
    closes, so log lines and other output printed between passes land below the finished bars.
    A pass opened inside another (an evaluation inside training) gets its own line, removed when it
    closes; an outermost pass stays as one finished line. On a console that is not a terminal rich
    draws nothing while it runs and prints the finished lines once when the display stops.
    """

    def __init__(self, console: Any):
        self.console = console
        self._progress: Any = None
        self._open: list[int] = []

    def start(self, description: str, total: Optional[float]) -> "_RichTask":
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        if self._progress is None:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                      transient=False)
            self._progress.start()
        nested = bool(self._open)
        task_id = self._progress.add_task(description, total=total)
        self._open.append(task_id)
        return _RichTask(self, task_id, nested)

    def _finish(self, t: "_RichTask") -> None:
        progress = self._progress
        if progress is None or t.task_id not in self._open:
            return
        self._open.remove(t.task_id)
        if t.nested:
            progress.remove_task(t.task_id)
        else:
            state = progress.tasks[progress.task_ids.index(t.task_id)]
            if state.total is None:  # an open-ended pass ends with its count as the total
                progress.update(t.task_id, total=state.completed)
            progress.stop_task(t.task_id)
        if not self._open:
            self.close()

    def close(self) -> None:
        """Stop the live display (a pass left open by an exception included)."""
        progress, self._progress, self._open = self._progress, None, []
        if progress is not None:
            progress.stop()


class _RichTask:
    def __init__(self, reporter: RichReporter, task_id: int, nested: bool):
        self.reporter, self.task_id, self.nested = reporter, task_id, nested

    def _live(self) -> Any:
        p = self.reporter._progress
        return p if p is not None and self.task_id in self.reporter._open else None

    def advance(self, n: float = 1) -> None:
        p = self._live()
        if p is not None:
            p.advance(self.task_id, n)

    def describe(self, description: str) -> None:
        p = self._live()
        if p is not None:
            p.update(self.task_id, description=description)

    def close(self) -> None:
        self.reporter._finish(self)


# -------------------------------------------------------------------------------------- the Trainer


def _metric_line(name: str, args: Any, state: Any, metrics: dict[str, Any]) -> str:
    strategy = getattr(args, "eval_strategy", None)
    if str(getattr(strategy, "value", strategy)) == "epoch" and state.epoch is not None:
        epochs = getattr(state, "num_train_epochs", None) or args.num_train_epochs
        where = f"epoch {int(round(state.epoch))}/{int(math.ceil(epochs))}"
    else:
        where = f"step {state.global_step}/{state.max_steps}"
    parts = [f"{label} {metrics[key]:.4f}" for key, label in (("eval_accuracy", "accuracy"), ("eval_macro_f1", "macro-F1"))
             if isinstance(metrics.get(key), (int, float))]
    if not parts and isinstance(metrics.get("eval_loss"), (int, float)):
        parts = [f"loss {metrics['eval_loss']:.4f}"]
    return f"{name} {where}: validation {', '.join(parts) or 'done'}"


def quiet_progress_callback(name: str = "training") -> Any:
    """The Trainer's progress callback without the printed log dicts (see the module docstring)."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgressCallback(ProgressCallback):
        def __init__(self) -> None:
            super().__init__()
            self._train: Optional[Any] = None  # the rich task (a context manager) while a reporter is installed
            self._eval: Optional[Any] = None
            self._advance: Optional[Advance] = None
            self._eval_advance: Optional[Advance] = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
            if _reporter is None:
                return super().on_train_begin(args, state, control, **kwargs)
            self.current_step = 0
            if state.is_world_process_zero:
                self._train = task(f"{name} training", state.max_steps)
                self._advance = self._train.__enter__()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self._advance is not None:
                self._advance(state.global_step - self.current_step)
                self.current_step = state.global_step
            elif self.training_bar is not None:
                super().on_step_end(args, state, control, **kwargs)

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):  # noqa: ANN001
            if self._advance is None and _reporter is None:
                return super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)
            if not state.is_world_process_zero:
                return
            if self._eval is None:
                total = len(eval_dataloader) if eval_dataloader is not None and hasattr(eval_dataloader, "__len__") else None
                self._eval = task(f"{name} validation", total)
                self._eval_advance = self._eval.__enter__()
            self._eval_advance()

        def _close_eval(self) -> None:
            if self._eval is not None:
                self._eval.__exit__(None, None, None)
            self._eval = self._eval_advance = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
            self._close_eval()
            super().on_evaluate(args, state, control, **kwargs)
            if state.is_world_process_zero and metrics:
                log.info("%s", _metric_line(name, args, state, metrics))

        def on_predict(self, args, state, control, **kwargs):  # noqa: ANN001
            self._close_eval()
            super().on_predict(args, state, control, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            # Not printed: logs/train.jsonl has every number; the debug log a compact line.
            if not state.is_world_process_zero or not logs:
                return
            shown = {k: v for k, v in logs.items() if k != "total_flos" and isinstance(v, (int, float))}
            log.debug("%s step %d: %s", name, state.global_step,
                      ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
            if self._advance is not None and isinstance(logs.get("loss"), (int, float)):
                self._advance.describe(f"{name} training (loss {logs['loss']:.4f})")

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self._close_eval()
            if self._train is not None:
                self._train.__exit__(None, None, None)
                self._train = self._advance = None
            elif self.training_bar is not None:
                super().on_train_end(args, state, control, **kwargs)

    return QuietProgressCallback()


def quiet_trainer(trainer: Any, name: str = "training") -> Any:
    """Swap the Trainer's ProgressCallback (or PrinterCallback, under disable_tqdm) for the quiet one;
    name starts its bar and its evaluation lines ("teacher epoch 2/4: validation accuracy ...")."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cls in (ProgressCallback, PrinterCallback):
        while any(isinstance(cb, cls) for cb in trainer.callback_handler.callbacks):  # a quiet one too
            trainer.remove_callback(cls)
    trainer.add_callback(quiet_progress_callback(name))
    return trainer
