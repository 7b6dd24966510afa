"""`distill tune`: an Optuna search over the recipe's `tune.space`, maximizing VALIDATION accuracy.

Layout under the run directory (RUN = models/NAME):

    RUN/tune/study.db          Optuna's RDB storage (SQLite): an interrupted search resumes from it
    RUN/tune/base/             the stages no tuned key can change (e.g. data, teacher, soft_labels), run once
    RUN/tune/trials/NNNN/      one run directory per trial, `run_recipe(base=RUN/tune/base)`: base's stages
                               with the same inputs are hard-linked in, only the rest run
    RUN/tune/trials.json       every trial: number, state, params, validation accuracy, wall time
    RUN/tune/best.yaml         a complete recipe with the best params applied (`distill run` accepts it)
    RUN/tune/history.png, RUN/tune/importance.png   Optuna's matplotlib plots

Search space (`tune.space`): dotted recipe key -> `[low, high]` (two numbers: a range; both integers
give an integer range; a float range spanning >= 10x with low > 0 is searched on a log scale), any
other list (choices), or a mapping `{low, high, log, step}` / `{choices: [...]}` to say it exactly.
`distill.alpha` is a tune-only key: the KL weight, with the CE weight set to 1 - alpha (the
loss). Every key and both ends of every range are validated against the Recipe schema before
anything runs.

A trial is `run_recipe(trial's recipe, RUN/tune/trials/NNNN, base=RUN/tune/base, until=objective,
callbacks={objective: [pruning_callback(trial, objective)]})`: the callback reports each validation
evaluation of the objective's Trainer to the trial and raises optuna.TrialPruned when the pruner
says so (never in the baseline trial), which fails that stage and ends the trial as pruned.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from distill.errors import DistillError, RecipeError, RunDirError
from distill.recipe import Recipe, digest_view, dump_recipe, set_dotted, validate_dict
from distill.rundir import RunDir, write_json_atomic

log = logging.getLogger(__name__)

OBJECTIVES = ("student", "teacher")
# Tune-only keys: name -> what they set.
VIRTUAL_KEYS = {"distill.alpha": "weight of the KL term; the CE weight becomes 1 - alpha"}
LOG_RATIO = 10  # a float range with high/low >= this (and low > 0) is searched on a log scale
_UNTUNABLE = ("name", "tune")


@dataclass(frozen=True)
class Dimension:
    """One searched key: an int or float range, or a list of choices."""

    key: str
    kind: str  # "int" | "float" | "choice"
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple[Any, ...] = ()

    @property
    def encoded(self) -> bool:
        # Optuna's categorical values must be scalars; lists (e.g. student.layers) travel as JSON.
        return any(not isinstance(c, (str, int, float, bool, type(None))) for c in self.choices)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        if self.encoded:
            return trial.suggest_categorical(self.key, [json.dumps(c) for c in self.choices])
        return trial.suggest_categorical(self.key, list(self.choices))

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.kind == "choice" and self.encoded else value

    def candidates(self) -> list[Any]:
        """The values validated up front: both ends of a range, every choice."""
        return [self.low, self.high] if self.kind != "choice" else list(self.choices)


@dataclass
class TuneResult:
    tune_dir: Path
    study_name: str
    objective: str
    best_recipe: Optional[Path]
    best_trial: Optional[int]
    best_value: Optional[float]
    best_params: dict[str, Any]
    trials: list[dict[str, Any]]
    new_trials: int
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The search space


def _model_of(annotation: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
    return inner[0] if inner else None


def _is_dict(annotation: Any) -> bool:
    import typing

    if annotation is dict or typing.get_origin(annotation) is dict:
        return True
    return any(a is dict or typing.get_origin(a) is dict for a in typing.get_args(annotation))


def _scalar_type(annotation: Any) -> Optional[type]:
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return next((a for a in (int, float) if a in args), None)


def tunable_keys() -> list[str]:
    """Every dotted leaf key of the Recipe schema that a space may name, plus the tune-only keys."""
    keys: list[str] = []

    def walk(model: Any, prefix: str) -> None:
        for name, f in model.model_fields.items():
            key = prefix + name
            if key in _UNTUNABLE:
                continue
            sub = _model_of(f.annotation)
            if sub is not None:
                walk(sub, key + ".")
            else:
                keys.append(key)

    walk(Recipe, "")
    return keys + list(VIRTUAL_KEYS)


def _resolve(key: str) -> tuple[Optional[str], Any]:
    """(problem or None, the leaf field's annotation) for a dotted key."""
    if key in VIRTUAL_KEYS:
        return None, float
    parts = key.split(".")
    if parts[0] in _UNTUNABLE:
        return f"{key}: cannot be tuned (the run's name and the search's own settings are fixed).", None
    model: Any = Recipe
    for i, part in enumerate(parts):
        f = model.model_fields.get(part) if model is not None else None
        if f is None:
            near = difflib.get_close_matches(key, tunable_keys(), n=1, cutoff=0.6)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            return (f"{key}: unknown key.{hint} `distill recipe schema` lists every key; "
                    f"{', '.join(VIRTUAL_KEYS)} is a tune-only key."), None
        sub = _model_of(f.annotation)
        if sub is not None:
            model = sub
            continue
        last = i == len(parts) - 1
        if last or (_is_dict(f.annotation) and i == len(parts) - 2):  # distill.losses.kl, student.config.x
            return None, (f.annotation if last else Any)
        return f"{key}: {'.'.join(parts[:i + 1])} is a value, not a section.", None
    return f"{key}: is a section; name one of its keys, e.g. {key}.{next(iter(model.model_fields))}.", None


def _dimension(key: str, spec: Any, annotation: Any) -> Dimension:
    """Parse one space entry; ValueError says what is wrong with its shape."""
    log_scale, step = None, None
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; write {{low, high, log, step}} or {{choices: [...]}}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError("choices must be a non-empty list")
            return Dimension(key, "choice", choices=tuple(choices))
        if "low" not in spec or "high" not in spec:
            raise ValueError("a range needs both low and high")
        log_scale, step = spec.get("log"), spec.get("step")
        spec = [spec["low"], spec["high"]]
    if not isinstance(spec, list) or not spec:
        raise ValueError("write [low, high], a list of choices, or {low, high, log, step} / {choices: [...]}")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)
    if len(spec) != 2 or not numbers:
        return Dimension(key, "choice", choices=tuple(spec))
    low, high = spec
    if not low < high:
        raise ValueError(f"low must be below high, got [{low}, {high}]")
    integral = all(isinstance(v, int) for v in spec) or (_scalar_type(annotation) is int and all(float(v).is_integer() for v in spec))
    if _scalar_type(annotation) is int and not integral:
        raise ValueError(f"{key} is an integer; give integer bounds, got [{low}, {high}]")
    if integral and (step is None or float(step).is_integer()):
        return Dimension(key, "int", int(low), int(high), bool(log_scale), int(step) if step else None)
    if log_scale is None:
        log_scale = low > 0 and high / low >= LOG_RATIO
    if log_scale and low <= 0:
        raise ValueError("a log-scale range needs low > 0")
    return Dimension(key, "float", float(low), float(high), bool(log_scale), float(step) if step else None)


