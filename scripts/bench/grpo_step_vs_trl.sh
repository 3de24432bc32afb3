#!/usr/bin/env bash
# One full Dr. GRPO training step, side by side: rl-zero (examples/dr_grpo.rs, release build) vs
# TRL's GRPOTrainer (scripts/bench/grpo_step_vs_trl.py), same settings, alternating which side goes
# first round by round so drift of the shared machine cancels.
#
#   bash scripts/bench/grpo_step_vs_trl.sh                 # 3 rounds, table on stdout
#   ROUNDS=2 bash scripts/bench/grpo_step_vs_trl.sh
#   REPORT_ONLY=1 bash scripts/bench/grpo_step_vs_trl.sh   # table from $OUT/results.txt again
#   PRECISION=bf16 bash scripts/bench/grpo_step_vs_trl.sh   # mixed precision on both sides
#
# PRECISION (f32 | bf16, default f32): bf16 = rl-zero `--compute-dtype bf16` against TRL
# `GRPOConfig(bf16=True)` (PyTorch autocast), both with f32 master weights and AdamW moments.
# SAMPLE_PRECISION (f32 | bf16, default PRECISION): rl-zero's `--sample-dtype` (its sampler's
# products; TRL samples in PRECISION either way), e.g. PRECISION=bf16 SAMPLE_PRECISION=f32.
# Settings (both sides): SmolLM2-135M-Instruct with f32 weights on the CPU with THREADS (default 2) threads,
# PROMPTS (8) two-digit addition prompts "What is A + B? Put the final answer in \boxed{}." through
# the model's chat template x SAMPLES (4) samples, MAX_NEW (128) new tokens, temperature 1, no
# top-p / top-k, Dr. GRPO (advantage = reward - group mean, token sums / MAX_NEW), PPO clip 0.2,
# no KL and no reference model, lr 1e-6, AdamW (0.9, 0.95) without weight decay, grad clip 1.0,
# micro-batches of 4 responses, ONE optimizer step per batch; reward 1 for a correct \boxed{}
# answer. Round r uses seed r-1 on both sides. Seconds = the training step only (rl-zero:
# `time/step_s` of the metrics JSONL; TRL: on_step_begin -> on_step_end), without model loading,
# trainer setup, the rl-zero evaluation (1 held-out prompt) and checkpoint. tokens = every prompt
# and completion token of the batch (no padding); peak RSS = the whole process (/usr/bin/time -v).
#
# Python: scripts/.venv (created by scripts/setup_python.sh when missing); TRL is pip-installed into
# it when absent (TRL_SPEC, default `trl`). The model: scripts/fetch_smollm2.sh (GGUF), converted
# once to a Hugging Face directory $OUT/smollm2-hf for TRL. Runs under `nice -n $NICE` (default 5).
# Per-round logs and the raw RESULT lines stay in $OUT (default target/bench-trl).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
NICE=${NICE:-5}
PROMPTS=${PROMPTS:-8}
SAMPLES=${SAMPLES:-4}
MAX_NEW=${MAX_NEW:-128}
PRECISION=${PRECISION:-f32}
case $PRECISION in f32 | bf16) ;; *) echo "PRECISION=$PRECISION: f32 or bf16" >&2; exit 2 ;; esac
SAMPLE_PRECISION=${SAMPLE_PRECISION:-$PRECISION}
case $SAMPLE_PRECISION in f32 | bf16) ;; *) echo "SAMPLE_PRECISION=$SAMPLE_PRECISION: f32 or bf16" >&2; exit 2 ;; esac
out=${OUT:-$root/target/bench-trl}
results=$out/results.txt
py=scripts/.venv/bin/python
helper=scripts/bench/grpo_step_vs_trl.py
mkdir -p "$out"

