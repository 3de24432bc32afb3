#!/usr/bin/env bash
# Type-checks rl-dist with its `nccl` feature (the NCCL process group) on a machine without a
# GPU, NCCL or a CUDA install.
#
# Same approach as scripts/check_cuda.sh (which this script does not modify or call): the CUDA 13
# toolkit pieces candle's build scripts need (nvcc + cicc + ptxas, crt headers, nvvm, cudart
# headers, cccl) come from PyPI wheels, downloaded (no dependencies) into
# <repo>/.cache/cuda/wheels and unzipped into <repo>/.cache/cuda/toolkit/nvidia/cu13 (idempotent,
# shared with check_cuda.sh). NCCL itself is not needed to build: cudarc loads libnccl.so.2 at
# run time. Then `cargo check -p rl-dist --features nccl --lib --tests` runs with that toolkit on
# PATH, a fixed compute capability and a separate target dir, at low priority.
#
# This proves the NCCL backend *compiles*. It has never run: running needs GPUs, a driver
# (libcuda.so) and libnccl.so.2, none of which this script provides.
#
# Usage: bash scripts/check_nccl.sh [extra cargo args]
# Env:   CUDA_COMPUTE_CAP (default 90), CARGO_TARGET_DIR (default <repo>/target/cuda), NICE (default 10)
# Cost:  ~105 MB of wheels; the first run compiles candle-kernels' PTX (~16 min on 2 cores).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache="$repo/.cache/cuda"
wheels="$cache/wheels"
tree="$cache/toolkit"
C="$tree/nvidia/cu13"
pkgs=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)

if [ ! -x "$C/bin/nvcc" ] || [ ! -x "$C/nvvm/bin/cicc" ]; then
  if [ -x "$repo/scripts/.venv/bin/pip" ]; then pip=("$repo/scripts/.venv/bin/pip");
  elif command -v pip3 >/dev/null 2>&1; then pip=(pip3);
  else pip=(python3 -m pip); fi
  mkdir -p "$wheels" "$tree"
  "${pip[@]}" download -q --no-deps "${pkgs[@]}" -d "$wheels" >&2
  for w in "$wheels"/*.whl; do
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$tree"
  done
  chmod +x "$C"/bin/* "$C"/nvvm/bin/*  # zip archives drop the executable bit
fi
"$C/bin/nvcc" --version | tail -n 2 >&2

export PATH="$C/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"   # candle-kernels would call nvidia-smi otherwise
export CUDARC_CUDA_VERSION=13000                      # cudarc: pick the CUDA 13 bindings
export NVCC="$C/bin/nvcc" CUDA_HOME="$C" CUDA_ROOT="$C" CUDA_PATH="$C"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/cuda}"
cd "$repo"
start=$(date +%s)
status=0
nice -n "${NICE:-10}" cargo check -p rl-dist --features nccl --lib --tests "$@" || status=$?
echo "check_nccl: cargo check -p rl-dist --features nccl --lib --tests exited $status after $(( $(date +%s) - start )) s" >&2
exit "$status"