def apply_params(recipe: Recipe, params: dict[str, Any], source: str = "tune") -> Recipe:
    """The recipe with dotted-key values set (distill.alpha -> the kl/ce weights), validated."""
    data = recipe.model_dump(mode="json")
    for key, value in params.items():
        if key == "distill.alpha":
            losses = dict(data["distill"]["losses"])
            losses.update(kl=value, ce=round(1.0 - value, 12))
            data["distill"]["losses"] = losses
        else:
            set_dotted(data, key, value)
    return validate_dict(data, source)


def baseline_params(recipe: Recipe, dims: list[Dimension]) -> Optional[dict[str, Any]]:
    """The recipe's own values of the searched keys, as Optuna params; None when any lies outside
    the space (then there is no baseline trial) or distill.alpha has no meaning (losses not kl + ce = 1)."""
    params: dict[str, Any] = {}
    for d in dims:
        if d.key == "distill.alpha":
            losses = digest_view(recipe, "distill.losses")  # the dotted-key read the stage digests use
            if set(losses) - {"kl", "ce"} or not math.isclose(sum(losses.values()), 1.0):
                return None
            value: Any = losses.get("kl", 0.0)
        else:
            value = digest_view(recipe, d.key)
        if d.kind == "choice":
            if value not in d.choices:
                return None
            params[d.key] = json.dumps(value) if d.encoded else value
            continue
        if not isinstance(value, (int, float)) or not d.low <= value <= d.high:
            return None
        if d.step and not math.isclose((value - d.low) / d.step, round((value - d.low) / d.step)):
            return None
        if d.kind == "int":
            if value != int(value):
                return None
            value = int(value)
        params[d.key] = value
    return params


