"""Recipes: schema defaults, every problem reported with its dotted path, overrides, CLI."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rvq_cli.config import (
    DEMO,
    Recipe,
    RecipeError,
    load_recipe,
    parse_overrides,
    recipe_to_yaml,
    resolve_recipe,
    shipped_recipes,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
RVQ = shutil.which("rvq") or os.path.join(os.path.dirname(sys.executable), "rvq")


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems_of(path, overrides=(), check_paths=True):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides, check_paths)
    return {p.path: p.message for p in info.value.problems}


def test_there_are_shipped_recipes():
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path, check_paths=False)  # datasets named by paper recipes are not on this machine
    assert isinstance(recipe, Recipe)
    assert path.read_text().startswith("#"), "a recipe starts with a comment saying what it reproduces"


def test_empty_recipe_is_all_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, ""))
    assert recipe == Recipe()
    assert recipe.model.quantizer.estimator == "rotation" and recipe.model.quantizer.decay == 0.8
    assert recipe.data.train == DEMO


def test_resolved_yaml_round_trips(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", ["train.steps=7"])
    again = load_recipe(write(tmp_path, recipe_to_yaml(recipe)))
    assert again == recipe and again.train.steps == 7


def test_all_problems_reported_together_with_paths(tmp_path):
    path = write(tmp_path, """
data: {train: '/nowhere/shard-{0..1}.tar'}
model:
  encoder: {colour: red}
  quantizer: {estimator: rotate, codebook_size: many, lookup: manhattan}
train: {steps: 0, precision: fp8}
""")
    found = problems_of(path)
    assert set(found) == {"model.encoder.colour", "model.quantizer.estimator", "model.quantizer.codebook_size",
                          "model.quantizer.lookup", "train.steps", "train.precision", "data.train"}
    assert "ch_mult" in found["model.encoder.colour"]  # lists the valid keys
    assert "ste" in found["model.quantizer.estimator"] and "rotation_unscaled" in found["model.quantizer.estimator"]
    assert "'euclidean' or 'cosine'" in found["model.quantizer.lookup"]
    assert "'bf16'" in found["train.precision"]
    assert "/nowhere/shard-0.tar" in found["data.train"]


def test_cross_field_problems(tmp_path):
    path = write(tmp_path, """
data: {image_size: 66}
model:
  encoder: {ch: 16, ch_mult: [1, 2, 4], attn_resolutions: [5], norm_groups: 32}
  quantizer: {estimator: ste, gamma: one}
""")
    found = problems_of(path)
    assert "divisible" in found["data.image_size"]
    assert "feature-map size" in found["model.encoder.attn_resolutions"]
    assert "norm_groups" in found["model.encoder.norm_groups"] or "divide" in found["model.encoder.norm_groups"]
    assert "rotation" in found["model.quantizer.gamma"]


def test_projection_none_needs_matching_channels(tmp_path):
    path = write(tmp_path, """
model:
  projection: none
  encoder: {z_channels: 32}
  quantizer: {dim: 4}
