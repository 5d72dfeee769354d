"""Recipes: YAML loading, key=value overrides, and validation that reports every problem at once
with its dotted path. The typed schema, with every default, is :mod:`rvq_cli.schema`; its names
are importable from here too."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import RvqError
from .quantize.estimators import ESTIMATORS
from .quantize.fsq import PAPER_LEVELS
from .schema import (
    DEMO,
    DataConfig,
    EncoderConfig,
    GANConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    QuantizerConfig,
    Recipe,
    StyleGAN2Config,
    TimeSformerConfig,
    TrainConfig,
    ViTConfig,
)

__all__ = ["DEMO", "DataConfig", "EncoderConfig", "GANConfig", "LossConfig", "ModelConfig", "OptimConfig",
           "OutputConfig", "Problem", "QuantizerConfig", "Recipe", "RecipeError", "StyleGAN2Config",
           "TimeSformerConfig", "TrainConfig", "ViTConfig", "check_recipe", "load_recipe", "parse_overrides",
           "recipe_to_yaml", "resolve_recipe", "shipped_recipes"]


# --------------------------------------------------------------------------------------------
# Problems, loading, overrides
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str  # dotted path in the recipe ("" for the whole file)
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RecipeError(RvqError):
    """One or more problems with a recipe; ``str()`` lists them all, one per line."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source, self.problems = source, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} has {len(problems)} problem{'s' * (len(problems) != 1)}:\n{lines}")


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the section reached by following ``loc`` from Recipe."""
    model: Any = Recipe
    for key in loc:
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            break
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _problems_from(err: ValidationError) -> list[Problem]:
    out = []
    for e in err.errors():
        path = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key; valid keys here: {', '.join(_fields_at(tuple(e['loc'][:-1])))}"
        elif e["type"] not in ("value_error", "missing") and "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        problem = Problem(path, msg)
        if problem not in out:  # one problem listed once (a union's members may each report it)
            out.append(problem)
    return out


def parse_overrides(overrides: list[str]) -> tuple[dict, list[Problem]]:
    """``["model.quantizer.estimator=ste", "train.steps=200"]`` -> a nested dict of values parsed
    as YAML (numbers, booleans, lists, null), plus problems for malformed items."""
    tree: dict = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            problems.append(Problem("", f"override {item!r} is not KEY=VALUE with a dotted key (e.g. train.steps=200)"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                problems.append(Problem(key, f"override {item!r} conflicts with another override"))
                break
        else:
            node[parts[-1]] = value
    return tree, problems


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    """The YAML mapping in ``path``; a RecipeError says where it fails to parse."""
    p = Path(path)
    if not p.is_file():
        what = "a folder, not a recipe file" if p.is_dir() else "no such file"
        raise RecipeError(str(path), [Problem("", f"{what}; `rvq recipes` lists the shipped recipes, which rvq also "
                                                  "takes by name (rvq train quickstart)")])
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(str(path), [Problem("", f"YAML does not parse: {where}{problem}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(str(path), [Problem("", "a recipe is a YAML mapping of sections, got "
                                                  f"{type(data).__name__}")])
    return data


def _check_conv(recipe: Recipe) -> list[Problem]:
    problems, enc = [], recipe.model.encoder
    f = 2 ** (len(enc.ch_mult) - 1)
    if recipe.data.image_size % f:
        problems.append(Problem("data.image_size", f"{recipe.data.image_size} is not divisible by the encoder's "
                                f"downsampling factor {f} (2^(len(model.encoder.ch_mult) - 1))"))
    sizes = {recipe.data.image_size // 2**i for i in range(len(enc.ch_mult))}
    for r in enc.attn_resolutions:
        if r not in sizes:
            problems.append(Problem("model.encoder.attn_resolutions", f"{r} is not a feature-map size of this "
                                    f"encoder at image_size {recipe.data.image_size}; sizes are "
                                    f"{sorted(sizes, reverse=True)}"))
    for m in sorted({enc.ch * m for m in enc.ch_mult} | {enc.ch}):
        if m % enc.norm_groups:
            problems.append(Problem("model.encoder.norm_groups", f"{enc.norm_groups} groups do not divide {m} channels "
                                    "(every ch × ch_mult must be divisible by norm_groups)"))
            break
    return problems


def _check_vit(recipe: Recipe) -> list[Problem]:
    """The transformer families (vit, timesformer): patches tile the image, heads divide dim."""
    name = recipe.model.name
    problems, v = [], getattr(recipe.model, name)
    if recipe.data.image_size % v.patch_size:
        problems.append(Problem("data.image_size", f"{recipe.data.image_size} is not divisible by "
                                f"model.{name}.patch_size {v.patch_size}"))
    if v.dim % v.heads:
        problems.append(Problem(f"model.{name}.heads", f"{v.heads} heads do not divide dim {v.dim}"))
    if v.dim % 4:
        problems.append(Problem(f"model.{name}.dim", f"{v.dim} is not divisible by 4 (the 2-D sin-cos position "
                                "embedding needs it)"))
    return problems


def _check_without_effect(recipe: Recipe) -> list[Problem]:
    """Settings that the rest of the recipe would silently ignore: refused, so that what a
    recipe says is what runs."""
    q, problems = recipe.model.quantizer, []
    if q.lookup != "cosine":
        for key, default in (("cosine_output", "as_is"), ("cosine_init", "unit")):
            if getattr(q, key) != default:
                problems.append(Problem(f"model.quantizer.{key}", f"{getattr(q, key)!r} acts on cosine lookup only; "
                                        f"this recipe's lookup is {q.lookup!r} (remove the key or set lookup: cosine)"))
    if q.vq_loss == "taming_legacy" and q.update == "ema":
        problems.append(Problem("model.quantizer.vq_loss", "taming_legacy puts beta on the codebook term, which an "
                                "EMA codebook does not have (beta would be unused); use vq_loss: vqvae with the "
                                "commitment weight as beta, or update: learned"))
    if recipe.model.video and recipe.data.crop != "random":
        problems.append(Problem("data.crop", "applies to image models; video clips are resized on the short side "
                                "and centre-cropped in training and evaluation alike (remove the key)"))
    if recipe.train.compile and ESTIMATORS[q.estimator].double_backward:
        problems.append(Problem("train.compile", f"the {q.estimator} estimator differentiates the decoder twice, "
                                "which torch.compile does not support; set train.compile: false"))
    if recipe.optim.decay_steps is not None and recipe.optim.schedule != "cosine":
        problems.append(Problem("optim.decay_steps", "sets where the cosine schedule ends; this recipe's schedule "
                                f"is {recipe.optim.schedule!r} (remove the key or set optim.schedule: cosine)"))
    return problems


def _check_gan(recipe: Recipe) -> list[Problem]:
    """The discriminator fits the images, and its keys belong to the discriminator chosen."""
    g, size, problems = recipe.loss.gan, recipe.data.image_size, []
    if g.weight == 0:
        return problems
    if g.discriminator == "patchgan" and size // 2**g.layers < 3:
        problems.append(Problem("loss.gan.layers", f"{g.layers} stride-2 layers leave a {size // 2**g.layers}-pixel "
                                f"map of {size}-pixel images, too small for the discriminator's last two 4×4 "
                                "convolutions (needs ≥ 3); use fewer layers"))
    if g.discriminator == "stylegan2" and size & (size - 1):
        problems.append(Problem("loss.gan.discriminator", f"stylegan2 judges images whose side is a power of two "
                                f"(its blocks halve them down to 4×4); data.image_size is {size}: use a power of two "
                                "or discriminator: patchgan"))
    defaults = GANConfig()
    other = ("layers", "channels", "norm") if g.discriminator == "stylegan2" else ("stylegan2",)
    for key in other:
        if getattr(g, key) != getattr(defaults, key):
            owner = "stylegan2" if key == "stylegan2" else "patchgan"
            problems.append(Problem(f"loss.gan.{key}", f"acts on the {owner} discriminator only; this recipe's is "
                                    f"{g.discriminator!r} (remove the key)"))
    if g.r1_gamma == 0 and g.r1_every != defaults.r1_every:
        problems.append(Problem("loss.gan.r1_every", "sets how often the R1 penalty applies; this recipe's "
                                "loss.gan.r1_gamma is 0 (R1 off): remove the key or set r1_gamma"))
    return problems


def _check_estimator_options(q: QuantizerConfig) -> list[Problem]:
    """Options that act on one estimator only are refused under another (they would be unused)."""
    problems = []
    for owner in ESTIMATORS.values():
        if owner.name == q.estimator:
            continue
        for key in owner.own_options:
            if getattr(q, key) != QuantizerConfig.model_fields[key].default:
                problems.append(Problem(f"model.quantizer.{key}", f"{getattr(q, key)!r} acts on the {owner.name} "
                                        f"estimator only; this recipe's estimator is {q.estimator!r} (remove the key "
                                        f"or set estimator: {owner.name})"))
    return problems


def _check_codebook(q: QuantizerConfig) -> list[Problem]:
    """What the codebook parameterisations (simvq, affine) need, and their options under another."""
    problems, at, defaults = [], "model.quantizer.", QuantizerConfig.model_fields
    if q.codebook == "simvq":
        if q.update != "learned":
            problems.append(Problem(at + "update", f"{q.update!r}: codebook simvq keeps its basis C frozen and learns "
                                    "the map W by gradient, so it needs update: learned (an EMA update of a frozen "
                                    "basis is meaningless)"))
        for key, why in (("init", "SimVQ draws its frozen basis from N(0, 1/d)"),
                         ("cosine_init", "SimVQ stores its basis as drawn; the codes C Wᵀ are normalised at lookup"),
                         ("dead_code_threshold", "SimVQ has no stored codes to restart (every code is C Wᵀ)")):
            if getattr(q, key) != defaults[key].default:
                problems.append(Problem(at + key, f"{getattr(q, key)!r} has no effect with codebook simvq: {why} "
                                        "(remove the key)"))
    if q.codebook == "affine" and q.lookup != "euclidean":
        problems.append(Problem(at + "lookup", f"{q.lookup!r}: codebook affine shifts and scales the codes, which "
                                "a cosine lookup would undo; use lookup: euclidean (as vector-quantize-pytorch)"))
    if q.codebook != "affine":
        for key in ("affine_batch_decay", "affine_codebook_decay", "affine_sync"):
            if getattr(q, key) != defaults[key].default:
                problems.append(Problem(at + key, f"{getattr(q, key)!r} acts on codebook affine only; this recipe's "
                                        f"codebook is {q.codebook!r} (remove the key or set codebook: affine)"))
    return problems


def _check_gumbel(q: QuantizerConfig) -> list[Problem]:
    """What the gumbel estimator's linear logits need."""
    problems, at = [], "model.quantizer."
    if q.gumbel_logits != "linear":
        return problems
    if q.update != "learned":
        problems.append(Problem(at + "gumbel_logits", "'linear' learns the codebook through the soft mixture of codes "
                                "(karpathy/deep-vector-quantization), so it needs update: learned; an EMA update "
                                "would move the codes to latents the logits do not tie them to (this recipe: "
                                f"{q.update})"))
    if q.beta != 0:
        problems.append(Problem(at + "beta", f"{q.beta} weights the commitment term, which gumbel_logits linear does "
                                "not have (as karpathy/deep-vector-quantization); set beta: 0"))
    if q.codebook_dim not in (None, q.dim):
        problems.append(Problem(at + "codebook_dim", f"{q.codebook_dim}: gumbel_logits linear reads the quantizer's "
                                "input directly, so the factorising projection to codebook_dim would be unused; "
                                "leave codebook_dim null"))
    return problems


