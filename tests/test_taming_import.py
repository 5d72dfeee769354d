"""rvq import taming: a checkpoint in taming-transformers' layout (Lightning wrapper, its key
nesting, a discriminator and LPIPS tensors), built here from taming's own modules since real ones
cannot be downloaded, becomes a run folder whose model reproduces taming's outputs; rvq eval,
encode and train.init_from read it; unsafe or mismatched files are refused with a message."""

import json
import os
import pickle
import subprocess

os.environ.setdefault("RVQ_COMPILE", "never")

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rvq_cli.runs import DISC_WEIGHTS, latest_checkpoint, load_tokenizer, read_state
from rvq_cli.taming import TamingError, import_taming, read_taming_checkpoint
from tiny import RVQ

taming_model = pytest.importorskip("taming.modules.diffusionmodules.model")
taming_quantize = pytest.importorskip("taming.modules.vqvae.quantize")
taming_disc = pytest.importorskip("taming.modules.discriminator.model")

DD = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
          num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
EMBED, CODES = 4, 16
LOSS = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
        "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 10, "disc_weight": 0.8,
                   "codebook_weight": 1.0, "disc_num_layers": 2, "disc_ndf": 16}}


class Taming(torch.nn.Module):
    """taming's VQModel without Lightning: its modules, wired as VQModel.forward wires them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = taming_model.Encoder(**DD)
        self.decoder = taming_model.Decoder(**DD)
        self.quantize = taming_quantize.VectorQuantizer(CODES, EMBED, beta=0.25)
        self.quant_conv = torch.nn.Conv2d(DD["z_channels"], EMBED, 1)
        self.post_quant_conv = torch.nn.Conv2d(EMBED, DD["z_channels"], 1)
        with torch.no_grad():  # codes spread like trained ones (taming's init is U(±1/K), all near 0)
            self.quantize.embedding.weight.normal_()
        self.disc = taming_disc.NLayerDiscriminator(input_nc=3, n_layers=2, ndf=16)

    def forward(self, x):
        h = self.quant_conv(self.encoder(x))
        zq, loss, (_, _, idx) = self.quantize(h)
        return self.decoder(self.post_quant_conv(zq)), loss, idx.view(x.shape[0], *h.shape[2:])


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A taming model, its Lightning-style last.ckpt and its config, in taming's layout."""
    pl = pytest.importorskip("pytorch_lightning.callbacks")
    root = tmp_path_factory.mktemp("taming")
    model = Taming().eval()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("disc.")}
    sd.update({f"loss.discriminator.{k}": v for k, v in model.disc.state_dict().items()})
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.0.8", "state_dict": sd,
            "callbacks": {pl.ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "x.ckpt"}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}],
            "lr_schedulers": []}
    torch.save(ckpt, root / "last.ckpt")
    config = {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                        "params": {"embed_dim": EMBED, "n_embed": CODES, "ddconfig": DD, "lossconfig": LOSS}},
              "data": {"params": {"batch_size": 12}}}
    (root / "model.yaml").write_text(yaml.safe_dump(config))
    return root, model


@pytest.fixture(scope="module")
def imported(release):
    root, _ = release
    return import_taming(root / "last.ckpt", root / "model.yaml", root / "run")


def test_the_imported_model_reproduces_taming(release, imported):
    _, taming = release
    loaded = load_tokenizer(imported.run_dir)
    assert loaded.step == 0 and loaded.checkpoint == imported.checkpoint
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        rec, loss, idx = taming(x)
        out = loaded.model(x)
        tokens = loaded.model.encode(x)
    assert torch.equal(tokens, idx) and torch.equal(out.quantize.indices, idx)
    assert len(idx.unique()) > 1  # a real lookup, not one code
    torch.testing.assert_close(out.reconstruction, rec, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.model.decode_indices(tokens), rec, rtol=1e-5, atol=1e-5)
    # the quantizer's loss is taming's legacy one: commitment + 0.25 × codebook term
    assert loaded.recipe.model.quantizer.vq_loss == "taming_legacy" and loaded.recipe.model.quantizer.beta == 0.25
    torch.testing.assert_close(out.quantize.loss, loss, rtol=1e-5, atol=1e-7)


