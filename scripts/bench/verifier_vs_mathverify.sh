#!/usr/bin/env bash
# Side by side: rl-zero's math verifier (crates/rl-reward, release build) vs Hugging Face's
# math-verify (PyPI), on the same gold/prediction pairs, each timed in-process one pair at a time.
#
#   bash scripts/bench/verifier_vs_mathverify.sh            # 5 rounds, report on stdout
#   ROUNDS=3 GENERATED=100 OUT=/tmp/vb bash scripts/bench/verifier_vs_mathverify.sh
#
# Pairs: every case of crates/rl-reward/tests/fixtures/math_verify_cases.json (transcribed from
# math-verify's own test suite) plus GENERATED (default 270) seeded arithmetic/fraction/thousands
# pairs, written to $OUT/pairs.jsonl (fields `response`, `answer` as for `rl-zero score`, plus `id`,
# `category`, `precision`). Each round runs one fresh process per side, alternating which side
# goes first, so machine drift cancels: examples/verifier_bench.rs for rl-zero, and
# scripts/bench/verifier_vs_mathverify.py for math-verify (`verify(parse(gold), parse(pred))`, the
# package defaults incl. its 5 s timeouts; interpreter start-up and import time are reported
# separately). Per-round data stays in $OUT (default target/verifier-vs-mathverify); the Markdown
# report is printed and written to $OUT/report.md.
#
# Python: reuses scripts/.venv when it exists (see scripts/setup_python.sh), else creates
# scripts/.venv-bench; either way math-verify is pip-installed into it (MATH_VERIFY_SPEC, default
# `math-verify`). Only PyPI and crates.io are needed.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${ROUNDS:-5}
generated=${GENERATED:-270}
out=${OUT:-$root/target/verifier-vs-mathverify}
spec=${MATH_VERIFY_SPEC:-math-verify}
helper="$root/scripts/bench/verifier_vs_mathverify.py"

if [ -x "$root/scripts/.venv/bin/python" ]; then
  venv="$root/scripts/.venv"
else
  venv="$root/scripts/.venv-bench"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
fi
py="$venv/bin/python"
echo "python: $py" >&2
"$py" -m pip install -q "$spec" >&2
echo "math-verify $("$py" -c 'from importlib.metadata import version; print(version("math-verify"))')" >&2

echo "building examples/verifier_bench.rs (release)" >&2
(cd "$root" && cargo build -q --release --example verifier_bench)
bench="${CARGO_TARGET_DIR:-$root/target}/release/examples/verifier_bench"
[ -x "$bench" ] || { echo "missing $bench" >&2; exit 1; }

mkdir -p "$out"
rm -f "$out"/meta-*.json "$out"/verdicts-*.jsonl
"$py" "$helper" pairs "$out/pairs.jsonl" --generated "$generated"
cut -d' ' -f1-3 /proc/loadavg > "$out/loadavg.txt"

run_rl() {
  RLZ_LAUNCH_NS=$(date +%s%N) "$bench" "$out/pairs.jsonl" "$out/verdicts-rl-$1.jsonl" > "$out/meta-rl-$1.json"
}
run_mv() {
  RLZ_LAUNCH_NS=$(date +%s%N) "$py" "$helper" mathverify "$out/pairs.jsonl" "$out/verdicts-mv-$1.jsonl" \
    > "$out/meta-mv-$1.json"
}
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then run_rl "$r"; run_mv "$r"; else run_mv "$r"; run_rl "$r"; fi
  "$py" - "$out" "$r" >&2 <<'EOF'
import json, sys
d, r = sys.argv[1], sys.argv[2]
rl, mv = (json.load(open(f"{d}/meta-{s}-{r}.json")) for s in ("rl", "mv"))
print(f"round {r}: rl-zero {rl['total_s'] * 1e3:.1f} ms, math-verify {mv['total_s']:.2f} s, "
      f"ratio {mv['total_s'] / rl['total_s']:.0f}x, math-verify timeouts {mv['timeouts']}")
EOF
done
cut -d' ' -f1-3 /proc/loadavg >> "$out/loadavg.txt"

"$py" "$helper" report "$out" | tee "$out/report.md"
