"""``rvq eval``: the paper's reconstruction metrics of a trained tokenizer on a validation set.

Every process (``torchrun --nproc_per_node N -m rvq_cli eval ...``) reads its own shards
(rank r of W: shards r, r+W, ...), so each sample is seen exactly once; sums are all-reduced,
Inception features and sample keys are gathered, and rank 0 computes r-FID / r-IS and writes
the report. Features are put in sample-key order before the metrics, so the numbers do not
depend on the number of processes or workers.

Definitions (all on the recipe's centre crop, reconstructions from the eval-mode forward):
  rec_loss       the recipe's reconstruction loss (l2: MSE, l1: L1) as training takes it: on [-1, 1]
                 images, or in the model's space for model.pixel_norm clip; unclamped
  lpips, nll     recipes with a perceptual term, when the VGG16 weights are found: LPIPS per image
                 (frame), and the recipe's whole reconstruction objective L_nll (pixel terms and
                 LPIPS with the recipe's weights: taming's and enhancing-transformers' val/rec_loss)
  mse, l1        mean over all pixels and channels, [-1, 1] scale
  psnr           per image on the saved 8-bit reconstruction vs the 8-bit original, then averaged
  ssim, lpips_alex, lpips_vgg   per image on the same 8-bit pair, then averaged (``.similarity``:
                 torchmetrics' SSIM; LPIPS v0.1 with the AlexNet and VGG16 trunks, when their
                 weights are found)
  usage          fraction of the K codes used at least once in the whole set
  usage_per_batch  fraction used per batch of ``batch_size`` images (the paper's definition), averaged
  perplexity     exp(entropy) of the code histogram of the whole set (per batch: averaged)
  quant_error    mean over latent elements of (e − q)², in code space
  rfid, ris      torch-fidelity's FID (pool3, 2048) between reconstructions and originals, and IS
                 of the reconstructions (``is_originals`` for reference), uint8 inputs; with
                 ``reference_stats`` (``.reference``) the FID is to those statistics instead
  rfvd           video: the Fréchet distance between I3D features of the original and the
                 reconstructed clips (``rvq_cli.evaluation.i3d``)

Video checkpoints: clips of ``data.frames`` frames at ``data.frame_stride`` (the centred clip of
each video); every image metric above is computed per frame (psnr averaged over frames, r-FID and
r-IS over all frames), and r-FVD over clips.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from .. import __version__
from ..data import RESIZE_METHOD, count_samples, expand_pattern, resolve_data
from ..data.images import to_uint8
from ..data.loader import batch_tensor, build_loader
from ..data.mp4 import video_decoder
from ..errors import RvqError, option
from ..files import write_json_atomic
from ..grids import frames, grid_frames
from ..inference import check_precision, inference_accelerator, inference_settings
from ..progress import JobProgress
from ..runs import LoadedTokenizer, load_tokenizer
from . import fidelity, reference, similarity
from .i3d import MIN_FRAMES as I3D_MIN_FRAMES
from .i3d import I3DError, find_i3d_weights, i3d_features, load_i3d, missing_i3d_message

PSNR_FLOOR = 1e-10  # MSE floor of a perfect reconstruction (caps PSNR at 100 dB)
GRID_IMAGES = 8


class EvalError(RvqError):
    """An evaluation that cannot run as asked; the message says why and what to do."""


@dataclass
class EvalResult:
    report: dict  # what eval.json holds
    json_path: Path | None  # None on ranks other than 0
    grid_path: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict:
        return self.report["metrics"]


# Per-rank sums, all-reduced in one collective (order matters: see _SUMS.index).
_SUMS = ("images", "frames", "elements", "rec", "se", "ae", "psnr", "batches", "usage_batch", "perplexity_batch",
         "qerr", "latents", "power", "skipped", "lpips", "ssim", "ssim_frames", "lpips_alex", "lpips_vgg")


def _data_pattern(tok: LoadedTokenizer, data: str | None, split: str) -> str:
    if data is None:
        data = tok.recipe.data.val if split == "val" else tok.recipe.data.train
        if data is None:
            raise EvalError(f"the recipe of {tok.checkpoint} has no validation set (data.val is null); pass the "
                            f"shards to evaluate on with {option('data')}.")
    return resolve_data(data, video=tok.recipe.model.video, split=split)  # "demo": the demo set's split


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _psnr(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (B,) of 8-bit images."""
    mse = (rec.double() - x.double()).div(255.0).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(PSNR_FLOOR))


