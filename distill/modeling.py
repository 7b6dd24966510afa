"""Loading sequence classifiers safely: safetensors only, remote code off, labels named."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from distill.assets import resolve_model
from distill.errors import DistillError

log = logging.getLogger(__name__)


def check_weights(path: str, allow_pickle: bool) -> None:
    """Refuse a local folder whose only weights are pickles (.bin/.pt) unless the recipe allows it."""
    p = Path(path)
    if not p.is_dir():
        return  # a Hub id: from_pretrained(use_safetensors=True) enforces it
    if not (p / "config.json").exists():
        raise DistillError(f"{p}: not a Hugging Face model folder (no config.json). Point the recipe at a folder "
                           "written by save_pretrained, a packaged:NAME, or a Hub id.")
    has_st = any(p.glob("*.safetensors"))
    pickles = [f.name for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if not has_st and pickles and not allow_pickle:
        raise DistillError(f"{p}: weights are only in pickle files ({', '.join(pickles)}), which can run code when "
                           "loaded. Convert them to safetensors, or set teacher.allow_pickle: true in the recipe if "
                           "you trust the source.")
    if not has_st and not pickles:
        raise DistillError(f"{p}: no weights found (no *.safetensors). The folder is incomplete.")


def check_remote_code(path: str, trust_remote_code: bool) -> None:
    """Refuse a local folder that ships its own Python classes (an `auto_map`) unless the recipe trusts it.

    transformers would refuse too, but with a prompt or an error that does not name the recipe key.
    """
    import json

    p = Path(path)
    if trust_remote_code or not p.is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((p / name).read_text()).get("auto_map")
        except (OSError, ValueError, AttributeError):
            continue
        if auto_map:
            code = sorted({str(v if isinstance(v, str) else v[0]).split(".")[0] + ".py" for v in auto_map.values() if v})
            raise DistillError(f"{p}: {name} maps the model to Python code shipped in the folder ({', '.join(code)}), "
                               "which would run on load. It runs only with trust_remote_code: true in the recipe's "
                               "teacher (or student) section; set it only if you trust the source.")


def load_tokenizer(ref: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(ref)
    check_remote_code(path, trust_remote_code)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_classifier(ref: str, names: list[str], *, trust_remote_code: bool = False, allow_pickle: bool = False,
                    dropout: Optional[float] = None, quantization: str = "none") -> Any:
    """A sequence classifier with len(names) labels; a new head when the checkpoint has none or another size."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model(ref)
    check_weights(path, allow_pickle)
    check_remote_code(path, trust_remote_code)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    if dropout is not None:
        for attr in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, attr):
                setattr(config, attr, dropout)
    kwargs: dict[str, Any] = {}
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if quantization == "8bit" else
                                         BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_use_double_quant=True))
    return AutoModelForSequenceClassification.from_pretrained(
        path, config=config, trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle,
        ignore_mismatched_sizes=True, **kwargs)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def num_layers(model: Any) -> Optional[int]:
    cfg = model.config
    return getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
