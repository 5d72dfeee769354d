"""``rvq import taming``: a taming-transformers or latent-diffusion VQGAN (``VQModel``) checkpoint
and its config as an rvq run folder, which ``rvq eval / encode / decode`` read and which
``rvq train RECIPE train.init_from=OUT`` fine-tunes with any estimator.

What maps onto what (rvq's conv encoder and decoder are the same modules, key for key):

==========================================  ===================================================
taming / latent-diffusion                   rvq
==========================================  ===================================================
``encoder.*``, ``decoder.*``                ``encoder.*``, ``decoder.*`` (model.encoder from ddconfig)
``quant_conv``, ``post_quant_conv``         the same (model.projection: conv)
``quantize.embedding.weight`` (K × D)       ``quantize.codebook``: n_embed codes of embed_dim,
                                            learned, ``vq_loss: taming_legacy``, β = 0.25, STE
``loss.discriminator.*`` (NLayerDiscr.)     ``discriminator.safetensors`` (loss.gan: patchgan)
``loss.perceptual_loss.*`` (LPIPS)          not carried: rvq's LPIPS reads the VGG16 file itself
==========================================  ===================================================

A Lightning checkpoint is a pickle. It is read with ``torch.load(weights_only=True)``, which
builds nothing but tensors and plain containers, with one explicit addition: the name of
Lightning's ``ModelCheckpoint`` class, which Lightning stores as a dictionary key of its callback
states, resolves to an inert stand-in here. Anything else a pickle asks for is refused, by name.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .errors import RvqError

__all__ = ["ImportedRun", "TamingError", "import_taming", "read_taming_checkpoint", "taming_recipe"]

VQ_TARGETS = ("taming.models.vqgan.VQModel", "ldm.models.autoencoder.VQModel",
              "ldm.models.autoencoder.VQModelInterface")
LPIPS_LOSS = "VQLPIPSWithDiscriminator"
# the taming / latent-diffusion defaults of VQModel's quantizer and of VQLPIPSWithDiscriminator
BETA = 0.25
LOSS_DEFAULTS = {"disc_start": 0, "codebook_weight": 1.0, "pixelloss_weight": 1.0, "disc_num_layers": 3,
                 "disc_in_channels": 3, "disc_factor": 1.0, "disc_weight": 1.0, "perceptual_weight": 1.0,
                 "use_actnorm": False, "disc_conditional": False, "disc_ndf": 64, "disc_loss": "hinge"}
CALLBACK_CLASSES = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
                    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint")


class TamingError(RvqError):
    """A taming checkpoint or config that cannot be imported; the message says why and what to do."""


@dataclass
class ImportedRun:
    run_dir: Path
    checkpoint: Path
    recipe: object  # rvq_cli.config.Recipe
    notes: list[str] = field(default_factory=list)


def _stand_in(path: str) -> type:
    module, _, name = path.rpartition(".")
    return type(name, (), {"__module__": module, "__qualname__": name,
                           "__doc__": f"Inert stand-in for {path}, a key of Lightning's callback states."})


_ALLOWED = [(_stand_in(p), p) for p in CALLBACK_CLASSES]


def read_taming_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a taming / latent-diffusion checkpoint: a Lightning ``.ckpt``
    (its ``state_dict``), a bare state dict saved with ``torch.save``, or a ``.safetensors`` file."""
    p = Path(path)
    if not p.is_file():
        raise TamingError(f"{p}: no such file. Give the checkpoint file (e.g. last.ckpt or model.ckpt).")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as err:
            raise TamingError(f"{p} is not a readable safetensors file ({err}).") from None
    try:
        with torch.serialization.safe_globals(_ALLOWED):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise TamingError(_refusal(p, err)) from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise TamingError(f"{p} is not a readable PyTorch checkpoint ({' '.join(str(err).split())[:200]}).") from None
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise TamingError(f"{p} holds no state dict of tensors (neither a Lightning checkpoint with 'state_dict' "
                          "nor a dict of tensors).")
    return dict(state)


