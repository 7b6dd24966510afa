"""Read labelled text from a builtin dataset, a file (CSV, TSV, JSONL, Parquet), a folder of split files,
or one file per split (data.train / data.validation / data.test).

pandas does the reading (it is what `datasets`' CSV/JSON builders call underneath) because it lets
us name the exact row of a decoding error and does not write a cache folder per file; the splits
become `datasets.Dataset`s where training needs them.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pandas as pd

from distill.assets import BUILTIN, resolve
from distill.errors import DataError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".pq": "parquet", ".txt": "txt"}
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
               "dev": "validation", "test": "test"}
# Name tokens that mark a file in a data folder as one split (`r8-train-all-terms.tsv`, `my.dev.jsonl`).
SPLIT_TOKENS = {**SPLIT_NAMES, "training": "train", "testing": "test"}
_TOKEN_SEP = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class BuiltinSpec:
    text_column: str
    label_column: str
    group_by: Optional[str] = None
    drop_labels: tuple[str, ...] = ()
    read: dict[str, Any] = field(default_factory=dict)


BUILTINS: dict[str, BuiltinSpec] = {
    # `plot` rows are movie synopses, not reviews; grouping by movie keeps a film out of both train and test.
    "rotten-tomatoes": BuiltinSpec("text", "category", "movie_name", ("plot",), {"sep": ","}),
    "tweets-sentiment": BuiltinSpec("text", "sentiment", None, (), {"sep": ",", "encoding": "latin-1"}),
    "sms-spam": BuiltinSpec("text", "label", None, (),
                            {"sep": "\t", "header": None, "names": ["label", "text"], "quoting": csv.QUOTE_NONE}),
}


@dataclass
class Loaded:
    """Raw rows with canonical columns text, label (str or NaN), group (or absent), split (or absent)."""

    frame: pd.DataFrame
    source: str
    given_splits: bool
    group_by: Optional[str]
    dropped: dict[str, int]
    # Where a missing split may be carved from the train rows (data.train without data.test).
    carve_test: bool = False
    ignored_files: Optional[list[str]] = None  # a folder's files that name no split


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s for s in path.suffixes if s not in (".bz2", ".gz", ".xz", ".zip", ".zst")]
    ext = suffixes[-1].lower() if suffixes else ""
    if ext not in FORMATS:
        raise DataError(f"{path}: cannot tell the format from the extension {ext or '(none)'!r}. Use one of "
                        f"{', '.join(sorted(set(FORMATS) - {'.txt'}))}, or set data.format "
                        "(csv, tsv, jsonl, parquet) in the recipe.")
    return FORMATS[ext]


def _decode_error(path: Path, exc: UnicodeDecodeError, encoding: str, named: str) -> DataError:
    """encoding: the codec that failed; named: the recipe's data.encoding, which the message shows."""
    raw = path.read_bytes()
    offset = exc.start
    # pandas reports the offset within its read buffer; find the first undecodable byte ourselves.
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as e:
        offset = e.start
    except LookupError:
        pass
    line = raw[:offset].count(b"\n") + 1
    return DataError(f"{path}: line {line} is not valid {named} (byte 0x{raw[offset]:02x} at offset {offset}). "
                     "If the file uses another encoding, set data.encoding in the recipe (e.g. latin-1 or cp1252); "
                     "otherwise fix or remove that row.")


def _check_file(path: Path, key: str) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file. Check {key} in the recipe (a path is relative to the "
                        "directory you run distill from), or use builtin:rotten-tomatoes, builtin:tweets-sentiment, "
                        "builtin:sms-spam.")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty.")


def _python_encoding(encoding: str) -> str:
    # utf-8-sig reads a byte-order mark silently; plain utf-8 would glue it to the first column name.
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


