from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from conftest import asset_installed

from distill import assets
from distill.errors import AssetError


def test_six_assets_are_known_with_pins():
    assert set(assets.ASSETS) == {"rotten-tomatoes", "tweets-sentiment", "sms-spam", "minilm-l6", "mpnet-base",
                                  "smollm2-135m-instruct"}
    for a in assets.ASSETS.values():
        pins = assets.pins(a)
        assert pins and all(len(sha) == 64 for _, _, sha in pins)
    assert len(assets.pins(assets.get("mpnet-base"))) == 5


def test_lookup_errors_list_the_valid_names():
    with pytest.raises(AssetError, match="rotten-tomatoes"):
        assets.get("rotten-tomatos")
    with pytest.raises(AssetError, match="packaged:minilm-l6"):
        assets.get("builtin:minilm-l6")
    assert assets.get("packaged:minilm-l6").name == "minilm-l6"


def test_missing_asset_names_the_install_command(monkeypatch, tmp_path):
    pin = tmp_path / "sms-spam.txt"
    pin.write_text("no-such-carrier-package-xyz==9.9 --hash=sha256:" + "0" * 64 + "\n")
    monkeypatch.setattr(assets, "pin_file", lambda a: pin)
    with pytest.raises(AssetError) as e:
        assets.resolve("builtin:sms-spam")
    assert "missing" in str(e.value) and "distill assets install sms-spam" in str(e.value)


def _zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_zip_members_that_escape_are_refused(tmp_path, bad):
    z = tmp_path / "a.zip"
    z.write_bytes(_zip({"fine.txt": b"1", bad: b"2"}))
    with pytest.raises(AssetError, match="outside"):
        assets.safe_extract(z, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlinks_are_refused_and_normal_zips_extract(tmp_path):
    z = tmp_path / "l.zip"
    z.write_bytes(_zip({"a.txt": b"1"}, links=("link",)))
    with pytest.raises(AssetError, match="symbolic link"):
        assets.safe_extract(z, tmp_path / "out")
    z.write_bytes(_zip({"m/a.txt": b"1", "m/b/c.txt": b"2"}))
    assets.safe_extract(z, tmp_path / "ok")
    assert (tmp_path / "ok" / "m" / "b" / "c.txt").read_bytes() == b"2"


def _wheel(folder, name="edgedistilltestpkg", version="1.0"):
    path = folder / f"{name}-{version}-py3-none-any.whl"
    di = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "")
        zf.writestr(f"{di}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{di}/RECORD", "")
    return path


def test_hash_mismatch_is_refused_and_nothing_installed(monkeypatch, tmp_path):
    wheel = _wheel(tmp_path)
    real = hashlib.sha256(wheel.read_bytes()).hexdigest()
    wrong = ("1" if real[0] != "1" else "2") + real[1:]
    pin = tmp_path / "pin.txt"
    pin.write_text(f"--no-index\n--find-links {tmp_path}\nedgedistilltestpkg==1.0 --hash=sha256:{wrong}\n")
    monkeypatch.setattr(assets, "pin_file", lambda a: pin)
    with pytest.raises(AssetError, match="did not match its pinned sha256"):
        assets.install(assets.get("sms-spam"))
    import importlib.metadata as md

    with pytest.raises(md.PackageNotFoundError):
        md.distribution("edgedistilltestpkg")


def test_split_zip_is_joined_extracted_once_and_reused(monkeypatch, tmp_path):
    # Two "carriers" holding halves of one zip, as mpnet-base ships.
    blob = _zip({"model/config.json": b"{}", "model/weights.bin": b"x" * 1000})
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(blob[:500])
    parts[1].write_bytes(blob[500:])
    asset = assets.Asset("split-test", "model", "test", "model", zip_parts=(str(parts[0]), str(parts[1])))
    monkeypatch.setattr(assets, "_locate", lambda dist, rel: rel)
    carriers = [("c1", "1", "a" * 64), ("c2", "1", "b" * 64)]
    first = assets._extract_split_zip(asset, carriers)
    assert (first / "weights.bin").read_bytes() == b"x" * 1000
    parts[0].write_bytes(b"corrupted")  # not read again: the extraction is reused
    assert assets._extract_split_zip(asset, carriers) == first
    assert not list(first.parent.parent.glob(".split-test-*"))


@pytest.mark.real
@pytest.mark.skipif(not asset_installed("minilm-l6"), reason="packaged:minilm-l6 not installed")
def test_packaged_minilm_resolves_to_a_loadable_folder():
    from transformers import AutoConfig

    folder = assets.resolve("packaged:minilm-l6")
    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.num_hidden_layers == 6 and cfg.hidden_size == 384
    assert (folder / "model.safetensors").stat().st_size > 80_000_000


@pytest.mark.real
@pytest.mark.skipif(not asset_installed("rotten-tomatoes"), reason="builtin:rotten-tomatoes not installed")
def test_builtin_rotten_tomatoes_resolves_to_its_file():
    import bz2

    path = assets.resolve("builtin:rotten-tomatoes")
    with bz2.open(path, "rt") as f:
        assert "movie_name" in f.readline()