# model.quantizer keys that kind fsq reads (or derives from its levels); it ignores every other key
FSQ_KEYS = ("kind", "levels", "dim", "codebook_size", "codebook_dim", "estimator")


def _check_fsq(recipe: Recipe) -> list[Problem]:
    """kind fsq: levels given, the keys derived from them in agreement, no key that FSQ would ignore."""
    q, at = recipe.model.quantizer, "model.quantizer."
    if q.levels is None:
        sets = ", ".join(f"{list(v)} ({math.prod(v)} codes)" for v in PAPER_LEVELS.values())
        return [Problem(at + "levels", f"kind fsq needs levels, the number of levels of each code channel; the FSQ "
                        f"paper's sets: {sets}")]
    problems, n, d = [], math.prod(q.levels), len(q.levels)
    if q.codebook_size != n:
        problems.append(Problem(at + "codebook_size", f"{q.codebook_size} disagrees with levels {q.levels}, which "
                                f"give ∏ levels = {n} codes; remove codebook_size (kind fsq derives it) or set it "
                                f"to {n}"))
    if q.codebook_dim not in (None, d):
        problems.append(Problem(at + "codebook_dim", f"{q.codebook_dim} disagrees with levels {q.levels}: FSQ codes "
                                f"have one channel per level, {d}; remove codebook_dim or set it to {d}"))
    if q.estimator != "ste":
        problems.append(Problem(at + "estimator", f"{q.estimator!r}: kind fsq rounds each channel with the "
                                "straight-through estimator, its only one; remove the key or set estimator: ste"))
    fields = QuantizerConfig.model_fields
    for key in fields:
        if key not in FSQ_KEYS and getattr(q, key) != fields[key].default:
            problems.append(Problem(at + key, f"{getattr(q, key)!r} has no effect with kind fsq, which has no "
                                    "codebook to look up, update or restart and no commitment or codebook loss; "
                                    "remove the key"))
    if recipe.loss.codebook_weight != LossConfig.model_fields["codebook_weight"].default:
        problems.append(Problem("loss.codebook_weight", f"{recipe.loss.codebook_weight} weights the quantizer's "
                                "loss, which kind fsq does not have; remove the key"))
    return problems


