"""Training whose batch does not fit in memory halves it and doubles the accumulation, instead of failing.

The Trainer's own `auto_find_batch_size` halves the batch alone, which halves the effective batch and
doubles the optimizer steps (another schedule, another result). Here a batch that runs out of memory
(CUDA/XPU/MPS out of memory, or the CPU allocator failing, as accelerate recognises them) is retried
at half the batch and twice the gradient accumulation: the same examples per optimizer update, the
same number of updates and learning-rate schedule. The weights training began from are restored and
training starts again at step 0; the batch that fitted is kept beside the stage's checkpoints, so a
killed and resumed stage starts with it.
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

FITTED = "fitted_batch.json"  # in a stage's checkpoint folder: {"batch_size": B, "grad_accum": G}


def fitted(cfg: Any, folder: Path) -> Any:
    """cfg with the batch an earlier attempt of this stage found to fit (kept in folder), else cfg."""
    path = folder / FITTED
    if not path.exists():
        return cfg
    return cfg.model_copy(update=json.loads(path.read_text()))


def halved(cfg: Any) -> Any:
    return cfg.model_copy(update={"batch_size": cfg.batch_size // 2, "grad_accum": cfg.grad_accum * 2})


def train_fitting_memory(make_trainer: Callable[[Any], Any], cfg: Any, model: Any, folder: Path,
                         resume_from: Optional[str], restart: Callable[[], None], stage: str) -> tuple[Any, Any, Any]:
    """trainer.train() with make_trainer(cfg)'s trainer; on out-of-memory, halve the batch (see the module
    docstring), call restart() (which drops the failed attempt's checkpoints and log rows) and train again.
    Returns (trainer, TrainOutput, the cfg that trained)."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    from distill.distributed import is_rank_zero
    from distill.training import without_autocast

    start = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
    while True:
        trainer = make_trainer(cfg)
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
            without_autocast(trainer)  # later passes over trainer.model run in fp32
            return trainer, result, cfg
        except RuntimeError as e:
            if not should_reduce_batch_size(e) or cfg.batch_size == 1:
                raise
            smaller = halved(cfg)
            log.warning("%s: a batch of %d did not fit in memory (%s); training again from step 0 at batch %d x %d "
                        "accumulation steps (the same %d examples per update)", stage, cfg.batch_size,
                        str(e).splitlines()[0][:120], smaller.batch_size, smaller.grad_accum,
                        smaller.batch_size * smaller.grad_accum)
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in start:
                    p.copy_(start[n].to(p.device))
        restart()
        cfg, resume_from = smaller, None
        if is_rank_zero():
            (folder / FITTED).write_text(json.dumps({"batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum}) + "\n")
