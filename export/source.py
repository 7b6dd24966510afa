"""What is exported, and on which texts it is checked: a run directory or a plain model folder.

A run directory (models/NAME with student/ or teacher/ and data/) gives the model and its own
splits: validation for the parity gate, test for accuracy, train for static calibration. A plain
Hugging Face model folder gives only the model: parity then runs on an optional data file
(JSONL `{"text", "label"?}`) or on a small built-in set of sentences, and accuracy needs labels.
The folder is checked before anything heavy runs, so that a bad input fails in a second with a
message that names the file and the fix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

from distill.errors import ExportError
from distill.tasks import CAUSAL_LM, task_of_run

log = logging.getLogger(__name__)

# Plain model folders without a data file: 64 short sentences, positive and negative, so that a
# classifier's labels are not all the same and label agreement means something.
_SUBJECTS = ["the film", "this phone", "the service", "our trip", "the new album", "that book",
             "the meal", "the update"]
_VERDICTS = ["was wonderful and moving", "was a dull waste of time", "felt fresh and clever",
             "broke after two days", "is the best I have seen this year", "was boring, slow and far too long",
             "surprised me in a good way", "left me angry and disappointed"]
DEFAULT_TEXTS = [f"{s} {v}" for s, v in product(_SUBJECTS, _VERDICTS)]


@dataclass
class Source:
    model_dir: Path
    config: dict
    run_dir: Path | None = None  # None for a plain model folder
    which: str = "student"
    texts: dict[str, list[dict]] = field(default_factory=dict)  # split -> [{"text", "label"?}]
    parity_split: str = "validation"
    max_length: int = 256  # the deployed length: the run's own (metrics.json), else the tokenizer's, capped
    head: int = 0  # > 0: long texts keep their first `head` tokens and their last ones (distill.tokenizing)
    vocab_texts: list[str] = field(default_factory=list)  # what vocabulary pruning keeps: train + transfer + augmented
    model_sha256: str | None = None  # in a run: the exported stage's output digest (run.json), so staleness shows

    @property
    def parity_rows(self) -> list[dict]:
        return self.texts["test" if self.parity_split == "test" else "validation"]

    @property
    def num_labels(self) -> int:
        return len(self.config.get("id2label") or {}) or int(self.config.get("num_labels", 2))

    def describe(self) -> dict:
        return {"kind": "run" if self.run_dir else "model-folder", "path": str(self.run_dir or self.model_dir),
                "which": self.which if self.run_dir else None, "model_dir": str(self.model_dir),
                "model_type": self.config.get("model_type"), "num_labels": self.num_labels,
                "parity_split": self.parity_split, "max_length": self.max_length,
                **({"head_tokens": self.head} if self.head else {}),
                **({"model_sha256": self.model_sha256} if self.model_sha256 else {}),
                "n": {k: len(v) for k, v in self.texts.items()}}


def is_run_dir(path: Path) -> bool:
    return (path / "data").is_dir() and ((path / "student").is_dir() or (path / "teacher").is_dir())


def resolve(path: Path, *, which: str = "student", data: Path | None = None) -> Source:
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path} is not a folder. Give a run directory (models/NAME, written by `distill run`) "
                          "or a Hugging Face model folder (config.json + model.safetensors + tokenizer files).")
    if is_run_dir(path):
        if task_of_run(path) is CAUSAL_LM:
            raise ExportError(f"{path} is a task: causal-lm run; export it with `distill export onnx {path}` "
                              "(or export.causal_lm.export_run from Python: ONNX with KV cache, int8, greedy-generation "
                              "check against PyTorch).")
        model_dir = path / which
        if not model_dir.is_dir():
            raise ExportError(f"The run directory {path} has no {which}/ folder yet. Run `distill run` until the "
                              f"{which} stage is complete, or pass --which "
                              f"{'teacher' if which == 'student' else 'student'}.")
        config = check_model_folder(model_dir)
        texts = {split: read_jsonl(path / "data" / f"{split}.jsonl", required=split != "train")
                 for split in ("validation", "test", "train")}
        extra = [r["text"] for split in ("transfer", "augmented")
                 for r in read_jsonl(path / "data" / f"{split}.jsonl", required=False)]
        src = Source(model_dir, config, run_dir=path, which=which, texts=texts, max_length=run_max_length(model_dir),
                     head=run_head_tokens(model_dir), vocab_texts=[r["text"] for r in texts["train"]] + extra)
        if not texts["validation"]:
            log.warning("%s has no validation rows; the parity gate runs on the test split instead",
                        path / "data" / "validation.jsonl")
            src.parity_split = "test"
        return src
    config = check_model_folder(path)
    if data is not None:
        rows = read_jsonl(Path(data), required=True)
        if not rows:
            raise ExportError(f"{data} has no rows; give a JSONL file with one {{\"text\": ..., \"label\": ...}} per line.")
        return Source(path, config, texts={"validation": rows, "test": rows if "label" in rows[0] else [],
                                           "train": rows}, parity_split="validation", max_length=folder_max_length(path),
                      vocab_texts=[r["text"] for r in rows])
    rows = [{"text": t} for t in DEFAULT_TEXTS]
    return Source(path, config, texts={"validation": rows, "test": [], "train": rows}, parity_split="builtin-texts",
                  max_length=folder_max_length(path), vocab_texts=[r["text"] for r in rows])


FOLDER_MAX_LENGTH = 256  # a plain model folder's deployed length: its tokenizer's limit, capped as runs cap it


def run_max_length(model_dir: Path) -> int:
    """The length the run trained and evaluated this model at (its metrics.json), which the export deploys."""
    metrics = model_dir / "metrics.json"
    try:
        value = json.loads(metrics.read_text()).get("max_length")
    except (OSError, ValueError):
        value = None
    if isinstance(value, int) and value > 0:
        return value
    log.warning("%s records no max_length; deploying at %d tokens", metrics, folder_max_length(model_dir))
    return folder_max_length(model_dir)


def run_head_tokens(model_dir: Path) -> int:
    """The head of a head+tail cut the run trained this model with (its metrics.json); 0 = cut on the right."""
    try:
        value = json.loads((model_dir / "metrics.json").read_text()).get("head_tokens")
    except (OSError, ValueError):
        value = None
    return value if isinstance(value, int) and value > 0 else 0


def folder_max_length(model_dir: Path) -> int:
    try:
        limit = json.loads((model_dir / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError):
        limit = None
    return min(FOLDER_MAX_LENGTH, int(limit)) if isinstance(limit, (int, float)) and limit > 0 else FOLDER_MAX_LENGTH


def read_jsonl(path: Path, *, required: bool) -> list[dict]:
    if not path.exists():
        if required:
            raise ExportError(f"{path} is missing. A run directory's data/ holds train/validation/test.jsonl "
                              "(models/README.md); rerun the data stage with `distill run --resume`.")
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise ExportError(f"{path}, line {i}, is not valid JSON; each line must be an object such as "
                                  '{"text": "...", "label": 0}. Fix or regenerate the file.') from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ExportError(f"{path}, line {i}, has no string \"text\" field; each line must be an object "
                                  'such as {"text": "...", "label": 0}.')
            rows.append(row)
    return rows


def supported_model_types() -> list[str]:
    """Model types optimum's ONNX exporter supports for text-classification."""
    import optimum.exporters.onnx.model_configs  # noqa: F401 - registers the ONNX configs
    from optimum.exporters.tasks import TasksManager

    return sorted(TasksManager.get_supported_model_type_for_task("text-classification", exporter="onnx"))