def test_the_run_folder_holds_recipe_weights_discriminator_and_source(release, imported):
    root, taming = release
    r = imported.recipe
    assert (r.model.encoder.ch, r.model.encoder.ch_mult, r.model.encoder.attn_resolutions) == (32, [1, 2], [8])
    assert (r.model.quantizer.codebook_size, r.model.quantizer.dim, r.data.image_size) == (CODES, EMBED, 16)
    assert (r.loss.gan.weight, r.loss.gan.start, r.loss.gan.layers, r.loss.gan.channels) == (0.8, 10, 2, 16)
    assert r.loss.reconstruction == "l1" and r.loss.perceptual_weight == 1.0
    assert r.optim.lr == pytest.approx(4.5e-6 * 12)
    disc = load_file(str(imported.checkpoint / DISC_WEIGHTS))
    assert disc.keys() == taming.disc.state_dict().keys()
    assert all(torch.equal(disc[k], v) for k, v in taming.disc.state_dict().items())
    source = json.loads((imported.checkpoint / "imported.json").read_text())
    assert source["checkpoint"] == str((root / "last.ckpt").resolve()) and len(source["checkpoint_sha256"]) == 64
    assert any("LPIPS tensors" in n for n in source["notes"]) and any("optim.lr" in n for n in imported.notes)
    assert (imported.run_dir / "recipe.yaml").read_text() == (imported.checkpoint / "recipe.yaml").read_text()


def test_fine_tuning_starts_from_the_imported_weights(release, imported, tmp_path, shards):
    """rvq train RECIPE train.init_from=OUT with another estimator: the run's first weights are the
    imported ones (model and discriminator), recorded as such."""
    from rvq_cli.config import load_recipe
    from rvq_cli.training import train
    from rvq_cli.training.start import fingerprint

    recipe = load_recipe(imported.run_dir / "recipe.yaml", [
        f"train.init_from={imported.run_dir}", "model.quantizer.estimator=rotation", f"data.train={shards['train']}",
        "train.steps=1", "train.batch_size=2", "train.ckpt_every=1", "data.num_workers=0", "data.shuffle_buffer=4",
        "loss.perceptual_weight=0", f"output.dir={tmp_path / 'ft'}"])
    res = train(recipe, quiet=True)
    assert res.step == 1
    start = read_state(latest_checkpoint(tmp_path / "ft"))["init_fingerprint"]
    assert start == fingerprint(load_file(str(imported.checkpoint / "model.safetensors")))


def test_init_from_that_does_not_fit_is_refused(imported, tmp_path, shards):
    from rvq_cli.config import load_recipe
    from rvq_cli.training import TrainingError, train

    recipe = load_recipe(imported.run_dir / "recipe.yaml", [
        f"train.init_from={imported.run_dir}", "model.quantizer.codebook_size=32", "train.steps=1",
        f"data.train={shards['train']}", f"output.dir={tmp_path / 'x'}", "loss.perceptual_weight=0"])
    with pytest.raises(TrainingError, match="train.init_from: .*model.safetensors does not fit .*other shape: "
                                            "quantize.cluster_size, quantize.codebook"):
        train(recipe, quiet=True)
    missing = recipe.model_copy(deep=True)
    missing.train.init_from = str(tmp_path / "nowhere")
    with pytest.raises(TrainingError, match="train.init_from: .*nowhere does not exist"):
        train(missing, quiet=True)


class Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_asks_for_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Boom()}, tmp_path / "evil.ckpt")
    with pytest.raises(TamingError, match="posix.system|os.system") as info:
        read_taming_checkpoint(tmp_path / "evil.ckpt")
    assert "weights-only" in str(info.value)
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "old.ckpt").write_bytes(pickle.dumps({"evil": Boom()}, protocol=2))
    with pytest.raises(TamingError):
        read_taming_checkpoint(tmp_path / "old.ckpt")
    assert not (tmp_path / "PWNED").exists()


