"""SetFit (contrastive sentence pairs, then a classification head) on a run's own split, through the
setfit library itself: the baseline rows of the `baselines` stage (SetFit, and SetFit's own
distillation into the student's model) and the optional contrastive phase of the teacher or the
student (`teacher.contrastive_iterations`, `student.contrastive_iterations`).

setfit is an optional dependency (`pip install edge-distill[setfit]`); nothing here imports it before
it is needed, and a missing install is a one-paragraph error naming the command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from distill.errors import DistillError

log = logging.getLogger(__name__)

BATCH = 16  # SetFit's default embedding batch
BODY_DIR = "contrastive-body"  # in a training stage's checkpoint folder: its contrastive phase's encoder
BODY_INFO = "contrastive.json"  # in BODY_DIR, written last: what the stage's metrics.json records of the phase


def _setfit() -> Any:
    try:
        import setfit
    except ImportError as e:
        raise DistillError(f"SetFit is not installed ({e}): it is optional. Install it with "
                           "`pip install 'edge-distill[setfit]'` (or `.venv/bin/pip install -c "
                           "requirements/constraints.txt setfit sentence-transformers` in a clone), "
                           "or turn off baselines.setfit and teacher.contrastive_iterations.") from e
    return setfit


def _args(work: Path, seed: int, **kw: Any) -> Any:
    """setfit.TrainingArguments that write only under `work` and report nowhere."""
    setfit = _setfit()
    return setfit.TrainingArguments(output_dir=str(work), report_to="none", save_strategy="no", seed=seed,
                                    batch_size=BATCH, num_epochs=1, show_progress_bar=False, **kw)


@contextlib.contextmanager
def _muted() -> Iterator[None]:
    """setfit's and sentence-transformers' INFO lines, datasets' map bars and a CPU data loader's
    pin_memory warning stay out of the CLI's output; warnings and errors still show."""
    import datasets

    setfit = _setfit()
    st_log = logging.getLogger("sentence_transformers")
    levels = setfit.logging.get_verbosity(), st_log.level, datasets.is_progress_bar_enabled()
    setfit.logging.set_verbosity_warning()
    st_log.setLevel(logging.WARNING)
    datasets.disable_progress_bars()  # setfit maps its small pair sets with a bar each
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            yield
    finally:
        setfit.logging.set_verbosity(levels[0])
        st_log.setLevel(levels[1])
        if levels[2]:
            datasets.enable_progress_bars()


def _trainer(cls: Any, name: str, fault_stage: str | None = None, **kw: Any) -> Any:
    """A setfit trainer whose inner Trainer reports through our progress bar, not printed log dicts;
    fault_stage: the stage whose DISTILL_FAULT step kills apply to it (the fault tests)."""
    from distill.faults import step_callback
    from distill.progress import quiet_trainer

    trainer = cls(**kw)
    quiet_trainer(trainer.st_trainer, name)
    if fault_stage:
        trainer.st_trainer.add_callback(step_callback(fault_stage))
    return trainer


def _dataset(texts: Sequence[str], labels: Sequence[int] | None = None) -> Any:
    from datasets import Dataset

    cols: dict[str, list[Any]] = {"text": list(texts)}
    if labels is not None:
        cols["label"] = [int(v) for v in labels]
    return Dataset.from_dict(cols)


def load_setfit(model_ref: str) -> Any:
    """A SetFitModel (body + logistic-regression head) from a model reference or folder; a plain
    transformers encoder gets mean pooling, as sentence-transformers gives it."""
    from distill.assets import resolve_model

    return _setfit().SetFitModel.from_pretrained(resolve_model(model_ref))


def train_setfit(model_ref: str, texts: Sequence[str], labels: Sequence[int], *, iterations: int,
                 seed: int, learning_rate: float = 2e-5) -> tuple[Any, float]:
    """SetFit's two phases on the labelled rows: the body on iterations x 2 pairs per text (cosine
    similarity loss, setfit's default body learning rate unless given), then the logistic head on
    the bodies' embeddings. Returns (model, seconds)."""
    setfit = _setfit()
    from transformers import set_seed

    set_seed(seed)
    t0 = time.perf_counter()
    with _muted(), tempfile.TemporaryDirectory(prefix="setfit-") as work:
        model = load_setfit(model_ref)
        _trainer(setfit.Trainer, "SetFit", "baselines", model=model, args=_args(Path(work), seed, num_iterations=iterations, body_learning_rate=learning_rate),
                 train_dataset=_dataset(texts, labels)).train()
    return model, time.perf_counter() - t0