def _refusal(path: Path, err: Exception) -> str:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an old (non-zip) pickle: the error's own text names the global
        unsafe = []
    named = ", ".join(unsafe[:6]) if unsafe else " ".join(str(err).split("\n")[0].split())[:200]
    return (f"{path} asks the unpickler for Python objects rvq does not build ({named}); rvq reads pickled "
            "checkpoints with torch's weights-only loader, which never runs code from the file, and allows only "
            "Lightning's ModelCheckpoint key besides tensors. If you trust the file, save its weights alone and "
            "import those: torch.save(torch.load(CKPT, weights_only=False)['state_dict'], 'weights.pt').")


def _params(config: Path) -> tuple[dict, dict]:
    """(model.params, the whole config) of a taming / latent-diffusion config file."""
    if not config.is_file():
        raise TamingError(f"{config}: no such file. Give the model's config YAML (the one its release ships "
                          "beside the checkpoint, e.g. configs/model.yaml).")
    try:
        cfg = yaml.safe_load(config.read_text())
    except yaml.YAMLError as err:
        raise TamingError(f"{config} is not YAML ({' '.join(str(err).split())[:200]}).") from None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("params"), dict):
        raise TamingError(f"{config} has no model.params section; give the config of a VQModel (taming-transformers "
                          "or latent-diffusion), which has model.target and model.params.")
    target = str(model.get("target", ""))
    if target not in VQ_TARGETS:
        raise TamingError(f"{config}: model.target is {target or 'missing'}; rvq imports {', '.join(VQ_TARGETS)} "
                          "(a VQGAN with a nearest-code quantizer). Gumbel, EMA or other models are not imported.")
    return model["params"], cfg


def taming_recipe(config: str | Path, out: str | Path):
    """The rvq recipe of the VQModel a taming config describes, with notes on what it leaves out."""
    from .config import Recipe, check_recipe

    params, cfg = _params(Path(config))
    dd = params.get("ddconfig")
    need = ("z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions")
    if not isinstance(dd, dict) or any(k not in dd for k in need) or "embed_dim" not in params or \
            "n_embed" not in params:
        raise TamingError(f"{config}: model.params needs embed_dim, n_embed and a ddconfig with {', '.join(need)}.")
    refused = [(dd.get("double_z"), "ddconfig.double_z is true (a KL autoencoder's doubled latent, not a VQGAN)"),
               (dd["out_ch"] != dd["in_channels"], f"ddconfig.out_ch {dd['out_ch']} differs from in_channels "
                f"{dd['in_channels']}"),
               (params.get("remap"), "remap is set (its tokens index a remapped codebook)"),
               (params.get("colorize_nlabels"), "colorize_nlabels is set (a segmentation model)")]
    reasons = [why for bad, why in refused if bad]
    if reasons:
        raise TamingError(f"{config}: rvq cannot import this model: {'; '.join(reasons)}.")
    notes = []
    loss = _loss_section(params.get("lossconfig"), notes)
    batch = ((cfg.get("data") or {}).get("params") or {}).get("batch_size")
    lr = float(cfg["model"].get("base_learning_rate", 4.5e-6)) * (int(batch) if batch else 1)
    given = "" if batch else " (not given: 1)"
    notes.append(f"optim.lr = {lr:.3g}: base_learning_rate × the config's batch size{given}; taming also "
                 "multiplies by the number of GPUs and the gradient accumulation, which a config does not hold. "
                 "Set it for the fine-tuning you run.")
    recipe = Recipe.model_validate({
        "data": {"image_size": int(dd["resolution"]), "random_flip": False, "val": None},
        "model": {"name": "conv", "projection": "conv",
                  "encoder": {"in_channels": dd["in_channels"], "ch": dd["ch"], "ch_mult": list(dd["ch_mult"]),
                              "num_res_blocks": dd["num_res_blocks"], "attn_resolutions": list(dd["attn_resolutions"]),
                              "z_channels": dd["z_channels"], "dropout": float(dd.get("dropout", 0.0)),
                              "norm_groups": 32},
                  "quantizer": {"estimator": "ste", "codebook_size": int(params["n_embed"]),
                                "dim": int(params["embed_dim"]), "lookup": "euclidean", "update": "learned",
                                "beta": BETA, "vq_loss": "taming_legacy", "init": "uniform"}},
        "loss": loss,
        "optim": {"name": "adam", "lr": lr, "betas": [0.5, 0.9], "schedule": "constant"},
        "train": {"precision": "no", "grad_clip": 0.0},
        "output": {"dir": str(out)},
    })
    problems = check_recipe(recipe, check_paths=False)
    if problems:
        raise TamingError(f"{config}: the model it describes breaks rvq's recipe checks: "
                          + "; ".join(f"{p.path}: {p.message}" for p in problems) + ".")
    return recipe, notes


