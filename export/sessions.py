"""ONNX Runtime sessions: the one place the export, the bench and its worker processes build them.

Every session runs on the CPUExecutionProvider; each caller says what it sets beyond ONNX Runtime's
defaults. Light on purpose: nothing is imported at module import (onnxruntime when a session is
built), so the bench's measuring processes (bench/worker.py, bench/lm_worker.py) import it before
their timing starts without it showing in the cold-start figures. export/arm64_side.py keeps its
own copy: it runs alone inside the aarch64 environment, without edge-distill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

# graph optimization level by the name the bench specs and the recipe use
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def custom_ops_library() -> str:
    """Path of the ONNX Runtime Extensions shared library (the custom ops of the e2e graph), found without
    importing its Python package: that import pulls in torch and transformers (9 s and 500 MB here), which
    an app never loads and the bench's cold-start figures must not include."""
    import importlib.util

    found = importlib.util.find_spec("onnxruntime_extensions")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("onnxruntime-extensions is not installed: pip install onnxruntime-extensions")
    folder = Path(list(found.submodule_search_locations)[0])
    libs = sorted(folder.glob("_extensions_pydll*"))
    if not libs:
        raise RuntimeError(f"no _extensions_pydll library in {folder}")
    return str(libs[0])


def session_options(*, threads: Optional[int] = None, sequential: bool = False, level: Optional[str] = None,
                    config: Optional[Mapping[str, Any]] = None, custom_ops: bool = False, quiet: bool = False,
                    options: Any = None) -> Any:
    """onnxruntime.SessionOptions (options, else new ones) with only what is asked for set.

    threads: intra-op threads (None or 0: ONNX Runtime's default). sequential: one inter-op thread and
    sequential execution, as a measurement runs. level: a LEVELS name. config: session config entries.
    custom_ops: the extensions library registered (e2e graphs). quiet: warnings and below not logged
    (fused graphs make ONNX Runtime warn about unused initializers).
    """
    import onnxruntime as ort

    opts = options if options is not None else ort.SessionOptions()
    if custom_ops:
        opts.register_custom_ops_library(custom_ops_library())
    if threads:
        opts.intra_op_num_threads = threads
    if sequential:
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if level is not None:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, str(value))
    if quiet:
        opts.log_severity_level = 3
    return opts


def session(model: str | Path | bytes, **settings: Any) -> Any:
    """An onnxruntime.InferenceSession on CPU for a model file (.onnx or .ort) or a serialized ModelProto;
    settings as session_options takes them."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(**settings), providers=["CPUExecutionProvider"])