class _Accumulator:
    """One rank's running sums, code histogram, features and keys."""

    def __init__(self, codebook_size: int, codebook_dim: int, loss_kind: str, fid: bool,
                 pixel_scale: torch.Tensor | None = None, real: bool = True):
        self.sums = dict.fromkeys(_SUMS, 0.0)
        self.pixel_scale = None if pixel_scale is None else pixel_scale.detach().double().cpu()
        self.counts = torch.zeros(codebook_size, dtype=torch.float64)
        self.dim, self.kind, self.fid, self.real = codebook_dim, loss_kind, fid, real  # real: featurise originals
        self.keys: list[str] = []
        self.feats: dict[str, list[torch.Tensor]] = {k: [] for k in ("real_pool", "real_logits", "fake_pool",
                                                                     "fake_logits")}
        self.i3d: dict[str, list[torch.Tensor]] = {"real_i3d": [], "fake_i3d": []}

    def add(self, x: torch.Tensor, rec: torch.Tensor, out, keys: list[str], inception, i3d=None,
            lpips=None, lpips_set=None) -> None:
        """One batch: images (B, C, H, W), or clips (B, C, T, H, W) measured frame by frame."""
        s, diff = self.sums, rec.double() - x.double()
        s["images"] += len(x)
        s["elements"] += diff.numel()
        s["se"] += float(diff.pow(2).sum())
        s["ae"] += float(diff.abs().sum())
        d = diff if self.pixel_scale is None else diff / self.pixel_scale.to(diff.device)  # the model's space
        s["rec"] += float(d.pow(2).sum() if self.kind == "l2" else d.abs().sum())
        if i3d is not None:
            self.i3d["real_i3d"].append(i3d_features(i3d, x))
            self.i3d["fake_i3d"].append(i3d_features(i3d, rec.clamp(-1, 1)))
        x, rec = frames(x), frames(rec)  # per-frame image metrics for clips; images as they are
        s["frames"] += len(x)
        if lpips is not None:  # the recipe's perceptual term, as training takes it (unclamped)
            s["lpips"] += float(lpips(x, rec).double().sum())
        x8, r8 = to_uint8(x), to_uint8(rec)
        s["psnr"] += float(_psnr(x8, r8).sum())
        if min(x8.shape[-2:]) >= similarity.SSIM_SETTINGS["kernel_size"]:
            s["ssim"] += float(similarity.ssim(x8, r8).double().sum())
            s["ssim_frames"] += len(x8)
        if lpips_set is not None:
            for name, v in lpips_set(x8, r8).items():
                s[name] += float(v.double().sum())
        m, idx = out.metrics, out.indices.reshape(-1).cpu()
        s["batches"] += 1
        s["usage_batch"] += float(m.usage)
        s["perplexity_batch"] += float(m.perplexity)
        s["qerr"] += float(m.quant_error) * idx.numel() * self.dim
        s["power"] += float(m.latent_power) * idx.numel() * self.dim
        s["latents"] += idx.numel() * self.dim
        self.counts += torch.bincount(idx, minlength=len(self.counts)).double()
        self.keys += list(keys)
        if inception is not None:
            for name, images in (("real", x8), ("fake", r8)) if self.real else (("fake", r8),):
                pool, logits = fidelity.inception_features(inception, images)
                self.feats[f"{name}_pool"].append(pool)
                self.feats[f"{name}_logits"].append(logits)