""")
    found = problems_of(path)
    assert "model.encoder.z_channels (32) must equal model.quantizer.dim (4)" in found["model.projection"]
    vit = write(tmp_path, "model: {name: vit, projection: none, vit: {dim: 64, heads: 4}, quantizer: {dim: 32}}\n",
                "v.yaml")
    assert "model.vit.dim (64)" in problems_of(vit)["model.projection"]
    ok = load_recipe(path, ["model.quantizer.dim=32"], check_paths=False)
    assert ok.model.projection == "none" and ok.model.z_channels == 32
    bad = write(tmp_path, "model: {projection: linear, quantizer: {ema_counts: two, cosine_output: twice}}\n", "b.yaml")
    found = problems_of(bad)
    assert {"model.projection", "model.quantizer.ema_counts", "model.quantizer.cosine_output"} <= set(found)


def test_existing_shards_pass_the_path_check(tmp_path):
    for i in range(2):
        (tmp_path / f"s-{i}.tar").write_bytes(b"")
    recipe = load_recipe(write(tmp_path, f"data: {{train: '{tmp_path}/s-{{0..1}}.tar', val: null}}"))
    assert recipe.data.val is None


def test_yaml_syntax_error_says_where(tmp_path):
    found = problems_of(write(tmp_path, "data:\n  train: [1\n"))
    assert "line" in found[""] and "column" in found[""]


def test_non_mapping_and_missing_file(tmp_path):
    assert "mapping" in problems_of(write(tmp_path, "- 1\n- 2\n"))[""]
    assert "no such file" in problems_of(tmp_path / "absent.yaml")[""]


def test_the_shipped_recipes_are_the_recipes_folder():
    shipped = shipped_recipes()
    assert list(shipped) == [p.stem for p in RECIPES]  # sorted by name, read from the package data
    for p in RECIPES:
        assert shipped[p.stem].read_text() == p.read_text()


@pytest.mark.parametrize("name", ["quickstart", "quickstart.yaml"])
def test_a_shipped_recipe_loads_by_name(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here
    assert resolve_recipe(name) == shipped_recipes()["quickstart"]
    assert load_recipe(name, ["train.steps=7"]) == load_recipe(ROOT / "recipes" / "quickstart.yaml", ["train.steps=7"])


def test_a_path_that_exists_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "train: {steps: 3}\n", "quickstart.yaml")
    assert resolve_recipe("quickstart.yaml") == Path("quickstart.yaml")
    assert load_recipe("quickstart.yaml").train.steps == 3
    assert load_recipe("quickstart").train.steps == load_recipe(ROOT / "recipes" / "quickstart.yaml").train.steps
    (tmp_path / "vqgan_f4").mkdir()  # a folder is a path too: refused, not replaced by the recipe of that name
    assert "a folder, not a recipe file" in problems_of("vqgan_f4")[""]


@pytest.mark.parametrize("name", ["nope", "nope.yaml"])
def test_an_unknown_name_lists_the_shipped_recipes(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    message = problems_of(name)[""]
    assert "nor the name of a shipped recipe" in message and all(p.stem in message for p in RECIPES)
    assert "no such file" in problems_of(tmp_path / "sub" / "quickstart.yaml")[""]  # a path is never a name


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, "")
    r = load_recipe(path, ["model.quantizer.estimator=ste", "train.steps=200", "optim.lr=3e-4",
                           "model.encoder.ch_mult=[1, 2]", "model.encoder.attn_resolutions=[]", "data.val=null",
                           "data.random_flip=false"])
    assert r.model.quantizer.estimator == "ste" and r.train.steps == 200 and r.optim.lr == 3e-4
    assert r.model.encoder.ch_mult == [1, 2] and r.data.val is None and r.data.random_flip is False
    found = problems_of(path, ["model.quantizer.estimator=nope", "train.stepz=3", "garbage"])
    assert "model.quantizer.estimator" in found and "train.stepz" in found
    assert any("KEY=VALUE" in m for m in found.values())


def test_parse_overrides():
    tree, problems = parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"])
    assert tree == {"a": {"b": 1, "c": "x"}, "d": [1, 2]} and not problems


def rvq(*args, cwd=ROOT):
    env = dict(os.environ, COLUMNS="200", RVQ_COMPILE="never")
    return subprocess.run([RVQ, *args], capture_output=True, text=True, env=env, timeout=60, cwd=cwd)


def test_cli_validate_ok_and_show():
    res = rvq("validate", "recipes/quickstart.yaml", "train.steps=5", "--show")
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout and yaml.safe_load(res.stdout.split("\n", 1)[1])["train"]["steps"] == 5


def test_cli_validate_errors_exit_nonzero_without_traceback(tmp_path):
    path = write(tmp_path, "model: {quantizer: {estimator: rotate}}\ntrain: {steps: x}\n")
    res = rvq("validate", str(path), "optim.lr=-1")
    assert res.returncode == 2
    for fragment in ("model.quantizer.estimator", "train.steps", "optim.lr", "3 problems"):
        assert fragment in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_cli_recipes_lists_every_recipe():
    res = rvq("recipes")
    assert res.returncode == 0, res.stderr
    for p in RECIPES:
        assert p.stem in res.stdout
    assert "Quickstart" in res.stdout


def test_cli_takes_a_shipped_recipe_by_name(tmp_path):
    ok = rvq("validate", "quickstart", "train.steps=5", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "quickstart: valid" in ok.stdout and "5 steps" in ok.stdout
    paper = rvq("validate", "vqgan_f4.yaml", cwd=tmp_path)  # found by name; its ImageNet shards are not here
    assert paper.returncode == 2 and "data/imagenet/train-" in paper.stderr, paper.stderr
    bad = rvq("train", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr + bad.stdout
    err = " ".join(bad.stderr.split())
    assert "nor the name of a shipped recipe" in err and "quickstart, " in err and "vqgan_f4" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("overrides, path", [
    (["model.quantizer.cosine_output=renormalize"], "model.quantizer.cosine_output"),
    (["model.quantizer.cosine_init=as_drawn"], "model.quantizer.cosine_init"),
    (["model.quantizer.vq_loss=taming_legacy", "model.quantizer.update=ema"], "model.quantizer.vq_loss"),
    (["optim.schedule=constant", "optim.decay_steps=100"], "optim.decay_steps"),
])
def test_settings_without_effect_are_refused(tmp_path, overrides, path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  quantizer:\n    lookup: euclidean\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, overrides)
    assert [p.path for p in err.value.problems] == [path]
    assert "euclidean" in str(err.value) or "ema" in str(err.value).lower() or "constant" in str(err.value)


KARPATHY_GUMBEL = ["model.quantizer.estimator=gumbel", "model.quantizer.gumbel_logits=linear",
                   "model.quantizer.update=learned", "model.quantizer.beta=0", "model.quantizer.kl_warmup_steps=5000"]


def test_the_karpathy_gumbel_options_are_accepted(tmp_path):
    q = load_recipe(write(tmp_path, "{}\n"),
                    KARPATHY_GUMBEL + ["model.quantizer.temperature_steps=150000"]).model.quantizer
    assert (q.gumbel_logits, q.update, q.beta, q.kl_warmup_steps, q.temperature_steps) == \
        ("linear", "learned", 0.0, 5000, 150000)
    default = Recipe().model.quantizer
    assert (default.gumbel_logits, default.kl_warmup_steps, default.temperature_steps) == ("distance", 0, None)
    distance = load_recipe(write(tmp_path, "{}\n"), ["model.quantizer.estimator=gumbel",
                                                     "model.quantizer.kl_warmup_steps=10"]).model.quantizer
    assert distance.update == "ema" and distance.beta == 1.0  # distance logits keep the recipe's VQ terms


@pytest.mark.parametrize("overrides, path, words", [
    (["model.quantizer.update=ema"], "model.quantizer.gumbel_logits", "update: learned"),
    (["model.quantizer.beta=1.0"], "model.quantizer.beta", "commitment"),
    (["model.quantizer.codebook_dim=2"], "model.quantizer.codebook_dim", "unused"),
    (["model.quantizer.estimator=rotation"], "model.quantizer.gumbel_logits", "gumbel estimator only"),
    (["model.quantizer.gumbel_logits=softmax"], "model.quantizer.gumbel_logits", "distance"),
    (["model.quantizer.kl_warmup_steps=-1"], "model.quantizer.kl_warmup_steps", "greater than or equal"),
])
def test_the_karpathy_gumbel_options_refuse_what_they_cannot_do(tmp_path, overrides, path, words):
    problems = problems_of(write(tmp_path, "{}\n"), KARPATHY_GUMBEL + overrides)
    assert path in problems and words in problems[path], problems


@pytest.mark.parametrize("key, value", [("kl_warmup_steps", 10), ("temperature_steps", 100), ("diveq_noise_std", 0.01),
                                        ("ibq_logits", "distance"), ("ibq_entropy_weight", 0.1)])
def test_gumbel_schedules_are_refused_under_other_estimators(tmp_path, key, value):
    problems = problems_of(write(tmp_path, "{}\n"), [f"model.quantizer.{key}={value}"])
    assert list(problems) == [f"model.quantizer.{key}"] and "'rotation'" in problems[f"model.quantizer.{key}"]


def test_crop_is_an_image_option(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: timesformer}\ndata: {crop: center}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, check_paths=False)
    assert [p.path for p in err.value.problems] == ["data.crop"]


def test_each_problem_is_listed_once(tmp_path):
    """Optional fields (a union with None) and keys given in the file and again as an override:
    one line per problem."""
    p = tmp_path / "r.yaml"
    p.write_text("train: {steps: 0, precision: bf8}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(p, ["train.precision=bf9", "train.ema_decay=2", "train.init_from=3", "data.val=5",
                        "model.quantizer.codebook_dim=0"], check_paths=False)
    lines = [str(x) for x in info.value.problems]
    assert len(lines) == len(set(lines)) == 6
    assert sum(line.startswith("train.precision:") for line in lines) == 1 and any("'bf9'" in line for line in lines)
