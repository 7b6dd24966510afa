"""`distill tune` on the tiny BERT and a small CSV: a search that is interrupted, resumed, prunes a
trial mid-training, reuses the shared stages, and writes a best recipe that `distill run` accepts."""

from __future__ import annotations

import json
import os

import optuna
import pytest
from tiny import FAST, corpus, write_csv
from typer.testing import CliRunner

from distill.cli import app
from distill.errors import DistillError, RecipeError, RunDirError
from distill.recipe import load_recipe
from distill.tune import tune

SPACE = "tune.space={distill.temperature: [1.0, 4.0], student.learning_rate: [1.0e-3, 1.0e-2]}"
SHARED = ("data", "teacher", "soft_labels")


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report: proves reports arrive during training and stop it."""

    def prune(self, study, trial):  # noqa: ANN001 - optuna's signature
        return trial.number == 1


def overrides(csv, tiny_bert, *extra):
    # a one-epoch teacher is weak, so the students' validation accuracies differ between trials
    return [f"data.source={csv}", f"teacher.model={tiny_bert}", "name=tt", *FAST, "teacher.epochs=1", SPACE, *extra]


@pytest.fixture(scope="module")
def one_thread():
    """On a busy 2-core machine, torch's 2 spinning OpenMP threads made a tiny 34-step teacher take
    20-60 s instead of 0.2 s (measured); one thread keeps this file fast. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def search(tmp_path_factory, tiny_bert, one_thread):
    """2 trials (trial 1 pruned); then a process killed mid-trial (a RUNNING trial left in the study);
    then the same search asked for 3 finished trials."""
    tmp = tmp_path_factory.mktemp("tune")
    csv = write_csv(tmp, corpus(8))
    rec = load_recipe(None, overrides(csv, tiny_bert))
    run = tmp / "models" / "tt"
    first = tune(rec, run, trials=2, pruner=PruneTrialOne())
    storage = f"sqlite:///{run / 'tune' / 'study.db'}"
    optuna.load_study(study_name="tt", storage=storage).ask()  # what a SIGKILL mid-trial leaves behind
    second = tune(rec, run, trials=3)
    return {"tmp": tmp, "csv": csv, "rec": rec, "run": run, "first": first, "second": second, "storage": storage}


@pytest.mark.heavy
def test_three_trials_write_a_valid_best_recipe(search):
    res, tdir = search["second"], search["run"] / "tune"
    assert [t["state"] for t in res.trials] == ["complete", "pruned", "fail", "complete"]
    best = load_recipe(res.best_recipe)  # what `distill run tune/best.yaml` loads
    assert best.name == "tt-tuned" and res.best_trial in (0, 3)
    assert best.distill.temperature == pytest.approx(res.best_params["distill.temperature"])
    assert best.student.learning_rate == pytest.approx(res.best_params["student.learning_rate"])
    assert best.teacher.epochs == search["rec"].teacher.epochs  # everything else as the recipe said
    assert 1.0 <= best.distill.temperature <= 4.0 and 1e-3 <= best.student.learning_rate <= 1e-2
    table = json.loads((tdir / "trials.json").read_text())
    done = [t for t in table["trials"] if t["state"] == "complete"]
    assert res.best_value == max(t["validation_accuracy"] for t in done) == table["best"]["validation_accuracy"]
    for t in done:
        student = json.loads((search["run"] / "tune" / t["run_dir"] / "student" / "metrics.json").read_text())
        assert t["validation_accuracy"] == student["validation"]["accuracy"]  # validation, never test
        assert t["wall_s"] > 0 and set(t["params"]) == {"distill.temperature", "student.learning_rate"}
        assert list(t["intermediate"]) == ["0", "1"]  # one report per student epoch
    assert "test" not in json.dumps(table["best"])
    # trial 0 ran the recipe's own values (the default recipe's T=1.5, FAST's student lr 5e-3), the baseline the search is judged by
    assert [t["baseline"] for t in res.trials] == [True, False, False, False]
    assert res.trials[0]["params"] == {"distill.temperature": 1.5, "student.learning_rate": 5e-3}
    assert table["baseline"]["number"] == 0 and table["baseline"]["validation_accuracy"] == done[0]["validation_accuracy"]
    assert f"own values (trial 0) scored {done[0]['validation_accuracy']:.4f}" in res.best_recipe.read_text()
    assert (tdir / "history.png").stat().st_size > 10_000
    if len({t["validation_accuracy"] for t in done}) > 1:
        assert (tdir / "importance.png").stat().st_size > 10_000 and not res.notes
    else:  # the toy task can saturate: then importance is skipped, and the note says why
        assert not (tdir / "importance.png").exists() and "same validation accuracy" in res.notes[0]


