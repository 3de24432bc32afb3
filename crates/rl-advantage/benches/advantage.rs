//! Criterion bench of every estimator at B = 4096 (256 prompts x 16), T = 4096 on CPU.
//!
//! Run: `cargo bench -p rl-advantage --bench advantage -- --warm-up-time 1 --measurement-time 3`;
//! compare with `scripts/.venv/bin/python scripts/reference/advantage.py --bench` (the PyTorch
//! transcriptions of verl / TRL on the same machine). Results: `docs/advantage.md`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

include!("body.rs");

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = bench_estimators, bench_scalar_part
}
criterion::criterion_main!(benches);
