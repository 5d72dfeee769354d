"""What the quantizer sees before training: the encoder's latents at initialisation, for a recipe
under several sets of overrides (docs/reproduction.md, "why the codebook collapses").

For each setting: the model is built exactly as `rvq train` builds it (same seed), the first
training batches of the recipe's data go through the encoder, and the script prints

- codes: how many of the K codes the nearest-code search picks for those latents (the codes
  the first EMA update keeps alive; a code never picked decays towards the origin);
- eff. dim: the participation ratio (Σλ)²/Σλ² of the latents' covariance eigenvalues λ, i.e.
  over how many of the d directions the latents actually spread (d = the code dimension);
- ‖e‖ / ‖c‖: the mean latent norm over the mean code norm (≫ 1: every latent is far outside
  the codebook, so the code with the largest projection on its direction wins);
- spread: the mean distance of the latents from their mean over the mean latent norm (≪ 1:
  the latents are nearly one point).

Run:  python benchmarks/latents_at_init.py [--recipe recipes/quickstart.yaml] [--batches 4]
        [--setting NAME key=value ...]...   (default: the settings of docs/reproduction.md)
"""

from __future__ import annotations

import argparse

import torch

from rvq_cli.config import load_recipe
from rvq_cli.data.loader import batch_tensor, build_loader, data_patterns
from rvq_cli.models import build_tokenizer
from rvq_cli.quantize import codebook as cb


def _setting(dim: int, projection: str, groups: int) -> list[str]:
    return [f"model.quantizer.dim={dim}", f"model.projection={projection}", f"model.encoder.norm_groups={groups}",
            f"model.encoder.z_channels={dim if projection == 'none' else 32}"]


SETTINGS = {
    "d 4, 1×1 convs, 8 groups (the earlier quickstart)": _setting(4, "conv", 8),
    "d 4, no projection, 8 groups (the quickstart)": _setting(4, "none", 8),
    "d 4, no projection, 32 groups": _setting(4, "none", 32),
    "d 32, 1×1 convs, 8 groups": _setting(32, "conv", 8),
    "d 32, no projection, 8 groups": _setting(32, "none", 8),
    "d 32, no projection, 32 groups": _setting(32, "none", 32),
}


@torch.no_grad()
def describe(recipe_path: str, overrides: list[str], batches: int) -> dict:
    recipe = load_recipe(recipe_path, overrides + ["data.num_workers=0"])
    torch.manual_seed(recipe.train.seed)  # as the trainer: accelerate's set_seed seeds torch the same way
    model = build_tokenizer(recipe.model, recipe.data.image_size, recipe.data.frames).train()
    train, _ = data_patterns(recipe)
    xs = []
    for i, b in enumerate(build_loader(train, recipe, train=True)):
        xs.append(batch_tensor(b))
        if i + 1 == batches:
            break
    z = model.encode_latents(torch.cat(xs))  # (B, D, h, w)
    q = model.quantize
    e = q.project(q.project_in, z.float().movedim(1, -1).reshape(-1, q.dim))  # (N, d) rows the lookup sees
    codes = q.codes()
    idx = cb.nearest_codes(e, codes, q.lookup)
    lam = torch.linalg.eigvalsh(torch.cov(e.T.double())).clamp_min(0)
    return {
        "codes": int(idx.unique().numel()), "K": q.codebook_size, "d": q.codebook_dim,
        "eff_dim": float(lam.sum() ** 2 / (lam * lam).sum()),
        "e_over_c": float(e.norm(dim=-1).mean() / codes.norm(dim=-1).mean()),
        "spread": float((e - e.mean(0)).norm(dim=-1).mean() / e.norm(dim=-1).mean()),
        "rows": e.shape[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--batches", type=int, default=4, help="training batches to encode")
    ap.add_argument("--setting", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                    help="a named setting and its overrides (repeatable); default: the built-in settings")
    args = ap.parse_args()
    settings = {s[0]: s[1:] for s in args.setting} if args.setting else SETTINGS
    print(f"recipe {args.recipe}, {args.batches} training batches, model at initialisation")
    print(f"{'setting':52s} {'codes':>11s} {'eff. dim':>10s} {'‖e‖/‖c‖':>9s} {'spread':>7s}")
    for name, over in settings.items():
        r = describe(args.recipe, over, args.batches)
        print(f"{name:52s} {r['codes']:5d}/{r['K']:<5d} {r['eff_dim']:5.2f}/{r['d']:<4d} {r['e_over_c']:9.1f} "
              f"{r['spread']:7.3f}")


if __name__ == "__main__":
    main()
