"""Model-weight EMA (``train.ema_decay``): an exponential moving average of the tokenizer's
parameters over the optimizer steps, kept with torch's ``AveragedModel`` and
``get_ema_multi_avg_fn`` (ema ← decay·ema + (1 − decay)·θ after every step; the first step copies θ).

Buffers are not averaged: the averaged model carries the live model's buffers of the same step
(an EMA codebook, its counts, pixel statistics), as latent-diffusion's ``LitEma`` leaves them,
so the averaged tokenizer looks its codes up in the codebook the trained one has. A checkpoint
stores the averaged tokenizer beside the trained one (``ema.safetensors``, the tokenizer's own
keys) and the number of updates (``state.json``: ``ema_updates``), so a resumed run continues
the average exactly; ``rvq eval / encode / decode`` use it when it is there.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["WeightEMA"]


class WeightEMA:
    """The averaged copy of ``model``; :meth:`update` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                      use_buffers=False)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)
        for mine, live in zip(self.module.buffers(), model.buffers()):
            mine.copy_(live)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tokenizer's state, under the tokenizer's own keys."""
        return self.module.state_dict()

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(updates)