def parse_space(recipe: Recipe) -> list[Dimension]:
    """Validate tune.space against the Recipe schema; RecipeError lists every problem at once."""
    space = recipe.tune.space
    if not space:
        raise RecipeError(["tune.space is empty: name the keys to search, e.g. "
                           "`tune: {space: {distill.temperature: [1, 8], student.learning_rate: [1.0e-5, 1.0e-3]}}`"],
                          "tune.space")
    problems: list[str] = []
    dims: list[Dimension] = []
    for key, spec in space.items():
        problem, annotation = _resolve(str(key))
        if problem:
            problems.append(problem)
            continue
        try:
            dim = _dimension(str(key), spec, annotation)
        except ValueError as e:
            problems.append(f"{key}: {e}.")
            continue
        if key == "distill.alpha" and not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in dim.candidates()):
            problems.append(f"{key}: alpha weighs KL against CE and must lie in [0, 1], got {spec!r}.")
            continue
        bad: dict[str, list[Any]] = {}  # reason -> the values it rejects
        for value in dim.candidates():
            try:
                apply_params(recipe, {dim.key: value})
            except RecipeError as e:
                bad.setdefault("; ".join(p.removeprefix(f"{key}: ") for p in e.problems), []).append(value)
        for why, values in bad.items():
            shown = ", ".join(repr(v) for v in values)
            problems.append(f"{key}: {'the value' if len(values) == 1 else 'the values'} {shown} "
                            f"{'is' if len(values) == 1 else 'are'} not valid here ({why}).")
        dims.append(dim)
    if problems:
        raise RecipeError(problems, "tune.space")
    return dims


# ---------------------------------------------------------------------------------------------
# Which stages a trial can reuse


def _touched_sections(dims: list[Dimension]) -> set[str]:
    return {d.key.split(".")[0] for d in dims}


def shared_stages(dims: list[Dimension], objective: str) -> list[str]:
    """Stages before the objective's stage whose inputs no searched key can change."""
    from distill.stages import STAGES

    touched = _touched_sections(dims)
    changed: set[str] = set()
    shared: list[str] = []
    for stage in STAGES:
        if stage.name == objective:
            break
        # every stage's inputs include the seed (pipeline.run_recipe)
        if "seed" in touched or touched & set(stage.sections) or changed & set(stage.after):
            changed.add(stage.name)
        else:
            shared.append(stage.name)
    return shared


def _run(recipe: Recipe, run_dir: Path, *, until: str, **kwargs: Any) -> Any:
    """run_recipe up to and including stage `until`; a stage not built in this version is an error."""
    from distill.pipeline import run_recipe

    summary = run_recipe(recipe, run_dir, until=until, **kwargs)
    if summary.not_built:
        raise DistillError(f"stage {summary.not_built[0]} is not built in this version, so `distill tune` cannot run trials.")
    return summary


# ---------------------------------------------------------------------------------------------
# Reporting to the pruner


def pruning_callback(trial: Any, stage: str) -> Any:
    """A TrainerCallback for the objective stage's Trainer: each validation evaluation's accuracy is
    reported to the trial (steps 0, 1, ... across the stage's rounds); optuna.TrialPruned is raised
    when the pruner says so, except in the baseline trial."""
    import optuna
    from transformers import TrainerCallback

    class ReportToTrial(TrainerCallback):
        step = 0

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001 - Trainer's signature
            value = (metrics or {}).get("eval_accuracy")
            if value is None:
                return
            step, self.step = self.step, self.step + 1
            trial.report(float(value), step)
            if not trial.user_attrs.get("baseline") and trial.should_prune():
                raise optuna.TrialPruned(f"{stage} validation accuracy {value:.4f} at evaluation {step} "
                                         "is below the median of earlier trials")

    return ReportToTrial()


# ---------------------------------------------------------------------------------------------
# The search


