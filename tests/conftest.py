"""Test-wide settings: estimator kernels run eager unless a test asks for torch.compile
(compiling costs ~40 s cold; tests/quantize/test_estimators.py checks the compiled path once)."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory):
    """Random VGG16 trunk weights in torchvision's key layout (features.N.*), for LPIPS tests."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    state = torchvision.models.vgg16(weights=None).state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, path)
    return path
