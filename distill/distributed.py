"""Multi-process runs under `torchrun` / `accelerate launch`.

Every rank runs every stage (the Hugging Face Trainer needs all ranks in its training and
evaluation loops, and the other stages are deterministic given the seed), each into its own
temporary folder; rank 0 alone decides reuse, moves outputs into place and writes the ledger, and
the other ranks wait at a barrier until it has. Inference passes (soft labels, evaluation) are
sharded: each rank scores its share of the batches and every rank gathers the whole (see
distill.training.predict_logits). Single-process runs never touch torch.distributed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_rank_zero() -> bool:
    """Under torchrun / accelerate only rank 0 takes the lock and writes."""
    return rank() == 0


def _dist() -> Any | None:
    """torch.distributed when this is a multi-process run, initialising the group if needed."""
    if world_size() <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        log.info("rank %d of %d joined the process group (%s)", rank(), world_size(), backend)
    return dist


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def from_rank_zero(value: Any) -> Any:
    """Rank 0's value on every rank (used for decisions that must agree, such as stage reuse)."""
    dist = _dist()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank ([value] in a single process)."""
    dist = _dist()
    if dist is None:
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def shutdown() -> None:
    """Leave the process group (a process that exits still in it aborts under gloo)."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