def _fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What must not change between a study and its resumption (trials and timeout may); keys added
    since a study began are left out at their defaults, as in stage digests."""
    data = digest_view(recipe)
    data["tune"] = {k: v for k, v in data["tune"].items() if k not in ("trials", "timeout")}
    data.pop("name", None)
    return data


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _open_study(tune_dir: Path, recipe: Recipe, objective: str, pruner: Any) -> Any:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{(tune_dir / 'study.db').resolve()}",
                                         engine_kwargs={"connect_args": {"timeout": 30}})
    study = optuna.create_study(study_name=recipe.name, storage=storage, direction="maximize", load_if_exists=True,
                                pruner=pruner)
    # Seeded by the trials already held, so a resumed search does not replay the first session's draws.
    study.sampler = optuna.samplers.TPESampler(seed=recipe.seed + len(study.trials))
    stored = study.user_attrs.get("recipe")
    if stored is None:
        study.set_user_attr("recipe", _fingerprint(recipe))
        study.set_user_attr("objective", objective)
    else:
        changed = _diff_keys(stored, _fingerprint(recipe))
        if study.user_attrs.get("objective") != objective:
            changed.append(f"objective ({study.user_attrs.get('objective')} -> {objective})")
        if changed:
            raise RunDirError(
                f"The search in {tune_dir} was started with a different recipe (changed: {', '.join(changed[:8])}"
                f"{' …' if len(changed) > 8 else ''}), so its trials are not comparable with new ones. Pass --force "
                "to start the search over, or --name for a separate one.")
    # A trial still RUNNING was interrupted (its process died): the tune lock says no search runs now.
    # (Optuna's heartbeat would find only trials that ran with one, and only after its grace period.)
    for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        log.warning("trial %d was interrupted; marking it failed, a new trial takes its place", t.number)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return study


def tune(recipe: Recipe, run_dir: Path | str, *, trials: int, timeout: Optional[float] = None,
         objective: str = "student", force: bool = False, pruner: Any = None) -> TuneResult:
    """Search recipe.tune.space with Optuna, maximizing the objective model's VALIDATION accuracy.

    `trials` is how many finished (complete or pruned) trials the study should hold: a resumed
    search runs only the missing ones. `timeout` (seconds) stops starting new trials after that.
    `force` deletes RUN/tune first. `pruner` defaults to MedianPruner(n_startup_trials=3).
    Writes RUN/tune/{study.db, trials.json, best.yaml, history.png, importance.png}.
    """
    import optuna

    if objective not in OBJECTIVES:
        raise DistillError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
    if trials < 1:
        raise DistillError(f"--trials must be at least 1, got {trials}.")
    dims = parse_space(recipe)
    if objective == "teacher" and not _touched_sections(dims) & {"data", "teacher", "device", "seed"}:
        raise RecipeError([f"objective teacher, but no key in tune.space ({', '.join(d.key for d in dims)}) changes "
                           "the teacher: search data.*, teacher.*, seed or device keys, or use objective student."],
                          "tune.space")
    shared = shared_stages(dims, objective)
    optuna.logging.disable_default_handler()  # optuna's messages go through logging, like ours
    optuna.logging.enable_propagation()
    if pruner is None:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)

    tune_dir = Path(run_dir) / "tune"
    if tune_dir.exists() and not tune_dir.is_dir():
        raise RunDirError(f"{tune_dir} exists and is not a directory; remove it or pass --name for another run.")
    tune_dir.mkdir(parents=True, exist_ok=True)
    rd = RunDir(tune_dir)
    with rd.lock():
        if force:
            rd.wipe()
        study = _open_study(tune_dir, recipe, objective, pruner)
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        todo = trials - len(study.get_trials(states=finished))
        before = len(study.trials)
        if todo > 0:
            _enqueue_baseline(study, recipe, dims)
            base = tune_dir / "base"
            if shared:
                log.info("tune: running the stages no searched key changes (%s) once, in %s", ", ".join(shared), base)
                _run(recipe, base, until=shared[-1], resume=True)
            log.info("tune: %d trial(s) to run (study %s, %s)", todo, recipe.name, tune_dir / "study.db")
            study.optimize(_objective(recipe, dims, shared, base, tune_dir / "trials", objective),
                           n_trials=todo, timeout=timeout, catch=())
        else:
            log.info("tune: the study already holds %d finished trials; nothing to run", trials - todo)
        return write_report(study, recipe, tune_dir, objective, new_trials=len(study.trials) - before)


def _enqueue_baseline(study: Any, recipe: Recipe, dims: list[Dimension]) -> None:
    """Queue the recipe's own values as the next trial unless the study has (or queues) one: the
    table then shows what the search gained over the defaults, measured on the same teacher."""
    import optuna

    live = [t for t in study.trials if t.user_attrs.get("baseline") and t.state != optuna.trial.TrialState.FAIL]
    if live:
        return
    params = baseline_params(recipe, dims)
    if params is None:
        log.info("tune: the recipe's own values lie outside tune.space; no baseline trial")
        return
    study.enqueue_trial(params, user_attrs={"baseline": True})
    log.info("tune: the recipe's own values (%s) run as a baseline trial, never pruned",
             ", ".join(f"{k}={v}" for k, v in params.items()))


def _objective(recipe: Recipe, dims: list[Dimension], shared: list[str], base: Path, trials_dir: Path,
               objective: str) -> Any:
    def run_trial(trial: Any) -> float:
        params = {d.key: d.decode(d.suggest(trial)) for d in dims}
        trial_recipe = apply_params(recipe, params, source=f"tune trial {trial.number}")
        trial_dir = trials_dir / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(trial_dir))
        log.info("tune: trial %d %s", trial.number, ", ".join(f"{k}={v}" for k, v in params.items()))
        t0 = time.perf_counter()
        summary = _run(trial_recipe, trial_dir, until=objective, force=True, base=base if shared else None,
                       callbacks={objective: [pruning_callback(trial, objective)]})
        trial.set_user_attr("reused", sorted(r.name for r in summary.done if r.skipped))
        val = _validation(trial_dir, objective)
        trial.set_user_attr("validation", {k: val[k] for k in ("accuracy", "macro_f1", "n")})
        trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
        return float(val["accuracy"])

    return run_trial


def _validation(trial_dir: Path, objective: str) -> dict[str, Any]:
    metrics = json.loads((trial_dir / objective / "metrics.json").read_text())
    val = metrics.get("validation") or {}
    if "accuracy" not in val:
        raise DistillError("`distill tune` maximizes validation accuracy (never test), and this data has no "
                           "validation split: set data.splits.validation (e.g. 0.1), or give a validation file.")
    return val


# ---------------------------------------------------------------------------------------------
# Outputs


def _trial_row(t: Any, dims: dict[str, Dimension], tune_dir: Path) -> dict[str, Any]:
    wall = t.user_attrs.get("wall_s")  # the pipeline's own time; else the trial's, start to end
    if wall is None and t.datetime_start and t.datetime_complete:
        wall = round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
    run_dir = t.user_attrs.get("run_dir")
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "params": {k: dims[k].decode(v) if k in dims else v for k, v in t.params.items()},
        "validation_accuracy": t.value if t.state.name == "COMPLETE" else None,
        "validation_macro_f1": (t.user_attrs.get("validation") or {}).get("macro_f1"),
        "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "wall_s": wall,
        "reused": t.user_attrs.get("reused", []),
        "run_dir": os.path.relpath(run_dir, tune_dir) if run_dir else None,
        "baseline": bool(t.user_attrs.get("baseline")),
    }


def write_report(study: Any, recipe: Recipe, tune_dir: Path, objective: str, *, new_trials: int = 0) -> TuneResult:
    """Write trials.json, the plots and best.yaml from the study's trials (tune() calls it at the end)."""
    by_key = {d.key: d for d in parse_space(recipe)}
    rows = [_trial_row(t, by_key, tune_dir) for t in study.trials]
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: (r["validation_accuracy"], -r["number"])) if complete else None
    baseline = next((r for r in rows if r["baseline"] and r["state"] != "fail"), None)
    notes: list[str] = []
    write_json_atomic(tune_dir / "trials.json", {
        "study": study.study_name, "objective": f"{objective} validation accuracy (maximized; test is never used)",
        "space": recipe.tune.space,
        "best": {k: best[k] for k in ("number", "validation_accuracy", "params")} if best else None,
        "baseline": ({k: baseline[k] for k in ("number", "state", "validation_accuracy", "params")}
                     if baseline else None),
        "trials": rows})
    plots: dict[str, Path] = {}
    if any(r["validation_accuracy"] is not None or r["intermediate"] for r in rows):
        plots["history"] = _plot_history(study, tune_dir / "history.png", len(rows), objective)
    importance_png = tune_dir / "importance.png"
    if len(complete) >= 2:
        if len({r["validation_accuracy"] for r in complete}) > 1 and _plot_importance(study, importance_png, len(complete)):
            plots["importance"] = importance_png
        else:
            notes.append("parameter importance skipped: every completed trial scored the same validation accuracy, "
                         "so no parameter explains any of it")
    else:
        notes.append(f"parameter importance needs >= 2 completed trials, the study has {len(complete)}; plot skipped")
    if "importance" not in plots:
        importance_png.unlink(missing_ok=True)  # never leave a stale plot beside new results
    for n in notes:
        log.debug("tune: %s", n)
    if best is None:
        counts = {s: sum(r["state"] == s for r in rows) for s in ("pruned", "fail")}
        raise DistillError(f"No trial of the search in {tune_dir} completed ({counts['pruned']} pruned, "
                           f"{counts['fail']} failed), so there is no best recipe; see {tune_dir / 'trials.json'}. "
                           "Run more trials (--trials), or a longer --timeout.")
    best_path = tune_dir / "best.yaml"
    _write_best(recipe, best, best_path, tune_dir, objective, len(rows), baseline)
    return TuneResult(tune_dir, study.study_name, objective, best_path, best["number"], best["validation_accuracy"],
                      best["params"], rows, new_trials, plots, notes)


