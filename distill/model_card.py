"""The student's model card (Hugging Face README.md format): metrics, recipe and provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distill import __version__
from distill.recipe import dump_recipe


def write_card(folder: Path, recipe: Any, metrics: dict[str, Any], names: list[str]) -> None:
    test, teacher = metrics["test"], metrics["teacher_test"]
    front = {"library_name": "transformers", "pipeline_tag": "text-classification",
             "tags": ["edge-distill", "distillation", "text-classification"],
             "base_model": recipe.teacher.model if not recipe.teacher.model.startswith("packaged:") else None,
             "metrics": ["accuracy", "f1"]}
    front = {k: v for k, v in front.items() if v is not None}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {recipe.name} student", "",
        f"Distilled with edge-distill {__version__} from the teacher `{recipe.teacher.model}` on "
        f"`{_data_name(recipe.data)}` (split seed {recipe.data.split_seed}, seed {recipe.seed}).", "",
        "| model | layers | parameters | test accuracy | test macro-F1 |",
        "|---|---|---|---|---|",
        f"| teacher | {metrics.get('teacher_layers')} | {metrics.get('teacher_parameters', 0):,} | "
        f"{teacher['accuracy']:.4f} | {teacher['macro_f1']:.4f} |",
        f"| student | {metrics['layers']} | {metrics['parameters']:,} | {test['accuracy']:.4f} | {test['macro_f1']:.4f} |",
        "",
        f"The student keeps {metrics['kept_of_teacher']:.1%} of the teacher's test accuracy "
        f"({test['n']} test examples). Labels: {', '.join(names)}.", "",
        "## Training", "",
        f"Losses {metrics['losses']} at temperature {metrics['temperature']}; curriculum "
        f"{metrics['curriculum']['scorer']}; {len(metrics['rounds'])} round(s); {_kept(metrics['rounds'][-1])}"
        f"{metrics['device']} {metrics['precision']}, {metrics['wall_s']} s.", "",
        "## Recipe (resolved)", "", "```yaml", dump_recipe(recipe).strip(), "```", "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


def _kept(final_round: dict[str, Any]) -> str:
    """Which weights the student kept, where not its last ones (student.keep: best); else nothing, as before."""
    kept = final_round.get("kept")
    return f"the weights of step {kept['step']} (epoch {kept['epoch']:.3g}), the best on validation; " if kept else ""


def _data_name(data: Any) -> str:
    """What the data was: the given split files when there are some, else data.source."""
    if data.train:
        return ", ".join(f"data.{k}={getattr(data, k)}" for k in ("train", "validation", "test") if getattr(data, k))
    return data.source
