#!/usr/bin/env bash
# Speed on one GPU (issue: fast by default; docs/benchmarks.md): the paper's VQGAN recipes' training step
# it/s and peak memory in bf16, contiguous / channels_last, eager / compiled; rotation/STE step ratio; the
# quantization layer against vector-quantize-pytorch; encode images/s. About 8 minutes on one GPU
# (COMPILE=0 skips the compiled rows and most of that time).
#
#   bash benchmarks/gpu_wheels.sh            # here, once: wheels the GPU image lacks, into .whl/
#   device run: bash benchmarks/gpu_check.sh          (carry: .whl)
#   TINY=1 bash benchmarks/gpu_check.sh      # a tiny model for two steps, on any CPU (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
args=()
[ -n "${TINY:-}" ] && args+=(--tiny --no-compile)
[ "${COMPILE:-1}" = "0" ] && args+=(--no-compile)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: $(nproc) CPU cores"
start=$(date +%s)
"$PY" benchmarks/gpu_check.py "${args[@]}"
echo "gpu_check: $(( $(date +%s) - start )) s"
