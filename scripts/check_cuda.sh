#!/usr/bin/env bash
# Type-checks rl-policy with its `cuda` feature on a machine without a GPU or a CUDA install.
#
# The CUDA 13 toolkit pieces that candle's build scripts need (nvcc + cicc + ptxas, crt headers,
# nvvm, cudart headers, cccl) are PyPI wheels: they are downloaded (no dependencies) into
# <repo>/.cache/cuda/wheels and unzipped into one toolkit tree <repo>/.cache/cuda/toolkit/nvidia/cu13
# (idempotent). Then `cargo check -p rl-policy --features cuda --lib --tests` runs with that toolkit
# on PATH, a fixed compute capability (no nvidia-smi needed) and a separate target dir, at low
# priority. rl-policy's build script compiles its own kernels (kernels/ops.cu) to PTX with the same
# nvcc, so this also compiles every rl-policy CUDA kernel; the unit test that runs them against the
# CPU kernels (`ops::tests::cuda_kernels_match_cpu_kernels`) is type-checked, not run.
# See docs/policy-tokenizer.md and docs/sources.md. Only `check` works
# without a GPU driver: linking a binary needs libcuda.so, which is not on PyPI.
#
# Usage: bash scripts/check_cuda.sh [extra cargo args]
# Env:   CUDA_COMPUTE_CAP (default 90), CARGO_TARGET_DIR (default <repo>/target/cuda), NICE (default 10)
# Cost:  ~105 MB of wheels; ~16 min of build scripts (candle-kernels PTX + libmoe.a) the first time.
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
nice -n "${NICE:-10}" cargo check -p rl-policy --features cuda --lib --tests "$@" || status=$?
echo "check_cuda: cargo check -p rl-policy --features cuda --lib --tests exited $status after $(( $(date +%s) - start )) s" >&2
exit "$status"