def _write_best(recipe: Recipe, best: dict[str, Any], path: Path, tune_dir: Path, objective: str, n: int,
                baseline: Optional[dict[str, Any]] = None) -> None:
    tuned = apply_params(recipe, best["params"], source=str(path))
    tuned = tuned.model_copy(update={"name": f"{recipe.name}-tuned"})
    params = "\n".join(f"#   {k}: {json.dumps(v)}" for k, v in best["params"].items())
    if baseline is None:
        against = "# No baseline trial (the recipe's own values lie outside tune.space).\n"
    elif baseline["validation_accuracy"] is None:
        against = f"# The recipe's own values (trial {baseline['number']}) did not finish ({baseline['state']}).\n"
    else:
        against = (f"# The recipe's own values (trial {baseline['number']}) scored {baseline['validation_accuracy']:.4f}"
                   + (": the defaults were best.\n" if baseline["number"] == best["number"] else ".\n"))
    header = (f"# Best of {n} `distill tune` trials in {tune_dir} (trial {best['number']}): {objective} validation\n"
              f"# accuracy {best['validation_accuracy']:.4f}. Tuned values:\n{params}\n{against}"
              f"# Run it with: distill run {path}   (lands in models/{tuned.name}; test accuracy is measured there)\n")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(header + dump_recipe(validate_dict(tuned.model_dump(mode="json"), str(path))))
    os.replace(tmp, path)