def _loss_section(lossconfig, notes: list[str]) -> dict:
    """rvq's loss section for taming's VQLPIPSWithDiscriminator (its defaults where unset)."""
    target = str((lossconfig or {}).get("target", ""))
    if not target.endswith(LPIPS_LOSS):
        notes.append(f"lossconfig {target or 'missing'} is not {LPIPS_LOSS}: the recipe's loss is L1 only, no "
                     "LPIPS and no GAN.")
        return {"reconstruction": "l1", "perceptual_weight": 0.0}
    p = {**LOSS_DEFAULTS, **((lossconfig or {}).get("params") or {})}
    gan = {"weight": float(p["disc_weight"]), "start": int(p["disc_start"]), "loss": p["disc_loss"],
           "adaptive": True, "layers": int(p["disc_num_layers"]), "channels": int(p["disc_ndf"]), "norm": "batch",
           "betas": [0.5, 0.9]}
    if p["use_actnorm"] or p["disc_conditional"] or p["disc_in_channels"] != 3:
        notes.append("the discriminator (ActNorm, conditional, or not on 3 channels) has no rvq counterpart: the "
                     "recipe has no GAN and its weights are not imported.")
        gan = {"weight": 0.0}
    if float(p["disc_factor"]) != 1.0:
        notes.append(f"disc_factor {p['disc_factor']} is folded into loss.gan.weight.")
        gan["weight"] = gan.get("weight", 0.0) * float(p["disc_factor"])
    return {"reconstruction": "l1", "rec_weight": float(p["pixelloss_weight"]),
            "perceptual_weight": float(p["perceptual_weight"]), "codebook_weight": float(p["codebook_weight"]),
            "gan": gan}


def _convert(state: dict[str, torch.Tensor], recipe) -> tuple[dict, dict | None, list[str]]:
    """rvq's model and discriminator state dicts from taming's, checked against the models the
    recipe builds; with notes on what was left out."""
    from .models import build_tokenizer
    from .training.objective import build_discriminator

    model = build_tokenizer(recipe.model, recipe.data.image_size).state_dict()
    disc_model = build_discriminator(recipe.loss, recipe.model.in_channels, recipe.data.image_size)
    ours, disc, skipped = {}, {}, {"perceptual": 0, "ema": 0}
    for k, v in state.items():
        if k == "quantize.embedding.weight":
            ours["quantize.codebook"] = v.float()
        elif k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            ours[k] = v
        elif k.startswith("loss.discriminator."):
            disc[k[len("loss.discriminator."):]] = v
        elif k.startswith("loss.perceptual_loss."):
            skipped["perceptual"] += 1
        elif k.startswith("model_ema."):
            skipped["ema"] += 1  # latent-diffusion's LitEma: read by _ema below
        else:
            ours[k] = v  # reported as unexpected below
    n = recipe.model.quantizer.codebook_size
    ours.setdefault("quantize.cluster_size", torch.zeros(n))
    ours.setdefault("quantize.initialized", torch.tensor(True))
    _check(ours, model, "model")
    notes = []
    if skipped["perceptual"]:
        notes.append(f"{skipped['perceptual']} LPIPS tensors (loss.perceptual_loss.*) are not carried: rvq's LPIPS "
                     "reads the VGG16 weights itself (docs/training.md).")
    if disc_model is None or not disc:
        if disc:
            notes.append("the discriminator's weights are not imported (the recipe has no GAN).")
        return ours, None, notes
    _check(disc, disc_model.state_dict(), "discriminator")
    return ours, disc, notes


