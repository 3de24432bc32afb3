#!/usr/bin/env bash
# Builds the GPU bundle on a machine without a GPU: one directory (default dist/gpu-bundle) with
# release binaries built with rl-policy's `cuda` feature, a run script, the PyTorch side of the
# benchmark, the configs and the golden fixtures the tests read. Copy it to a machine with an
# NVIDIA GPU, its driver and PyTorch for CUDA 13 (no Rust, no network needed there) and run
# ./run.sh there. docs/gpu.md describes what it runs and how to read the report.
#
# Build: the CUDA 13 toolkit from PyPI wheels (scripts/cuda_env.sh, as scripts/check_cuda.sh),
# link-time stubs for libcuda/cuBLAS/cuRAND/NVRTC (never shipped; the GPU machine's real libraries
# are used at run time), a separate target dir, low priority. Binaries (stripped):
#   bin/rl_policy-lib  rl-policy's unit tests (run.sh runs those named *cuda*: the kernel parity test)
#   bin/device         rl-policy/tests/device.rs (goldens, finite differences, KV cache, GPU vs CPU)
#   bin/device_bench   rl-policy/examples/device_bench.rs (the rl-zero side of the benchmark)
#   bin/device_trainer tests/device_trainer.rs (Dr. GRPO steps on the GPU against the CPU)
# Each is ~55 MB, most of it the same (candle's PTX, the SASS of candle-kernels' libmoe.a): they
# are shipped as one bin.tar.xz (xz -9 finds the repetition; ~1/20 of the size), which run.sh
# unpacks with Python's lzma module.
#
# candle-kernels compiles its kernels for exactly one architecture per build (CUDA_COMPUTE_CAP),
# as PTX that the driver JIT-compiles on load; rl-policy's kernels follow the same variable. The
# default, 80, gives compute_80 PTX, which the driver compiles for Ampere, Hopper (sm_90) and
# newer GPUs; CUDA_COMPUTE_CAP=90 gives compute_90a PTX, which loads on sm_90 GPUs only.
#
# usage: bash scripts/gpu_bundle.sh
# env:   CUDA_COMPUTE_CAP (default 80), CARGO_TARGET_DIR (default <repo>/target/gpu-bundle),
#        OUT (default <repo>/dist/gpu-bundle), NICE (default 15)
# cost:  ~105 MB of wheels; a cold build compiles candle-kernels (PTX + libmoe.a) and every
#        dependency in release mode: see docs/gpu.md for measured times.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/cuda_env.sh
source "$repo/scripts/cuda_env.sh"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
cuda_toolkit
cuda_link_stubs
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/gpu-bundle}"
export RUSTFLAGS="-L native=$RLZ_CUDA_STUBS"
export CARGO_PROFILE_RELEASE_STRIP=symbols
out=${OUT:-$repo/dist/gpu-bundle}
cd "$repo"
start=$(date +%s)

# cargo's JSON messages -> the executable of each artifact, as "name<TAB>path" lines
executables() {
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"] + "\t" + m["target"]["kind"][0] + "\t" + m["executable"])'
}
build() { nice -n "${NICE:-15}" cargo "$@" --message-format=json-render-diagnostics | executables; }
# The same package and feature selection for every binary: the facade crate (for device_trainer)
# and rl-policy alone unify dependency features differently, so builds selecting one of them each
# built candle-core and candle-kernels (PTX + libmoe.a) twice; selected together, they are resolved
# and built once. (`cargo test --example` would build the example as a test harness, without its
# main: the example gets a `cargo build` of its own, with the same selection.)
sel=(--release --locked -p rl-policy -p rl-zero --features rl-policy/cuda,rl-zero/cuda)
list=$(
  build test --no-run "${sel[@]}" --lib --test device --test device_trainer
  build build "${sel[@]}" --example device_bench
)
secs=$(( $(date +%s) - start ))

rm -rf "$out"
stage="$out/.stage"
mkdir -p "$stage/bin" "$out/configs" "$out/torch" "$out/fixtures"
while IFS=$'\t' read -r name kind exe; do
  case "$name/$kind" in
    rl_policy/lib) cp "$exe" "$stage/bin/rl_policy-lib" ;;
    device/test) cp "$exe" "$stage/bin/device" ;;
    device_bench/example) cp "$exe" "$stage/bin/device_bench" ;;
    device_trainer/test) cp "$exe" "$stage/bin/device_trainer" ;;
  esac
done <<<"$list"
bins="rl_policy-lib device device_bench device_trainer"
for b in $bins; do
  [ -x "$stage/bin/$b" ] || { echo "gpu_bundle: bin/$b was not built" >&2; exit 1; }
done
du -b "$stage"/bin/* | awk '{ printf "gpu_bundle: %-40s %6.1f MiB\n", $2, $1 / 1048576 }'
t0=$(date +%s)
tar -C "$stage" -cf - bin | nice -n "${NICE:-15}" xz -9 -T1 >"$out/bin.tar.xz"
echo "gpu_bundle: bin.tar.xz $(( $(stat -c %s "$out/bin.tar.xz") / 1048576 )) MiB (xz -9, $(( $(date +%s) - t0 )) s)"
cp scripts/gpu/run.sh scripts/gpu/report.py scripts/gpu/README.md "$out/"
cp scripts/gpu/configs/*.json "$out/configs/"
cp scripts/bench/policy_vs_torch.py "$out/torch/"
cp -r crates/rl-policy/tests/fixtures/tiny-llama crates/rl-policy/tests/fixtures/tiny-qwen2 \
  crates/rl-policy/tests/fixtures/tiny-qwen3 crates/rl-policy/tests/fixtures/smollm2_golden.json \
  "$out/fixtures/"
chmod +x "$out/run.sh"
{
  echo "rl-zero GPU bundle"
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- crates scripts Cargo.toml Cargo.lock || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "CUDA_COMPUTE_CAP: $CUDA_COMPUTE_CAP; toolkit: $("$NVCC" --version | tail -n 1)"
  echo "rustc: $(rustc --version)"
  echo "needs: $(for b in "$stage"/bin/*; do readelf -d "$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; done | sort -u | xargs)"
  (cd "$stage" && sha256sum bin/*)
} >"$out/BUILD.txt"
rm -rf "$stage"
size=$(du -sb "$out" | cut -f1)
echo "gpu_bundle: build $secs s (cargo), bundle $out: $(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }') MiB"
if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
  echo "gpu_bundle: the bundle is larger than 60 MiB" >&2
  exit 1
fi
