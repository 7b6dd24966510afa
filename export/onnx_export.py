"""Pass 1: PyTorch -> ONNX with optimum's `main_export`.

optimum drives the TorchScript exporter, whose graphs ONNX Runtime's transformer optimizer can fuse
(the dynamo exporter's get no attention fusion). It also copies the tokenizer files and
config.json next to model.onnx, which is what makes the folder loadable by
`ORTModelForSequenceClassification.from_pretrained(folder, file_name=...)`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from distill.errors import ExportError

log = logging.getLogger(__name__)


def run(model_dir: Path, out_dir: Path, *, opset: int = 17) -> Path:
    """Export model_dir into out_dir/model.onnx (plus tokenizer and config files); returns the model path."""
    from optimum.exporters.onnx import main_export

    log.info("exporting %s to ONNX (opset %d, optimum main_export)", model_dir, opset)
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation and tracer warnings are expected with this stack
        warnings.simplefilter("ignore")
        try:
            main_export(str(model_dir), out_dir, task="text-classification", opset=opset, device="cpu",
                        do_validation=False, local_files_only=True, trust_remote_code=False,
                        library_name="transformers")
        except Exception as e:  # noqa: BLE001 - optimum raises many types; the user needs the cause either way
            raise ExportError(f"optimum could not export {model_dir} to ONNX: {type(e).__name__}: {e}. "
                              "Try another --opset (14-21), or export a model of a supported architecture.") from e
    path = out_dir / "model.onnx"
    if not path.exists():
        raise ExportError(f"optimum's export of {model_dir} wrote no model.onnx into {out_dir}.")
    return path
