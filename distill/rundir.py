"""The run directory: one folder per run, one sub-folder per stage, `run.json` as the ledger.

A stage writes into a temporary sibling (`.NAME.tmp-PID`) and is renamed into place only when
complete, so a killed run never leaves a half-written folder under a final name. `run.json` records
per stage: status, the sha256 of its inputs and of every output file, wall time and library
versions; `--resume` skips a stage whose inputs hash the same and whose outputs still verify.
One lock file per run directory keeps two runs from writing it at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from distill import memory
from distill.distributed import all_gather, barrier, from_rank_zero, is_rank_zero
from distill.errors import LockedError, RunDirError
from distill.faults import maybe_kill

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
LOCK = ".lock"
SCHEMA = 1
_VERSIONED = ["edge-distill", "torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "onnx",
              "datasets", "accelerate"]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 for every file under folder (sorted, '/'-separated)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = sha256_file(p)
    return out


def digest(obj: Any) -> str:
    """sha256 of a JSON-able object in canonical form (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path, remove: Optional[Callable[[Path], None]] = None) -> None:
    """Move a completed temporary folder to `final`, replacing what was there; the final name
    only ever names a complete folder (the old one is renamed aside first, then removed, by
    `remove` when given: a folder that may hold mounts needs more than rmtree)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}.tmp-x")
        os.replace(final, old)
        os.replace(tmp, final)
        remove(old) if remove else shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """An empty temporary sibling of `final` (`.NAME.tmp-PID`) to build a folder in: moved into place
    with replace_dir when the block completes, removed when it raises (interrupts included)."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class StageResult:
    name: str
    path: Path
    skipped: bool
    wall_s: float


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, path: Path | str, *, resume: bool = False, force: bool = False) -> "RunDir":
        """Create the run directory, or reuse it with --resume, or empty it with --force.

        An existing run directory is never silently mixed with a new run.
        """
        rd = cls(path)
        p = rd.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"{p} exists and is not a directory; pass another --name or remove it.")
        if p.is_dir() and any(p.iterdir()):
            if resume and force:
                raise RunDirError("--resume and --force contradict each other: --resume reuses the run "
                                  f"directory {p}, --force deletes it. Pass one.")
            if not resume and not force and rd.completed_nothing():
                # A run that failed before any stage completed (a bad column, a typo in a path) holds
                # nothing worth keeping: the corrected rerun under the same name just replaces it.
                log.info("%s: the earlier run completed no stage; replacing it", p)
                force = True
                rd.wipe()
            if not resume and not force:
                raise RunDirError(f"The run directory {p} already exists. Pass --resume to continue it "
                                  "(completed stages with unchanged inputs are skipped), --force to replace it, "
                                  "or --name to start a separate run.")
            if resume and not (p / RUN_JSON).exists():
                raise RunDirError(f"{p} exists but has no {RUN_JSON}, so it is not a run directory this tool "
                                  "wrote; pass --force to replace it or --name for another run.")
        p.mkdir(parents=True, exist_ok=True)
        return rd

    def completed_nothing(self) -> bool:
        """True for a run directory this tool wrote whose every stage failed or never started."""
        if not (self.path / RUN_JSON).is_file():
            return False
        try:
            stages = self.read()["stages"]
        except (OSError, ValueError, KeyError, RunDirError):
            return False
        lock = self.path / LOCK
        if lock.exists() and not self._stale(self._read_lock(lock)):
            return False  # a live run is using it
        # "running" with no live holder is a killed stage: its checkpoints are worth a --resume.
        return not any(rec.get("status") in ("complete", "running") for rec in stages.values())

    def wipe(self) -> None:
        """Remove everything but the lock (used by --force once the lock is held)."""
        for child in self.path.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # -- lock ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        if not is_rank_zero():
            yield
            return
        lock = self.path / LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_lock(lock)
                if self._stale(holder):
                    log.warning("removing a stale lock on %s left by %s", self.path, holder or "an unreadable lock file")
                    lock.unlink(missing_ok=True)
                    continue
                raise LockedError(
                    f"The run directory {self.path} is locked by pid {holder['pid']} on {holder['host']} "
                    f"(since {holder.get('started', '?')}). Wait for that run to finish, or stop it; a lock "
                    "left by a process that no longer exists is cleared automatically.") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        else:  # pragma: no cover - a race with another process clearing the same stale lock
            raise LockedError(f"Could not take the lock on {self.path}; another run is starting there.")
        try:
            self._clear_temporaries()
            yield
        finally:
            holder = self._read_lock(lock)
            if holder and holder.get("pid") == me["pid"]:
                lock.unlink(missing_ok=True)

    @staticmethod
    def _read_lock(lock: Path) -> dict | None:
        try:
            data = json.loads(lock.read_text())
            return data if isinstance(data, dict) and "pid" in data else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _stale(holder: dict | None) -> bool:
        if holder is None:  # unreadable: the writer died between create and write
            return True
        if holder.get("host") != socket.gethostname():
            return False  # cannot see another host's processes; never steal its lock
        return not _pid_alive(int(holder["pid"]))

    def _clear_temporaries(self) -> None:
        for child in self.path.glob(".*.tmp-*"):
            log.info("removing %s, left by an interrupted stage", child.name)
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

    # -- ledger ----------------------------------------------------------------------------------

    def read(self) -> dict:
        f = self.path / RUN_JSON
        if not f.exists():
            return {"schema": SCHEMA, "stages": {}}
        try:
            data = json.loads(f.read_text())
        except ValueError:
            raise RunDirError(f"{f} is not valid JSON (was it edited by hand?); rerun with --force to start over.") from None
        data.setdefault("stages", {})
        return data

    def _update_stage(self, name: str, **fields: Any) -> None:
        if not is_rank_zero():
            return
        data = self.read()
        data["schema"] = SCHEMA
        data["stages"].setdefault(name, {}).update(fields)
        write_json_atomic(self.path / RUN_JSON, data)

    def record(self, name: str, **fields: Any) -> None:
        """Record a stage's status without running it (e.g. 'not-built')."""
        self._update_stage(name, **fields)

    def verify(self, name: str) -> bool:
        """True when the stage's recorded outputs exist and every file's sha256 still matches."""
        rec = self.read()["stages"].get(name) or {}
        outputs = rec.get("outputs")
        folder = self.path / name
        if rec.get("status") != "complete" or outputs is None or not folder.is_dir():
            return False
        if hash_tree(folder) != outputs:
            log.warning("stage %s: files differ from their recorded sha256; it will be rebuilt", name)
            return False
        return True

    def run_stage(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], None], *,
                  resume: bool) -> StageResult:
        """Run fn(tmp_folder) and move the folder into place as `name`, unless it can be reused."""
        in_digest = digest(inputs)
        final = self.path / name
        rec = self.read()["stages"].get(name) or {}
        reuse = is_rank_zero() and resume and rec.get("inputs_sha256") == in_digest and self.verify(name)
        if from_rank_zero(reuse):  # every rank must take the same branch (the Trainer syncs them)
            log.info("stage %s: inputs unchanged and outputs verified; reusing it", name)
            return StageResult(name, final, True, 0.0)
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self._update_stage(name, status="running", started=now(), inputs_sha256=in_digest)
        scope = "stage" if memory.reset_peak() else "process"
        t0 = time.perf_counter()
        try:
            maybe_kill(name, "start")
            fn(tmp)
            maybe_kill(name, "end")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            self._update_stage(name, status="failed", finished=now())
            raise
        wall = time.perf_counter() - t0
        peaks = [p for p in all_gather(memory.peak_rss_mib()) if p is not None]  # under torchrun: the largest rank's
        if is_rank_zero():
            outputs = hash_tree(tmp)
            replace_dir(tmp, final)
            peak = max(peaks, default=None)
            self._update_stage(name, status="complete", finished=now(), wall_s=round(wall, 3),
                               peak_rss_mib=None if peak is None else round(peak), peak_rss_scope=scope,
                               inputs_sha256=in_digest, outputs=outputs, output_sha256=digest(outputs),
                               versions=library_versions())
        else:  # rank 0's copy of the same outputs is the one kept
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()  # no rank reads this stage's outputs before rank 0 has moved them into place
        return StageResult(name, final, False, wall)

    def output_digest(self, name: str, files: tuple[str, ...] | None = None) -> str | None:
        """The digest of a stage's outputs, or of just `files` among them."""
        rec = self.read()["stages"].get(name) or {}
        if files is None:
            return rec.get("output_sha256")
        outputs = rec.get("outputs") or {}
        return digest({f: outputs.get(f) for f in files})
