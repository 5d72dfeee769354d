"""The weights a run starts from, and their fingerprints.

A run seeds, then builds its tokenizer and (GAN recipes) its discriminator. The quantizer is
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

__all__ = ["QUANTIZER", "adopt_shared", "fingerprint", "reference_weights", "shared_weights"]

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


def reference_weights(recipe) -> dict[str, torch.Tensor]:
    """The shared weights a run of ``recipe`` builds: seeded and built exactly as the trainer
    does (the build draws from torch's CPU generator only). The caller's random state is left
    as it was."""
    from ..models import build_tokenizer
    from .objective import build_discriminator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.train.seed)
        model = build_tokenizer(recipe.model, recipe.data.image_size, recipe.data.frames)
        disc = build_discriminator(recipe.loss, recipe.model.in_channels, recipe.data.image_size)
    return shared_weights(model, disc)


def adopt_shared(model: nn.Module, disc: nn.Module | None, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy ``weights`` (from :func:`shared_weights`) into ``model`` and ``disc`` in place. Every
    shared weight of the two must be there with the same shape: a ValueError names any that is
    not (the reference was built from a recipe whose encoder, decoder or discriminator differ)."""
    mine = shared_weights(model, disc)
    missing = sorted(set(mine) - set(weights))
    extra = sorted(set(weights) - set(mine))
    shapes = sorted(k for k in set(mine) & set(weights) if mine[k].shape != weights[k].shape)
    if missing or extra or shapes:
        parts = [f"{what}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", extra), ("other shape", shapes)) if keys]
        raise ValueError("the reference weights do not fit this model (" + "; ".join(parts) + ")")
    with torch.no_grad():
        for prefix, module in ((MODEL, model), (DISCRIMINATOR, disc)):
            if module is None:
                continue
            state = module.state_dict()
            for k, v in state.items():
                if prefix + k in weights:
                    v.copy_(weights[prefix + k])