def check_model_folder(folder: Path) -> dict:
    """config.json readable, an exportable architecture, safetensors weights whose headers are intact."""
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise ExportError(f"{folder} holds no model: {cfg_file.name} is missing. Give a folder written by "
                          "save_pretrained (config.json, model.safetensors, tokenizer files), or a run directory.")
    try:
        config = json.loads(cfg_file.read_text())
    except ValueError:
        raise ExportError(f"{cfg_file} is not valid JSON; restore it from the model's source.") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        hint = (f" It has {', '.join(pickled)} (pickle), which is never loaded here: convert it to safetensors "
                "where you trust its source (model.save_pretrained(dir, safe_serialization=True)).") if pickled else ""
        raise ExportError(f"{folder} holds no model weights: no *.safetensors file next to config.json.{hint}")
    for w in weights:
        _check_safetensors(w)
    model_type = config.get("model_type")
    supported = supported_model_types()
    if model_type not in supported:
        raise ExportError(f"{cfg_file}: model_type {model_type!r} cannot be exported for text classification by "
                          f"optimum's ONNX exporter. Supported: {', '.join(supported)}. Distill into one of these "
                          "architectures (student.init: pretrained) and export that.")
    return config


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            if not list(f.keys()):
                raise ExportError(f"{path} holds no tensors; re-save the model with save_pretrained.")
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for every header problem
        raise ExportError(f"{path} is corrupt or truncated ({e}). Copy or download it again, or rerun the "
                          "stage that wrote it (`distill run --resume` rebuilds a stage whose files no longer "
                          "match their sha256).") from None
