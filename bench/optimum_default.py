"""The path a user takes without edge-distill: `optimum-cli export onnx` + `optimum-cli onnxruntime
quantize --<host preset>` (dynamic int8, optimum's defaults: per-tensor, no graph fusions)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def export_optimum_default(model_dir: Path, out_dir: Path, preset: str) -> Path:
    """Export model_dir with main_export and quantize it with ORTQuantizer; return the int8 file."""
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    import warnings

    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("optimum default path: exporting %s", model_dir)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings, expected here
        warnings.simplefilter("ignore")
        main_export(str(model_dir), out_dir, task="text-classification", local_files_only=True, do_validation=False)
    # optimum-cli's quantize flags default to per_channel=False; is_static=False is its dynamic mode.
    qconfig = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=False)
    quantizer = ORTQuantizer.from_pretrained(out_dir, file_name="model.onnx")
    quantizer.quantize(save_dir=out_dir, quantization_config=qconfig)
    return out_dir / "model_quantized.onnx"
