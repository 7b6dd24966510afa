"""The soft-labels stage reads the pool in chunks (distill.soft_labels.CHUNK), so a pool of millions
never sits in memory as rows: chunked or not, it labels the same texts with the same logits."""

from __future__ import annotations

import json

import numpy as np
from tiny import FAST, corpus, write_csv
from typer.testing import CliRunner

from distill import soft_labels
from distill.cli import app
from distill.recipe import load_recipe
from distill.rundir import RunDir
from distill.stage import Context


def test_chunked_soft_labels_equal_one_pass(tmp_path, tiny_bert, monkeypatch):
    csv = write_csv(tmp_path, corpus(8))
    sets = [f"data.source={csv}", f"teacher.model={tiny_bert}", "name=t", *FAST, "data.few_shot=4",
            "data.augment.multiplier=2"]
    args = ["run", "--models-dir", str(tmp_path / "models")]
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    run = tmp_path / "models" / "t"
    whole = json.loads((run / "soft_labels" / "report.json").read_text())
    assert whole["by_origin"]["transfer"] > 0 and whole["by_origin"]["augmented"] > 0 and whole["texts"] > 3 * 7

    monkeypatch.setattr(soft_labels, "CHUNK", 7)
    out = tmp_path / "chunked"
    out.mkdir()
    soft_labels.soft_labels_stage(Context(load_recipe(None, sets), RunDir(run)), out)
    a, b = soft_labels.SoftLabels.load(run / "soft_labels"), soft_labels.SoftLabels.load(out)
    assert a.index == b.index
    np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-6)
    chunked = json.loads((out / "report.json").read_text())
    for key in ("texts", "by_origin", "pseudo_label_accuracy", "pseudo_label_n", "label_distribution"):
        assert chunked[key] == whole[key], key
