"""Does `rvq encode` keep the model busy? Images/s of the whole encode job (shards read and
decoded in worker processes, tokens written as shards) against the model-only speed (the
encoder and lookup on images already in memory, same batch size), on the same machine.

Run:  python benchmarks/bench_encode.py [--recipe recipes/quickstart.yaml] [--data demo]
          [--batch-size 64] [--workers 0 1 2]
Prints both speeds and their ratio per worker count (goal: at least 0.80). The weights are
random (speed does not depend on them); the data is the demo set (3,024 64×64 crops) unless
--data names other shards.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from rvq_cli.config import load_recipe, recipe_to_yaml
from rvq_cli.data import expand_pattern, image_batches
from rvq_cli.evaluate import load_tokenizer
from rvq_cli.tokens import encode_dataset
from rvq_cli.train.build import build_tokenizer


def make_checkpoint(recipe_path: str, root: Path) -> Path:
    recipe = load_recipe(recipe_path, check_paths=False)
    torch.manual_seed(0)
    model = build_tokenizer(recipe.model, recipe.data.image_size)
    ckpt = root / "run" / "ckpt-00000000"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    (ckpt / "state.json").write_text(json.dumps({"step": 0}))
    return ckpt


def model_only(ckpt: Path, pattern: str, batch_size: int, size: int) -> tuple[float, int]:
    """Images/s of model.encode on the dataset's batches held in memory (best of 2 passes)."""
    model = load_tokenizer(ckpt).model
    batches = [b["image"] for b in image_batches(pattern, image_size=size, batch_size=batch_size, train=False,
                                                  seed=0)]
    n, best = sum(len(b) for b in batches), 0.0
    with torch.no_grad():
        model.encode(batches[0])  # warm-up
        for _ in range(2):
            t0 = time.perf_counter()
            for x in batches:
                model.encode(x)
            best = max(best, n / (time.perf_counter() - t0))
    return best, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(args.recipe, root)
        size = load_tokenizer(ckpt).recipe.data.image_size
        pattern = args.data
        if pattern == "demo":
            from rvq_cli.data import demo_shards

            pattern = demo_shards().train
        ref, n = model_only(ckpt, pattern, args.batch_size, size)
        print(f"{n} images of {size}×{size} from {len(expand_pattern(pattern))} shards, batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}")
        print(f"model only (encoder + lookup, images in memory): {ref:8.1f} images/s")
        for w in args.workers:
            t0 = time.perf_counter()
            report = encode_dataset(ckpt, pattern, root / f"tokens-w{w}", batch_size=args.batch_size, num_workers=w,
                                    quiet=True)
            wall = time.perf_counter() - t0
            rate = report.encoded_now / report.seconds
            print(f"rvq encode, {w} worker(s): {rate:8.1f} images/s  ratio {rate / ref:.2f}  "
                  f"(whole call incl. loading the checkpoint: {wall:.1f} s)")


if __name__ == "__main__":
    main()