def test_bare_state_dicts_and_safetensors_are_read(release, tmp_path):
    from safetensors.torch import save_file

    _, taming = release
    sd = {k: v.contiguous() for k, v in taming.state_dict().items()}
    torch.save(sd, tmp_path / "weights.pt")
    save_file(sd, str(tmp_path / "weights.safetensors"))
    for name in ("weights.pt", "weights.safetensors"):
        got = read_taming_checkpoint(tmp_path / name)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def _config(tmp_path, **params):
    base = {"embed_dim": EMBED, "n_embed": CODES, "ddconfig": DD, "lossconfig": LOSS}
    cfg = {"model": {"target": params.pop("target", "taming.models.vqgan.VQModel"), "params": {**base, **params}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "c.yaml"


def rvq(*args, cwd):
    return subprocess.run([RVQ, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=dict(os.environ, COLUMNS="200"))


def test_cli_imports_then_evaluates_and_encodes(release, tmp_path, shards):
    root, _ = release
    res = rvq("import", "taming", root / "last.ckpt", tmp_path / "run", "--config", root / "model.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "16 codes of dimension 4" in res.stdout and "train.init_from=" in res.stdout
    res = rvq("eval", tmp_path / "run", "--data", shards["val"], "--no-fid", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = rvq("encode", tmp_path / "run", shards["val"], tmp_path / "tokens", cwd=tmp_path)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("change, fragment", [
    ({"target": "taming.models.vqgan.GumbelVQ"}, "model.target is taming.models.vqgan.GumbelVQ"),
    ({"remap": "indices.npy"}, "remap is set"),
    ({"n_embed": 32}, "does not match the one its config describes (other shape: quantize.codebook)"),
    ({"ddconfig": {**DD, "double_z": True}}, "double_z is true"),
])
def test_cli_refuses_what_it_cannot_import(release, tmp_path, change, fragment):
    root, _ = release
    res = rvq("import", "taming", root / "last.ckpt", tmp_path / "run", "--config", _config(tmp_path, **change),
              cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert fragment in " ".join(res.stderr.split()), res.stderr
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_missing_file_and_a_full_folder(release, tmp_path):
    root, _ = release
    res = rvq("import", "taming", tmp_path / "nope.ckpt", tmp_path / "run", "--config", root / "model.yaml",
              cwd=tmp_path)
    assert res.returncode == 2 and "nope.ckpt: no such file" in res.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    res = rvq("import", "taming", root / "last.ckpt", tmp_path / "full", "--config", root / "model.yaml",
              cwd=tmp_path)
    assert res.returncode == 2 and "exists and is not empty" in res.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_latent_diffusions_ema_copy_becomes_the_weight_ema(release, tmp_path):
    """An ldm VQModel with use_ema: LitEma's model_ema.<name without dots> tensors become
    ema.safetensors, which load_tokenizer uses; the trained weights stay model.safetensors."""
    root, taming = release
    sd = {k: v for k, v in taming.state_dict().items() if not k.startswith("disc.")}
    params = {n: p.detach() for n, p in taming.named_parameters() if not n.startswith("disc.")}
    sd.update({f"model_ema.{n.replace('.', '')}": p + 0.01 for n, p in params.items()})
    sd["model_ema.decay"], sd["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(50, dtype=torch.int32)
    torch.save({"state_dict": sd}, tmp_path / "model.ckpt")
    config = yaml.safe_load((root / "model.yaml").read_text())
    config["model"]["target"] = "ldm.models.autoencoder.VQModel"
    config["model"]["params"]["use_ema"] = True
    config["model"]["params"]["lossconfig"] = {"target": "torch.nn.Identity"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    done = import_taming(tmp_path / "model.ckpt", tmp_path / "c.yaml", tmp_path / "run")
    assert any("imported as ema.safetensors" in n for n in done.notes)
    assert read_state(done.checkpoint)["ema_updates"] == 50
    ema, trained = load_tokenizer(done.run_dir), load_tokenizer(done.run_dir, ema=False)
    assert ema.weights == "ema" and trained.weights == "trained"
    e, t = ema.model.state_dict(), trained.model.state_dict()
    torch.testing.assert_close(e["quantize.codebook"], t["quantize.codebook"] + 0.01)
    torch.testing.assert_close(e["encoder.conv_in.weight"], params["encoder.conv_in.weight"] + 0.01)
    assert torch.equal(e["quantize.cluster_size"], t["quantize.cluster_size"])  # buffers: the trained ones
    assert done.recipe.loss.gan.weight == 0 and any("torch.nn.Identity" in n for n in done.notes)
