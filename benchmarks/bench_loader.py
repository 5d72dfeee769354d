"""Is the data loader ever the bottleneck? Loader-only images/s (the training stream exactly as
``rvq train`` builds it: shards, decoding, crops, flips, shuffle buffer, collation, the recipe's
worker processes) against the images/s of training itself (read from a short ``rvq train`` run's
metrics.jsonl, loader included).

Run:  python benchmarks/bench_loader.py [--recipe recipes/quickstart.yaml] [--batches 60] [--steps 60]
          [key=value ...]
Prints both rates and their ratio; the loader keeps up when loader-only images/s is well above
the training images/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rvq_cli.config import load_recipe
from rvq_cli.data.loader import batch_tensor, build_loader, data_patterns
from rvq_cli.training import train


def loader_rate(recipe, batches: int) -> float:
    train_pattern, _ = data_patterns(recipe)
    it = iter(build_loader(train_pattern, recipe, train=True))
    batch_tensor(next(it))  # workers started, first shards opened
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += len(batch_tensor(next(it)))
    return n / (time.perf_counter() - t0)


def training_rate(recipe, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        r = recipe.model_copy(deep=True)
        r.train.steps, r.train.log_every = steps, max(1, steps // 6)
        r.train.sample_every = r.train.ckpt_every = 10 * steps
        r.output.dir = str(Path(tmp) / "run")
        result = train(r, quiet=True)
        rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [x["images_per_s"] for x in rows if "images_per_s" in x][1:]  # the first window includes start-up
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="recipes/quickstart.yaml")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    recipe = load_recipe(a.recipe, a.overrides)
    unit = "clips" if recipe.model.video else "images"
    lr = loader_rate(recipe, a.batches)
    tr = training_rate(recipe, a.steps)
    print(f"{a.recipe} {' '.join(a.overrides)}: batch {recipe.train.batch_size}, {recipe.data.num_workers} worker(s)")
    print(f"loader only: {lr:.0f} {unit}/s; training (loader included): {tr:.0f} {unit}/s; loader / training "
          f"= {lr / tr:.1f}×")


if __name__ == "__main__":
    main()
