#!/usr/bin/env bash
# Side-by-side speed and memory of rl-zero's policy vs PyTorch/transformers on SmolLM2-135M (f32
# weights; products in f32 or bf16), alternating the two sides round by round so that drift of the
# (shared, noisy) machine cancels.
#
#   bash scripts/bench/compare.sh                      # fwdbwd:8x256 and sample:16x128, 1 and 2 threads, 3 rounds
#   ROUNDS=5 THREADS="2" WORKLOADS="fwdbwd:8x256" bash scripts/bench/compare.sh
#   BLAS="gemm mkl" bash scripts/bench/compare.sh      # rl-zero also with MKL (scripts/setup_mkl.sh)
#   PRECISION="f32 bf16" BLAS=mkl bash scripts/bench/compare.sh
#   KERNELS="auto portable" WORKLOADS=sample:16x128 bash scripts/bench/compare.sh
#       # rl-zero also with the portable decode kernel (RLZ_DECODE_KERNEL; side rl-zero-portable)
#   PROFILE=dev ...                                    # reuse the test build (see below)
#       # also bf16 products (rl-zero: RLZ_COMPUTE_DTYPE=bf16; PyTorch: torch.autocast("cpu", bfloat16))
#
# Installs its Python side (torch, transformers, gguf) from PyPI into scripts/.venv
# (scripts/setup_python.sh) and fetches the model (scripts/fetch_smollm2.sh). Each process runs one
# workload ITERS times (default 3); the first iteration is warm-up and is not counted. Raw RESULT
# lines go to target/bench-compare/results.txt, the summary (ratio = torch time / rl-zero time,
# min / median / max over rounds; peak RSS of each side) to stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
ITERS=${ITERS:-3}
THREADS=${THREADS:-"1 2"}
BLAS=${BLAS:-gemm}
WORKLOADS=${WORKLOADS:-"fwdbwd:8x256 sample:16x128"}
PRECISION=${PRECISION:-f32}
KERNELS=${KERNELS:-auto}
out=target/bench-compare
mkdir -p "$out"
bash scripts/fetch_smollm2.sh >/dev/null
mkl=
case " $BLAS " in *" mkl "*) mkl=$(bash scripts/setup_mkl.sh) ;; esac
[ -x scripts/.venv/bin/python ] || bash scripts/setup_python.sh
# PROFILE=dev reuses a test build (dependencies at opt-level 3, rl-policy at 2) instead of a full
# release build; the default is cargo's `bench` profile.
PROFILE=${PROFILE:-bench}
cargo bench --bench policy --profile "$PROFILE" --no-run >/dev/null 2>&1
bench=$(cargo bench --bench policy --profile "$PROFILE" --no-run --message-format=json 2>/dev/null |
  scripts/.venv/bin/python -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "policy" and m.get("executable"):
        print(m["executable"])')
results=$out/results.txt
: >"$results"
amx=no; grep -qw amx_bf16 /proc/cpuinfo && amx=yes
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), amx_bf16=$amx, load $(cut -d' ' -f1-3 /proc/loadavg)"
for w in $WORKLOADS; do
  for t in $THREADS; do
    for round in $(seq 1 "$ROUNDS"); do
     for p in $PRECISION; do
      echo "::: $w threads=$t precision=$p round $round" >&2
      for blas in $BLAS; do
       for kernel in $KERNELS; do
        lib=; [ "$blas" = mkl ] && lib=$mkl
        RLZ_DECODE_KERNEL=$kernel RLZ_COMPUTE_DTYPE=$p RLZ_BLAS=$lib RAYON_NUM_THREADS=$t RLZ_POLICY_BENCH_SMOLLM2="$w:$ITERS" "$bench" none 2>/dev/null |
          grep '^RESULT' | sed "s/\$/ round=$round/" >>"$results"
       done
      done
      OMP_NUM_THREADS=$t scripts/.venv/bin/python scripts/bench/policy_vs_torch.py "$w:$ITERS" --threads "$t" --precision "$p" 2>/dev/null |
        grep '^RESULT' | sed "s/\$/ round=$round/" >>"$results"
     done
    done
  done
done
python3 - "$results" <<'PY'
import collections, statistics, sys
rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in rows:
    if int(r["iter"]) > 0:  # iteration 0 is warm-up
        what = r["what"] + ("" if r.get("precision", "f32") == "f32" else "-" + r["precision"])
        by[(what, r["shape"], r["threads"], r["round"], r["side"])].append(r)
keys = sorted({k[:3] for k in by})
ours = sorted({k[4] for k in by if k[4] != "torch"})
# Per round and side: the median of the counted iterations, and the best one (both sides keep
# speeding up for a few iterations on this VM, PyTorch more than rl-zero, so the ratio of best
# iterations is the steadier steady-state figure).
print("| workload | threads | side | rl-zero s (median) | torch s (median) | ratio min / median / max | best-iteration ratio (median over rounds) | peak RSS rl-zero / torch (MiB) |")
print("|---|---:|---|---:|---:|---:|---:|---:|")
for (what, shape, threads), side in ((k, s) for k in keys for s in ours):
    rounds = sorted({k[3] for k in by if k[:3] == (what, shape, threads)})
    ratios, best, rz, tc, rss = [], [], [], [], {side: 0.0, "torch": 0.0}
    for rd in rounds:
        sides = {s: by.get((what, shape, threads, rd, s), []) for s in (side, "torch")}
        if not all(sides.values()):
            continue
        med = {s: statistics.median(float(r["secs"]) for r in v) for s, v in sides.items()}
        for s, v in sides.items():
            rss[s] = max(rss[s], max(float(r["peak_rss_mb"]) for r in v))
        low = {s: min(float(r["secs"]) for r in v) for s, v in sides.items()}
        rz.append(med[side]); tc.append(med["torch"]); ratios.append(med["torch"] / med[side])
        best.append(low["torch"] / low[side])
    if ratios:
        print(f"| {what} {shape} | {threads} | {side} | {statistics.median(rz):.2f} | {statistics.median(tc):.2f} | "
              f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f} | "
              f"{statistics.median(best):.2f} | {rss[side]:.0f} / {rss['torch']:.0f} |")
PY
