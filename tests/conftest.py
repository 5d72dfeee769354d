"""Test-wide settings: estimator kernels run eager unless a test asks for torch.compile
(compiling costs ~40 s cold; tests/quantize/test_estimators.py checks the compiled path once)."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")


import pytest  # noqa: E402


def _trunk_file(tmp_path_factory, arch: str, seed: int):
    """Random ``arch`` trunk weights in torchvision's key layout (features.N.*), for LPIPS tests."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    path = tmp_path_factory.mktemp(arch) / f"{arch}-random.pth"
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, path)
    return path


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory):
    return _trunk_file(tmp_path_factory, "vgg16", 0)


@pytest.fixture(scope="session")
def alex_file(tmp_path_factory):
    return _trunk_file(tmp_path_factory, "alexnet", 1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Tiny image shards (random 20×20 PNGs): train 24 images in 3 shards, val 8 in one; brace patterns."""
    from rvq_cli.data import write_shards
    from tiny import png

    root = tmp_path_factory.mktemp("shards")
    write_shards(({"__key__": f"img{i:03d}", "png": png(i)} for i in range(24)), root / "train", max_count=8)
    write_shards(({"__key__": f"val{i:03d}", "png": png(100 + i)} for i in range(8)), root / "val", max_count=8)
    return {"train": str(root / "train" / "shard-{000000..000002}.tar"), "val": str(root / "val" / "shard-000000.tar")}


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory):
    """Tiny mp4 shards of 10-frame moving squares at 8 fps: (train pattern: 4 videos in 2 shards,
    val pattern: 2 videos in 1 shard)."""
    from rvq_cli.data import write_shards
    from rvq_cli.data.mp4 import encode_mp4
    from tiny import moving_square

    root = tmp_path_factory.mktemp("video")
    samples = [{"__key__": f"v{i:03d}", "mp4": encode_mp4(moving_square(i), fps=8), "json": {"fps": 8, "frames": 10}}
               for i in range(6)]
    write_shards(samples[:4], root / "train", max_count=2)
    write_shards(samples[4:], root / "val", max_count=2)
    return str(root / "train" / "shard-{000000..000001}.tar"), str(root / "val" / "shard-000000.tar")
