#!/usr/bin/env bash
# Download, on a development machine, the wheels rvq needs on the lent GPU machine that its image
# lacks (it has torch, torchvision, accelerate, typer, rich, safetensors, scipy, scikit-image,
# matplotlib, pyyaml). They go to .whl/ (git-ignored through .git/info/exclude), and the GPU
# scripts install them with --no-deps when the folder is there:
#   bash benchmarks/gpu_wheels.sh        # then carry .whl in the device call
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
pins() { for n in "$@"; do grep -i "^$n==" constraints.txt; done; }
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d .whl $(pins webdataset braceexpand torch_fidelity lpips av decord pydantic pydantic_core annotated-types \
              typing-inspection)
ls .whl
