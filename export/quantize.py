"""Pass 3: int8 quantization, dynamic (per instruction set) or static QDQ (calibrated).

Presets follow optimum's `AutoQuantizationConfig` (optimum/onnxruntime/configuration.py): uint8
activations everywhere; int8 weights for avx512_vnni and arm64, uint8 weights for avx2 (the AVX2
u8 x s8 kernels can saturate); full range; every operator quantize_dynamic quantizes, no node
excluded. optimum's preset objects are not used: they also set weights_symmetric=True, which for
avx2's uint8 weights is not quantize_dynamic's default (asymmetric) and changes the file; for int8
weights both are symmetric (tests/test_export.py compares the two). Quantization goes through ONNX
Runtime's own functions, because optimum's ORTQuantizer fails on an already fused graph; on a fused
graph `quantize_dynamic` needs DefaultTensorType=FLOAT to type the contrib ops' outputs.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

from distill.errors import ExportError

from export.runtime import Batch, quiet_onnxruntime

log = logging.getLogger(__name__)

# Static int8 quantizes MatMul/Gemm only: calibrating the attention mask's Add (-inf-like values)
# breaks entropy/percentile calibration and costs accuracy.
STATIC_OPS = ["MatMul", "Gemm"]


@dataclass(frozen=True)
class Preset:
    weight_type: str  # QuantType member name
    reduce_range: bool = False


PRESETS = {"avx512_vnni": Preset("QInt8"), "avx2": Preset("QUInt8"), "arm64": Preset("QInt8")}


def host_isa() -> str:
    """The best preset this host runs natively: arm64, avx512_vnni, else avx2."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    flags = _cpu_flags()
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # macOS / Windows: no cpuinfo; assume the common x86 baseline
        return {"avx2"}
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def host_has(isa: str) -> bool:
    if isa == "arm64":
        return platform.machine().lower() in ("aarch64", "arm64")
    return platform.machine().lower() not in ("aarch64", "arm64") and isa in _cpu_flags()


def resolve_isa(isa: str) -> str:
    if isa == "auto":
        chosen = host_isa()
        log.info("instruction set detected on this host: %s", chosen)
        return chosen
    if isa not in PRESETS:
        raise ExportError(f"Unknown instruction set {isa!r}; choose one of auto, {', '.join(PRESETS)}.")
    if not host_has(isa):
        log.warning("quantizing for %s, which this host (%s) lacks: the model is built for it, but its speed "
                    "cannot be measured here", isa, platform.machine())
    return isa


def dynamic(src: Path, dst: Path, *, isa: str, per_channel: bool = False) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    preset = PRESETS[isa]
    log.info("dynamic int8 (%s: %s weights%s)", isa, preset.weight_type, ", per-channel" if per_channel else "")
    with quiet_onnxruntime():
        quantize_dynamic(src, dst, per_channel=per_channel, reduce_range=preset.reduce_range,
                         weight_type=getattr(QuantType, preset.weight_type),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def static(src: Path, dst: Path, *, isa: str, calibration: list[Batch], per_channel: bool = False) -> None:
    """QDQ int8 of MatMul/Gemm, calibrated (min-max) on the given tokenized batches."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ExportError("Static int8 needs calibration texts, and there are none: the run's data/train.jsonl "
                          "is empty. Use --quantize dynamic, or give a data file.")
    prep = dst.with_name(dst.stem + ".prep.onnx")
    preset = PRESETS[isa]
    log.info("static QDQ int8 of %s, calibrated on %d batches", "/".join(STATIC_OPS), len(calibration))
    with quiet_onnxruntime():
        try:
            _pre_process(src, prep)
            quantize_static(str(prep), str(dst), _reader(prep, calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=STATIC_OPS, per_channel=per_channel,
                            reduce_range=preset.reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=getattr(QuantType, preset.weight_type), calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            prep.unlink(missing_ok=True)


def _pre_process(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # a fused graph needs ORT's symbolic inference to type its contrib ops' outputs (else the pooler's
        # Gemm gets no input scale); an unfused one fails it ("Incomplete symbolic shape inference";
        # measured), and ONNX's own inference is enough there
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as e:  # noqa: BLE001 - the symbolic inference raises a bare Exception
        log.debug("symbolic shape inference failed (%s); using ONNX shape inference only", e)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _reader(model: Path, calibration: list[Batch]):
    """Feeds the calibration batches, only the inputs the graph has."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    names = [i.name for i in onnx.load(str(model), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self):  # noqa: ANN201 - ORT's protocol
            b = next(self._it, None)
            return None if b is None else {n: b[n] for n in names if n in b}

    return Reader()