def check_recipe(recipe: Recipe, check_paths: bool = True) -> list[Problem]:
    """Checks across fields, which the per-field schema cannot express."""
    q = recipe.model.quantizer
    problems = _check_conv(recipe) if recipe.model.name == "conv" else _check_vit(recipe)
    if recipe.model.projection == "none" and recipe.model.z_channels != q.dim:
        where = "model.encoder.z_channels" if recipe.model.name == "conv" else f"model.{recipe.model.name}.dim"
        problems.append(Problem("model.projection", f"'none' feeds the encoder output to the quantizer as it is, so "
                                f"{where} ({recipe.model.z_channels}) must equal model.quantizer.dim ({q.dim}); "
                                "set them equal or use projection: conv"))
    problems += _check_without_effect(recipe)
    problems += _check_estimator_options(q)
    problems += _check_gumbel(q)
    problems += _check_codebook(q)
    if recipe.model.pixel_norm == "clip" and recipe.model.in_channels != 3:
        problems.append(Problem("model.pixel_norm", f"'clip' has statistics for RGB images (3 channels); this "
                                f"model has {recipe.model.in_channels} input channels (use signed)"))
    if q.gamma is not None and q.estimator != "rotation":
        problems.append(Problem("model.quantizer.gamma",
                                f"gamma is an option of the rotation estimator, not of {q.estimator!r}"))
    problems += _check_gan(recipe)
    if q.kind == "fsq":  # FSQ's checks replace the vq checks of the quantizer's keys (those keys have no effect)
        problems = [p for p in problems if not p.path.startswith("model.quantizer.")] + _check_fsq(recipe)
    elif q.levels is not None:
        problems.append(Problem("model.quantizer.levels", "acts on kind fsq only; this recipe's kind is 'vq' "
                                "(remove the key or set kind: fsq)"))
    if check_paths:
        problems += check_data_paths(recipe.data.model_dump())
    return problems


