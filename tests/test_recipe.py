from __future__ import annotations

import pytest

from distill.errors import RecipeError
from distill.recipe import Recipe, dump_recipe, load_recipe, schema_markdown, shipped_recipes


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_recipe_is_the_shipped_default():
    r = load_recipe()
    assert r.name == "default"
    assert r.data.source == "builtin:rotten-tomatoes"
    assert r.teacher.model == "packaged:minilm-l6"
    assert r.student.layers == [0, 5]


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_validates_and_names_its_command(name):
    path = shipped_recipes()[name]
    load_recipe(path)
    header = path.read_text().splitlines()[:8]
    assert any("distill run" in line for line in header), f"{path} must name the command that runs it"


def test_typo_in_section_names_key_file_line_and_suggestion(tmp_path):
    p = write(tmp_path, "name: x\nstudnet:\n  epochs: 3\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "studnet" in msg and str(p) in msg and "'student'" in msg and "line 2" in msg


def test_every_problem_is_reported_at_once(tmp_path):
    p = write(tmp_path, "teacher:\n  epocs: 2\n  learning_rate: -1\nstudent:\n  layers: [3, 1]\n"
                        "distill:\n  losses: {kll: 1.0}\ndata:\n  splits: {train: 0.5, validation: 0.1, test: 0.1}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    problems = e.value.problems
    joined = "\n".join(problems)
    assert len(problems) == 5, joined
    assert "teacher.epocs" in joined and "'epochs'" in joined
    assert "teacher.learning_rate" in joined and "line 3" in joined
    assert "student.layers" in joined and "increasing" in joined
    assert "'kll'" in joined and "'kl'" in joined
    assert "sum to 1" in joined


def test_set_overrides_are_typed_and_validated(tmp_path):
    r = load_recipe(None, ["student.epochs=3", "distill.curriculum.scorer=margin", "data.few_shot=32",
                           "student.layers=[0, 2, 4]"])
    assert r.student.epochs == 3.0 and r.distill.curriculum.scorer == "margin"
    assert r.data.few_shot == 32 and r.student.layers == [0, 2, 4]
    with pytest.raises(RecipeError) as e:
        load_recipe(None, ["student.epchs=3"])
    assert "--set" in str(e.value) and "'epochs'" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe(None, ["student.epochs"])
    assert "KEY=VALUE" in str(e.value)


def test_broken_yaml_and_wrong_top_level(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, "name: [unclosed\n"))
    assert "not valid YAML" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, "- a\n- b\n", "list.yaml"))
    assert "mapping" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe(tmp_path / "missing.yaml")
    assert "no such file" in str(e.value)


def test_quantized_teacher_needs_lora(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe(None, ["teacher.quantization=4bit"])
    assert "lora" in str(e.value)
    assert load_recipe(None, ["teacher.quantization=4bit", "teacher.lora={r: 4}"]).teacher.lora.r == 4


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(None, ["seed=7"])
    p = write(tmp_path, dump_recipe(r), "resolved.yaml")
    again = load_recipe(p)
    assert again == r and again.seed == 7
    for name, path in shipped_recipes().items():  # every key dumped (task, lm, teacher.prompt...) loads back
        r = load_recipe(path)
        assert load_recipe(write(tmp_path, dump_recipe(r), f"{name}.yaml")) == r, name


def test_schema_reference_covers_every_key():
    md = schema_markdown()
    for key in ("`name`", "`data.splits.train`", "`student.layers`", "`distill.curriculum.pacing`",
                "`export.fp32_atol`", "`bench.targets`"):
        assert key in md
    # every leaf field has a description
    assert "|  |" not in md.replace("| `", "|`")
    assert Recipe.model_fields["data"].default_factory is not None


def test_committed_recipe_reference_matches_the_schema():
    from conftest import REPO

    doc = (REPO / "docs" / "recipe-reference.md").read_text()
    assert schema_markdown() in doc, "regenerate: distill recipe schema > docs/recipe-reference.md (keep the header)"


def test_shipped_recipe_names_resolve_without_a_path():
    assert load_recipe("few-shot").data.few_shot == 32
    assert load_recipe("mpnet-to-minilm").teacher.model == "packaged:mpnet-base"


def _has(data: dict, dotted: str) -> bool:
    *parent, last = dotted.split(".")
    for part in parent:
        data = data.get(part, {})
    return last in data


def test_recipe_yaml_has_every_key_and_digests_leave_out_later_keys_at_their_defaults():
    """`recipe show` and a run's recipe.yaml carry every key; stage digests (and tune's study fingerprint)
    see a key added after runs existed only where it can change what a stage makes, so older runs resume."""
    import yaml

    from distill.recipe import DIGEST_OMITS, digest_view

    r = load_recipe()
    dumped, view = yaml.safe_load(dump_recipe(r)), digest_view(r)
    for key, _ in DIGEST_OMITS:
        assert _has(dumped, key) and not _has(view, key), key
    assert {"data", "teacher", "student", "distill", "seed"} <= set(view)
    changed = load_recipe(None, ["data.augment.max_texts=5", "teacher.truncation=head_tail", "distill.relation_layer=-2",
                                 "baselines.setfit=true", "data.augment.max_texts=7"])
    view = digest_view(changed)
    assert view["data"]["augment"]["max_texts"] == 7 and view["teacher"]["truncation"] == "head_tail"
    assert view["distill"]["relation_layer"] == -2 and view["baselines"]["setfit"] is True
    assert "truncation" not in view["student"] and not _has(view, "teacher.kind")
    # a section or a dotted field alone, as a stage hashes it: the same keys left out
    assert digest_view(changed, "data.augment") == view["data"]["augment"]
    assert digest_view(r, "data.augment") == {k: v for k, v in dumped["data"]["augment"].items() if k != "max_texts"}
    assert digest_view(changed, "data.augment.max_texts") == 7 and digest_view(r, "seed") == 0
