#!/usr/bin/env bash
# Type-checks rl-policy with its `cuda` feature on a machine without a GPU or a CUDA install.
#
# The CUDA 13 toolkit pieces that candle's build scripts need (nvcc + cicc + ptxas, crt headers,
# nvvm, cudart headers, cccl) are PyPI wheels: scripts/cuda_env.sh (shared with check_nccl.sh and
# gpu_bundle.sh) downloads them (no dependencies) into <repo>/.cache/cuda/wheels and unzips them
# into one toolkit tree <repo>/.cache/cuda/toolkit/nvidia/cu13 (idempotent). Then `cargo check -p rl-policy --features cuda --lib --tests` runs with that toolkit
# on PATH, a fixed compute capability (no nvidia-smi needed) and a separate target dir, at low
# priority. rl-policy's build script compiles its own kernels (kernels/ops.cu) to PTX with the same
# nvcc, so this also compiles every rl-policy CUDA kernel; the unit test that runs them against the
# CPU kernels (`ops::tests::cuda_kernels_match_cpu_kernels`) is type-checked, not run.
# See docs/policy-tokenizer.md and docs/sources.md. Only `check` runs here: linking binaries
# needs libcuda.so (not on PyPI) and cuBLAS & co.; scripts/gpu_bundle.sh links against generated
# stubs of them to build the test binaries that run on a GPU machine (docs/gpu.md).
#
# Usage: bash scripts/check_cuda.sh [extra cargo args]
# Env:   CUDA_COMPUTE_CAP (default 90), CARGO_TARGET_DIR (default <repo>/target/cuda), NICE (default 10)
# Cost:  ~105 MB of wheels; ~16 min of build scripts (candle-kernels PTX + libmoe.a) the first time.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/cuda_env.sh
source "$repo/scripts/cuda_env.sh"
cuda_toolkit
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/cuda}"
cd "$repo"
start=$(date +%s)
status=0
nice -n "${NICE:-10}" cargo check -p rl-policy --features cuda --lib --tests "$@" || status=$?
echo "check_cuda: cargo check -p rl-policy --features cuda --lib --tests exited $status after $(( $(date +%s) - start )) s" >&2
exit "$status"
