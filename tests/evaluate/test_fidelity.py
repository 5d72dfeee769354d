"""r-FID / r-IS through torch-fidelity's real InceptionV3 forward and metric functions.

The real Inception weights cannot be downloaded here, so the tests write their own file: random
weights of the same architecture (scaled so that features are O(1), like the real network's).
Every test then goes through the real path: load_inception -> torch-fidelity's forward -> metrics.
"""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tfi
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.utils import save_image

from rvq_cli.data.images import to_uint8
from rvq_cli.evaluation.fidelity import (
    FID_FEATURE,
    INCEPTION_FILENAME,
    INCEPTION_URL,
    IS_FEATURE,
    FidelityError,
    default_weights_path,
    fid_from_features,
    find_inception_weights,
    inception_features,
    inception_score,
    library_versions,
    load_inception,
    missing_weights_message,
)

N = 8  # images per set: enough for a covariance, few enough for a 2-core CPU


@pytest.fixture(scope="module")
def weights(tmp_path_factory, inception_state) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inception")
    state = inception_state
    paths = {"pth": folder / INCEPTION_FILENAME, "safetensors": folder / "inception.safetensors"}
    torch.save(state, paths["pth"])
    save_file(state, paths["safetensors"])
    return paths


@pytest.fixture(scope="module")
def model(weights):
    return load_inception(weights["pth"])


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (N, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return {"noise": noise, "grey": torch.full((N, 3, 32, 32), 128, dtype=torch.uint8)}


@pytest.fixture(scope="module")
def features(model, images) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: inception_features(model, x, batch_size=4) for name, x in images.items()}


# --- features and metrics -------------------------------------------------------------------------------------


def test_constants_come_from_torch_fidelity():
    assert INCEPTION_URL == tfi.URL_INCEPTION_V3
    assert INCEPTION_FILENAME == "weights-inception-2015-12-05-6726825d.pth"
    assert tfi.FeatureExtractorInceptionV3.get_default_feature_layer_for_metric("fid") == FID_FEATURE
    assert tfi.FeatureExtractorInceptionV3.get_default_feature_layer_for_metric("isc") == IS_FEATURE


def test_loaded_model_is_frozen_eval_extractor(model):
    assert isinstance(model, tfi.FeatureExtractorInceptionV3)
    assert model.features_list == [FID_FEATURE, IS_FEATURE]
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_features_shapes_dtype_finite(model, features):
    pool, logits = features["noise"]
    assert pool.shape == (N, 2048) and logits.shape == (N, 1008)
    for t in (pool, logits):
        assert t.dtype == torch.float32 and t.device.type == "cpu"
        assert torch.isfinite(t).all()
    assert pool.abs().mean() > 1e-3  # the random weights give O(1) features, so the FID bounds below mean something
    empty = inception_features(model, torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    assert empty[0].shape == (0, 2048) and empty[1].shape == (0, 1008)


def test_fid_identical_sets_near_zero_and_different_sets_far(features):
    noise, grey = features["noise"][0], features["grey"][0]
    # FID is in squared feature units, so the bound is relative to E||f||^2 (= trace(cov) + ||mean||^2, ~190
    # here). With N=8 << 2048 the covariance is rank-deficient and sqrtm's eigenvalues of a singular product are
    # noisy, but that error is ~1e-9 of the scale; 1e-4 of it leaves ample margin and is still far below the
    # distance between noise and flat grey images (~2.7 * scale here).
    bound = 1e-4 * float((noise.double() ** 2).sum(1).mean())
    assert abs(fid_from_features(noise, noise)) < bound
    assert fid_from_features(noise, grey) > 100 * bound


def test_fid_needs_two_rows_per_set(features):
    noise = features["noise"][0]
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(noise[:1], noise)


def test_inception_score_of_real_logits_finite_and_at_least_one(features):
    mean, std = inception_score(features["noise"][1], splits=2)
    assert np.isfinite(mean) and np.isfinite(std)
    assert mean >= 1 - 1e-9
    mean, _ = inception_score(features["noise"][1][:3], splits=10)  # splits capped at N: no empty split, no NaN
    assert np.isfinite(mean)


def test_inception_score_counts_confident_distinct_classes():
    logits = torch.zeros(4, 1008)
    logits[torch.arange(4), torch.arange(4)] = 50.0  # 4 images, each surely a different class: IS = 4
    mean, std = inception_score(logits, splits=1)
    assert mean == pytest.approx(4.0, rel=1e-6) and std == 0.0
    with pytest.raises(ValueError):
        inception_score(torch.zeros(0, 1008))


def test_safetensors_and_pth_give_identical_features(weights, model, images, features):
    x = images["noise"][:2]
    from_sft = inception_features(load_inception(weights["safetensors"]), x, batch_size=1)
    from_pth = inception_features(model, x, batch_size=1)
    for a, b, batched in zip(from_sft, from_pth, features["noise"]):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, batched[:2], rtol=1e-4, atol=1e-5)  # chunking does not change results


def test_to_uint8_matches_save_image_png(tmp_path):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 17, 19, generator=gen) * 2.4 - 1.2  # some values outside [-1, 1]: clamped
    x[0, 0, 0, :3] = torch.tensor([-1.0, 0.0, 1.0])
    got = to_uint8(x)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    for i, img in enumerate(x):
        for kind, kwargs in (("shift", {}), ("normalize", {"normalize": True, "value_range": (-1, 1)})):
            path = tmp_path / f"{i}-{kind}.png"
            save_image((img.clamp(-1, 1) + 1) / 2 if kind == "shift" else img, path, **kwargs)
            png = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
            assert torch.equal(got[i], png), kind