def distill_setfit(teacher: Any, student_ref: str, texts: Sequence[str], *, max_steps: int,
                   seed: int, learning_rate: float = 2e-5) -> tuple[Any, float]:
    """SetFit's DistillationTrainer: the student's body learns the teacher body's cosine similarities
    on pairs of the unlabelled texts (setfit's default body learning rate unless given), then its
    head fits the teacher's predictions on them."""
    setfit = _setfit()
    from transformers import set_seed

    set_seed(seed)
    t0 = time.perf_counter()
    with _muted(), tempfile.TemporaryDirectory(prefix="setfit-distill-") as work:
        student = load_setfit(student_ref)
        _trainer(setfit.DistillationTrainer, "SetFit distillation", "baselines", teacher_model=teacher, student_model=student,
                 args=_args(Path(work), seed, max_steps=max_steps, body_learning_rate=learning_rate), train_dataset=_dataset(texts)).train()
    return student, time.perf_counter() - t0


def predict(model: Any, texts: Sequence[str]) -> list[int]:
    with _muted():
        return [int(p) for p in model.predict(list(texts), batch_size=64, show_progress_bar=False)]


def contrastive_body(model_ref: str, texts: Sequence[str], labels: Sequence[int], *, iterations: int,
                     seed: int, out: Path, learning_rate: float = 2e-5, name: str = "teacher") -> Path:
    """SetFit's first phase alone (the body on labelled sentence pairs), saved to `out` as a
    transformers encoder folder the classifier is then built from; returns out. learning_rate:
    SetFit's default body learning rate; name: whose phase it is (the progress bar's label)."""
    setfit = _setfit()
    from transformers import set_seed

    set_seed(seed)
    with _muted(), tempfile.TemporaryDirectory(prefix="setfit-body-") as work:
        model = load_setfit(model_ref)
        trainer = _trainer(setfit.Trainer, f"{name} contrastive phase", model=model,
                           args=_args(Path(work), seed, num_iterations=iterations, body_learning_rate=learning_rate),
                           train_dataset=_dataset(texts, labels))
        trainer.train_embeddings(list(texts), [int(v) for v in labels])
    body = model.model_body
    out.mkdir(parents=True, exist_ok=True)
    body[0].auto_model.save_pretrained(out, safe_serialization=True)  # the transformer, without pooling
    body[0].tokenizer.save_pretrained(out)
    return out


def kept_contrastive_body(who: str, model_ref: str, rows: Sequence[dict[str, Any]], *, iterations: int, seed: int,
                          ckpt_dir: Path) -> tuple[Path, dict[str, Any]]:
    """A training stage's contrastive phase (`who`: teacher or student), kept in ckpt_dir/BODY_DIR so a
    stage killed after it, or retraining after running out of memory, does not repeat it. Under
    torchrun rank 0 trains the body and the other ranks read it. Returns (the encoder folder to build
    the classifier from, what the stage's metrics.json records: iterations, rows, wall_s)."""
    from distill.distributed import barrier, is_rank_zero
    from distill.rundir import staged_dir

    body = ckpt_dir / BODY_DIR
    info_file = body / BODY_INFO
    if info_file.exists():
        log.info("%s: the contrastive phase of an earlier attempt is reused", who)
    elif is_rank_zero():
        log.info("%s: contrastive phase, %d pair iterations on %d labelled rows", who, iterations, len(rows))
        t0 = time.perf_counter()
        with staged_dir(body) as tmp:
            contrastive_body(model_ref, [row["text"] for row in rows], [row["label"] for row in rows],
                             iterations=iterations, seed=seed, out=tmp, name=who)
            info = {"iterations": iterations, "rows": len(rows), "wall_s": round(time.perf_counter() - t0, 1)}
            (tmp / BODY_INFO).write_text(json.dumps(info) + "\n")
    barrier()
    return body, json.loads(info_file.read_text())
