"""The literature's methods end to end on the tiny recipe: two training steps, then `rvq encode`
and `rvq decode` (the library functions the commands call): the tokens are the model's own
indices and decode to its evaluation forward bit for bit, PNGs included."""

import numpy as np
import pytest
import torch
from PIL import Image

from rvq_cli.config import load_recipe
from rvq_cli.data.images import center_crop, decode_rgb, to_batch, to_uint8
from rvq_cli.runs import load_tokenizer
from rvq_cli.tokens import decode_dataset, encode_dataset, read_token_samples, token_files
from rvq_cli.training import train
from tiny import png, recipe_file

METHODS = {
    "diveq": ["model.quantizer.estimator=diveq", "model.quantizer.update=learned"],
    "sf_diveq": ["model.quantizer.estimator=sf_diveq", "model.quantizer.update=learned"],
    "ibq": ["model.quantizer.estimator=ibq", "model.quantizer.update=learned", "model.quantizer.beta=0.25",
            "model.quantizer.vq_loss=taming_legacy"],
    "rotation+simvq": ["model.quantizer.codebook=simvq", "model.quantizer.update=learned"],
    "ste+affine": ["model.quantizer.estimator=ste", "model.quantizer.codebook=affine"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_tokens_round_trip(tmp_path, shards, method):
    run = train(load_recipe(recipe_file(tmp_path, shards), METHODS[method] + ["train.steps=2"]), quiet=True).run_dir
    encode_dataset(run, shards["val"], tmp_path / "tokens", num_workers=0, quiet=True)
    files, manifest = token_files(tmp_path / "tokens")
    samples = {s.key: s.tokens for s in read_token_samples(files)}
    keys = [f"val{i:03d}" for i in range(8)]  # tests/conftest.py's val shard: png(100 + i)
    assert sorted(samples) == keys and manifest["dtype"] == "uint16"
    model = load_tokenizer(run).model
    x = to_batch([center_crop(decode_rgb(png(100 + i)), 16) for i in range(8)])
    with torch.no_grad():
        want, rec = model.encode(x), model(x).reconstruction
    for key, w in zip(keys, want):
        np.testing.assert_array_equal(samples[key].astype(np.int64), w.numpy(), err_msg=key)
    assert torch.equal(model.decode_indices(want), rec)  # tokens decode to the forward pass, bit for bit
    decode_dataset(run, tmp_path / "tokens", tmp_path / "png", batch_size=8, quiet=True)
    pixels = to_uint8(rec).permute(0, 2, 3, 1).numpy()
    for key, w in zip(keys, pixels):
        with Image.open(tmp_path / "png" / f"{key}.png") as im:
            np.testing.assert_array_equal(np.asarray(im), w, err_msg=key)
