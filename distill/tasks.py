"""The tasks of a recipe (`task:`): what differs between sequence classification and causal LM, in one place.

A `Task` names, by module path, everything that depends on the task: the function of each stage of
`distill run`, the teacher stage's fingerprint, the entry points of `distill export onnx` and
`distill bench`, and the views the CLI prints their results with. Nothing is imported until it is
called, so importing this module (and `distill --help`) stays light, and `distill` itself never
imports `export` or `bench`: only the CLI calls `Task.export` and `Task.bench`.

`task_of(recipe)` picks the task of a loaded recipe; `task_of_run(path)` the task of a run directory
from its recipe.yaml (classification when there is none, or it cannot be read: a model folder, an
.onnx file). The recipe's own cross-checks of a task's settings stay in distill/recipe.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

STAGE_NAMES = ("data", "teacher", "soft_labels", "student", "evaluate")


def load(ref: str) -> Callable[..., Any]:
    """The function named "package.module:function", imported now."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# The command-line flag of a keyword argument, where its name differs (for the refusal below).
_FLAGS = {"arm64": "--check-arm64", "report_dir": "--report", "targets": "--target"}


@dataclass(frozen=True)
class Entry:
    """An entry point named by module path, imported when called. `keys`: the keyword arguments it
    takes, None: all. A caller offers every option the command has; those left unset (None or False)
    are dropped, and one set but not taken is refused (DistillError) with `refusal`, the reason and
    where the setting comes from instead, rather than ignored."""

    ref: str
    keys: Optional[tuple[str, ...]] = None
    refusal: str = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.keys is not None:
            unused = [k for k, v in kwargs.items() if k not in self.keys and v is not None and v is not False]
            if unused:
                from distill.errors import DistillError

                flags = ", ".join(_FLAGS.get(k, "--" + k.replace("_", "-")) for k in unused)
                raise DistillError(f"{flags}: not an option here. {self.refusal}")
            kwargs = {k: v for k, v in kwargs.items() if k in self.keys}
        return load(self.ref)(*args, **kwargs)


@dataclass(frozen=True)
class Task:
    name: str  # the recipe's `task:` value
    stages: dict[str, str]  # stage name (STAGE_NAMES) -> "module:function" taking (ctx, out_dir)
    teacher_fingerprint_ref: str  # "module:function": recipe -> the teacher stage's `fingerprint` input
    export: Entry  # `distill export onnx` on a run of this task: (path, which=, allow_mismatch=, ...) -> result
    export_view: str  # "module:function": (console, export result) -> None
    bench: Entry  # `distill bench` on a run of this task: (path, targets=, ...) -> result
    bench_view: str  # "module:function": (console, path, bench result) -> None

    def stage(self, name: str) -> Callable[[Any, Path], None]:
        """The function of stage `name` for this task, imported now."""
        return load(self.stages[name])

    def teacher_fingerprint(self, recipe: Any) -> Any:
        """The teacher stage's `fingerprint` input (distill/stage.py) for a recipe of this task."""
        return load(self.teacher_fingerprint_ref)(recipe)

    def show_export(self, console: Any, result: Any) -> None:
        load(self.export_view)(console, result)

    def show_bench(self, console: Any, path: Path, result: Any) -> None:
        load(self.bench_view)(console, path, result)


CLASSIFICATION = Task(
    name="classification",
    stages={"data": "distill.data.prepare:data_stage", "teacher": "distill.teacher:teacher_stage",
            "soft_labels": "distill.soft_labels:soft_labels_stage", "student": "distill.student:student_stage",
            "evaluate": "distill.evaluate:evaluate_stage"},
    teacher_fingerprint_ref="distill.teacher:teacher_fingerprint",
    export=Entry("export.api:export_onnx"),
    export_view="distill.cli.views:print_export",
    bench=Entry("bench.api:run_bench"),
    bench_view="distill.cli.views:print_bench",
)

# The export and bench of a causal LM take only these options; the recipe's lm, export and bench
# sections give the rest, and a classification-only flag is refused, not ignored.
CAUSAL_LM = Task(
    name="causal-lm",
    stages={"data": "distill.data.prepare:data_stage", "teacher": "distill.causal_lm_stages:teacher_stage",
            "soft_labels": "distill.causal_lm_stages:soft_labels_stage",
            "student": "distill.causal_lm_stages:student_stage",
            "evaluate": "distill.causal_lm_stages:evaluate_stage"},
    teacher_fingerprint_ref="distill.causal_lm_stages:teacher_fingerprint",
    export=Entry("export.causal_lm:export_run", keys=("which", "allow_mismatch"),
                 refusal="A causal-LM run's export takes only --which and --allow-mismatch; the rest comes from "
                         "its recipe.yaml (export.quantize, export.per_channel, export.opset, lm.int8_exclude, "
                         "lm.int8_embeddings, lm.prompts) and goes to RUN/onnx. Drop the flag, or change the "
                         "recipe and run `distill run RECIPE --resume` first."),
    export_view="distill.cli.views:print_causal_lm_export",
    bench=Entry("bench.causal_lm:bench_lm", keys=("targets",),
                refusal="A causal-LM run's bench takes only --target (time to first token and decode tokens/s "
                        "per artifact; prompt length and new tokens come from its recipe's lm section). Drop the flag."),
    bench_view="distill.cli.views:print_lm_bench",
)

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, CAUSAL_LM)}


def task_of(recipe: Any) -> Task:
    """The task of a loaded recipe (`recipe.task`)."""
    return TASKS[recipe.task]


def task_of_run(path: Path | str) -> Task:
    """The task of a run directory, from the `task:` of its recipe.yaml (read once, not validated:
    the entry points load the recipe themselves); classification when there is no readable recipe.yaml
    (a model folder, an .onnx file, a run made before tasks existed) or it names no known task."""
    import yaml

    try:
        name = (yaml.safe_load((Path(path) / "recipe.yaml").read_text()) or {}).get("task", "classification")
    except (OSError, yaml.YAMLError, AttributeError):
        name = "classification"
    return TASKS.get(name, CLASSIFICATION) if isinstance(name, str) else CLASSIFICATION