def _save_plot(out: Path, draw: Any) -> Path:
    """Save the Optuna matplotlib plot that draw() makes (it returns the Axes) as out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    # rc_context: Optuna's plots switch matplotlib to its ggplot style for good; this undoes it after.
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = draw()
        ax.figure.set_size_inches(9, 4.5)
        ax.figure.savefig(out, dpi=110, bbox_inches="tight")  # "tight": Optuna puts the legend outside the axes
        plt.close(ax.figure)
    return out


def _plot_history(study: Any, out: Path, n_trials: int, objective: str) -> Path:
    """optuna.visualization.matplotlib.plot_optimization_history: each completed trial and the best so far."""
    from optuna.visualization.matplotlib import plot_optimization_history

    def draw() -> Any:
        ax = plot_optimization_history(study, target_name=f"{objective} validation accuracy")
        ax.set_title(f"{study.study_name}: optimization history ({n_trials} trials, maximizing {objective} "
                     "validation accuracy)", fontsize=10)
        return ax

    return _save_plot(out, draw)


def _plot_importance(study: Any, out: Path, n_complete: int) -> bool:
    """optuna.visualization.matplotlib.plot_param_importances with fANOVA (seeded); False where
    Optuna cannot compute the importances (e.g. every completed trial has the same values)."""
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    def draw() -> Any:
        ax = plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                    target_name="validation accuracy")
        rough = " (rough with so few)" if n_complete < 10 else ""
        ax.set_title(f"Parameter importance over {n_complete} completed trials{rough}", loc="left", fontsize=10)
        ax.set_xlabel("share of the variance in validation accuracy (fANOVA)")
        return ax

    try:
        _save_plot(out, draw)
    except (ValueError, RuntimeError) as e:
        log.info("tune: parameter importance not computable: %s", e)
        return False
    return True
