"""What gets measured: the rows of a bench, found in a run directory or given as one file.

Rows follow models/README.md: teacher/ and student/ (Hugging Face folders + metrics.json) as
PyTorch fp32 references, and every artifact in onnx/export.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from distill.errors import DistillError

log = logging.getLogger(__name__)

EXPORT_KEYS = ["fp32", "int8-dynamic", "int8-static", "int8-dynamic-ort", "e2e-int8-dynamic", "e2e-int8-static",
               "e2e-int8-dynamic-ort", "e2e-int8-static-ort"]
LABELS = {
    "teacher-pytorch": "teacher, PyTorch fp32", "student-pytorch": "student, PyTorch fp32",
    "fp32": "ONNX fp32", "int8-dynamic": "ONNX int8 dynamic", "int8-static": "ONNX int8 static",
    "int8-dynamic-ort": ".ort int8 dynamic", "optimum-default": "student int8, optimum default path",
    "e2e-int8-dynamic": "ONNX int8, text in (tokenizer in graph)", "e2e-int8-static": "ONNX int8 static, text in",
    "e2e-int8-dynamic-ort": ".ort int8, text in (tokenizer in graph)", "e2e-fp32": "ONNX fp32, text in",
    "teacher-optimum-int8": "teacher int8, optimum default path", "tfidf-floor": "TF-IDF + LR floor (scikit-learn)",
}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


@dataclass
class Artifact:
    key: str
    label: str
    runtime: str  # "pytorch" | "onnxruntime" | "onnxruntime-e2e" (text in, tokenizer in the graph) | "tfidf"
    path: Path  # .onnx / .ort file, or a Hugging Face folder for PyTorch rows
    size_bytes: int
    accuracy: Optional[dict[str, Any]] = None  # {"accuracy", "macro_f1", "n"} on the test split
    accuracy_source: Optional[str] = None  # export.json | metrics.json | computed
    tokenizer: Optional[Path] = None
    vocab_size: Optional[int] = None
    display_path: str = ""  # as written in reports: relative to the run directory when inside it
    max_length: Optional[int] = None  # the deployed length: every accuracy and real-text row tokenizes at it
    onnx_graph: Optional[Path] = None  # the .onnx whose shapes give the MACs (an .ort's source)
    head: int = 0  # > 0: long texts keep their first head tokens and their last ones, as the model was trained

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = self.display_path or str(self.path)
        d["tokenizer"] = str(self.tokenizer) if self.tokenizer else None
        d["onnx_graph"] = str(self.onnx_graph) if self.onnx_graph else None
        d.pop("display_path")
        return d


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in _TOKENIZER_FILES)


def folder_size(folder: Path) -> int:
    weights = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    return sum(p.stat().st_size for p in weights)


def file_size(path: Path) -> int:
    extra = path.with_name(path.name + "_data")  # ONNX external data, for models over 2 GB
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def vocab_size(*candidates: Optional[Path], onnx_file: Optional[Path] = None) -> Optional[int]:
    """From a config.json in the first folder that has one; else from the ONNX word-embedding table."""
    for folder in candidates:
        if folder and (folder / "config.json").exists():
            v = json.loads((folder / "config.json").read_text()).get("vocab_size")
            if isinstance(v, int):
                return v
    if onnx_file is not None and onnx_file.suffix == ".onnx":
        import onnx

        model = onnx.load(str(onnx_file), load_external_data=False)
        for init in model.graph.initializer:
            if "word_embeddings" in init.name and init.dims:
                return int(init.dims[0])
    return None


def _test_metrics(metrics: Path) -> Optional[dict[str, Any]]:
    if not metrics.exists():
        return None
    test = (json.loads(metrics.read_text()).get("test") or {})
    return {k: test.get(k) for k in ("accuracy", "macro_f1", "n")} if test.get("accuracy") is not None else None


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def trained_head(folder: Path) -> int:
    """The head of the head+tail cut a run's model was trained with; 0 = cut on the right (the export's reading)."""
    from export.source import run_head_tokens

    return run_head_tokens(folder)


def trained_max_length(folder: Path) -> Optional[int]:
    """The length a run's model was trained and evaluated at (its metrics.json)."""
    try:
        value = json.loads((folder / "metrics.json").read_text()).get("max_length")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


def pytorch_artifact(key: str, folder: Path, root: Path) -> Artifact:
    acc = _test_metrics(folder / "metrics.json")
    return Artifact(key, LABELS.get(key, key), "pytorch", folder, folder_size(folder), acc,
                    "metrics.json" if acc else None, folder if has_tokenizer(folder) else None,
                    vocab_size(folder), _rel(folder, root), max_length=trained_max_length(folder),
                    head=trained_head(folder))


