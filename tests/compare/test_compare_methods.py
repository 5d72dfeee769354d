"""rvq compare's methods beyond the estimator: names (EST, EST:CODEBOOK, fsq, fsq:L-L-L), the
recipe each becomes, and a comparison of an estimator, a codebook parameterisation and FSQ in
which every run starts from the same encoder and decoder weights."""

import json
import math
import os

os.environ.setdefault("RVQ_COMPILE", "never")

import pytest
import torch

from rvq_cli.compare.methods import parse_method
from rvq_cli.compare.runner import CompareError, compare, init_fingerprints, run_dir_of
from rvq_cli.config import load_recipe, shipped_recipes
from rvq_cli.quantize.fsq import PAPER_LEVELS, paper_levels
from rvq_cli.runs import latest_checkpoint, read_state
from rvq_cli.training import TrainingError, train
from rvq_cli.training.start import fingerprint, reference_weights
from tiny import recipe_file

QUICKSTART = shipped_recipes()["quickstart"]


@pytest.mark.parametrize("name, estimator, codebook, fsq, levels, folder", [
    ("rotation", "rotation", None, False, None, "rotation"),
    ("rotation:simvq", "rotation", "simvq", False, None, "rotation-simvq"),
    ("ste:affine", "ste", "affine", False, None, "ste-affine"),
    ("sf_diveq:plain", "sf_diveq", "plain", False, None, "sf_diveq-plain"),
    ("fsq", "ste", None, True, None, "fsq"),
    ("fsq:8-5-5-5", "ste", None, True, (8, 5, 5, 5), "fsq-8-5-5-5"),
])
def test_method_names(name, estimator, codebook, fsq, levels, folder):
    m = parse_method(name)
    assert (m.name, m.estimator, m.codebook, m.fsq, m.levels, m.folder) == (name, estimator, codebook, fsq, levels,
                                                                            folder)


@pytest.mark.parametrize("name, fragment", [
    ("nope", "unknown estimator 'nope'"),
    ("nope:simvq", "unknown estimator 'nope'"),
    ("rotation:nope", "unknown codebook 'nope'; valid: plain, simvq, affine"),
    ("rotation:", "unknown codebook ''"),
    ("fsq:", "FSQ levels are integers"),
    ("fsq:8-five", "FSQ levels are integers"),
    ("fsq:8-2-5", "every level must be >= 3"),
])
def test_bad_method_names(name, fragment):
    with pytest.raises(ValueError) as info:
        parse_method(name)
    assert fragment in str(info.value) and repr(name) in str(info.value)


@pytest.mark.parametrize("size, levels", [(1024, (8, 5, 5, 5)), (1000, (8, 5, 5, 5)), (256, (8, 6, 5)),
                                          (16, (8, 6, 5)), (4096, (7, 5, 5, 5, 5)), (16384, (8, 8, 8, 6, 5)),
                                          (65536, (8, 8, 8, 5, 5, 5)), (2**20, (8, 8, 8, 5, 5, 5)),
                                          (2048, (8, 5, 5, 5))])  # 11 bits: as near 10 as 12, the smaller
def test_fsq_levels_follow_the_codebook_size_on_a_log_scale(size, levels):
    assert paper_levels(size) == levels and levels in PAPER_LEVELS.values()


def test_each_method_is_a_valid_recipe_of_the_quickstart():
    base = load_recipe(QUICKSTART, check_paths=False)
    for name in ("ste", "rotation:simvq", "ste:affine", "diveq:plain", "fsq", "fsq:7-5-5-5-5"):
        m = parse_method(name)
        r = load_recipe(QUICKSTART, m.overrides(base), check_paths=False)  # the recipe checks pass
        q = r.model.quantizer
        assert q.estimator == m.estimator
        if m.fsq:
            assert q.kind == "fsq" and tuple(q.levels) == m.fsq_levels(base)
            assert q.codebook_size == math.prod(q.levels) and q.codebook_dim is None
            assert base.model.quantizer.ema_counts == "zeros" and q.ema_counts == "ones"  # back to the default
            assert r.model.encoder == base.model.encoder and r.optim == base.optim and r.train == base.train
        else:
            assert q.kind == "vq" and q.codebook == (m.codebook or "plain")
            assert q.update == ("learned" if m.codebook == "simvq" else "ema")
            assert q.model_dump(exclude={"estimator", "codebook", "update"}) == \
                base.model.quantizer.model_dump(exclude={"estimator", "codebook", "update"})
    # FSQ's check refuses a codebook weight; the method puts the recipe's back to the default
    weighted = load_recipe(QUICKSTART, ["loss.codebook_weight=2.0"], check_paths=False)
    fsq = parse_method("fsq").overrides(weighted)
    assert "loss.codebook_weight=1.0" in fsq
    assert load_recipe(QUICKSTART, ["loss.codebook_weight=2.0"] + fsq, check_paths=False).loss.codebook_weight == 1


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, shards):
    """ste, rotation:simvq and fsq:5-5-5 on the tiny recipe, 2 steps, one seed."""
    root = tmp_path_factory.mktemp("methods")
    recipe = recipe_file(root, shards)
    said = []
    result = compare(["ste", "rotation:simvq", "fsq:5-5-5"], recipe, ["train.steps=2"], out=root / "cmp",
                     fid=False, quiet=True, say=said.append)
    return root, recipe, result


