"""Pass 6: ONNX -> .ort (ONNX Runtime Mobile's format) and the mobile usability check.

`convert_onnx_models_to_ort` writes the .ort file and `required_operators.config`, the operator
list a reduced (mobile) ONNX Runtime build needs. The usability check is the one behind
`python -m onnxruntime.tools.check_onnx_model_mobile_usability`: how much of the graph NNAPI
(Android) and CoreML (iOS) could take. Its full text goes to mobile_usability.txt; export.json
gets a summary per execution provider. Both tools print and configure logging at import, so they
run with stdout captured and their logger detached.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

from export.runtime import quiet_onnxruntime

log = logging.getLogger(__name__)

CONFIG = "required_operators.config"
REPORT = "mobile_usability.txt"


def to_ort(src: Path, dst: Path, *, custom_op_library: Path | None = None,
           config_name: str = CONFIG) -> Path:
    """Convert src (.onnx) to dst (.ort); writes the operator list a reduced build needs (`config_name`) next to dst.

    custom_op_library: a custom-op shared library the graph needs (the ONNX Runtime Extensions
    library for an export.e2e graph), registered while converting.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".ort-") as tmp:
        work = Path(tmp) / src.name
        shutil.copy2(src, work)  # the tool converts every .onnx in a folder: give it a folder of one
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured), quiet_onnxruntime():
            convert_onnx_models_to_ort(work, output_dir=Path(tmp) / "out",
                                       optimization_styles=[OptimizationStyle.Fixed],
                                       custom_op_library_path=Path(custom_op_library) if custom_op_library else None)
        log.debug("convert_onnx_models_to_ort: %s", captured.getvalue().strip())
        out = Path(tmp) / "out"
        shutil.move(str(out / (src.stem + ".ort")), dst)
        config = next(out.glob("*required_operators*.config"))
        # the tool names the temporary path it converted; name the file that ships instead
        text = config.read_text().replace(str(out / (src.stem + ".ort")), dst.name)
        (dst.parent / config_name).write_text(text)
    log.info("wrote %s and %s", dst.name, config_name)
    return dst


def usability(model: Path, report: Path) -> dict:
    """Run ONNX Runtime's mobile usability analysis on model; save the text; return a summary."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import optimize_model

    text = io.StringIO()
    tool_log = logging.getLogger("export.mobile.usability_checker")
    tool_log.propagate = False
    tool_log.setLevel(logging.INFO)
    handler = logging.StreamHandler(text)
    tool_log.addHandler(handler)
    eps = {"NNAPI": uc.check_nnapi_partitions,
           "CoreML MLProgram": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_mlprogram_ops.md"),
           "CoreML NeuralNetwork": lambda m, fixed: uc.check_coreml_partitions(
               m, fixed, "coreml_supported_neuralnetwork_ops.md")}
    summary = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # as the tool does: analyse the graph after BASIC optimization, which .ort conversion applies too
            basic = Path(tmp) / model.name
            optimize_model(model, basic, use_external_initializers=True)
            proto = uc.ModelProtoWithShapeInfo(basic).model_with_shape_info
            tool_log.info("Mobile usability of %s (ONNX Runtime usability_checker)", model.name)
            for ep, check in eps.items():
                info = check(proto, True)
                info.print_analysis(tool_log, ep)
                fixed = check(proto, False)  # what fixing the dynamic input shapes would gain
                summary[ep] = {"suitability": info.suitability().name,
                               "suitability_fixed_shapes": fixed.suitability().name,
                               "supported_nodes": info.num_supported_nodes, "nodes": info.num_nodes,
                               "partitions": info.num_partitions, "unsupported_ops": sorted(info.unsupported_ops)}
                tool_log.info("%s: %s as is, %s with fixed input shapes", ep, summary[ep]["suitability"],
                              summary[ep]["suitability_fixed_shapes"])
    finally:
        tool_log.removeHandler(handler)
    report.write_text(text.getvalue())
    log.info("mobile usability: %s", "; ".join(f"{ep} {s['suitability']} ({s['supported_nodes']}/{s['nodes']} nodes)"
                                               for ep, s in summary.items()))
    return {"checked": model.name, "report": report.name, "eps": summary}