report() {
  "$py" - "$results" "$out/loadavg.txt" <<'PY'
import collections, statistics, sys
rows = [dict(kv.split("=", 1) for kv in l.split()[1:]) for l in open(sys.argv[1]) if l.startswith("RESULT")]
by = collections.defaultdict(dict)
for r in rows:
    by[int(r["round"])][r["side"]] = r
rounds = sorted(k for k, v in by.items() if {"rl-zero", "trl"} <= v.keys())
if not rounds:
    sys.exit("no complete round in " + sys.argv[1])
f = lambda r, k: float(r[k])
print("| round (first) | rl-zero s/step | TRL s/step | ratio s | rl-zero tok/s | TRL tok/s | ratio tok/s "
      "| mean completion len rl-zero / TRL | generate s rl-zero / TRL | peak RSS MiB rl-zero / TRL |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
rs, rt, rss = [], [], {"rl-zero": 0.0, "trl": 0.0}
for n in rounds:
    a, b = by[n]["rl-zero"], by[n]["trl"]
    ta, tb = f(a, "tokens") / f(a, "secs"), f(b, "tokens") / f(b, "secs")
    rs.append(f(b, "secs") / f(a, "secs"))
    rt.append(ta / tb)
    for s, r in (("rl-zero", a), ("trl", b)):
        rss[s] = max(rss[s], f(r, "peak_rss_mb"))
    print(f"| {n} ({a['first']}) | {f(a, 'secs'):.1f} | {f(b, 'secs'):.1f} | {rs[-1]:.2f} | {ta:.1f} | {tb:.1f} "
          f"| {rt[-1]:.2f} | {f(a, 'completion_len'):.1f} / {f(b, 'completion_len'):.1f} "
          f"| {f(a, 'gen_secs'):.1f} / {f(b, 'gen_secs'):.1f} "
          f"| {f(a, 'peak_rss_mb'):.0f} / {f(b, 'peak_rss_mb'):.0f} |")
mmm = lambda v: f"{min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}"
print()
print("precision: " + ", ".join(sorted({r.get("precision", "f32") for r in rows})))
print(f"ratio TRL s / rl-zero s (min / median / max over {len(rounds)} rounds): {mmm(rs)}")
print(f"ratio rl-zero tok/s / TRL tok/s (min / median / max): {mmm(rt)}")
print(f"peak RSS: rl-zero {rss['rl-zero']:.0f} MiB, TRL {rss['trl']:.0f} MiB, "
      f"rl-zero / TRL {rss['rl-zero'] / rss['trl']:.2f}")
try:
    print("load average (1/5/15 min) before and after: " + " | ".join(l.strip() for l in open(sys.argv[2])))
except OSError:
    pass
PY
}

if [ "${REPORT_ONLY:-0}" = 1 ]; then
  report
  exit 0
fi

gguf=$(bash scripts/fetch_smollm2.sh)
[ -x "$py" ] || bash scripts/setup_python.sh
"$py" -c 'import trl' 2>/dev/null || "$py" -m pip install -q "${TRL_SPEC:-trl}" >&2
echo "trl $("$py" -c 'import trl; print(trl.__version__)'), torch $("$py" -c 'import torch; print(torch.__version__)')" >&2
hf=$out/smollm2-hf
"$py" "$helper" prepare "$hf" > "$out/prepare.log" 2>&1 || { cat "$out/prepare.log" >&2; exit 1; }

echo "building examples/dr_grpo.rs (release)" >&2
cargo build -q --release --example dr_grpo
bin=${CARGO_TARGET_DIR:-$root/target}/release/examples/dr_grpo
[ -x "$bin" ] || { echo "missing $bin" >&2; exit 1; }

# Prompt length in tokens (the chat template makes every two-digit addition prompt the same length;
# rl-zero's metrics report only the response lengths).
prompt_tokens=$("$py" - "$hf" <<'PY'
import sys
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained(sys.argv[1])
q = [{"role": "user", "content": "What is 37 + 48? Put the final answer in \\boxed{}."}]
print(len(t.apply_chat_template(q, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]))
PY
)
echo "prompt tokens: $prompt_tokens" >&2

: > "$results"
echo "$(date -u +%FT%TZ) $(cut -d' ' -f1-3 /proc/loadavg)" > "$out/loadavg.txt"

run_rlz() {  # round first
  local r=$1 dir=$out/rlz-$1
  rm -rf "$dir"
  RAYON_NUM_THREADS=$THREADS nice -n "$NICE" /usr/bin/time -v -o "$dir.time" "$bin" --model "$gguf" \
    --steps 1 --prompts "$PROMPTS" --samples "$SAMPLES" --max-new-tokens "$MAX_NEW" --lr 1e-6 --temperature 1 --micro-batch 4 \
    --compute-dtype "$PRECISION" --sample-dtype "$SAMPLE_PRECISION" --eval-prompts 1 --eval-every 0 --seed $((r - 1)) --out "$dir" > "$dir.log" 2>&1 ||
    { cat "$dir.log" >&2; exit 1; }
  "$py" - "$dir/dr_grpo/metrics.jsonl" "$dir.time" "$prompt_tokens" "$((PROMPTS * SAMPLES))" "$r" "$2" \
    "$PRECISION/$SAMPLE_PRECISION" >> "$results" <<'PY'
import json, sys
# The JSONL also holds the evaluation lines: take the (only) training step.
m = [json.loads(l) for l in open(sys.argv[1]) if '"time/step_s"' in l][-1]
rss = [l for l in open(sys.argv[2]) if "Maximum resident set size" in l][0].split()[-1]
p, n, r, first = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
step, gen, L = m["time/step_s"], m["time/generate_s"], m["response/length_mean"]
print(f"RESULT side=rl-zero secs={step:.3f} gen_secs={gen:.3f} train_secs={step - gen:.3f} "
      f"tokens={round(n * (p + L))} completion_len={L:.2f} reward={m['reward/mean']:.4f} "
      f"peak_rss_mb={int(rss) / 1024:.0f} prepare_secs={m['time/prepare_s']:.3f} "
      f"optimizer_secs={m['time/optimizer_s']:.3f} round={r} first={first} precision={sys.argv[7]}")
PY
  tail -n 1 "$results" >&2
}

run_trl() {  # round first
  local r=$1 log=$out/trl-$1
  OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false nice -n "$NICE" \
    /usr/bin/time -v -o "$log.time" "$py" "$helper" step "$hf" --seed $((r - 1)) --threads "$THREADS" \
    --prompts "$PROMPTS" --samples "$SAMPLES" --max-new-tokens "$MAX_NEW" --precision "$PRECISION" --out "$out/trl-out-$r" \
    > "$log.log" 2> "$log.err" || { tail -n 40 "$log.err" >&2; exit 1; }
  local rss line
  rss=$(awk '/Maximum resident set size/ {print $NF}' "$log.time")
  line=$(grep '^RESULT' "$log.log")
  # Peak RSS of the whole process from /usr/bin/time, as for rl-zero (the script's own getrusage
  # value is kept as py_peak_rss_mb).
  echo "${line/peak_rss_mb=/py_peak_rss_mb=} peak_rss_mb=$((rss / 1024)) round=$r first=$2" >> "$results"
  tail -n 1 "$results" >&2
}

for r in $(seq 1 "$ROUNDS"); do
  echo "::: round $r/$ROUNDS, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  if [ $((r % 2)) -eq 1 ]; then run_rlz "$r" rl-zero; run_trl "$r" rl-zero; else run_trl "$r" trl; run_rlz "$r" trl; fi
done
echo "$(date -u +%FT%TZ) $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/loadavg.txt"
report | tee "$out/report.md"