def test_interrupted_search_resumes_where_it_stopped(search):
    first, second = search["first"], search["second"]
    assert first.new_trials == 2 and [t["state"] for t in first.trials] == ["complete", "pruned"]
    assert first.notes and "needs >= 2 completed trials" in first.notes[0]  # importance skipped, said why
    assert second.new_trials == 1  # only the missing trial ran
    study = optuna.load_study(study_name="tt", storage=search["storage"])
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 3
    assert study.trials[2].state == optuna.trial.TrialState.FAIL  # the killed one, marked on resume
    trials_dir = search["run"] / "tune" / "trials"
    assert sorted(p.name for p in trials_dir.iterdir()) == ["0000", "0001", "0003"]

    # asking again for 3 runs nothing, through the CLI, which prints the table and best.yaml
    args = ["tune", "--trials", "3", "--models-dir", str(search["tmp"] / "models")]
    for s in overrides(search["csv"], search["rec"].teacher.model):
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "0 new" in r.output and "best.yaml" in r.output and "pruned" in r.output
    assert len(optuna.load_study(study_name="tt", storage=search["storage"]).trials) == 4


def test_soft_labels_are_computed_once_and_reused_by_every_trial(search):
    import os

    tdir = search["run"] / "tune"
    base = json.loads((tdir / "base" / "run.json").read_text())["stages"]
    assert set(base) == set(SHARED) and all(base[s]["status"] == "complete" for s in SHARED)
    assert not (tdir / "base" / "student").exists()  # the base stops before the searched stage
    students = set()
    for name in ("0000", "0001", "0003"):
        trial = tdir / "trials" / name
        ledger = json.loads((trial / "run.json").read_text())["stages"]
        # the records are base's, start and finish times included: the stage never ran again here
        assert {s: ledger[s] for s in SHARED} == {s: base[s] for s in SHARED}
        for f in ("teacher/model.safetensors", "soft_labels/logits.safetensors", "data/train.jsonl"):
            assert os.stat(trial / f).st_ino == os.stat(tdir / "base" / f).st_ino  # the same file, linked
        logs = [json.loads(x) for x in (trial / "logs" / "train.jsonl").read_text().splitlines()]
        assert {x["stage"] for x in logs} == {"student"}  # no teacher training in any trial
        students.add(ledger["student"]["inputs_sha256"])
    assert len(students) == 3  # every trial trained its own student
    for t in search["second"].trials:
        if t["state"] == "complete":
            assert t["reused"] == sorted(SHARED)


def test_pruned_trial_stops_training_at_its_first_report(search):
    pruned = search["second"].trials[1]
    assert pruned["state"] == "pruned" and list(pruned["intermediate"]) == ["0"]  # 1 of 2 epochs
    trial = search["run"] / "tune" / "trials" / "0001"
    assert json.loads((trial / "run.json").read_text())["stages"]["student"]["status"] == "failed"
    assert not (trial / "student").exists()


def test_baseline_is_the_recipes_own_values_or_none_outside_the_space(tmp_path):
    from distill.tune import baseline_params, parse_space

    space = "tune.space={student.epochs: [1, 4], distill.alpha: [0.2, 0.9], student.layers: [[0, 5], [1, 3]]}"
    rec = load_recipe(None, [space])  # the default recipe: 2 student epochs, kl 0.62 + ce 0.38, layers [0, 5]
    assert baseline_params(rec, parse_space(rec)) == {"student.epochs": 2, "distill.alpha": 0.62,
                                                        "student.layers": "[0, 5]"}
    outside = load_recipe(None, [space, "student.epochs=6"])
    assert baseline_params(outside, parse_space(outside)) is None
    no_alpha = load_recipe(None, [space, "distill.losses={kl: 1.0, mse: 0.5}"])
    assert baseline_params(no_alpha, parse_space(no_alpha)) is None


