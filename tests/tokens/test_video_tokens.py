"""rvq encode / rvq decode with a video tokenizer: (T', h, w) token arrays, one sample per whole
clip of each video, bit-equal to the forward reconstruction, decoded to mp4."""

import io
import json

import av
import numpy as np
import pytest
import torch

from rvq_cli.config import load_recipe
from rvq_cli.data.images import to_uint8
from rvq_cli.data.mp4 import decode_clip
from rvq_cli.data.video import resize_center_crop, to_video_batch
from rvq_cli.runs import load_tokenizer
from rvq_cli.tokens import TokenError, decode_dataset, encode_dataset, read_token_samples, token_files
from rvq_cli.tokens.decode import decode_tokens
from rvq_cli.training import train
from tiny import TINY_VIDEO


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, video_shards):
    root = tmp_path_factory.mktemp("vtok")
    path = root / "video.yaml"
    path.write_text(TINY_VIDEO.format(train=video_shards[0], val=video_shards[1], estimator="rotation",
                                      out=root / "run"))
    train(load_recipe(path, ["data.frame_stride=1", "train.steps=2"]), quiet=True)  # clips of 4 frames
    return root / "run"


def test_video_encode_decode_round_trip(video_run, video_shards, tmp_path):
    rep = encode_dataset(video_run, video_shards[1], tmp_path / "tok", batch_size=3, num_workers=0, quiet=True)
    m = rep.manifest
    # two 10-frame videos -> two whole 4-frame clips each (frames 0-3, 4-7; the tail 8-9 is left out)
    assert m["count"] == 4 and m["grid"] == [4, 4, 4] and m["clip"]["frames"] == 4
    samples = sorted(read_token_samples(token_files(tmp_path / "tok")[0]), key=lambda s: s.key)
    assert [s.key for s in samples] == ["v004_c000", "v004_c001", "v005_c000", "v005_c001"]
    assert all(s.tokens.shape == (4, 4, 4) and s.tokens.dtype == np.uint16 for s in samples)
    assert samples[1].meta["source"]["start"] == 4 and samples[1].meta["source"]["video"] == "v004"

    # independent: the same clip decoded and cropped here, through the model's forward pass
    tok = load_tokenizer(video_run)
    import webdataset as wds

    mp4 = {s["__key__"]: s["mp4"] for s in wds.WebDataset(video_shards[1], shardshuffle=False)}
    x = to_video_batch([resize_center_crop(decode_clip(mp4["v004"], frames=4, stride=1, start=4), 16)])
    with torch.no_grad():
        forward = tok.model(x).reconstruction.float()
    decoded = decode_tokens(tok.model, samples[1].tokens[None])
    assert torch.equal(decoded, forward)  # bit for bit

    out = decode_dataset(video_run, tmp_path / "tok", tmp_path / "dec", quiet=True)
    assert out.count == 4
    path = tmp_path / "dec" / "v004_c001.mp4"
    with av.open(io.BytesIO(path.read_bytes())) as c:
        stream = c.streams.video[0]
        assert round(float(stream.average_rate)) == 8  # the source's 8 fps at stride 1
    frames = decode_clip(path.read_bytes(), frames=4, stride=1, start=0)
    expected = to_uint8(forward[0].transpose(0, 1)).permute(0, 2, 3, 1).numpy()
    assert frames.shape == expected.shape == (4, 16, 16, 3)
    assert np.abs(frames.astype(int) - expected.astype(int)).mean() < 12  # H.264 is lossy


def test_video_tokens_refuse_image_inputs_and_image_tokens(video_run, tmp_path):
    from rvq_cli.data import DataError

    (tmp_path / "pics").mkdir()
    with pytest.raises(DataError, match="video shards"):
        encode_dataset(video_run, str(tmp_path / "pics"), tmp_path / "tok", quiet=True)
    # an image token sample (h, w) given to the video tokenizer is refused before anything is written
    from rvq_cli.data import write_shards
    from rvq_cli.tokens.format import META, TOKENS, tokens_to_npy

    tid = load_tokenizer(video_run).tokenizer_id
    write_shards([{"__key__": "img", TOKENS: tokens_to_npy(np.zeros((4, 4), np.int64), 32),
                   META: json.dumps({"key": "img", "tokenizer": tid}).encode()}], tmp_path / "t2")
    with pytest.raises(TokenError, match=r"\(T, h, w\)"):
        decode_dataset(video_run, str(tmp_path / "t2" / "shard-000000.tar"), tmp_path / "dec2", quiet=True)
    assert not (tmp_path / "dec2").exists()
