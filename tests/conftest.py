from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach for the Hub in tests: a failed lookup hangs ~50 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from tiny import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Extracted assets go to a per-test cache unless a test says otherwise."""
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))


def asset_installed(name: str) -> bool:
    from distill import assets

    return assets.status(assets.get(name))[0] == "installed"