def test_bad_space_keys_are_reported_with_the_nearest_valid_key(tmp_path, tiny_bert):
    rec = load_recipe(None, [f"teacher.model={tiny_bert}",
                             "tune.space={distill.temprature: [1, 4], student.learning_rate: [0, 1.0e-3], name: [a, b]}"])
    with pytest.raises(RecipeError) as e:
        tune(rec, tmp_path / "run", trials=2)
    msg = str(e.value)
    assert "3 problems" in msg and "Did you mean 'distill.temperature'?" in msg
    assert "student.learning_rate: the value 0.0 is not valid" in msg and "name: cannot be tuned" in msg
    assert not (tmp_path / "run").exists()  # validated before anything is written
    r = CliRunner().invoke(app, ["tune", "--trials", "1", "--models-dir", str(tmp_path),
                                 "--set", "tune.space={student.epoch: [1, 2]}"])
    assert r.exit_code == 2 and "student.epochs" in r.output
    empty = load_recipe(None, ["tune.space={}"])  # the shipped default has a space
    with pytest.raises(RecipeError, match="tune.space is empty"):
        tune(empty, tmp_path / "run", trials=1)
    only_student = load_recipe(None, ["tune.space={distill.temperature: [1, 4]}"])
    with pytest.raises(RecipeError, match="changes the teacher"):
        tune(only_student, tmp_path / "run", trials=1, objective="teacher")


def test_a_changed_recipe_is_not_mixed_into_an_existing_study(search):
    rec = load_recipe(None, overrides(search["csv"], search["rec"].teacher.model, "distill.rounds=2"))
    with pytest.raises(RunDirError, match=r"changed: distill\.rounds"):
        tune(rec, search["run"], trials=4)


def test_report_plots_history_and_importance_from_a_study(tmp_path):
    """The report on a study of synthetic trials (no training): both plots, pruned trials marked."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from distill.tune import write_report

    rec = load_recipe(None, ["name=synthetic", SPACE])
    study = optuna.create_study(study_name="synthetic", direction="maximize")
    dists = {"distill.temperature": FloatDistribution(1.0, 4.0),
             "student.learning_rate": FloatDistribution(1e-3, 1e-2, log=True)}
    for i in range(8):
        params = {"distill.temperature": 1.0 + 0.4 * i, "student.learning_rate": 1e-3 * (1 + i % 3)}
        acc = 0.6 + 0.04 * i - 0.05 * (i % 3)
        pruned = i in (2, 5)
        study.add_trial(create_trial(state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                                     value=None if pruned else acc, params=params, distributions=dists,
                                     intermediate_values={0: acc - 0.1} if pruned else {0: acc - 0.1, 1: acc}))
    res = write_report(study, rec, tmp_path, "student")
    assert set(res.plots) == {"history", "importance"} and res.best_trial == 6
    assert all(p.stat().st_size > 10_000 for p in res.plots.values())
    assert load_recipe(res.best_recipe).distill.temperature == pytest.approx(1.0 + 0.4 * 6)
    rows = json.loads((tmp_path / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows].count("pruned") == 2 and rows[2]["validation_accuracy"] is None


def test_run_recipe_stops_after_until_and_links_verified_stages_from_base(tmp_path):
    """What tune builds on: until= records nothing past the named stage; base= links a stage with the
    same inputs (base's run.json record with it) and reruns one whose files no longer verify."""
    from distill.pipeline import run_recipe

    rec = load_recipe(None, [f"data.source={write_csv(tmp_path, corpus(8))}", *FAST])
    base, a, b = tmp_path / "base", tmp_path / "a", tmp_path / "b"
    first = run_recipe(rec, base, until="data")
    ledger = json.loads((base / "run.json").read_text())["stages"]
    assert [(r.name, r.skipped) for r in first.done] == [("data", False)] and set(ledger) == {"data"}
    linked = run_recipe(rec, a, until="data", base=base)
    assert [(r.name, r.skipped) for r in linked.done] == [("data", True)]
    assert json.loads((a / "run.json").read_text())["stages"]["data"] == ledger["data"]
    assert os.stat(a / "data" / "train.jsonl").st_ino == os.stat(base / "data" / "train.jsonl").st_ino
    (base / "data" / "train.jsonl").unlink()  # a new file under the old name: base no longer verifies
    (base / "data" / "train.jsonl").write_text("{}\n")
    rebuilt = run_recipe(rec, b, until="data", base=base)
    assert [(r.name, r.skipped) for r in rebuilt.done] == [("data", False)]
    assert json.loads((b / "run.json").read_text())["stages"]["data"]["outputs"] == ledger["data"]["outputs"]
    for bad in ({"until": "students"}, {"callbacks": {"studnet": []}}):
        with pytest.raises(DistillError, match="not a stage"):
            run_recipe(rec, tmp_path / "c", **bad)
    assert not (tmp_path / "c").exists()
