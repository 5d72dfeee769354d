"""Clips as frames: for the losses and metrics that judge video frame by frame, and for the image
grids that rvq eval and rvq compare show of a video batch."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["frames", "grid_frames"]


def frames(x: Tensor) -> Tensor:
    """Images as they are; clips (B, C, T, H, W) as their B·T frames (B·T, C, H, W): LPIPS and the
    discriminator judge video frame by frame (Table 11)."""
    if x.dim() == 5:
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)
    return x


def grid_frames(clips: torch.Tensor, per_clip: int = 4) -> torch.Tensor:
    """``per_clip`` evenly spaced frames of each clip (B, C, T, H, W) -> (B·per_clip, C, H, W)."""
    t = clips.shape[2]
    pick = torch.linspace(0, t - 1, min(per_clip, t)).round().long().to(clips.device)
    return frames(clips[:, :, pick])
