"""A tiny trained checkpoint and a random-weight Inception file for the evaluation tests."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import pytest
import torch

from rvq_cli.config import load_recipe
from rvq_cli.data import write_shards
from rvq_cli.training import train
from tiny import TINY, png


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory):
    """A 3-step tiny run; val: 10 images in 3 shards (4, 4, 2)."""
    root = tmp_path_factory.mktemp("evalrun")
    write_shards(({"__key__": f"img{i:03d}", "png": png(i)} for i in range(16)), root / "train", max_count=8)
    write_shards(({"__key__": f"val{i:03d}", "png": png(100 + i)} for i in range(10)), root / "val", max_count=4)
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY.format(train=root / "train" / "*.tar", val=root / "val" / "*.tar", out=root / "run"))
    train(load_recipe(recipe), quiet=True)
    return root


def random_inception_state() -> dict[str, torch.Tensor]:
    """A seeded, randomly initialised state dict of torch-fidelity's InceptionV3 (test-only bypass of its loading:
    the constructor's download and strict load are stubbed out for this one construction)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tfi, "load_state_dict_from_url", lambda *args, **kwargs: {})
        mp.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        torch.manual_seed(0)
        model = tfi.FeatureExtractorInceptionV3("random", ["2048"])
    # PyTorch's default conv init shrinks activations ~3x per layer (pool features ~1e-8); He init keeps them O(1).
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.nn.init.normal_(model.fc.weight, std=0.05)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def inception_state() -> dict[str, torch.Tensor]:
    return random_inception_state()


@pytest.fixture(scope="session")
def png_bytes():
    """png_bytes(seed, size=20): a random RGB image as PNG bytes."""
    return png


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory, inception_state):
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(inception_state, path)
    return path


@pytest.fixture
def no_cached_weights(tmp_path, monkeypatch):
    """No feature-network weights unless a test passes them: an empty torch hub cache, no env vars."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in ("RVQ_INCEPTION_WEIGHTS", "RVQ_ALEXNET_WEIGHTS", "RVQ_VGG16_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
