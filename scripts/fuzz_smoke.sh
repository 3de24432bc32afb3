#!/usr/bin/env bash
# Builds the libFuzzer drivers of fuzz/ (feature `libfuzzer`) and runs each target from its seeds
# for RLZ_FUZZ_SECONDS (default 20) seconds. On stable Rust the drivers are not coverage-
# instrumented, so this is random mutation of the seeds, not guided fuzzing: it proves that the
# targets build, start and survive; `cargo +nightly fuzz run <target> --features libfuzzer`
# fuzzes with coverage (fuzz/README.md). A crash, a timeout (10 s per input) or more than 2 GB of
# memory fails the script; libFuzzer writes the input that did it to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${RLZ_FUZZ_SECONDS:-20}
# `--workspace` keeps the test phase's feature set, so only the drivers are compiled.
cargo clippy --locked --workspace --bins --features rl-zero-fuzz/libfuzzer -- -D warnings
cargo build --locked --workspace --bins --features rl-zero-fuzz/libfuzzer
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in run_file dataset_jsonl engine_response verifier; do
  # libFuzzer adds what it finds to the first corpus directory: a scratch copy, not the seeds.
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  cp fuzz/corpus/"$t"/* "$work/$t/"
  "$target_dir/debug/$t" "$work/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" 2> "$work/$t.log" || {
    tail -n 40 "$work/$t.log"
    echo "fuzz: $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  }
  echo "fuzz: $t: $(grep -o 'number_of_executed_units: [0-9]*' "$work/$t.log" | cut -d' ' -f2) inputs in ${seconds} s, no crash"
done
