#!/usr/bin/env bash
# rl-zero GPU bundle: runs the CUDA tests and the rl-zero vs PyTorch benchmark on this machine's
# first NVIDIA GPU, then writes report/report.json and report/report.md. Needs an NVIDIA driver
# (libcuda.so.1), CUDA 13 cuBLAS / cuBLASLt / cuRAND / cudart (found in this Python's PyTorch
# wheels: site-packages/nvidia/*/lib) and, for the PyTorch side, torch + transformers. No Rust
# toolchain, no network. Built by scripts/gpu_bundle.sh; see README.md here and docs/gpu.md.
#
# usage: ./run.sh [--quick] [--tests-only | --bench-only]
# env:   PYTHON (default python3)        the Python with torch + transformers
#        STEP_TIMEOUT (default 240 s)    time limit of each step (one test, one benchmark process)
#        RLZ_SMOLLM2_GGUF=PATH           also run SmolLM2-135M on the GPU against its golden
#        CUDA_LIB_DIRS=DIR:DIR           extra directories searched for the CUDA libraries
#        OUT (default ./report)          where logs and the report go
# exit:  0 every test passed, 1 a test failed or timed out, 2 nothing could run (no driver, no
#        CUDA libraries).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}
out=${OUT:-$here/report}
quick=0 tests=1 bench=1
for a in "$@"; do
  case $a in
    --quick) quick=1 ;;
    --tests-only) bench=0 ;;
    --bench-only) tests=0 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "run.sh: $*" >&2; exit 2; }

# 1. The driver: libcuda.so.1 where the dynamic loader finds it. Checked first, so a machine
#    without one stops here, in a second, with this message.
find_lib() { # find_lib SONAME DIR... -> the first path found, else the loader cache's entry
  local so=$1 d; shift
  for d in "$@"; do [ -n "$d" ] && [ -e "$d/$so" ] && { echo "$d/$so"; return 0; }; done
  { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | awk -v so="$so" '$1 == so { print $NF; exit }' | grep . && return 0
  return 1
}
IFS=: read -r -a ld_dirs <<<"${LD_LIBRARY_PATH:-}"
driver_dirs=("${ld_dirs[@]}" /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/nvidia/lib64
             /usr/local/nvidia/lib /usr/lib/wsl/lib)
if ! libcuda=$(find_lib libcuda.so.1 "${driver_dirs[@]}"); then
  if command -v nvidia-smi >/dev/null 2>&1; then
    die "no NVIDIA driver found: nvidia-smi exists but libcuda.so.1 is not in the loader's path (ldconfig -p, LD_LIBRARY_PATH)"
  fi
  die "no NVIDIA driver found (no libcuda.so.1 for the dynamic loader, no nvidia-smi): this bundle needs a machine with an NVIDIA GPU and its driver"
fi
mkdir -p "$out/logs" "$out/bench" || die "cannot create $out"
rm -f "$out"/bench/*.jsonl "$out"/logs/*.log
: >"$out/steps.jsonl"
echo "run.sh: driver library $libcuda"
command -v "$PYTHON" >/dev/null 2>&1 || die "no Python ($PYTHON): set PYTHON to the one with torch"

# The binaries ship as bin.tar.xz (they share most of their bytes); unpacked once, next to it.
if [ ! -x "$here/bin/device_bench" ] || [ "$here/bin.tar.xz" -nt "$here/bin/device_bench" ]; then
  "$PYTHON" - "$here/bin.tar.xz" "$here" <<'PY' || tar -C "$here" -xJf "$here/bin.tar.xz" || die "cannot unpack bin.tar.xz"
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as t:
    try:
        t.extractall(sys.argv[2], filter="data")
    except TypeError:  # Python without extraction filters
        t.extractall(sys.argv[2])
PY
  touch "$here/bin/"*
fi

# 2. The CUDA libraries the binaries link (cudarc with dynamic linking + candle-kernels): from
#    this Python's NVIDIA wheels (PyTorch's dependencies), CUDA_LIB_DIRS, LD_LIBRARY_PATH, ldconfig.
py_dirs=$("$PYTHON" - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = []
try:
    import nvidia  # namespace package of the nvidia-* wheels
    roots += list(nvidia.__path__)
except Exception:
    pass
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    roots.append(os.path.join(sp, "nvidia"))
dirs = []
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "*", "lib"))):
        if d not in dirs:
            dirs.append(d)
print(":".join(dirs))
PY
)
IFS=: read -r -a extra <<<"${CUDA_LIB_DIRS:-}"
IFS=: read -r -a pyd <<<"$py_dirs"
lib_dirs=("${extra[@]}" "${pyd[@]}" "${ld_dirs[@]}" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
missing=() resolved=()
# The binaries' DT_NEEDED entries (BUILD.txt) and cuBLAS's own dependency, cuBLASLt.
for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  if p=$(find_lib "$so" "${lib_dirs[@]}"); then resolved+=("$so=$(readlink -f "$p")"); else missing+=("$so"); fi
done
[ ${#missing[@]} -eq 0 ] || die "CUDA 13 libraries not found: ${missing[*]} (searched CUDA_LIB_DIRS, $PYTHON's site-packages/nvidia/*/lib, LD_LIBRARY_PATH, ldconfig; install torch for CUDA 13 or set CUDA_LIB_DIRS)"
ld=""
for r in "${resolved[@]}"; do d=$(dirname "${r#*=}"); case ":$ld:" in *":$d:"*) ;; *) ld="$ld:$d" ;; esac; done
export LD_LIBRARY_PATH="${ld#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:$(dirname "$libcuda")"
printf 'run.sh: %s\n' "${resolved[@]}"

