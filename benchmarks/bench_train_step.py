"""Does the estimator cost training time? Full training steps of a recipe's model (forward,
losses, backward, optimizer step) with STE and with the rotation trick, in one process,
interleaved step by step on the same batches so that machine noise hits both alike.

Run:  python benchmarks/bench_train_step.py [--recipe recipes/quickstart.yaml] [--steps 60]
Prints the median step time of each and the ratio rotation / STE (goal: at most 1.02).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rvq_cli.config import load_recipe
from rvq_cli.train.build import build_optimizer, build_tokenizer
from rvq_cli.train.trainer import reconstruction_loss


def make_step(recipe, estimator: str):
    recipe = recipe.model_copy(deep=True)
    recipe.model.quantizer.estimator = estimator
    torch.manual_seed(recipe.train.seed)
    model = build_tokenizer(recipe.model, recipe.data.image_size).train()
    opt = build_optimizer(model.parameters(), recipe.optim)

    def step(x):
        out = model(x)
        loss = reconstruction_loss(x, out.reconstruction, recipe.loss.reconstruction) + out.quantize.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, check_paths=False)
    size, batch = recipe.data.image_size, recipe.train.batch_size
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for _ in range(8)]
    steps = {name: make_step(recipe, name) for name in ("ste", "rotation")}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        order = ("ste", "rotation") if i % 2 == 0 else ("rotation", "ste")  # alternate who goes first
        for name in order:
            t0 = time.perf_counter()
            steps[name](xs[i % len(xs)])
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"recipe {args.recipe}: batch {batch} × {size}², {torch.get_num_threads()} threads, "
          f"median of {args.steps} interleaved steps")
    print(f"ste       {med['ste'] * 1e3:8.1f} ms/step")
    print(f"rotation  {med['rotation'] * 1e3:8.1f} ms/step")
    print(f"rotation / ste = {med['rotation'] / med['ste']:.3f}  (goal ≤ 1.02)")


if __name__ == "__main__":
    main()
