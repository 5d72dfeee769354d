"""Does `rvq encode` keep the model busy? Images/s of the whole encode job (shards read and
decoded in worker processes, tokens written as shards) against the model-only speed (the
encoder and lookup on images already in memory, same batch size), on the same machine.

Run:  python benchmarks/bench_encode.py [--recipe recipes/quickstart.yaml] [--data demo|photos|SHARDS]
          [--batch-size 64] [--workers 0 1 2] [--repeat 2]
Prints both speeds and their ratio per worker count (goal: at least 0.80). The weights are
random (speed does not depend on them). Data: ``demo`` (3,024 64×64 PNG crops: decoding is
cheap), ``photos`` (1,024 full-size JPEGs of scikit-image's photographs, 300–1,000 px, resized
to the recipe's size: decoding costs about as much as the model, like ImageNet-style data), or
shards of your own. Each speed is the best of ``--repeat`` runs, measured alternately, so a
busy machine penalises both sides alike.
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
from rvq_cli.data import expand_pattern, image_batches, resolve_data
from rvq_cli.models import build_tokenizer
from rvq_cli.runs import load_tokenizer
from rvq_cli.tokens import encode_dataset


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


def photo_shards(root: Path, n: int = 1024) -> str:
    """Shards of full-size JPEGs cut from nothing but scikit-image's bundled photographs."""
    import io

    from PIL import Image

    from rvq_cli.data import write_shards
    from rvq_cli.data.demo import bundled_photos

    jpegs = []
    for _, load in sorted(bundled_photos().items()):
        buf = io.BytesIO()
        Image.fromarray(load()).convert("RGB").save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    write_shards(({"__key__": f"photo{i:05d}", "jpg": jpegs[i % len(jpegs)]} for i in range(n)), root / "photos",
                 max_count=64)
    return str(root / "photos" / "*.tar")


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


def decode_only(pattern: str, size: int, batch_size: int, workers: int) -> float:
    """Images/s of reading and decoding alone (rvq encode's input pipeline, no model)."""
    from rvq_cli.tokens.source import plan_source, unit_batches

    t0, n = time.perf_counter(), 0
    for b in unit_batches(plan_source(pattern, 1000).units, size, batch_size, workers):
        n += 0 if b["x"] is None else len(b["x"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(args.recipe, root)
        size = load_tokenizer(ckpt).recipe.data.image_size
        pattern = photo_shards(root) if args.data == "photos" else resolve_data(args.data)  # "demo": its train set
        ref, rates = 0.0, dict.fromkeys(args.workers, 0.0)
        for r in range(args.repeat):
            rate, n = model_only(ckpt, pattern, args.batch_size, size)
            ref = max(ref, rate)
            for w in args.workers:
                report = encode_dataset(ckpt, pattern, root / f"tokens-w{w}-{r}", batch_size=args.batch_size,
                                        num_workers=w, quiet=True)
                rates[w] = max(rates[w], report.encoded_now / report.seconds)
        print(f"{n} images ({args.data}) at {size}×{size} from {len(expand_pattern(pattern))} shards, batch "
              f"{args.batch_size}, torch threads {torch.get_num_threads()}, best of {args.repeat}")
        print(f"model only (encoder + lookup, images in memory): {ref:8.1f} images/s")
        only = decode_only(pattern, size, args.batch_size, 0)
        print(f"decoding only (no model, in this process):        {only:8.1f} images/s")
        for w, rate in rates.items():
            print(f"rvq encode, {w} decoding worker(s):          {rate:8.1f} images/s  ratio {rate / ref:.2f}")


if __name__ == "__main__":
    main()
