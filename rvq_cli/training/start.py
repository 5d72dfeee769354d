"""The weights a run starts from, and their fingerprints.

A run seeds, then builds its tokenizer and (GAN recipes) its discriminator, and loads
``train.init_from`` into them when the recipe names a checkpoint (:func:`build_start`). The quantizer is
built first and draws its codes from the seeded generator, so two quantizers that draw
differently (a SimVQ basis and map, FSQ's nothing at all) would leave the encoder, decoder and
discriminator with different initial weights. ``rvq compare`` therefore hands every run of a seed
the *shared* weights (everything outside ``quantize.``) of one reference build; within a seed the
methods then differ only in their quantizer. Runs whose quantizer draws like the reference's are
unchanged by it: the weights they adopt are the ones they built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import RvqError

__all__ = ["QUANTIZER", "StartError", "adopt_shared", "build_start", "fingerprint", "reference_weights",
           "seeded_start", "shared_weights"]

QUANTIZER = "quantize."  # the tokenizer's quantizer: its state-dict prefix
MODEL, DISCRIMINATOR = "model.", "discriminator."


def shared_weights(model: nn.Module, disc: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The weights every method of a comparison shares: the tokenizer's outside its quantizer
    (``model.*``) and the discriminator's (``discriminator.*``), detached copies on the CPU."""
    out = {MODEL + k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith(QUANTIZER)}
    if disc is not None:
        out.update({DISCRIMINATOR + k: v.detach().cpu().clone() for k, v in disc.state_dict().items()})
    return out


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) of a state dict's names and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class StartError(RvqError):
    """The weights a run is to start from cannot be used; the message says why and what to do."""


def build_start(recipe) -> tuple[nn.Module, nn.Module | None]:
    """The tokenizer and discriminator (None without a GAN) of a new run of ``recipe``, built
    from torch's generator as it stands (the trainer seeds it first), then ``train.init_from``
    loaded into them."""
    from ..models import build_tokenizer
    from .objective import build_discriminator

    model = build_tokenizer(recipe.model, recipe.data.image_size, recipe.data.frames)
    disc = build_discriminator(recipe.loss, recipe.model.in_channels, recipe.data.image_size)
    if recipe.train.init_from is not None:
        load_init(recipe.train.init_from, model, disc)
    return model, disc


def load_init(path: str, model: nn.Module, disc: nn.Module | None) -> None:
    """Load the weights of the checkpoint ``path`` (a run directory or checkpoint folder) into
    ``model`` and, where the checkpoint has one, ``disc``; a StartError says what does not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..runs import DISC_WEIGHTS, WEIGHTS, CheckpointError, resolve_checkpoint, state_mismatch

    at = "train.init_from"
    try:
        ckpt = resolve_checkpoint(path)
    except CheckpointError as err:
        raise StartError(f"{at}: {err}") from None
    pairs = [(ckpt / WEIGHTS, model)] + ([(ckpt / DISC_WEIGHTS, disc)] if disc is not None and
                                         (ckpt / DISC_WEIGHTS).is_file() else [])
    for file, module in pairs:
        try:
            weights = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            raise StartError(f"{at}: {file} is not a readable safetensors file ({err}).") from None
        problems = state_mismatch(module.state_dict(), weights)
        if problems:
            what = "model" if module is model else "discriminator"
            raise StartError(f"{at}: {file} does not fit this recipe's {what} ({problems}). init_from starts a "
                             "run from a model of the same architecture and codebook (the estimator may differ); "
                             "for another one start from scratch.")
        module.load_state_dict(weights)


def seeded_start(recipe) -> tuple[nn.Module, nn.Module | None]:
    """:func:`build_start` seeded with the recipe's seed, exactly as the trainer builds a run (the
    build draws from torch's CPU generator only); the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.train.seed)
        return build_start(recipe)


def reference_weights(recipe) -> dict[str, torch.Tensor]:
    """The shared weights a run of ``recipe`` starts from (:func:`seeded_start`)."""
    return shared_weights(*seeded_start(recipe))


def adopt_shared(model: nn.Module, disc: nn.Module | None, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy ``weights`` (from :func:`shared_weights`) into ``model`` and ``disc`` in place. Every
    shared weight of the two must be there with the same shape: a ValueError names any that is
    not (the reference was built from a recipe whose encoder, decoder or discriminator differ)."""
    from ..runs import state_mismatch

    problems = state_mismatch(shared_weights(model, disc), weights)
    if problems:
        raise ValueError(f"the reference weights do not fit this model ({problems})")
    with torch.no_grad():
        for prefix, module in ((MODEL, model), (DISCRIMINATOR, disc)):
            if module is None:
                continue
            state = module.state_dict()
            for k, v in state.items():
                if prefix + k in weights:
                    v.copy_(weights[prefix + k])
