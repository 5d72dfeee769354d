"""Does the estimator cost training time? Full training steps of a recipe's model (forward,
losses, backward, optimizer step) with STE and with other methods, in one process, interleaved
step by step on the same batches so that machine noise hits all alike.

Run:  python benchmarks/bench_train_step.py [--recipe recipes/quickstart.yaml] [--steps 60]
           [--estimators ste rotation ibq diveq hessian exact gumbel fsq rotation:simvq ste:affine]
A method is named as in ``rvq compare``: an estimator, ``EST:CODEBOOK`` (an estimator on the simvq
or affine codebook parameterisation) or ``fsq`` (FSQ with the paper's levels for about the
recipe's codebook size; ``fsq:8-5-5-5`` names the levels).
Prints the median step time of each and its ratio to STE (goal for rotation: at most 1.02; the
loss-level estimators cost a double backward (hessian) or a second decoder pass (exact)).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rvq_cli.compare.methods import parse_method
from rvq_cli.config import load_recipe
from rvq_cli.models import build_tokenizer
from rvq_cli.training.build import build_optimizer
from rvq_cli.training.trainer import reconstruction_loss


def with_method(recipe_path: str, method: str):
    """The recipe with ``method``'s quantizer settings, as ``rvq compare`` builds them."""
    base = load_recipe(recipe_path, check_paths=False)
    return load_recipe(recipe_path, parse_method(method).overrides(base), check_paths=False)


def make_step(recipe_path: str, method: str):
    recipe = with_method(recipe_path, method)
    torch.manual_seed(recipe.train.seed)
    model = build_tokenizer(recipe.model, recipe.data.image_size).train()
    opt = build_optimizer(model.parameters(), recipe.optim)

    def rec(x, r):
        return reconstruction_loss(x, r, recipe.loss.reconstruction)

    est = model.quantize.estimator

    def step(x):
        with est.forward_context():  # the estimator's hooks, as the trainer runs them
            out = model(x)
            loss = rec(x, out.reconstruction) + out.quantize.loss
            loss = est.training_loss(loss, out, model.quantize, lambda r: rec(x, r))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--estimators", nargs="+", default=["ste", "rotation"], help="compared with ste")
    args = parser.parse_args()
    names = ["ste"] + [n for n in args.estimators if n != "ste"]
    recipe = load_recipe(args.recipe, check_paths=False)
    size, batch = recipe.data.image_size, recipe.train.batch_size
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for _ in range(8)]
    steps = {name: make_step(args.recipe, name) for name in names}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        order = names[i % len(names):] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            t0 = time.perf_counter()
            steps[name](xs[i % len(xs)])
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"recipe {args.recipe}: batch {batch} × {size}², {torch.get_num_threads()} threads, "
          f"median of {args.steps} interleaved steps")
    for name in names:
        goal = "  (goal ≤ 1.02)" if name == "rotation" else ""
        print(f"{name:<18}{med[name] * 1e3:8.1f} ms/step   {name} / ste = {med[name] / med['ste']:.3f}{goal}")


if __name__ == "__main__":
    main()
