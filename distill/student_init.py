"""Building a student: a subset of the teacher's own layers (DistilBERT-style), any smaller
pretrained model, or a config from scratch."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from distill.errors import DistillError

log = logging.getLogger(__name__)

# The module list holding the transformer blocks, per family (BERT, RoBERTa, DistilBERT, MPNet,
# ELECTRA, DeBERTa, ..., and Llama-style decoders), matched anywhere in a parameter's name.
_LAYER = re.compile(r"^(.*?\.(?:layer|layers|h|block|blocks))\.(\d+)\.(.*)$")


def layer_count(config: Any) -> int:
    for attr in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    raise DistillError(f"cannot tell how many layers a {type(config).__name__} has; use student.init: pretrained.")


def _set_layer_count(config: Any, n: int) -> None:
    for attr in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        if getattr(config, attr, None):
            setattr(config, attr, n)
            return


def from_teacher_layers(teacher: Any, layers: list[int], auto_class: Any = None) -> Any:
    """A student with the teacher's embeddings, head and the chosen layers, in order. auto_class
    builds it from the config (default AutoModelForSequenceClassification; causal LMs pass
    AutoModelForCausalLM)."""
    from transformers import AutoModelForSequenceClassification

    total = layer_count(teacher.config)
    bad = [i for i in layers if i >= total]
    if bad:
        raise DistillError(f"student.layers {layers}: the teacher has layers 0..{total - 1}; {bad} do not exist.")
    config = copy.deepcopy(teacher.config)
    _set_layer_count(config, len(layers))
    if hasattr(config, "layer_types") and isinstance(config.layer_types, list):
        config.layer_types = [config.layer_types[i] for i in layers]
    student = (auto_class or AutoModelForSequenceClassification).from_config(config)
    new_index = {old: new for new, old in enumerate(layers)}
    mapped = {}
    for name, tensor in teacher.state_dict().items():
        m = _LAYER.match(name)
        if m and int(m.group(2)) < total:
            old = int(m.group(2))
            if old not in new_index:
                continue
            name = f"{m.group(1)}.{new_index[old]}.{m.group(3)}"
        mapped[name] = tensor.clone()
    missing, unexpected = student.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise DistillError(f"copying teacher layers into a {type(student).__name__} left parameters unmatched "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]}); use student.init: pretrained.")
    log.info("student: layers %s of the teacher's %d", layers, total)
    return student


def from_config(teacher: Any, overrides: dict[str, Any], auto_class: Any = None) -> Any:
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(teacher.config)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise DistillError(f"student.config.{key}: {type(config).__name__} has no such field.")
        setattr(config, key, value)
    log.warning("student.init=config trains from random weights: expect to need far more data than a student "
                "built from the teacher's layers")
    return (auto_class or AutoModelForSequenceClassification).from_config(config)


def default_layer_map(init: str, layers: list[int], student: Any, teacher: Any) -> dict[int, int]:
    """Student layer -> teacher layer for the hidden losses when distill.layer_map is not set: a
    teacher-layers student learns the layers it was copied from; any other student a uniform map,
    each of its layers the teacher layer at the same relative depth, the last to the last
    (TinyBERT's map: a 6-layer student of a 12-layer teacher learns layers 1, 3, 5, 7, 9, 11)."""
    if init == "teacher-layers":
        return {j: layer for j, layer in enumerate(layers)}
    ns, nt = layer_count(student.config), layer_count(teacher.config)
    return {j: (j + 1) * nt // ns - 1 for j in range(ns)}