def check_data_paths(data: Any) -> list[Problem]:
    """Missing shard files named by ``data.train`` / ``data.val`` (a raw or validated mapping)."""
    from .data import DataError, expand_pattern

    problems = []
    for key in ("train", "val"):
        pattern = data.get(key) if isinstance(data, dict) else None
        if not isinstance(pattern, str) or pattern == DEMO:
            continue
        try:
            expand_pattern(pattern)
        except DataError as err:
            problems.append(Problem(f"data.{key}", str(err)))
    return problems


SHIPPED = "rvq_cli.recipes"  # the package whose data are the shipped recipes (pyproject.toml maps recipes/ to it)


def shipped_recipes() -> dict[str, Path]:
    """The recipes installed with rvq by name (``quickstart`` -> its YAML file), read from the
    package data of ``rvq_cli.recipes``; the same files as the source tree's recipes/ folder."""
    from importlib.resources import files

    try:
        folder = files(SHIPPED)
    except ModuleNotFoundError:  # an installation without its package data
        return {}
    return {p.stem: p for p in sorted(Path(str(t)) for t in folder.iterdir() if t.name.endswith(".yaml"))}


def resolve_recipe(recipe: str | os.PathLike) -> Path:
    """The file ``recipe`` names: a path that exists (which always wins), else a shipped recipe's
    name, with or without .yaml (``rvq train quickstart``); a RecipeError lists the shipped names."""
    path = Path(recipe)
    if path.exists() or len(path.parts) != 1:
        return path  # read_yaml says what is wrong with a path that is not a recipe file
    shipped = shipped_recipes()
    name = path.stem if path.suffix == ".yaml" else path.name
    if name not in shipped:
        names = ", ".join(shipped) or "missing from this installation"
        raise RecipeError(str(recipe), [Problem("", "no such file, nor the name of a shipped recipe; the shipped ones "
                                                    f"are {names} (`rvq recipes` says what each is)")])
    return shipped[name]


def load_recipe(path: str | os.PathLike, overrides: list[str] = (), check_paths: bool = True) -> Recipe:
    """Read, override and validate a recipe: a YAML file, or a shipped recipe's name (see
    :func:`resolve_recipe`); raise RecipeError listing every problem found."""
    data = read_yaml(resolve_recipe(path))
    extra, problems = parse_overrides(list(overrides))
    merged = _merge(data, extra)
    try:
        recipe = Recipe.model_validate(merged)
    except ValidationError as err:
        paths = check_data_paths(merged.get("data")) if check_paths else []
        raise RecipeError(str(path), problems + _problems_from(err) + paths) from None
    problems += check_recipe(recipe, check_paths)
    if problems:
        raise RecipeError(str(path), problems)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe (every default filled in) as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