def onnx_artifact(key: str, file: Path, root: Path, *, tokenizer: Optional[Path] = None,
                  accuracy: Optional[dict] = None, accuracy_source: Optional[str] = None,
                  max_length: Optional[int] = None, head: int = 0) -> Artifact:
    tok = file.parent if has_tokenizer(file.parent) else tokenizer
    e2e = key.startswith("e2e-") or _takes_text(file)
    graph = file.with_suffix(".onnx") if file.suffix == ".ort" else file
    return Artifact(key, LABELS.get(key, key), "onnxruntime-e2e" if e2e else "onnxruntime", file, file_size(file),
                    accuracy, accuracy_source, tok, vocab_size(file.parent, tokenizer, onnx_file=file), _rel(file, root),
                    max_length=max_length or _tokenizer_max_length(tok),
                    onnx_graph=graph if graph.is_file() else None, head=head)


def _takes_text(file: Path) -> bool:
    """An .onnx whose first input is a string tensor (an end-to-end graph); .ort files are named e2e."""
    if file.suffix != ".onnx":
        return ".e2e." in file.name
    import onnx

    graph = onnx.load(str(file), load_external_data=False).graph
    return bool(graph.input) and graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.STRING


def _tokenizer_max_length(folder: Optional[Path]) -> Optional[int]:
    try:
        value = json.loads((folder / "tokenizer_config.json").read_text()).get("model_max_length") if folder else None
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, (int, float)) and 0 < value <= 1_000_000 else None


def discover_run(run: Path) -> tuple[list[Artifact], list[str]]:
    """Rows of a run directory and notes on what was skipped (a failed export, a missing teacher)."""
    export_json = run / "onnx" / "export.json"
    if not export_json.exists():
        raise DistillError(f"{run} has no onnx/export.json, so there is nothing exported to benchmark. Run "
                           f"`distill export onnx {run}` first, or pass a single .onnx file to bench it alone.")
    try:
        export = json.loads(export_json.read_text())
    except ValueError:
        raise DistillError(f"{export_json} is not valid JSON; rerun `distill export onnx {run}`.") from None
    notes: list[str] = []
    rows: list[Artifact] = []
    student = run / "student"
    for key, folder in (("teacher-pytorch", run / "teacher"), ("student-pytorch", student)):
        if (folder / "config.json").exists():
            rows.append(pytorch_artifact(key, folder, run))
        else:
            notes.append(f"no {folder.name}/ folder in the run: its PyTorch fp32 reference row is missing")
    entries = export.get("artifacts") or {}
    order = [k for k in EXPORT_KEYS if k in entries] + [k for k in entries if k not in EXPORT_KEYS]
    for key in order:
        entry = entries[key] or {}
        if entry.get("status", "ok") != "ok":
            notes.append(f"export.json lists {key} as {entry.get('status')}: not measured")
            continue
        file = run / "onnx" / entry.get("file", "")
        if not entry.get("file") or not file.is_file():
            raise DistillError(f"export.json lists the artifact {key} as {entry.get('file')!r}, but {file} does not "
                               f"exist. Rerun `distill export onnx {run}` to rebuild the onnx/ folder.")
        acc = ((entry.get("accuracy") or {}).get("test")) or None
        rows.append(onnx_artifact(key, file, run, tokenizer=student if has_tokenizer(student) else None,
                                  accuracy=acc, accuracy_source="export.json" if acc else None,
                                  max_length=export.get("max_length") or trained_max_length(student),
                                  head=(export.get("truncation") or {}).get("head_tokens", 0)))
        wrapped = (entries.get(key[len("e2e-"):].removesuffix("-ort")) or {}).get("file") if key.startswith("e2e-") else None
        if wrapped and (run / "onnx" / wrapped).is_file():
            # MACs of an end-to-end graph: those of the token-id classifier it wraps (its tokenizer does no
            # multiply-accumulates, and shape inference cannot see through its Loop)
            rows[-1].onnx_graph = run / "onnx" / wrapped
    if not any(r.runtime == "onnxruntime" for r in rows):
        raise DistillError(f"{export_json} lists no usable artifact (statuses: "
                           f"{ {k: (v or {}).get('status') for k, v in entries.items()} }). Rerun the export.")
    return rows, notes


def discover_file(file: Path) -> list[Artifact]:
    if not file.is_file():
        raise DistillError(f"{file} does not exist; pass a run directory (models/NAME) or an .onnx / .ort file.")
    return [onnx_artifact(file.stem, file, file.parent)]