def test_library_versions():
    assert set(library_versions()) == {"torch-fidelity", "torch", "torchvision"}


# --- safe loading -------------------------------------------------------------------------------------------------


class _MakesMarker:
    """Unpickling this creates a directory: a harmless stand-in for code a malicious file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("fmt, reason", [
    ("pickle-protocol-2", "refers to code"),  # refused at the GLOBAL that names os.mkdir
    ("pickle-protocol-5", "not a weights file"),  # refused earlier, at an opcode torch.save never writes
    ("torch-save", "refers to code"),
], ids=["pickle-protocol-2", "pickle-protocol-5", "torch-save"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's, for protocol 5
def test_malicious_pickle_refused_without_running(tmp_path, fmt, reason):
    sanity = tmp_path / "sanity"
    pickle.loads(pickle.dumps(_MakesMarker(sanity)))
    assert sanity.exists()  # the payload works when unpickled normally
    marker, path = tmp_path / "marker", tmp_path / "evil.pth"
    if fmt == "torch-save":
        torch.save({"fc.weight": _MakesMarker(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_MakesMarker(marker), protocol=int(fmt[-1])))
    with pytest.raises(FidelityError, match=reason) as err:
        load_inception(path)
    assert not marker.exists()
    assert INCEPTION_URL in str(err.value) and "weights_only=False" not in str(err.value)


def _write_bad(kind: str, path: Path, weights: dict[str, Path]) -> None:
    if kind == "truncated":
        raw = weights["pth"].read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "text":
        path.write_text("not weights\n")
    elif kind == "missing-key":
        state = load_file(weights["safetensors"])
        del state["Mixed_7c.branch_pool.conv.weight"]
        torch.save(state, path)
    elif kind == "wrong-shape":
        torch.save({**load_file(weights["safetensors"]), "fc.weight": torch.zeros(10, 2048)}, path)
    elif kind == "not-a-dict":
        torch.save([torch.zeros(3)], path)


@pytest.mark.parametrize("kind, suffix, reason", [
    ("truncated", ".pth", "truncated, corrupt or not a weights file"),
    ("text", ".pth", "truncated, corrupt or not a weights file"),
    ("text", ".safetensors", "truncated, corrupt or not a weights file"),
    ("missing-key", ".pth", "Missing key"),
    ("wrong-shape", ".pth", "size mismatch for fc.weight"),
    ("not-a-dict", ".pth", "does not hold a state dict"),
], ids=["truncated", "text", "text-safetensors", "missing-key", "wrong-shape", "not-a-dict"])
def test_unusable_files_raise_helpful_error(tmp_path, weights, kind, suffix, reason):
    path = tmp_path / f"bad{suffix}"
    _write_bad(kind, path, weights)
    with pytest.raises(FidelityError) as err:
        load_inception(path)
    message = str(err.value)
    assert reason in message and str(path) in message
    assert "pt_inception-2015-12-05" in message and INCEPTION_URL in message
    assert "weights_only=False" not in message  # torch's advice to retry unsafely is not passed on


def test_missing_file_raises(tmp_path):
    with pytest.raises(FidelityError, match="does not exist"):
        load_inception(tmp_path / "nope.pth")


def test_never_downloads_or_unpickles_unsafely_and_restores_loader(tmp_path, weights, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("torch-fidelity tried to download the weights")

    real_load = torch.load

    def safe_load_only(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "torch.load called without weights_only=True"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(tfi, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch, "load", safe_load_only)
    load_inception(weights["pth"])
    assert tfi.load_state_dict_from_url is no_download
    bad = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, bad)  # fails inside torch-fidelity's constructor
    with pytest.raises(FidelityError, match="Missing key"):
        load_inception(bad)
    assert tfi.load_state_dict_from_url is no_download


def test_loader_is_original_function_after_loading(weights, model):
    assert tfi.load_state_dict_from_url is torch.hub.load_state_dict_from_url


# --- finding the weights ------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("RVQ_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path


def test_explicit_path_must_be_a_file(clean_env):
    with pytest.raises(FidelityError, match="nope.pth.*does not exist"):
        find_inception_weights(clean_env / "nope.pth")
    with pytest.raises(FidelityError, match="is not a file"):
        find_inception_weights(clean_env)


def test_explicit_path_wins_over_env(clean_env, monkeypatch):
    explicit, env = clean_env / "a.pth", clean_env / "b.pth"
    explicit.touch()
    env.touch()
    monkeypatch.setenv("RVQ_INCEPTION_WEIGHTS", str(env))
    assert find_inception_weights(explicit) == explicit
    assert find_inception_weights() == env


def test_env_var_must_name_a_file(clean_env, monkeypatch):
    monkeypatch.setenv("RVQ_INCEPTION_WEIGHTS", str(clean_env / "gone.pth"))
    with pytest.raises(FidelityError, match="RVQ_INCEPTION_WEIGHTS"):
        find_inception_weights()


def test_default_location_under_torch_home(clean_env):
    expected = clean_env / "torch-home" / "hub" / "checkpoints" / INCEPTION_FILENAME
    assert default_weights_path() == expected
    assert find_inception_weights() is None
    expected.parent.mkdir(parents=True)
    expected.touch()
    assert find_inception_weights() == expected


def test_missing_weights_message_names_url_and_default_path(clean_env):
    message = missing_weights_message()
    assert INCEPTION_URL in message and str(default_weights_path()) in message
    assert "pass inception_weights PATH" in message and "RVQ_INCEPTION_WEIGHTS" in message  # from Python: the parameter
    assert "\n" not in message
