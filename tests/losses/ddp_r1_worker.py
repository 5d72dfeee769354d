"""Run by torchrun from test_stylegan.py: the discriminator's loss with R1 through DDP (gloo,
default arguments as Accelerate's: find_unused_parameters off, buffers broadcast), real and fake
forwards through the wrapper before one backward; writes this rank's reduced gradients and the
local gradients of every rank's batch computed without DDP (and without R1)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from rvq_cli.config import GANConfig, LossConfig
from rvq_cli.losses import StyleGAN2Discriminator
from rvq_cli.training.objective import Objective

out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = LossConfig(gan=GANConfig(weight=0.1, discriminator="stylegan2", loss="non_saturating", adaptive=False,
                               stylegan2={"max_channels": 8}, r1_gamma=100.0, r1_every=2))
no_r1 = cfg.model_copy(update={"gan": cfg.gan.model_copy(update={"r1_gamma": 0.0})})


def batch(r: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + r)
    return torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.rand(4, 3, 16, 16, generator=g) * 2 - 1


torch.manual_seed(0)
disc = StyleGAN2Discriminator(16, 3, 2, 8)
local = StyleGAN2Discriminator(16, 3, 2, 8)
local.load_state_dict(disc.state_dict())
ddp = DDP(disc)
result = {}
for step in (0, 1):  # step 0 adds R1, step 1 does not
    ddp.zero_grad()
    x, rec = batch(rank + 10 * step)
    loss, _ = Objective(cfg, None, ddp, disc).discriminator(x, rec, step)
    loss.backward()
    result[f"ddp{step}"] = {n: p.grad.clone() for n, p in disc.named_parameters()}
    for r in range(world):  # the local gradient of rank r's batch, no DDP
        local.zero_grad()
        x, rec = batch(r + 10 * step)
        Objective(cfg, None, local, local).discriminator(x, rec, step)[0].backward()
        result[f"local{step}_{r}"] = {n: p.grad.clone() for n, p in local.named_parameters()}
        if step == 0:  # the same without R1: the penalty must matter for the comparison to mean anything
            local.zero_grad()
            Objective(no_r1, None, local, local).discriminator(x, rec, step)[0].backward()
            result[f"no_r1_{r}"] = {n: p.grad.clone() for n, p in local.named_parameters()}
torch.save(result, out / f"grads{rank}.pt")
dist.destroy_process_group()
