"""Pass 2: ONNX Runtime's transformer optimizer (attention, skip-layer-norm, GELU fusions).

Run at opt_level 0, so only the graph fusions are written into the file; the session's own
hardware-specific optimizations are left to load time, and the graph stays portable (x86, ARM).
Which fusions happened is returned, so export.json can say so (on mpnet-base, for example, there
is no Attention fusion).
"""

from __future__ import annotations

import logging
from pathlib import Path

from export.runtime import quiet_onnxruntime

log = logging.getLogger(__name__)


def run(src: Path, dst: Path, config: dict) -> dict[str, int]:
    """Fuse src into dst; returns {fused op type: count} for the fusions that happened."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    model_type = config.get("model_type") if config.get("model_type") in MODEL_TYPES else "bert"
    # DistilBERT names them n_heads/dim; 0 lets the optimizer read them from the graph
    heads = int(config.get("num_attention_heads") or config.get("n_heads") or 0)
    hidden = int(config.get("hidden_size") or config.get("dim") or 0)
    with quiet_onnxruntime():
        model = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden,
                               opt_level=0, use_gpu=False)
        model.save_model_to_file(str(dst))
        fusions = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    log.info("fusions (%s optimizer): %s", model_type, ", ".join(f"{n} {op}" for op, n in fusions.items()) or "none")
    return fusions

