#!/usr/bin/env bash
# Time to accuracy, rl-zero vs TRL's GRPOTrainer, same recipe: both train SmolLM2-135M-Instruct on
# the task of RECIPE (default recipes/smollm2_addition_constant.toml: two-digit addition; the
# prompts come from `rl-zero prompts`, so any run.dataset works) for STEPS steps; both
# policies are scored every `run.eval_every` steps by rl-zero's greedy evaluator on the same held-out
# prompts; the report gives held-out accuracy against training time, minutes to each accuracy
# mark, steps per hour and peak RSS (scripts/bench/time_to_accuracy.py), and a figure.
#
#   bash scripts/bench/time_to_accuracy.sh              # both sides, then the report
#   SIDES=trl bash scripts/bench/time_to_accuracy.sh    # one side (rl-zero | trl), then the report
#   REPORT_ONLY=1 bash scripts/bench/time_to_accuracy.sh
#   STEPS=20 TRL_STEPS=10 bash scripts/bench/time_to_accuracy.sh   # fewer TRL steps (default STEPS)
#   PRECISION=bf16 bash scripts/bench/time_to_accuracy.sh   # both sides in bf16 with f32 masters
#   RECIPE=recipes/smollm2_arithmetic_constant.toml MARKS="0.2 0.3" bash scripts/bench/time_to_accuracy.sh
#
# PRECISION (f32 | bf16; default: the recipe's run.compute_dtype) is given to both sides: rl-zero as
# `--set run.compute_dtype=...` (its evaluations of both sides' checkpoints too), TRL as
# GRPOConfig(bf16=...), i.e. PyTorch autocast. BLAS=mkl (the default with bf16) loads MKL into
# rl-zero (scripts/setup_mkl.sh; AMX bf16 products on Xeons that have them), as PyTorch uses its own.
#
# SEED (default: the recipe's `trainer.seed`) seeds both sides; it also picks the generated
# tasks' prompt pools and held-out prompts, so TRL's training rows and both sides' evaluations
# use the same seed's split.
# Sides run one after the other (each takes ~half an hour; alternating within a run is not
# possible), so run it on a quiet machine. THREADS (default 2) threads each; both sides take the
# seed SEED.
# Output: $OUT (default target/bench-tta): rl-zero/ (an rl-zero run directory), trl/ (checkpoints,
# metrics.jsonl, eval/step-N.jsonl scored by `rl-zero eval --responses`), *.time (/usr/bin/time -v).
# Python: scripts/.venv with TRL (scripts/setup_python.sh with RLZ_FULL_PY=1, run when missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
RECIPE=${RECIPE:-recipes/smollm2_addition_constant.toml}
STEPS=${STEPS:-20}
TRL_STEPS=${TRL_STEPS:-$STEPS}
THREADS=${THREADS:-2}
read -r EVAL_EVERY RECIPE_SEED < <(python3 -c 'import sys, tomllib; r = tomllib.load(open(sys.argv[1], "rb"))
print(r.get("run", {}).get("eval_every", 5), r.get("trainer", {}).get("seed", 0))' "$RECIPE")
SEED=${SEED:-$RECIPE_SEED}
SIDES=${SIDES:-"rl-zero trl"}
PRECISION=${PRECISION:-$(python3 -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb")).get("run", {}).get("compute_dtype", "f32"))' "$RECIPE")}
case $PRECISION in f32) BLAS=${BLAS:-} ;; bf16) BLAS=${BLAS:-mkl} ;;
  *) echo "PRECISION=$PRECISION: f32 | bf16" >&2; exit 2 ;; esac
out=${OUT:-$root/target/bench-tta}
py=scripts/.venv/bin/python
rlz=target/release/rl-zero
mkdir -p "$out"

if [ "${REPORT_ONLY:-0}" != 1 ]; then
  if ! "$py" -c "import trl" 2>/dev/null; then
    RLZ_FULL_PY=1 bash scripts/setup_python.sh
  fi
  bash scripts/fetch_smollm2.sh
  cargo build --release --locked --bin rl-zero
  hf=$out/smollm2-hf
  "$py" scripts/bench/grpo_step_vs_trl.py prepare "$hf"
  export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
  if [ "$BLAS" = mkl ]; then
    RLZ_BLAS=$(bash scripts/setup_mkl.sh)
    export RLZ_BLAS
  fi
  echo "::: precision $PRECISION, rl-zero BLAS ${BLAS:-built-in}, $THREADS threads" >&2
  for side in $SIDES; do
    case $side in
      rl-zero)
        rm -rf "$out/rl-zero"
        /usr/bin/time -v -o "$out/rl-zero.time" "$rlz" train --config "$RECIPE" --out "$out/rl-zero" \
          --steps "$STEPS" --set "run.compute_dtype=$PRECISION" --set "trainer.seed=$SEED" |
          tee "$out/rl-zero.log"
        ;;
      trl)
        rm -rf "$out/trl"
        /usr/bin/time -v -o "$out/trl.time" "$py" scripts/bench/trl_addition.py train "$hf" "$out/trl" \
          --recipe "$RECIPE" --steps "$TRL_STEPS" --save-every "$EVAL_EVERY" --seed "$SEED" \
          --threads "$THREADS" --precision "$PRECISION" 2>&1 | tee "$out/trl.log"
        # rl-zero's evaluator on each TRL checkpoint: the same held-out prompts, template, greedy
        # decoding, token budget and reward as the rl-zero run's own evaluations.
        mkdir -p "$out/trl/eval"
        for ckpt in "$out"/trl/step-*/; do
          name=$(basename "$ckpt")
          "$rlz" eval --config "$RECIPE" --model "$ckpt" --set "run.compute_dtype=$PRECISION" \
            --set "trainer.seed=$SEED" --responses "$out/trl/eval/$name.jsonl"
        done
        ;;
      *) echo "unknown side $side (rl-zero | trl)" >&2; exit 2 ;;
    esac
  done
fi
# MARKS: the accuracy marks of the report (default 0.5 0.8), e.g. MARKS="0.2 0.3" on a harder task.
# shellcheck disable=SC2086
python3 scripts/bench/time_to_accuracy.py "$out" --marks ${MARKS:-0.5 0.8} | tee "$out/report.md"
