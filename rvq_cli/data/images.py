"""Image decoding and the two crops rvq trains and evaluates on.

Everything here is a pure function of the sample's bytes (and, for training crops, of the
``random.Random`` passed in), so the same bytes and seed give the same pixels in any process.
"""

from __future__ import annotations

import io
import random

import numpy as np
import torch
from PIL import Image, ImageOps

# Fields of a webdataset sample that may hold the encoded image, in the order they are tried.
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
# How images are resized (recorded by eval so that r-FID numbers say how originals were made).
RESIZE_FILTER = Image.Resampling.BICUBIC
RESIZE_METHOD = "PIL bicubic, antialiased when downscaling"


def decode_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes -> an RGB PIL image; raises (any exception) when undecodable.

    EXIF orientation is applied. Grayscale, palette, CMYK and 16-bit images become RGB;
    transparent pixels are composited over white.
    """
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
    if im.width < 1 or im.height < 1:
        raise ValueError(f"empty image ({im.width}×{im.height})")
    return _to_rgb(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I"):  # 16/32-bit integer grayscale: 0..65535 -> 0..255
        a = np.asarray(im, dtype=np.float64) / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "PA") and ("transparency" in im.info or im.mode == "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def sample_image(sample: dict) -> Image.Image:
    """The decoded RGB image of a webdataset sample; raises when it has none or it is corrupt."""
    for field in IMAGE_FIELDS:
        if field in sample:
            return decode_rgb(sample[field])
    have = ", ".join(k for k in sample if not k.startswith("__")) or "nothing"
    raise KeyError(f"sample {sample.get('__key__')!r} has no image field ({'/'.join(IMAGE_FIELDS)}); it has {have}")


def resize_short(im: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is exactly ``size``, keeping the aspect ratio."""
    w, h = im.size
    s = size / min(w, h)
    new = (size, max(size, round(h * s))) if w <= h else (max(size, round(w * s)), size)
    return im if new == (w, h) else im.resize(new, RESIZE_FILTER)


def random_crop(im: Image.Image, size: int, rng: random.Random, flip: bool) -> np.ndarray:
    """Training view: upscale only if the short side is below ``size``, then a random
    ``size``×``size`` crop and (if ``flip``) a horizontal flip with probability 1/2.
    Returns uint8 (size, size, 3)."""
    if min(im.size) < size:
        im = resize_short(im, size)
    w, h = im.size
    x, y = rng.randint(0, w - size), rng.randint(0, h - size)
    a = np.asarray(im.crop((x, y, x + size, y + size)), dtype=np.uint8)
    if rng.random() < 0.5 and flip:
        a = a[:, ::-1]
    return a


def center_crop(im: Image.Image, size: int) -> np.ndarray:
    """Evaluation view: resize the short side to ``size`` (up or down), then the central
    ``size``×``size`` crop. Returns uint8 (size, size, 3)."""
    im = resize_short(im, size)
    w, h = im.size
    x, y = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((x, y, x + size, y + size)), dtype=np.uint8)


def center_crop_native(im: Image.Image, size: int) -> np.ndarray:
    """The central ``size``×``size`` square of the image as stored, as torchvision's
    ``CenterCrop(size)``, which the official Table 1 code applies for training and evaluation: a
    side shorter than ``size`` is zero-padded (split as torchvision splits it), the crop's offset
    is round((side − size)/2). Returns uint8 (size, size, 3)."""
    a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    h, w = a.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        a = np.pad(a, ((ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2), (0, 0)))
        h, w = a.shape[:2]
    y, x = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return np.ascontiguousarray(a[y : y + size, x : x + size])


def to_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) arrays -> float32 (B, 3, H, W) in [-1, 1] (0 -> -1, 255 -> 1)."""
    a = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))  # (B, 3, H, W)
    return torch.from_numpy(a).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] float (B,3,H,W) -> uint8 (B,3,H,W), rounded as torchvision's save_image does
    (clamp to [-1, 1], (x + 1) / 2, then x * 255 + 0.5 truncated), so features match those of saved PNGs."""
    y = x.detach().to(torch.promote_types(x.dtype, torch.float32)).clamp(-1, 1).add(1).div(2)
    return y.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