def _gather_rows(acc: Accelerator, parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """Concatenate each rank's rows, in rank order (the order of gather_object)."""
    t = torch.cat(parts) if parts else torch.zeros(0, width)
    if acc.num_processes == 1:
        return t
    n = torch.tensor([len(t)], device=acc.device)
    lengths = acc.gather(n).tolist()
    padded = torch.zeros(max(lengths), width)
    padded[: len(t)] = t
    every = acc.gather(padded.to(acc.device)).cpu().view(acc.num_processes, max(lengths), width)
    return torch.cat([every[r, :k] for r, k in enumerate(lengths)])


def _save_grid(x: torch.Tensor, rec: torch.Tensor, path: Path) -> None:
    """Originals beside their reconstructions: pairs (original, reconstruction), four per row."""
    from torchvision.utils import save_image

    pairs = torch.stack([x, rec.clamp(-1, 1)], dim=1).flatten(0, 1)  # (2B, C, H, W): x0, r0, x1, r1, ...
    save_image((pairs + 1) / 2, path, nrow=min(8, len(pairs)), padding=2)


def _fvd(acc: Accelerator, feats: dict[str, list[torch.Tensor]], order: list[int], notes: list[str]) -> dict:
    """r-FVD from every rank's I3D features of the clips, in key order."""
    g = {k: _gather_rows(acc, v, 400) for k, v in feats.items()}
    if not acc.is_main_process:
        return {}
    if len(order) < 2:
        notes.append("r-FVD needs at least 2 clips; skipped.")
        return {}
    return {"rfvd": fidelity.fid_from_features(g["real_i3d"][order], g["fake_i3d"][order])}


def _fidelity(acc: Accelerator, feats: dict[str, list[torch.Tensor]], order: list[int], notes: list[str],
              stats: reference.ReferenceStats | None = None) -> dict:
    """r-FID, r-IS (and IS of the originals) from every rank's features, in key order (for clips:
    ``order`` lists frames, clip by clip); with ``stats``, the FID to those statistics."""
    widths = {"pool": 2048, "logits": 1008}
    g = {k: _gather_rows(acc, v, widths[k.split("_")[1]]) for k, v in feats.items()
         if stats is None or k.startswith("fake")}  # the same collectives on every rank
    if not acc.is_main_process:
        return {}
    g = {k: v[order] for k, v in g.items()}
    if len(order) < 2:
        notes.append("r-FID needs at least 2 images; skipped.")
        return {}
    ris, ris_std = fidelity.inception_score(g["fake_logits"])
    if stats is not None:
        return {"rfid": reference.fid_to_stats(stats, g["fake_pool"]), "ris": ris, "ris_std": ris_std,
                "is_originals": stats.is_originals}
    real_is, _ = fidelity.inception_score(g["real_logits"])
    return {"rfid": fidelity.fid_from_features(g["real_pool"], g["fake_pool"]), "ris": ris, "ris_std": ris_std,
            "is_originals": real_is}


def _nll(m: dict, loss) -> float:
    """The recipe's reconstruction objective L_nll on the set (what taming's and enhancing-transformers'
    validation loops log as val/rec_loss): rec_weight·rec_loss + laplace_weight·mean|x̂ − x| and
    gaussian_weight·mean(x̂ − x)² on [0, 1] images (l1/2, mse/4) + perceptual_weight·LPIPS."""
    return (loss.rec_weight * m["rec_loss"] + loss.laplace_weight * m["l1"] / 2 + loss.gaussian_weight * m["mse"] / 4
            + loss.perceptual_weight * m["lpips"])


def _metrics(s: dict, counts: torch.Tensor, loss=None) -> dict:
    """Every metric of the sums; with ``loss`` (the recipe's, when LPIPS ran) also lpips and nll."""
    m = _set_metrics(s, counts)
    if loss is not None:
        m["lpips"] = s["lpips"] / s["frames"]
        m["nll"] = _nll(m, loss)
    return m


def _set_metrics(s: dict, counts: torch.Tensor) -> dict:
    n, p = s["frames"], counts / counts.sum().clamp_min(1)
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return {
        "rec_loss": s["rec"] / s["elements"], "mse": s["se"] / s["elements"], "l1": s["ae"] / s["elements"],
        "psnr": s["psnr"] / n, "usage": float((counts > 0).double().mean()),
        "usage_per_batch": s["usage_batch"] / s["batches"], "perplexity": float(entropy.exp()),
        "perplexity_per_batch": s["perplexity_batch"] / s["batches"], "quant_error": s["qerr"] / s["latents"],
        "quant_error_relative": s["qerr"] / max(s["power"], 1e-300), "codes_used": int((counts > 0).sum()),
    }


@dataclass
class _Models:
    """The feature networks an evaluation runs beside the tokenizer (None: skipped, with a note)."""

    inception: object = None
    inception_file: Path | None = None
    lpips: object = None
    lpips_file: Path | None = None
    i3d: object = None
    i3d_file: Path | None = None
    lpips_set: similarity.LpipsSet | None = None  # the LPIPS metrics (AlexNet, VGG16) whose trunks were found
    stats: reference.ReferenceStats | None = None  # FID reference statistics used in place of the originals'


def _check_arguments(split: str, batch_size: int | None, num_workers: int | None, image_size: int | None,
                     precision: str | None) -> None:
    if split not in ("val", "train"):
        raise EvalError(f"{option('split')} must be 'val' or 'train', got {split!r}.")
    for name, v, lo in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("image_size", image_size, 1)):
        if v is not None and v < lo:
            raise EvalError(f"{option(name)} must be at least {lo}, got {v}.")
    check_precision(precision)


