"""An aarch64 Debian with Python, onnxruntime and numpy, run on this x86 host under qemu user-mode.

Built once into the cache folder (distill.assets.cache_dir()) as `arm64-env-HASH`, HASH being that
of its pins (Debian suite, Python, and the aarch64 wheels, pinned to the versions installed on the
host), so a new onnxruntime on the host means a new environment and an old one is never reused by
mistake. It is built in a hidden `.arm64-env-HASH.tmp-PID` sibling and renamed into place once a
smoke test passed and its READY.json marker is written: a folder with the final name is complete.

Recipe and pitfalls (docs/arm-check.md):
debootstrap's second stage runs aarch64 programs, so building needs root and the qemu-aarch64
binfmt handler (registered here if missing and unregistered afterwards). Running needs neither:
`qemu-aarch64-static -L ROOT ROOT/usr/bin/python3` resolves absolute paths inside ROOT first and
falls back to the host's, with no chroot, no mount and no root. Two consequences: the empty files
ROOT/sys/devices/system/cpu/{possible,present} keep onnxruntime from reading the host's x86
topology (with the host's /sys it crashes), and a path missing inside ROOT is read and written on
the host, which is how the input and output files reach the emulated side (export/arm64.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from distill.assets import cache_dir, safe_extract
from distill.errors import AssetError
from distill.rundir import replace_dir

log = logging.getLogger(__name__)

NAME = "arm64-env"
MARKER = "READY.json"
SUITE = "bookworm"  # Debian 12: Python 3.11, the version the aarch64 wheels below are fetched for
PYTHON = "3.11"
MIRROR = os.environ.get("DISTILL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# onnxruntime and its import-time dependencies; each pinned to the host's installed version, so both
# sides run the same onnxruntime release and numpy.
WHEELS = ("onnxruntime", "numpy", "flatbuffers", "packaging", "protobuf")
QEMU = "qemu-aarch64-static"
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
INSTALL_HINT = "apt-get install -y qemu-user-static debootstrap"
BUILD_COMMAND = f"sudo distill assets install {NAME}"
# QEMU_CPU -> what it stands for (qemu 7.2 offers a64fx, cortex-a35/a53/a57/a72/a76, max, neoverse-n1).
PROFILES = {
    "max": "big core: every feature qemu emulates, dot-product, i8mm and SVE included",
    "cortex-a53": "little core of an older phone: Armv8.0, no dot-product, no i8mm",
}
SMOKE = ("import json, platform, numpy, onnxruntime; print(json.dumps({'machine': platform.machine(), "
         "'python': platform.python_version(), 'onnxruntime': onnxruntime.__version__, 'numpy': numpy.__version__}))")


def pins() -> dict:
    """What decides the environment's content; its hash names the folder."""
    wheels = {}
    for name in WHEELS:
        try:
            wheels[name] = md.version(name)
        except md.PackageNotFoundError:
            raise AssetError(f"{name} is not installed in this Python ({sys.executable}), so there is no version to "
                             f"pin the aarch64 {name} to. Install edge-distill's dependencies first "
                             "(`make setup`).") from None
    return {"arch": "arm64", "suite": SUITE, "variant": "minbase", "include": ["python3"], "python": PYTHON,
            "wheels": wheels}


def pins_hash(p: dict) -> str:
    return hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]


def env_dir(p: Optional[dict] = None) -> Path:
    return cache_dir() / f"{NAME}-{pins_hash(p or pins())}"


