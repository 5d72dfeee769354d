"""Run by torchrun from test_distributed.py: train, then dump this rank's weights and data keys."""

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from rvq_cli.config import load_recipe
from rvq_cli.data.loader import build_loader
from rvq_cli.training.trainer import Trainer

recipe_path, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]  # then key=value overrides
out.mkdir(parents=True, exist_ok=True)
recipe = load_recipe(recipe_path, overrides)
trainer = Trainer(recipe, Path(recipe.output.dir), quiet=True)
result = trainer.run()
rank = trainer.acc.process_index
model = trainer.acc.unwrap_model(trainer.model)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
if trainer.objective.disc_module is not None:  # GAN runs: the discriminator too
    disc = trainer.objective.disc_module.state_dict()
    save_file({k: v.contiguous() for k, v in disc.items()}, str(out / f"disc{rank}.safetensors"))
batches = iter(build_loader(trainer.train_pattern, trainer.recipe, train=True, rank=rank,
                            world_size=trainer.acc.num_processes))
keys = [k for _ in range(result.step * trainer.recipe.train.grad_accum) for k in next(batches)["key"]]
(out / f"rank{rank}.json").write_text(json.dumps({"keys": keys, "world": trainer.acc.num_processes,
                                                  "step": result.step, "pid": os.getpid()}))