def _feature_models(recipe, device, fid: bool, inception_weights, fvd: bool, i3d_weights, notes: list[str],
                    lpips_metrics: bool = True, image_size: int | None = None) -> _Models:
    """Inception (r-FID, r-IS), the LPIPS metrics, the recipe's LPIPS term (when its loss has it)
    and I3D (video r-FVD), each found where the user keeps its weights; what is missing is
    skipped with a note."""
    m = _Models()
    if lpips_metrics:
        m.lpips_set = similarity.LpipsSet(device, recipe.loss.perceptual_weights, notes, image_size)
    if fid:
        m.inception_file = fidelity.find_inception_weights(inception_weights)
        if m.inception_file is None:
            notes.append(fidelity.missing_weights_message())
        else:
            m.inception = fidelity.load_inception(m.inception_file, device)
    if recipe.loss.perceptual_weight > 0:  # the recipe's L_nll includes LPIPS: measure it too
        from ..losses import PerceptualError, build_lpips, find_vgg_weights

        try:
            m.lpips_file = find_vgg_weights(recipe.loss.perceptual_weights)
            m.lpips = build_lpips(m.lpips_file).to(device).eval()
        except PerceptualError as err:
            notes.append(f"lpips and nll skipped: {err}")
    if not (recipe.model.video and fvd):
        return m
    if recipe.data.frames < I3D_MIN_FRAMES:
        notes.append(f"r-FVD skipped: I3D needs clips of at least {I3D_MIN_FRAMES} frames, the checkpoint's are "
                     f"{recipe.data.frames}.")
        return m
    try:
        m.i3d_file = find_i3d_weights(i3d_weights)
        if m.i3d_file is None:
            notes.append(missing_i3d_message())
        else:
            m.i3d = load_i3d(m.i3d_file, device)
    except I3DError as err:
        raise EvalError(str(err)) from None
    return m


def _reference(path, fid: bool, models: _Models, recipe, size: int) -> reference.ReferenceStats | None:
    """The reference statistics asked for, checked against this evaluation's view and network."""
    if path is None:
        return None
    if not fid or recipe.model.video:
        why = "r-FID is off" if not fid else "they are statistics of images, and this is a video tokenizer"
        raise EvalError(f"{option('reference_stats')} cannot be used here: {why}.")
    if models.inception_file is None:
        raise EvalError(f"{option('reference_stats')} needs the Inception weights the statistics were made with: "
                        f"{fidelity.missing_weights_message()}")
    try:
        stats = reference.read_stats(path)
        reference.check_stats(stats, reference.view_settings(size, recipe.data.crop, models.inception_file))
    except reference.StatsError as err:
        raise EvalError(str(err)) from None
    return stats


def _run_batches(tok: LoadedTokenizer, loader, acc, run_as, models: _Models, total: int | None, quiet: bool):
    """Every batch through the tokenizer and the feature networks: the accumulated sums and
    features, and the first GRID_IMAGES images (clips: 4 frames of each) with their reconstructions."""
    recipe, q, video = tok.recipe, tok.model.quantize, tok.recipe.model.video
    accum = _Accumulator(q.codebook_size, q.codebook_dim, recipe.loss.reconstruction, models.inception is not None,
                         tok.model.pixel_scale, real=models.stats is None)
    grid = (torch.zeros(0), torch.zeros(0))
    with JobProgress("eval", total, silent=quiet or not acc.is_main_process) as progress, torch.no_grad():
        for batch in loader:
            x = batch_tensor(batch).to(acc.device)
            with run_as.autocast(acc.device):
                fwd = tok.model(run_as.layout(x))
            rec = fwd.reconstruction.float()
            accum.add(x, rec, fwd.quantize, batch["key"], models.inception, models.i3d, models.lpips, models.lpips_set)
            accum.sums["skipped"] += batch["skipped"]
            if len(grid[0]) < GRID_IMAGES:
                take = GRID_IMAGES - len(grid[0])
                gx, gr = (grid_frames(x), grid_frames(rec)) if video else (x, rec)
                grid = (torch.cat([grid[0], gx[:take].cpu()]), torch.cat([grid[1], gr[:take].cpu()]))
            progress.advance(len(x))
    return accum, grid


