//! Every advantage estimator at B = 4096 (256 prompts x 16), T = 4096 on CPU (criterion).
//!
//! ```text
//! cargo bench --bench advantage -- --warm-up-time 1 --measurement-time 3
//! scripts/.venv/bin/python scripts/reference/advantage.py --bench   # PyTorch (verl/TRL) side
//! ```
//! The same bench lives in `crates/rl-advantage/benches/` (runnable with `-p rl-advantage`);
//! results and the ratio table against PyTorch are in `docs/advantage.md`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

include!("../crates/rl-advantage/benches/body.rs");

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = bench_estimators, bench_scalar_part
}
criterion::criterion_main!(benches);