def _ema(state: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], recipe, notes: list[str]):
    """latent-diffusion's LitEma copy (``model_ema.<parameter name without dots>``, plus ``decay``
    and ``num_updates``) as rvq's weight EMA: (the averaged tokenizer's state, its updates), the
    buffers the trained ones as rvq keeps them; None without a complete copy."""
    from .models import build_tokenizer

    found = {k[len("model_ema."):]: v for k, v in state.items() if k.startswith("model_ema.")}
    if not found:
        return None
    names = [n for n, _ in build_tokenizer(recipe.model, recipe.data.image_size).named_parameters()]
    theirs = {n: ("quantize.embedding.weight" if n == "quantize.codebook" else n).replace(".", "") for n in names}
    missing = [n for n, t in theirs.items() if t not in found]
    if missing:
        notes.append(f"the EMA copy (model_ema.*) lacks {len(missing)} of the {len(names)} parameters "
                     f"({', '.join(missing[:3])}, …): not imported; the trained weights are.")
        return None
    ema = dict(ours)
    for n, t in theirs.items():
        ema[n] = found[t].to(ours[n].dtype).contiguous()
    updates = found.get("num_updates")
    notes.append("the EMA copy of the weights (model_ema.*) is imported as ema.safetensors, which rvq eval / encode "
                 "/ decode use; the trained weights are model.safetensors.")
    return ema, int(updates) if updates is not None else 0


def _check(theirs: dict, mine: dict, what: str) -> None:
    from .runs import state_mismatch

    problems = state_mismatch(mine, theirs)
    if problems:
        raise TamingError(f"the checkpoint's {what} does not match the one its config describes ({problems}); "
                          "give the config that belongs to this checkpoint.")
    for k in theirs:
        theirs[k] = theirs[k].to(mine[k].dtype).contiguous()


def import_taming(checkpoint: str | Path, config: str | Path, out: str | Path) -> ImportedRun:
    """Write ``out``: an rvq run folder (recipe.yaml, ckpt-00000000/ with the weights, the
    resolved recipe, state.json and imported.json naming the source) of the taming model."""
    from safetensors.torch import save_file

    from .config import recipe_to_yaml
    from .runs import DISC_WEIGHTS, EMA_WEIGHTS, RECIPE, STATE, WEIGHTS, CheckpointState, checkpoint_name
    from .training.start import fingerprint

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TamingError(f"{out} exists and is not empty; rvq import writes a new run folder. Give another "
                          "OUT, or remove that one.")
    recipe, notes = taming_recipe(config, out)
    state = read_taming_checkpoint(checkpoint)
    model, disc, more = _convert(state, recipe)
    notes += more
    ema = _ema(state, model, recipe, notes)
    tmp = out.parent / f".{out.name}.import.tmp"
    ckpt = tmp / checkpoint_name(0)
    ckpt.mkdir(parents=True, exist_ok=True)
    save_file(model, str(ckpt / WEIGHTS))
    if disc is not None:
        save_file(disc, str(ckpt / DISC_WEIGHTS))
    if ema is not None:
        save_file(ema[0], str(ckpt / EMA_WEIGHTS))
    start = CheckpointState(step=0, micro_batches=0, world_size=1, num_workers=recipe.data.num_workers,
                            init_fingerprint=fingerprint(model), ema_updates=0 if ema is None else ema[1])
    (ckpt / STATE).write_text(json.dumps({**vars(start), "torch": torch.__version__}, indent=1))
    text = recipe_to_yaml(recipe)
    (ckpt / RECIPE).write_text(text)
    (tmp / RECIPE).write_text(text)
    (ckpt / "imported.json").write_text(json.dumps({
        "from": "taming", "checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": _sha256(checkpoint),
        "config": str(Path(config).resolve()), "notes": notes}, indent=1))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return ImportedRun(out, out / checkpoint_name(0), recipe, notes)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()

