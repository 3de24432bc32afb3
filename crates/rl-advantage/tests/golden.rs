//! Golden tests against the PyTorch transcriptions of verl / TRL / oat / ORZ in
//! `scripts/reference/advantage.py`, which wrote `tests/fixtures/advantage.json`
//! (regenerate with `scripts/.venv/bin/python scripts/reference/advantage.py --fixtures
//! crates/rl-advantage/tests/fixtures/advantage.json`).
//!
//! Each case carries its estimator config as the JSON of [`Advantage`], so parsing is covered
//! too. The cases mix group sizes (4, 3, 2, 1), interleaved group ids, an all-equal group,
//! ragged lengths, interior masked tokens, sequence- and token-level rewards.

use rl_advantage::Advantage;
use rl_core::{AdvantageEstimator, AdvantageInput, Device, Rewards, Tensor};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    estimator: Advantage,
    group_ids: Vec<usize>,
    mask: Vec<Vec<f32>>,
    advantages: Vec<Vec<f64>>,
    returns: Vec<Vec<f64>>,
    sequence_rewards: Option<Vec<f32>>,
    token_rewards: Option<Vec<Vec<f32>>>,
    values: Option<Vec<Vec<f32>>>,
    baseline: Option<Vec<f32>>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn t2(v: &[Vec<f32>]) -> Tensor {
    let (b, t) = (v.len(), v[0].len());
    Tensor::from_vec(v.concat(), (b, t), &Device::Cpu).unwrap()
}

fn compare(name: &str, what: &str, got: &Tensor, want: &[Vec<f64>], mask: &[Vec<f32>]) {
    let got = got.to_vec2::<f32>().unwrap();
    for (i, (gr, wr)) in got.iter().zip(want).enumerate() {
        for (j, (g, w)) in gr.iter().zip(wr).enumerate() {
            if mask[i][j] == 0.0 {
                assert_eq!(*g, 0.0, "{name}: {what}[{i}][{j}] must be exactly 0 on padding");
            }
            let tol = 2e-5 * w.abs().max(1.0);
            assert!((*g as f64 - w).abs() <= tol, "{name}: {what}[{i}][{j}] = {g}, reference {w}");
        }
    }
}

#[test]
fn golden_against_pytorch_reference() {
    let text = include_str!("fixtures/advantage.json");
    let fixture: Fixture = serde_json::from_str(text).unwrap();
    assert!(fixture.cases.len() >= 20);
    for c in &fixture.cases {
        let mask = t2(&c.mask);
        let rewards = match (&c.sequence_rewards, &c.token_rewards) {
            (Some(s), None) => Rewards::from_scores(s, &Device::Cpu).unwrap(),
            (None, Some(t)) => Rewards::Token(t2(t)),
            _ => panic!("{}: exactly one kind of rewards", c.name),
        };
        let values = c.values.as_ref().map(|v| t2(v));
        let baseline =
            c.baseline.as_ref().map(|b| Tensor::new(b.as_slice(), &Device::Cpu).unwrap());
        let mut input = AdvantageInput::new(&rewards, &mask, &c.group_ids);
        if let Some(v) = &values {
            input = input.with_values(v);
        }
        if let Some(b) = &baseline {
            input = input.with_baseline(b);
        }
        assert_eq!(c.estimator.requires_values(), values.is_some(), "{}", c.name);
        let out = c.estimator.estimate(&input).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        compare(&c.name, "advantages", &out.advantages, &c.advantages, &c.mask);
        compare(&c.name, "returns", &out.returns, &c.returns, &c.mask);
    }
}

/// A case of `tests/fixtures/optimal_token_baseline.json`, written by
/// `scripts/reference/advantage_otb.py` (verl `compute_optimal_token_baseline_advantage`,
/// `core_algos.py` L758-873).
#[derive(Deserialize)]
struct OtbCase {
    name: String,
    estimator: Advantage,
    group_ids: Vec<usize>,
    mask: Vec<Vec<f32>>,
    log_probs: Vec<Vec<f32>>,
    sum_pi_squared: Vec<Vec<f32>>,
    is_weights: Option<Vec<Vec<f32>>>,
    sequence_rewards: Option<Vec<f32>>,
    token_rewards: Option<Vec<Vec<f32>>>,
    advantages: Vec<Vec<f64>>,
    returns: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct OtbFixture {
    cases: Vec<OtbCase>,
}

#[test]
fn optimal_token_baseline_against_pytorch_reference() {
    let text = include_str!("fixtures/optimal_token_baseline.json");
    let fixture: OtbFixture = serde_json::from_str(text).unwrap();
    assert!(fixture.cases.len() >= 5);
    for c in &fixture.cases {
        assert!(matches!(c.estimator, Advantage::OptimalTokenBaseline(_)), "{}", c.name);
        let mask = t2(&c.mask);
        let rewards = match (&c.sequence_rewards, &c.token_rewards) {
            (Some(s), None) => Rewards::from_scores(s, &Device::Cpu).unwrap(),
            (None, Some(t)) => Rewards::Token(t2(t)),
            _ => panic!("{}: exactly one kind of rewards", c.name),
        };
        let (log_probs, sum_pi_squared) = (t2(&c.log_probs), t2(&c.sum_pi_squared));
        let is_weights = c.is_weights.as_ref().map(|w| t2(w));
        let stats = rl_core::PolicyStats {
            log_probs: &log_probs,
            sum_pi_squared: &sum_pi_squared,
            is_weights: is_weights.as_ref(),
        };
        let input = AdvantageInput::new(&rewards, &mask, &c.group_ids).with_policy_stats(stats);
        let out = c.estimator.estimate(&input).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        compare(&c.name, "advantages", &out.advantages, &c.advantages, &c.mask);
        compare(&c.name, "returns", &out.returns, &c.returns, &c.mask);
    }
}