def _settings(recipe, acc, run_as, models: _Models, batch_size: int, workers: int, n_keys: int) -> dict:
    """How the evaluation ran, for eval.json."""
    video, inception = recipe.model.video, models.inception is not None
    nll = ("rec_weight·rec_loss + laplace_weight·l1/2 + gaussian_weight·mse/4 + perceptual_weight·lpips, "
           "the recipe's weights")
    fvd = ("I3D Kinetics-400 logits, time-averaged; frames resized (short side) and centre-cropped to 224, "
           "[-1, 1]")
    return {"batch_size": batch_size, "processes": acc.num_processes, "num_workers": workers,
            "reconstruction_loss": recipe.loss.reconstruction, **run_as.record(),
            "fid_feature": fidelity.FID_FEATURE if inception else None,
            "is_splits": min(10, n_keys) if inception else None,
            "inception_weights": str(models.inception_file) if models.inception_file else None,
            "reference_stats": None if models.stats is None else {
                "path": str(models.stats.path), "images": models.stats.n, "data": models.stats.settings.get("data")},
            **({"lpips_weights": str(models.lpips_file), "nll": nll} if models.lpips is not None else {}),
            "ssim": similarity.SSIM_SETTINGS,
            "lpips": similarity.lpips_settings(models.lpips_set) if models.lpips_set and models.lpips_set.nets
            else None,
            **({"i3d_weights": str(models.i3d_file) if models.i3d_file else None, "fvd_feature": fvd,
                "video_decoder": video_decoder()} if video else {})}


def _all_metrics(s: dict, counts: torch.Tensor, recipe, models: _Models, extra: dict, notes: list[str],
                 size: int) -> dict:
    """eval.json's metrics: the sums' (:func:`_metrics`), SSIM, LPIPS, and the feature networks'."""
    metrics = _metrics(s, counts, recipe.loss if models.lpips is not None else None)
    metrics["ssim"] = s["ssim"] / s["ssim_frames"] if s["ssim_frames"] else None
    if not s["ssim_frames"]:
        notes.append(f"ssim skipped: its {similarity.SSIM_SETTINGS['kernel_size']}-pixel window is larger than the "
                     f"{size}-pixel images.")
    for net in similarity.LPIPS_NETS:
        found = models.lpips_set is not None and net in models.lpips_set.nets
        metrics[f"lpips_{net}"] = s[f"lpips_{net}"] / s["frames"] if found else None
    metrics.update(rfid=extra.get("rfid"), ris=extra.get("ris"), ris_std=extra.get("ris_std"),
                   is_originals=extra.get("is_originals"))
    if recipe.model.video:
        metrics["rfvd"] = extra.get("rfvd")
    return metrics


def _data_record(recipe, pattern: str, split: str, files: list, s: dict, duplicates: int, size: int) -> dict:
    """What was evaluated, for eval.json."""
    video = recipe.model.video
    clips = {"frames_per_clip": recipe.data.frames, "frame_stride": recipe.data.frame_stride,
             "frames": int(s["frames"]), "clip": "centred"} if video else {}
    resize = RESIZE_METHOD if recipe.data.crop == "random" else "none (centre of the stored image)"
    return {"pattern": pattern, "split": split, "shards": len(files), "images": int(s["images"]), **clips,
            "skipped": int(s["skipped"]), "duplicate_keys": duplicates, "image_size": size,
            "recipe_image_size": recipe.data.image_size, "crop": "center", "resize": resize}