def test_a_comparison_of_an_estimator_a_codebook_and_fsq(mixed):
    root, recipe, result = mixed
    assert [r.name for r in result.runs] == ["ste", "rotation:simvq", "fsq:5-5-5"]
    assert [r.run_dir for r in result.runs] == [root / "cmp" / f / "seed-0" for f in ("ste", "rotation-simvq",
                                                                                      "fsq-5-5-5")]
    saved = [load_recipe(r.run_dir / "recipe.yaml", check_paths=False).model.quantizer for r in result.runs]
    assert [(q.kind, q.estimator, q.codebook, q.update) for q in saved] == [
        ("vq", "ste", "plain", "ema"), ("vq", "rotation", "simvq", "learned"), ("fsq", "ste", "plain", "ema")]
    assert saved[2].levels == [5, 5, 5] and saved[2].codebook_size == 125
    data = json.loads((root / "cmp" / "compare.json").read_text())
    assert data["estimators"] == ["ste", "rotation:simvq", "fsq:5-5-5"]
    md = (root / "cmp" / "compare.md").read_text()
    assert md.startswith("# rvq compare: ste, rotation:simvq, fsq:5-5-5")
    assert any(line.startswith("| fsq:5-5-5 |") for line in md.splitlines())
    assert any("rotation:simvq: SimVQ learns its map by gradient" in n and "update: learned" in n
               for n in result.notes)
    assert any(n.startswith("fsq:5-5-5: FSQ with levels [5, 5, 5] (125 codes") for n in result.notes)


def test_every_method_starts_from_the_seeds_encoder_and_decoder(mixed):
    """The trainer records the fingerprints of the weights it started from: the shared part is the
    reference build's for every method, although simvq and fsq, built alone, start elsewhere."""
    root, recipe, result = mixed
    base = load_recipe(recipe, ["train.steps=2"], check_paths=False)
    reference = fingerprint(reference_weights(base))
    recorded = [read_state(latest_checkpoint(r.run_dir)) for r in result.runs]
    assert [s["shared_fingerprint"] for s in recorded] == [reference] * 3
    assert [r.shared_fingerprint for r in result.runs] == [reference] * 3
    assert len({s["init_fingerprint"] for s in recorded}) == 3  # the quantizers differ
    assert any(n.startswith("seed 0: the quantizers start from different states in ste | rotation:simvq | "
                            "fsq:5-5-5") for n in result.notes)
    assert not any("did not start from the same encoder" in n for n in result.notes)
    alone = [init_fingerprints(load_recipe(r.run_dir / "recipe.yaml", check_paths=False)) for r in result.runs]
    assert alone[0] == (recorded[0]["init_fingerprint"], reference)  # ste builds the reference itself
    assert alone[1][1] != reference and alone[2][1] != reference  # built alone, their encoders would differ


def test_shared_weights_that_do_not_fit_are_refused(tmp_path, shards):
    recipe = load_recipe(recipe_file(tmp_path, shards), ["train.steps=1"])
    weights = reference_weights(recipe)
    bad = dict(weights, **{"model.encoder.extra": torch.zeros(1)})
    with pytest.raises(TrainingError, match="shared weights: .*unexpected: model.encoder.extra"):
        train(recipe, tmp_path / "a", quiet=True, start_from=bad)
    key = next(k for k in weights if k.endswith("conv_in.weight"))
    bad = dict(weights, **{key: weights[key][:1]})
    with pytest.raises(TrainingError, match=f"other shape: {key}"):
        train(recipe, tmp_path / "b", quiet=True, start_from=bad)
    res = train(recipe, tmp_path / "c", quiet=True, start_from=weights)  # fitting ones: an ordinary run
    assert res.step == 1 and read_state(latest_checkpoint(tmp_path / "c"))["shared_fingerprint"] == \
        fingerprint(weights)


def test_reference_weights_leave_the_callers_random_state(tmp_path, shards):
    recipe = load_recipe(recipe_file(tmp_path, shards), check_paths=False)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    weights = reference_weights(recipe)
    assert torch.equal(torch.get_rng_state(), before)
    assert weights and all(k.startswith("model.") for k in weights)  # the tiny recipe has no discriminator
    assert not any(k.startswith("model.quantize.") for k in weights)


def test_unknown_methods_are_refused_before_anything_is_written(tmp_path, shards):
    out = tmp_path / "out"
    with pytest.raises(CompareError) as info:
        compare(["ste", "rotation:nope", "fsq:9-1"], recipe_file(tmp_path, shards), out=out, fid=False, quiet=True)
    msg = str(info.value)
    assert "'rotation:nope': unknown codebook 'nope'" in msg and "'fsq:9-1'" in msg
    assert not out.exists()


def test_run_dir_of_names_a_method_folder(tmp_path):
    assert run_dir_of(tmp_path, "rotation:simvq", 2) == tmp_path / "rotation-simvq" / "seed-2"
