//! Every advantage estimator at B = 4096 (256 prompts x 16), T = 4096 on CPU (criterion).
//!
//! ```text
//! cargo bench --bench advantage -- --warm-up-time 1 --measurement-time 3
//! scripts/.venv/bin/python scripts/reference/advantage.py --bench   # PyTorch (verl/TRL) side
//! ```
//! Results and the ratio table against PyTorch are in `docs/advantage.md`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

// Shared body of the `advantage` criterion bench (included by
// `crates/rl-advantage/benches/advantage.rs` and the workspace's `benches/advantage.rs`).

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use rl_advantage::Advantage;
use rl_core::testing::SplitMix64;
use rl_core::{AdvantageEstimator, AdvantageInput, Device, Rewards, Tensor};

/// Responses (256 prompts x 16), padded response length, group size.
const B: usize = 4096;
const T: usize = 4096;
const GROUP: usize = 16;

struct Inputs {
    mask: Tensor,
    values: Tensor,
    baseline: Tensor,
    scores: Rewards,
    tokens: Rewards,
    ids: Vec<usize>,
}

fn inputs() -> Inputs {
    let dev = Device::Cpu;
    let mut rng = SplitMix64::new(0);
    let lens: Vec<usize> = (0..B).map(|_| 1 + (rng.next_u64() as usize) % T).collect();
    let mut mask = vec![0f32; B * T];
    let mut tokens = vec![0f32; B * T];
    let scores: Vec<f32> = (0..B).map(|_| (rng.next_u64() % 2) as f32).collect();
    for (i, &l) in lens.iter().enumerate() {
        mask[i * T..i * T + l].fill(1.0);
        tokens[i * T + l - 1] = scores[i];
    }
    let values: Vec<f32> = (0..B * T).map(|_| rng.next_f64() as f32 - 0.5).collect();
    let baseline: Vec<f32> = (0..B).map(|_| rng.next_f64() as f32).collect();
    Inputs {
        mask: Tensor::from_vec(mask, (B, T), &dev).unwrap(),
        values: Tensor::from_vec(values, (B, T), &dev).unwrap(),
        baseline: Tensor::from_vec(baseline, B, &dev).unwrap(),
        scores: Rewards::from_scores(&scores, &dev).unwrap(),
        tokens: Rewards::Token(Tensor::from_vec(tokens, (B, T), &dev).unwrap()),
        ids: (0..B).map(|i| i / GROUP).collect(),
    }
}

fn bench_estimators(c: &mut Criterion) {
    let x = inputs();
    let seq = AdvantageInput::new(&x.scores, &x.mask, &x.ids)
        .with_values(&x.values)
        .with_baseline(&x.baseline);
    let tok = AdvantageInput { rewards: &x.tokens, ..seq };
    let mut g = c.benchmark_group(format!("advantage_B{B}_T{T}"));
    let cases = [
        ("gae", Advantage::ppo()),
        ("grpo", Advantage::grpo()),
        ("dr_grpo", Advantage::dr_grpo()),
        ("batch_std", Advantage::trl_batch_std()),
        ("rloo", Advantage::rloo()),
        ("reinforce_plus_plus", Advantage::reinforce_plus_plus()),
        ("reinforce_plus_plus_baseline", Advantage::reinforce_plus_plus_baseline()),
        ("remax", Advantage::remax()),
        ("opo", Advantage::opo()),
        ("gpg", Advantage::gpg()),
        ("grpo_passk", Advantage::grpo_passk()),
    ];
    for (name, est) in &cases {
        g.bench_function(*name, |b| b.iter(|| black_box(est.estimate(black_box(&seq)).unwrap())));
    }
    // verl's layout: the outcome score as token-level rewards on the last valid token
    for (name, est) in
        [("gae_token_rewards", Advantage::ppo()), ("grpo_token_rewards", Advantage::grpo())]
    {
        g.bench_function(name, |b| b.iter(|| black_box(est.estimate(black_box(&tok)).unwrap())));
    }
    // memory-bound floor: one (B, T) broadcast multiply in candle
    let a = x.scores.sequence_scores().unwrap().unsqueeze(1).unwrap();
    g.bench_function("floor_candle_broadcast_mul", |b| {
        b.iter(|| black_box(a.broadcast_mul(&x.mask).unwrap()))
    });
    g.finish();
}

/// The GRPO-family estimators at T = 1: the group arithmetic over B = 4096 responses without
/// the cost of materialising a (B, 4096) output.
fn bench_scalar_part(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut rng = SplitMix64::new(1);
    let scores: Vec<f32> = (0..B).map(|_| (rng.next_u64() % 2) as f32).collect();
    let rewards = Rewards::from_scores(&scores, &dev).unwrap();
    let mask = Tensor::ones((B, 1), rl_core::DType::F32, &dev).unwrap();
    let ids: Vec<usize> = (0..B).map(|i| i / GROUP).collect();
    let input = AdvantageInput::new(&rewards, &mask, &ids);
    let mut g = c.benchmark_group(format!("advantage_B{B}_T1"));
    for (name, est) in [
        ("grpo", Advantage::grpo()),
        ("dr_grpo", Advantage::dr_grpo()),
        ("batch_std", Advantage::trl_batch_std()),
        ("rloo", Advantage::rloo()),
        ("opo", Advantage::opo()),
        ("gpg", Advantage::gpg()),
        ("grpo_passk", Advantage::grpo_passk()),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(est.estimate(black_box(&input)).unwrap())));
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = bench_estimators, bench_scalar_part
}
criterion::criterion_main!(benches);