def evaluate(checkpoint: str | os.PathLike, *, data: str | None = None, split: str = "val",
             batch_size: int | None = None, num_workers: int | None = None, image_size: int | None = None,
             inception_weights: str | os.PathLike | None = None, fid: bool = True,
             i3d_weights: str | os.PathLike | None = None, fvd: bool = True,
             out: str | os.PathLike | None = None, quiet: bool = False, precision: str | None = None,
             lpips: bool = True, reference_stats: str | os.PathLike | None = None,
             ema: bool | None = None) -> EvalResult:
    """Evaluate the tokenizer at ``checkpoint`` (run directory or checkpoint folder) on ``data``
    (shards; default: the recipe's ``split`` set) and write ``eval.json`` and ``eval.png``
    (default: in the run directory). ``lpips``: measure lpips_alex / lpips_vgg where their trunk
    weights are found. ``reference_stats``: an ``.npz`` of ``rvq data stats``, the FID reference in
    place of the originals' features. ``ema``: which weights (:func:`~rvq_cli.runs.load_tokenizer`).
    See the module docstring for the definitions."""
    _check_arguments(split, batch_size, num_workers, image_size, precision)
    acc = inference_accelerator()
    tok = load_tokenizer(checkpoint, device=acc.device, ema=ema)
    run_as = inference_settings(tok, acc.device, precision)
    recipe, notes, video = tok.recipe, [], tok.recipe.model.video
    size = recipe.data.image_size if image_size is None else image_size
    try:
        tok.model.latent_shape((recipe.data.frames, size, size) if video else size)
    except ValueError as err:
        raise EvalError(f"{option('image_size')} {size}: {err}.") from None
    pattern = _data_pattern(tok, data, split)
    with acc.main_process_first():
        files = expand_pattern(pattern)
    bs = recipe.train.batch_size if batch_size is None else batch_size
    workers = recipe.data.num_workers if num_workers is None else num_workers
    if len(files) < acc.num_processes:
        notes.append(f"{len(files)} shard(s) for {acc.num_processes} processes: some processes had no data.")
    models = _feature_models(recipe, acc.device, fid, inception_weights, fvd, i3d_weights, notes, lpips, size)
    models.stats = _reference(reference_stats, fid, models, recipe, size)
    loader = build_loader(pattern, recipe, train=False, rank=acc.process_index, world_size=acc.num_processes,
                          batch_size=bs, image_size=size, num_workers=workers)
    t0 = time.perf_counter()
    total = count_samples(files[acc.process_index :: acc.num_processes])
    accum, grid = _run_batches(tok, loader, acc, run_as, models, total, quiet)

    sums = torch.tensor([accum.sums[k] for k in _SUMS], dtype=torch.float64, device=acc.device)
    totals = acc.reduce(torch.cat([sums, accum.counts.to(acc.device)]), "sum").cpu()
    s = dict(zip(_SUMS, totals[: len(_SUMS)].tolist()))
    counts = totals[len(_SUMS) :]
    keys = gather_object(accum.keys) if acc.num_processes > 1 else accum.keys
    if s["images"] == 0:
        what = "clip" if video else "image"
        raise EvalError(f"no {what} could be read from {pattern} ({int(s['skipped'])} samples skipped as "
                        f"undecodable). Point {option('data')} at {what.replace('clip', 'video')} shards.")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    per = recipe.data.frames if video else 1
    frame_order = [i * per + t for i in order for t in range(per)]
    extra = _fidelity(acc, accum.feats, frame_order, notes, models.stats) if models.inception is not None else {}
    if models.i3d is not None:
        extra.update(_fvd(acc, accum.i3d, order, notes))
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return EvalResult({}, None, None, notes)

    duplicates = len(keys) - len(set(keys))
    if duplicates:
        notes.append(f"{duplicates} sample key(s) occur more than once in {pattern}: the data has repeated samples.")
    metrics = _all_metrics(s, counts, recipe, models, extra, notes, size)
    report = {
        "checkpoint": str(tok.checkpoint.resolve()), "step": tok.step, "tokenizer_id": tok.tokenizer_id,
        "weights": tok.weights,
        "estimator": recipe.model.quantizer.estimator, "codebook_size": tok.model.quantize.codebook_size,
        "metrics": metrics,
        "code_counts": [int(c) for c in counts.tolist()],  # how often each code was chosen over the set
        "data": _data_record(recipe, pattern, split, files, s, duplicates, size),
        "settings": _settings(recipe, acc, run_as, models, bs, workers, len(keys)),
        "versions": {"rvq": __version__, **fidelity.library_versions(), "torchmetrics": _version("torchmetrics")},
        "seconds": round(time.perf_counter() - t0, 2),
        "notes": notes,
    }
    json_path = Path(out) if out else tok.run_dir / "eval.json"
    write_json_atomic(json_path, report)
    grid_path = json_path.with_suffix(".png") if len(grid[0]) else None
    if grid_path is not None:
        _save_grid(*grid, grid_path)
    acc.wait_for_everyone()
    return EvalResult(report, json_path, grid_path, notes)