def read_marker(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def status() -> dict:
    """{"state": "built" | "missing", "path", "size_bytes", "stale": [older builds with other pins]}."""
    p = pins()
    final = env_dir(p)
    marker = read_marker(final)
    built = marker is not None and marker.get("pins") == p
    stale = [d for d in sorted(cache_dir().glob(f"{NAME}-*")) if d != final and read_marker(d) is not None]
    return {"state": "built" if built else "missing", "path": final,
            "size_bytes": marker.get("size_bytes", 0) if built else 0, "marker": marker if built else None,
            "stale": stale}


def require_built() -> Path:
    """The environment's aarch64 root tree (ENV/root), or an AssetError that says how to build it."""
    st = status()
    if st["state"] != "built" or not (st["path"] / "root" / "usr" / "bin" / "python3").exists():
        raise AssetError(f"The aarch64 environment for the ARM check is not built ({st['path']} is missing). Build it "
                         f"once with `{BUILD_COMMAND}` (a few minutes, about 400 MB in {cache_dir()}; needs root, "
                         f"qemu-user-static and debootstrap: {INSTALL_HINT}).")
    missing = missing_tools([QEMU])
    if missing:
        raise AssetError(prerequisite_message(missing, "run the aarch64 environment"))
    return st["path"] / "root"


# ------------------------------------------------------------------------------------ prerequisites


def missing_tools(tools: tuple[str, ...] | list[str] = (QEMU, "debootstrap"), *, path: Optional[str] = None,
                  euid: Optional[int] = None, need_root: bool = False) -> list[str]:
    """The tools (and "root") that are missing; `path` and `euid` default to this process's."""
    missing = [t for t in tools if shutil.which(t, path=path) is None]
    if need_root and (os.geteuid() if euid is None else euid) != 0:
        missing.append("root")
    return missing


def prerequisite_message(missing: list[str], action: str) -> str:
    tools = [m for m in missing if m != "root"]
    parts = []
    if tools:
        parts.append(f"{' and '.join(tools)} {'is' if len(tools) == 1 else 'are'} not on PATH; on Debian or Ubuntu "
                     f"install {'it' if len(tools) == 1 else 'them'} with `{INSTALL_HINT}` "
                     "(qemu-aarch64-static comes with qemu-user-static)")
    if "root" in missing:
        parts.append(f"it needs root (debootstrap creates device nodes and runs aarch64 programs in a chroot): rerun "
                     f"as root, e.g. `{BUILD_COMMAND}`")
    return f"Cannot {action}: " + "; ".join(parts) + "."


# ------------------------------------------------------------------------------------------- running


def python_command(root: Path, args: list[str], *, qemu_cpu: str = "max") -> tuple[list[str], dict[str, str]]:
    """argv and environment that run ROOT's aarch64 python3 with `args` under qemu's -L path prefix."""
    qemu = shutil.which(QEMU) or QEMU
    argv = [qemu, "-L", str(root), str(root / "usr" / "bin" / "python3"), "-s", "-B", *args]
    # A clean environment: the host's PYTHONPATH or PYTHONHOME would point the aarch64 Python at x86 code.
    env = {"QEMU_CPU": qemu_cpu, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": "/opt/site",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "HOME": "/root"}
    return argv, env


def run_python(root: Path, args: list[str], *, qemu_cpu: str = "max",
               timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    argv, env = python_command(root, args, qemu_cpu=qemu_cpu)
    log.debug("running %s", " ".join(argv))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ building


def build(*, force: bool = False) -> Path:
    """Build the environment for the current pins (a no-op when it is built, unless force)."""
    p = pins()
    final = env_dir(p)
    if not force and status()["state"] == "built":
        log.info("%s is already built: %s", NAME, final)
        return final
    missing = missing_tools(need_root=True)
    if missing:
        raise AssetError(prerequisite_message(missing, f"build the aarch64 environment ({NAME})"))
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_dead_builds(final.parent)
    work = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    t0 = time.perf_counter()
    try:
        _remove_tree(work)
        work.mkdir()
        root = work / "root"
        with binfmt_aarch64():
            _debootstrap(root)
        wheels = _install_wheels(p["wheels"], root / "opt" / "site", work / "wheels")
        # Empty CPU topology files: onnxruntime reads these instead of the host's x86 ones and segfaults.
        cpu = root / "sys" / "devices" / "system" / "cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present"):
            (cpu / name).write_text("")
        info = _smoke_test(root, p)
        marker = {"name": NAME, "pins": p, "pins_sha256": pins_hash(p), "wheels": wheels, **info,
                  "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_s": round(time.perf_counter() - t0, 1),
                  "size_bytes": disk_usage(work), "mirror": MIRROR}
        (work / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: the folder is complete
        replace_dir(work, final, remove=_remove_tree)
    finally:
        if work.exists():
            _remove_tree(work)
    log.info("built %s in %.0f s: %s (%.0f MB)", NAME, time.perf_counter() - t0, final, marker["size_bytes"] / 1e6)
    return final


def _debootstrap(root: Path) -> None:
    cmd = ["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3", SUITE, str(root), MIRROR]
    log.info("debootstrap %s arm64 into %s (a few minutes: its second stage runs under emulation)", SUITE, root)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        logfile = root / "debootstrap" / "debootstrap.log"
        tail = logfile.read_text(errors="replace") if logfile.exists() else (proc.stderr or proc.stdout)
        tail = "\n".join(tail.strip().splitlines()[-8:])
        raise AssetError(f"debootstrap of Debian {SUITE} arm64 failed (exit {proc.returncode}); nothing was kept. Check "
                         f"that {MIRROR} is reachable (set DISTILL_DEBIAN_MIRROR for another mirror) and that "
                         f"qemu-user-static is installed, then rerun `{BUILD_COMMAND}`.\n{tail}")


def _install_wheels(wanted: dict[str, str], site: Path, download: Path) -> dict[str, str]:
    """pip download the aarch64 cp311 wheels and unzip them into site; returns {wheel file: sha256}."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
           "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
           "--platform", "manylinux2014_aarch64", "--python-version", PYTHON, "--implementation", "cp",
           "-d", str(download), *(f"{k}=={v}" for k, v in wanted.items())]
    log.info("downloading aarch64 wheels: %s", ", ".join(f"{k}=={v}" for k, v in wanted.items()))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise AssetError(f"Downloading the aarch64 wheels failed (pip exit {proc.returncode}): PyPI must be reachable "
                         f"and have Python {PYTHON} aarch64 wheels of {', '.join(f'{k}=={v}' for k, v in wanted.items())}."
                         f"\n{tail}")
    out = {}
    for whl in sorted(download.glob("*.whl")):
        out[whl.name] = hashlib.sha256(whl.read_bytes()).hexdigest()
        safe_extract(whl, site)
    got = {whl.split("-")[0].lower().replace("_", "-") for whl in out}
    if got != set(wanted):
        raise AssetError(f"pip downloaded wheels for {sorted(got)}, expected {sorted(wanted)}.")
    shutil.rmtree(download)
    return out


def _smoke_test(root: Path, p: dict) -> dict:
    proc = run_python(root, ["-c", SMOKE], timeout=600)
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        raise AssetError(f"The freshly built aarch64 environment does not import onnxruntime (exit {proc.returncode}); "
                         f"nothing was kept.\n{tail}") from None
    if info.get("machine") != "aarch64" or info.get("onnxruntime") != p["wheels"]["onnxruntime"]:
        raise AssetError(f"The aarch64 environment's smoke test reported {info}, expected machine aarch64 and "
                         f"onnxruntime {p['wheels']['onnxruntime']}; nothing was kept.")
    return info


@contextmanager
def binfmt_aarch64() -> Iterator[None]:
    """The kernel runs aarch64 ELF files through qemu while inside; what this registered is undone after."""
    mounted = registered = False
    entry = BINFMT_DIR / "qemu-aarch64"
    try:
        if not (BINFMT_DIR / "register").exists():
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], check=True,
                           capture_output=True)
            mounted = True
        if not entry.exists():
            if not BINFMT_CONF.exists():
                raise AssetError(f"{BINFMT_CONF} is missing, so aarch64 programs cannot be registered with the kernel. "
                                 f"Install qemu-user-static: `{INSTALL_HINT}`.")
            line = next(x for x in BINFMT_CONF.read_text().splitlines() if x.startswith(":"))
            (BINFMT_DIR / "register").write_text(line)
            registered = True
            log.info("registered the qemu-aarch64 binfmt handler for the build")
        elif "enabled" not in entry.read_text():
            raise AssetError(f"The qemu-aarch64 binfmt handler is registered but disabled ({entry}); enable it with "
                             f"`echo 1 > {entry}` and rerun `{BUILD_COMMAND}`.")
        yield
    except subprocess.CalledProcessError as e:
        raise AssetError(f"Mounting binfmt_misc at {BINFMT_DIR} failed ({e.stderr.decode(errors='replace').strip()}); "
                         "building the aarch64 environment needs root outside a restricted container.") from None
    finally:
        if registered and entry.exists():
            entry.write_text("-1")
        if mounted:
            subprocess.run(["umount", str(BINFMT_DIR)], capture_output=True)


# ------------------------------------------------------------------------------------ tidy and measure


def mounts_under(folder: Path) -> list[Path]:
    """Mount points at or below folder (deepest first), from /proc/self/mountinfo."""
    base = os.path.realpath(folder)
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        point = line.split()[4].encode().decode("unicode_escape")  # \040 for spaces
        if point == base or point.startswith(base + os.sep):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _remove_tree(folder: Path) -> None:
    """rmtree, after unmounting whatever a failed debootstrap left mounted inside (rmtree would descend
    into a bind-mounted /dev or a /proc and delete or stumble over the host's files)."""
    if not folder.exists():
        return
    for point in mounts_under(folder):
        subprocess.run(["umount", str(point)], capture_output=True)
    left = mounts_under(folder)
    for point in left:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
    left = mounts_under(folder)
    if left:
        raise AssetError(f"{folder} still has mounts inside ({', '.join(map(str, left))}); unmount them "
                         "(`umount PATH`) and delete the folder by hand.")
    shutil.rmtree(folder, ignore_errors=True)


def _clear_dead_builds(cache: Path) -> None:
    from distill.rundir import _pid_alive

    for d in cache.glob(f".{NAME}-*.tmp-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            log.info("removing %s, left by an interrupted build", d)
            _remove_tree(d)


def disk_usage(folder: Path) -> int:
    """Bytes on disk under folder, as `du -s` counts them (hard links once)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total

