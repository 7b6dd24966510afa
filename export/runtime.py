"""Logits from PyTorch and from ONNX Runtime on the same tokenized batches.

Both sides get identical int64 inputs (same tokenizer call, same padding and truncation), so any
difference in the logits is the export's and not the tokenizer's.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


def tokenize(model_dir: Path, texts: list[str], *, max_length: int, batch_size: int = 32, head: int = 0) -> list[Batch]:
    """Token ids as the deployed artifact gets them: the model's tokenizer, cut at the deployed length
    (head > 0: the first head tokens and the last ones, as the run trained)."""
    from transformers import AutoTokenizer

    from distill.tokenizing import encode

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [dict(encode(tok, texts[i:i + batch_size], max_length=max_length, head=head, padding=True,
                        return_tensors="np"))
            for i in range(0, len(texts), batch_size)]


def write_deployed_length(folder: Path, max_length: int) -> None:
    """Make the exported tokenizer files say the length the model was trained and is checked at.

    tokenizer_config.json gets model_max_length (what transformers truncates to) and tokenizer.json a
    truncation block (what the tokenizers library, and apps built on its files, apply by default), so an
    app that follows the files truncates exactly as the export's accuracy was measured.
    """
    import json

    cfg_file, tok_file = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if cfg_file.exists():
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        cfg["model_max_length"] = max_length
        if "max_length" in cfg:  # a copy of the training call's kwargs that some tokenizers save
            cfg["max_length"] = max_length
        cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if tok_file.exists():
        spec = json.loads(tok_file.read_text(encoding="utf-8"))
        spec["truncation"] = {"direction": "Right", "max_length": max_length, "strategy": "LongestFirst", "stride": 0}
        tok_file.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def load_torch_classifier(model_dir: Path):
    """The PyTorch reference; refuses a folder whose classification head would be freshly random.

    optimum's exporter loads the folder again by itself: a random head would differ between the two
    loads, and the parity gate would compare two different models.
    """
    from transformers import AutoModelForSequenceClassification

    from distill.errors import ExportError

    model, info = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True,
                                                                     output_loading_info=True)
    if info.get("missing_keys"):
        raise ExportError(f"{model_dir} has no trained classification head (missing in its safetensors: "
                          f"{', '.join(sorted(info['missing_keys'])[:4])}). It is a base model; fine-tune or distill "
                          "it into a classifier first (`distill run`), then export the run directory.")
    return model.eval()


def _size(batch: Batch) -> int:
    return len(batch["input_ids"])


def _texts(batches: list[Batch]) -> int:
    return sum(_size(b) for b in batches)


def torch_logits(model, batches: list[Batch], description: str = "PyTorch reference") -> np.ndarray:
    import torch

    from distill import progress

    outs = []
    with torch.inference_mode():
        for b in progress.track(batches, total=_texts(batches), description=description, size=_size):
            outs.append(model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, model.config.num_labels), np.float32)


def onnx_logits(path: Path, batches: list[Batch], description: str | None = None) -> np.ndarray:
    """Logits of the ONNX file on the batches; one progress line (in texts) named description,
    by default after the file."""
    from distill import progress
    from export.sessions import session

    sess = session(path, quiet=True)
    names = [i.name for i in sess.get_inputs()]
    passes = progress.track(batches, total=_texts(batches), size=_size,
                            description=description or f"ONNX Runtime {Path(path).name}")
    outs = [sess.run(["logits"], {n: b.get(n, np.zeros_like(b["input_ids"])).astype(np.int64) for n in names})[0]
            for b in passes]
    return np.concatenate(outs) if outs else np.zeros((0, sess.get_outputs()[0].shape[-1] or 0), np.float32)


class _DropOnnxruntimeChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname:
            return True
        return record.levelno >= logging.WARNING and not record.getMessage().startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's tools log every fusion and every tensor at INFO, partly on the root logger.

    Keep their warnings, drop the chatter (and the pre-processing hint, which does not apply to a
    fused graph). Call after importing the tool, so that its loggers exist.
    """
    prefixes = ("onnx_model", "fusion_", "onnxruntime", "ort_format_model")
    saved = [(lg, lg.level) for name in list(logging.root.manager.loggerDict) if name.startswith(prefixes)
             for lg in [logging.getLogger(name)]]
    for lg, level in saved:
        lg.setLevel(max(level, logging.WARNING))
    root_filter = _DropOnnxruntimeChatter()
    logging.root.addFilter(root_filter)
    try:
        yield
    finally:
        logging.root.removeFilter(root_filter)
        for lg, level in saved:
            lg.setLevel(level)
