#!/usr/bin/env bash
# Type-checks rl-dist and rl-rollout with their `nccl` features (the NCCL process group, and the
# NCCL weight sync into vLLM) on a machine without a GPU, NCCL or a CUDA install.
#
# Same approach as scripts/check_cuda.sh, through the same helper (scripts/cuda_env.sh): the CUDA
# 13 toolkit pieces candle's build scripts need (nvcc + cicc + ptxas, crt headers, nvvm, cudart
# headers, cccl) come from PyPI wheels, downloaded (no dependencies) into
# <repo>/.cache/cuda/wheels and unzipped into <repo>/.cache/cuda/toolkit/nvidia/cu13 (idempotent,
# shared with check_cuda.sh and gpu_bundle.sh). NCCL itself is not needed to build: cudarc loads libnccl.so.2 at
# run time. Then `cargo check -p rl-dist -p rl-rollout --features rl-dist/nccl,rl-rollout/nccl
# --lib --tests` runs with that toolkit on
# PATH, a fixed compute capability and a separate target dir, at low priority.
#
# This proves the NCCL code *compiles*. It has never run: running needs GPUs, a driver
# (libcuda.so) and libnccl.so.2, none of which this script provides.
#
# Usage: bash scripts/check_nccl.sh [extra cargo args]
# Env:   CUDA_COMPUTE_CAP (default 90), CARGO_TARGET_DIR (default <repo>/target/cuda), NICE (default 10)
# Cost:  ~105 MB of wheels; the first run compiles candle-kernels' PTX (~16 min on 2 cores).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/cuda_env.sh
source "$repo/scripts/cuda_env.sh"
cuda_toolkit
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/cuda}"
cd "$repo"
start=$(date +%s)
status=0
what=(-p rl-dist -p rl-rollout --features rl-dist/nccl,rl-rollout/nccl --lib --tests)
nice -n "${NICE:-10}" cargo check "${what[@]}" "$@" || status=$?
echo "check_nccl: cargo check ${what[*]} exited $status after $(( $(date +%s) - start )) s" >&2
exit "$status"
