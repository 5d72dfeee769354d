"""A recipe's data: data_patterns (demo resolved per model kind), build_loader (the recipe's
stream, with the evaluator's overrides) and batch_tensor."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import itertools

import pytest
import torch

from rvq_cli.config import Recipe
from rvq_cli.data import DemoShards, sources
from rvq_cli.data.loader import batch_tensor, build_loader, data_patterns


def image_recipe(train: str, val: str | None, **data) -> Recipe:
    return Recipe.model_validate({"data": {"train": train, "val": val, "image_size": 8, "num_workers": 0,
                                           "shuffle_buffer": 4, **data}, "train": {"batch_size": 3, "seed": 5}})


def video_recipe(train: str, val: str | None) -> Recipe:
    return Recipe.model_validate({
        "data": {"train": train, "val": val, "image_size": 8, "frames": 3, "frame_stride": 2, "num_workers": 0},
        "model": {"name": "timesformer", "timesformer": {"patch_size": 4, "dim": 32, "depth": 1, "heads": 4,
                                                         "mlp_dim": 64}},
        "train": {"batch_size": 2}})


def test_data_patterns_resolve_demo_for_the_model_kind(monkeypatch, tmp_path):
    for name in ("demo_shards", "demo_video_shards"):
        d = DemoShards(train=f"{name}-train", val=f"{name}-val", root=tmp_path, train_count=1, val_count=1)
        monkeypatch.setattr(sources, name, lambda d=d: d)
    assert data_patterns(image_recipe("demo", "demo")) == ("demo_shards-train", "demo_shards-val")
    assert data_patterns(image_recipe("a.tar", None)) == ("a.tar", None)
    assert data_patterns(video_recipe("b.tar", "demo")) == ("b.tar", "demo_video_shards-val")


def test_image_loader_follows_the_recipe(shards):
    recipe = image_recipe(shards["train"], shards["val"])
    batches = list(itertools.islice(build_loader(shards["train"], recipe, train=True), 2))
    assert [tuple(batch_tensor(b).shape) for b in batches] == [(3, 3, 8, 8)] * 2
    again = list(itertools.islice(build_loader(shards["train"], recipe, train=True, start_batch=1), 1))
    assert torch.equal(batch_tensor(again[0]), batch_tensor(batches[1]))  # the recipe's seed, resumed exactly
    val = list(build_loader(shards["val"], recipe, train=False))
    assert sum(len(b["key"]) for b in val) == 8 and batch_tensor(val[0]).shape == (3, 3, 8, 8)


def test_evaluation_overrides_batch_size_and_image_size(shards):
    recipe = image_recipe(shards["train"], shards["val"], crop="center")
    (batch,) = build_loader(shards["val"], recipe, train=False, batch_size=8, image_size=12, num_workers=0)
    assert batch_tensor(batch).shape == (8, 3, 12, 12)


def test_video_loader_gives_clips(video_shards):
    train, val = video_shards
    recipe = video_recipe(train, val)
    (batch,) = itertools.islice(build_loader(train, recipe, train=True), 1)
    assert "video" in batch and batch_tensor(batch).shape == (2, 3, 3, 8, 8)  # (B, C, T, S, S)


def test_loader_checks_its_options(shards):
    with pytest.raises(ValueError, match="start_batch resumes a training stream"):
        build_loader(shards["val"], image_recipe(shards["train"], shards["val"]), train=False, start_batch=1)