@contextlib.contextmanager
def _reading(path: Path, fmt: str, encoding: str, enc: str) -> Iterator[None]:
    """Turn what reading `path` can raise into a DataError naming the file and the fix."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise _decode_error(path, e, enc, encoding) from None
    except LookupError:
        raise DataError(f"data.encoding {encoding!r} is not an encoding Python knows; use e.g. utf-8, latin-1, cp1252.") from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot be read as {fmt} ({first}). Check data.format and, for CSV/TSV, the "
                        "quoting of fields that contain the separator.") from None


def _csv_options(fmt: str, enc: str, **kwargs: Any) -> dict[str, Any]:
    opts = {"sep": "," if fmt == "csv" else "\t", "dtype": str, "keep_default_na": False, "na_values": [""],
            "encoding": enc}
    opts.update(kwargs)
    return opts


def read_table(path: Path, fmt: str, encoding: str = "utf-8", key: str = "data.source",
               **kwargs: Any) -> pd.DataFrame:
    """Read one file into a DataFrame of strings, with a clear error for each way it can fail (`key`: the
    recipe key that named the file)."""
    _check_file(path, key)
    fmt = detect_format(path, fmt)
    enc = _python_encoding(encoding)
    if fmt in ("csv", "tsv"):
        opts = _csv_options(fmt, enc, **kwargs)
        enc = opts["encoding"]
        with _reading(path, fmt, encoding, enc):
            return pd.read_csv(path, **opts)
    with _reading(path, fmt, encoding, enc):
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False, encoding=enc)
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "txt":
            text = path.read_text(encoding=enc)
            return pd.DataFrame({"text": [line for line in text.splitlines() if line.strip()]})
    raise DataError(f"{path}: unknown format {fmt!r}.")  # pragma: no cover - detect_format guards it


def _pick(frame: pd.DataFrame, wanted: Optional[str], default: str, role: str, path: Path, key: str) -> str:
    col = wanted or default
    if col not in frame.columns:
        raise DataError(f"{path}: no {role} column {col!r}. The columns are: {', '.join(map(str, frame.columns))}. "
                        f"Set data.{key} in the recipe to the right one.")
    return col


def _canonical(frame: pd.DataFrame, path: Path, text_col: Optional[str], label_col: Optional[str],
               group_col: Optional[str], default_text: str = "text", default_label: str = "label") -> pd.DataFrame:
    if frame.empty:
        raise DataError(f"{path}: no rows (only a header, or nothing).")
    t = _pick(frame, text_col, default_text, "text", path, "text_column")
    lab = _pick(frame, label_col, default_label, "label", path, "label_column")
    out = pd.DataFrame({"text": frame[t], "label": frame[lab]})
    if group_col:
        g = _pick(frame, group_col, group_col, "group", path, "group_by")
        out["group"] = frame[g].astype(str)
    return out


def load_source(data: Any) -> Loaded:
    """Load `data` (the recipe's Data section) into canonical rows."""
    if data.train is not None:
        return _load_split_files(data)
    src = data.source
    dropped: dict[str, int] = {}
    if src.startswith(BUILTIN):
        name = src[len(BUILTIN):]
        if name not in BUILTINS:
            raise DataError(f"data.source {src!r}: unknown builtin dataset. Known: "
                            f"{', '.join(BUILTIN + n for n in BUILTINS)}.")
        spec = BUILTINS[name]
        path = resolve(src)
        frame = read_table(path, "csv", **spec.read)
        group = data.group_by or spec.group_by
        out = _canonical(frame, path, data.text_column, data.label_column, group,
                         spec.text_column, spec.label_column)
        if spec.drop_labels:
            mask = out["label"].isin(spec.drop_labels)
            dropped["not_a_class_row"] = int(mask.sum())  # e.g. rotten tomatoes' plot synopses
            out = out[~mask]
        return Loaded(out.reset_index(drop=True), src, False, group, dropped)

    path = Path(src)
    if path.is_dir():
        return _load_folder(path, data)
    frame = read_table(path, data.format, data.encoding)
    out = _canonical(frame, path, data.text_column, data.label_column, data.group_by)
    given = "split" in frame.columns and not data.group_by
    if given:
        out["split"] = frame["split"].astype(str).str.strip().str.lower().map(SPLIT_NAMES)
        bad = out["split"].isna()
        if bad.any():
            row = int(bad.idxmax()) + 2
            raise DataError(f"{path}: row {row} has split {frame['split'].iloc[row - 2]!r}; a split column must say "
                            "train, validation or test (or drop the column to let distill split).")
    return Loaded(out, str(path), given, data.group_by, dropped)


def split_of(name: str) -> set[str]:
    """The splits a file name names by its tokens (lowercased, split on non-alphanumerics)."""
    return {SPLIT_TOKENS[t] for t in _TOKEN_SEP.split(name.lower()) if t in SPLIT_TOKENS}


def _split_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    found: dict[str, Path] = {}
    ignored: list[str] = []
    for p in sorted(folder.iterdir()):
        splits = split_of(p.name) if p.is_file() else set()
        if len(splits) > 1:
            raise DataError(f"{folder}: the file name {p.name!r} names more than one split "
                            f"({', '.join(sorted(splits))}). Rename it, or set data.train / data.validation / "
                            "data.test to the files in the recipe instead of data.source.")
        if not splits:
            ignored.append(p.name)
            continue
        split = splits.pop()
        if split in found:
            raise DataError(f"{folder}: two files for the {split} split ({found[split].name}, {p.name}). Keep one, "
                            "or set data.train / data.validation / data.test to the files you mean in the recipe "
                            "instead of data.source.")
        found[split] = p
    return found, ignored


def _load_folder(folder: Path, data: Any) -> Loaded:
    found, ignored = _split_files(folder)
    if "train" not in found:
        raise DataError(f"{folder}: a data folder needs a train file (a name with train or training in it: "
                        f"train.csv, news-train.jsonl, ...); it has {', '.join(sorted(ignored)) or 'nothing'}. "
                        "Rename the file, or set data.train and data.test to your files in the recipe.")
    if ignored:
        log.info("data: %s ignored (the name says no split: train, validation/valid/val/dev, test)", ", ".join(ignored))
    frames = []
    for split, p in found.items():
        frames.append(_read_split(p, split, data, "data.source"))
    return Loaded(pd.concat(frames, ignore_index=True), str(folder), True, data.group_by, {}, ignored_files=ignored)


def _read_split(path: Path, split: str, data: Any, key: str) -> pd.DataFrame:
    frame = read_table(path, data.format, data.encoding, key)
    part = _canonical(frame, path, data.text_column, data.label_column, data.group_by)
    part["split"] = split
    return part


def _load_split_files(data: Any) -> Loaded:
    """data.train (+ data.validation, data.test): one file per split, any names; data.source unused."""
    given = {name: getattr(data, name) for name in ("train", "validation", "test") if getattr(data, name) is not None}
    frames = [_read_split(Path(p), name, data, f"data.{name}") for name, p in given.items()]
    source = ", ".join(f"data.{name}={p}" for name, p in given.items())
    return Loaded(pd.concat(frames, ignore_index=True), source, True, data.group_by, {},
                  carve_test="test" not in given)


def iter_unlabeled(path_str: str, data: Any, chunk_rows: int = 65_536) -> Iterator[list[str]]:
    """Extra in-domain text (`data.unlabeled`: a .txt file, one text per line, or any table with the text
    column), read in chunks of about `chunk_rows` texts so that a file of millions of rows is never
    held whole; the chunks together are the file's string cells in order."""
    path = Path(path_str)
    _check_file(path, "data.unlabeled")
    fmt = detect_format(path, "auto")
    enc = _python_encoding(data.encoding)
    with _reading(path, fmt, data.encoding, enc):
        if fmt == "txt":
            yield from _txt_chunks(path, enc, chunk_rows)
            return
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            col = _pick(pd.DataFrame(columns=pf.schema_arrow.names), data.text_column, "text", "text", path,
                        "text_column")
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=[col]):
                yield [t for t in batch.column(0).to_pylist() if isinstance(t, str)]
            return
        if fmt in ("csv", "tsv"):
            reader = pd.read_csv(path, chunksize=chunk_rows, **_csv_options(fmt, enc))
        else:
            reader = pd.read_json(path, lines=True, dtype=False, encoding=enc, chunksize=chunk_rows)
        with reader:
            col = None
            for frame in reader:
                col = col or _pick(frame, data.text_column, "text", "text", path, "text_column")
                yield [t for t in frame[col].tolist() if isinstance(t, str)]


def _txt_chunks(path: Path, enc: str, chunk_rows: int) -> Iterator[list[str]]:
    # Line by line; str.splitlines on each line splits where splitlines on the whole text would (\v, \f, ...).
    chunk: list[str] = []
    with open(path, encoding=enc) as f:
        for line in f:
            for piece in line.splitlines():
                if piece.strip():
                    chunk.append(piece)
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