# 3. Versions.
{
  echo "== nvidia-smi"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used --format=csv 2>&1 || echo "nvidia-smi failed"
  else
    echo "nvidia-smi not found"
  fi
  echo "== torch"
  "$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("transformers", transformers.__version__); print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None' 2>&1
  echo "== libraries"
  echo "libcuda.so.1=$(readlink -f "$libcuda")"
  printf '%s\n' "${resolved[@]}"
  echo "== bundle"
  cat "$here/BUILD.txt" 2>/dev/null
} | tee "$out/versions.txt"
if ! ldd "$here"/bin/* >"$out/logs/ldd.txt" 2>&1 || grep -q 'not found' "$out/logs/ldd.txt"; then
  cat "$out/logs/ldd.txt" >&2
  die "the bundle's binaries cannot be loaded here (see $out/logs/ldd.txt)"
fi

# 4. Steps: each one a process with a time limit; a failure is recorded and the run goes on.
now() { date +%s.%N; }
step() { # step NAME KIND STDOUT_FILE CMD...  (stderr, and stdout unless a file is given, to logs/NAME.log)
  local name=$1 kind=$2 stdout=$3 log="$out/logs/$1.log" t0 rc status secs
  shift 3
  [ -n "$stdout" ] || stdout=$log
  printf '::: %-60s ' "$name"
  t0=$(now)
  if [ "$stdout" = "$log" ]; then
    timeout --kill-after=10 "$STEP_TIMEOUT" "$@" >"$log" 2>&1; rc=$?
  else
    timeout --kill-after=10 "$STEP_TIMEOUT" "$@" >"$stdout" 2>"$log"; rc=$?
  fi
  secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in 0) status=pass ;; 124|137) status=timeout ;; *) status=fail ;; esac
  # a test step runs exactly one test: exit 0 without "1 passed" (filtered out, ignored) is no pass
  if [ "$kind" = test ] && [ $status = pass ] && ! grep -q 'test result: ok. 1 passed' "$log"; then
    status=fail; echo "run.sh: no test ran in this step" >>"$log"
  fi
  echo "$status ($secs s)"
  if [ $status != pass ]; then  # the panic or error message, else the end of the log
    { grep -m 1 -A 2 -E 'panicked at|^Error: ' "$log" || tail -n 5 "$log"; } | sed 's/^/    /'
  fi
  printf '{"name": "%s", "kind": "%s", "status": "%s", "exit": %d, "secs": %s, "log": "logs/%s.log"}\n' \
    "$name" "$kind" "$status" "$rc" "$secs" "$name" >>"$out/steps.jsonl"
}
skip() { # skip NAME KIND WHY
  printf '::: %-60s skipped (%s)\n' "$1" "$3"
  printf '{"name": "%s", "kind": "%s", "status": "skipped", "why": "%s"}\n' "$1" "$2" "$3" >>"$out/steps.jsonl"
}
export RLZ_POLICY_FIXTURES="$here/fixtures" RUST_BACKTRACE=0
# The driver JIT-compiles the PTX of candle's and rl-policy's kernels on first load and caches the
# result (~/.nv/ComputeCache): a larger cache keeps every module for the later processes.
export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
t_start=$(now)

if [ $tests = 1 ]; then
  # The kernel parity tests of rl-policy's unit tests (every test whose name mentions cuda), then
  # each test of rl-policy's tests/device.rs and of tests/device_trainer.rs on its own (their
  # ignored tests only where asked for).
  for t in $("$here/bin/rl_policy-lib" --list 2>/dev/null | sed -n 's/: test$//p' | grep cuda); do
    step "test-${t##*::}" test "" env RUST_BACKTRACE=1 "$here/bin/rl_policy-lib" --exact "$t" --test-threads=1 --nocapture
  done
  for b in device device_trainer; do
    [ -x "$here/bin/$b" ] || { skip "test-$b" test "bin/$b is not in this bundle"; continue; }
    ignored=" $("$here/bin/$b" --list --ignored 2>/dev/null | sed -n 's/: test$//p' | xargs) "
    for t in $("$here/bin/$b" --list 2>/dev/null | sed -n 's/: test$//p'); do
      case $ignored in *" $t "*) continue ;; esac
      step "test-$t" test "" env RUST_BACKTRACE=1 "$here/bin/$b" --exact "$t" --test-threads=1 --nocapture
    done
  done
  if [ -n "${RLZ_SMOLLM2_GGUF:-}" ] && [ -f "$RLZ_SMOLLM2_GGUF" ]; then
    step test-smollm2_matches_transformers_golden test "" env RUST_BACKTRACE=1 "$here/bin/device" --exact \
      smollm2_matches_transformers_golden --ignored --test-threads=1 --nocapture
  else
    skip test-smollm2_matches_transformers_golden test "RLZ_SMOLLM2_GGUF not set to the GGUF file"
  fi
fi

if [ $bench = 1 ]; then
  # Both sides, the same random-weight models and workloads, one process per (side, model,
  # precision); the first iteration of each workload is warm-up (not counted in the report).
  if [ $quick = 1 ]; then
    models="smollm2-135m"; work="fwdbwd:4x128:3 sample:8x32:2"
  else
    models="smollm2-135m qwen2-0.5b"; work="fwdbwd:8x256:4 sample:16x128:2"
  fi
  for m in $models; do
    for p in f32 bf16; do
      # shellcheck disable=SC2086
      step "bench-rl-zero-$m-$p" bench "$out/bench/rl-zero-$m-$p.jsonl" \
        "$here/bin/device_bench" --config "$here/configs/$m.json" --device cuda --precision "$p" $work
      # shellcheck disable=SC2086
      step "bench-torch-$m-$p" bench "$out/bench/torch-$m-$p.jsonl" \
        "$PYTHON" "$here/torch/policy_vs_torch.py" --config "$here/configs/$m.json" --device cuda \
        --precision "$p" --json $work
    done
  done
fi

# 5. The report.
total=$(awk -v a="$t_start" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')
if ! "$PYTHON" "$here/report.py" "$out" "$total"; then
  echo "run.sh: report.py failed; raw results are in $out (steps.jsonl, bench/*.jsonl, logs/)" >&2
fi
grep -q '"kind": "test", "status": "\(fail\|timeout\)"' "$out/steps.jsonl" && exit 1
exit 0
