#!/usr/bin/env bash
# A scaled Table-1 Euclidean run on one GPU (issue: the paper, reproduced; docs/reproduction.md):
# `rvq compare ste rotation --seeds 2` on the official Table 1 recipe (recipes/vqvae_euclidean_1024x32.yaml:
# ch 128, z 256 → Linear to 32, 1024 codes, EMA 0.8 with zero counts, β 1, AdamW (0.9, 0.99), bf16,
# clip 0.125) with three things scaled to fit about 8 minutes: rvq's demo photographs (64×64 crops; no
# dataset can be downloaded there) instead of ImageNet, channel multipliers [1, 2, 4] so the latent grid is
# Table 1's 16×16 on 64-pixel crops, and STEPS optimizer steps (default 1000) at the effective batch 256
# with the warmup and cosine horizon scaled by STEPS / 15625. Prints the comparison table to stdout.
#
#   bash benchmarks/gpu_wheels.sh            # here, once: wheels the GPU image lacks, into .whl/
#   device run: bash benchmarks/gpu_reproduce.sh      (carry: .whl)
#   TINY=1 bash benchmarks/gpu_reproduce.sh  # a few steps of a tiny model, on any CPU (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
STEPS="${STEPS:-1000}"
OUT="${OUT_DIR:-${OUT:-/tmp}/gpu_reproduce}"
warm=$(( STEPS * 3000 / 15625 )); decay=$(( STEPS * 50000 / 15625 ))
scale=(data.train=demo data.val=demo data.image_size=64 data.num_workers=4 "model.encoder.ch_mult=[1,2,4]"
       "model.encoder.attn_resolutions=[16]" train.steps=$STEPS optim.warmup_steps=$warm optim.decay_steps=$decay
       train.log_every=50 train.sample_every=$STEPS train.ckpt_every=$STEPS)
if [ -n "${TINY:-}" ]; then  # structure only: a tiny model for a few steps, CPU, fp32
    scale+=(model.encoder.ch=32 model.encoder.num_res_blocks=1 "model.encoder.attn_resolutions=[]"
            model.encoder.z_channels=64 train.batch_size=4 train.grad_accum=2 train.precision=no
            data.num_workers=0 train.steps=2 optim.warmup_steps=1 optim.decay_steps=4 train.log_every=1
            train.sample_every=2 train.ckpt_every=2)
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: $(nproc) CPU cores"
start=$(date +%s)
"$PY" -m rvq_cli compare ste rotation --recipe recipes/vqvae_euclidean_1024x32.yaml --seeds 2 --no-fid --quiet \
    --out "$OUT" "${scale[@]}"
echo "gpu_reproduce: $(( $(date +%s) - start )) s; report $OUT/compare.md"
