"""The codebook parameterisations in real two-process training on the CPU (torchrun, gloo): SimVQ's
map W and frozen basis, and the affine codebook's running statistics, identical on both ranks
afterwards; with ``affine_sync: false`` each rank's statistics are its own batch's."""

import pytest
import torch
from safetensors.torch import load_file

from tiny import recipe_file

AFFINE = ("batch_mean", "batch_variance", "codebook_mean", "codebook_variance")


def ranks(tmp_path):
    return [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]


@pytest.mark.slow  # the suite's time budget; affine's distributed statistics: the test below
def test_two_processes_keep_simvq_and_affine_codebooks_identical(tmp_path, shards, run_two):
    for codebook, port, extra in (("simvq", 29551, ["model.quantizer.update=learned", "model.quantizer.beta=0.25"]),
                                  ("affine", 29552, [])):
        out = tmp_path / codebook
        out.mkdir()
        path = recipe_file(out, shards, out="dist")
        run_two(path, out, port, f"model.quantizer.codebook={codebook}", "train.steps=2", *extra)
        a, b = ranks(out)
        assert set(a) == set(b)
        for k in a:
            assert torch.equal(a[k], b[k]), (codebook, k)
        if codebook == "simvq":
            assert "quantize.parameterisation.weight" in a and "quantize.embed_sum" not in a
        else:
            assert all(f"quantize.parameterisation.{n}" in a for n in AFFINE)
            assert bool(a["quantize.parameterisation.initialized"])


def test_without_affine_sync_each_rank_keeps_its_own_batch_statistics(tmp_path, shards, run_two):
    path = recipe_file(tmp_path, shards, out="dist")
    run_two(path, tmp_path, 29543, "model.quantizer.codebook=affine", "model.quantizer.affine_sync=false",
            "train.steps=2")
    a, b = ranks(tmp_path)
    assert not torch.equal(a["quantize.parameterisation.batch_mean"], b["quantize.parameterisation.batch_mean"])
