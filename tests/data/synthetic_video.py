"""Synthetic source videos for the video data tests: identifiable frames, and how far apart two are."""

import numpy as np

T, H, W = 12, 24, 32  # source videos: 12 frames of 24×32


def frames(n: int = T, seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """uint8 (n, h, w, 3): frame t is a flat colour encoding t (grey level 20t) with an 8×8
    white square at column 2t, shifted per seed, so frames are distinct and identifiable."""
    a = np.zeros((n, h, w, 3), np.uint8)
    for t in range(n):
        a[t] = (20 * t + 7 * seed) % 200
        a[t, 4:12, (2 * t + seed) % (w - 8) :][:, :8] = 255
    return a


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())
