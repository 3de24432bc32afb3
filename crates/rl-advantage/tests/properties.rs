//! Property tests (proptest) of invariants every estimator must keep.

use proptest::prelude::*;
use rl_advantage::{
    Advantage, DrGrpo, Gae, GrpoPassK, OptimalTokenBaseline, Rloo, Singleton, Whiten,
};
use rl_core::{
    AdvantageEstimator, AdvantageInput, Advantages, Device, PolicyStats, Rewards, Tensor,
};

/// `(advantages, returns)` as host rows.
type Rows = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// A random batch: groups of 1..=5 (or 2..=5) responses with sparse ids, ragged lengths, optional
/// interior holes, rewards, values and a greedy baseline.
#[derive(Clone, Debug)]
struct Batch {
    t: usize,
    ids: Vec<usize>,
    mask: Vec<Vec<f32>>,
    scores: Vec<f32>,
    values: Vec<Vec<f32>>,
    baseline: Vec<f32>,
}

fn batch(min_group: usize) -> impl Strategy<Value = Batch> {
    (1usize..=8, prop::collection::vec(min_group..=5usize, 1..=5)).prop_flat_map(|(t, sizes)| {
        let ids: Vec<usize> =
            sizes.iter().enumerate().flat_map(|(g, &n)| vec![g * 7 + 3; n]).collect();
        let b = ids.len();
        (
            Just(t),
            Just(ids),
            prop::collection::vec((1..=t, any::<u8>()), b),
            prop::collection::vec(
                prop_oneof![Just(0f32), Just(1.0), Just(-1.0), Just(0.5), -2f32..2.0],
                b,
            ),
            prop::collection::vec(prop::collection::vec(-1f32..1.0, t), b),
            prop::collection::vec(0f32..1.0, b),
        )
            .prop_map(|(t, ids, rows, scores, values, baseline)| {
                let mask = rows
                    .iter()
                    .map(|&(len, holes)| {
                        // right padding after `len`; bits of `holes` punch interior gaps (never token 0)
                        (0..t)
                            .map(|j| {
                                if j < len && (j == 0 || holes & (1 << (j % 8)) == 0) {
                                    1.0
                                } else {
                                    0.0
                                }
                            })
                            .collect()
                    })
                    .collect();
                Batch { t, ids, mask, scores, values, baseline }
            })
    })
}

impl Batch {
    fn b(&self) -> usize {
        self.ids.len()
    }

    fn permuted(&self, perm: &[usize]) -> Batch {
        Batch {
            t: self.t,
            ids: perm.iter().map(|&i| self.ids[i]).collect(),
            mask: perm.iter().map(|&i| self.mask[i].clone()).collect(),
            scores: perm.iter().map(|&i| self.scores[i]).collect(),
            values: perm.iter().map(|&i| self.values[i].clone()).collect(),
            baseline: perm.iter().map(|&i| self.baseline[i]).collect(),
        }
    }

    fn run(&self, est: &dyn AdvantageEstimator) -> rl_core::Result<Rows> {
        let d = Device::Cpu;
        let t2 = |v: &[Vec<f32>]| Tensor::from_vec(v.concat(), (self.b(), self.t), &d).unwrap();
        let (mask, values) = (t2(&self.mask), t2(&self.values));
        let rewards = Rewards::from_scores(&self.scores, &d)?;
        let baseline = Tensor::new(self.baseline.as_slice(), &d)?;
        // Policy statistics derived from each row's values, so they move with the row.
        let derived = |f: fn(f32) -> f32| {
            t2(&self.values.iter().map(|r| r.iter().map(|&v| f(v)).collect()).collect::<Vec<_>>())
        };
        let (log_probs, sum_pi_squared) = (derived(|v| v - 1.0), derived(|v| 0.1 + 0.5 * v * v));
        let stats = PolicyStats {
            log_probs: &log_probs,
            sum_pi_squared: &sum_pi_squared,
            is_weights: None,
        };
        let input = AdvantageInput::new(&rewards, &mask, &self.ids)
            .with_values(&values)
            .with_baseline(&baseline)
            .with_policy_stats(stats);
        let Advantages { advantages, returns } = est.estimate(&input)?;
        Ok((advantages.to_vec2()?, returns.to_vec2()?))
    }
}

/// Every built-in estimator with its defaults ([`Advantage::builtins`]) but pass@k (whose ties
/// depend on row order; the tests add the variants they can use), plus non-default presets.
fn all_estimators() -> Vec<Advantage> {
    let mut all: Vec<Advantage> = Advantage::builtins()
        .into_iter()
        .filter(|e| !matches!(e, Advantage::GrpoPassK(_)))
        .collect();
    all.extend([
        Advantage::open_reasoner_zero(),
        Advantage::Gae(Gae { gamma: 0.9, lambda: 0.7, whiten: Whiten::None }),
        Advantage::trl_grpo(),
        OptimalTokenBaseline { handle_zero_tail: true, ..OptimalTokenBaseline::default() }.into(),
    ]);
    all
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn dr_grpo_sums_to_zero_in_each_group(b in batch(1)) {
        let (adv, _) = b.run(&DrGrpo { singleton: Singleton::Zero }).unwrap();
        let mut sums = std::collections::HashMap::<usize, f64>::new();
        for (i, &id) in b.ids.iter().enumerate() {
            // one scalar per response: take it from the first valid token (token 0 is always valid)
            *sums.entry(id).or_default() += adv[i][0] as f64;
        }
        for s in sums.values() {
            prop_assert!(s.abs() < 1e-5, "group sum {s}");
        }
    }

    #[test]
    fn rloo_is_reward_minus_mean_of_others(b in batch(2)) {
        let (adv, _) = b.run(&Rloo::default()).unwrap();
        for (i, row) in adv.iter().enumerate() {
            let others: Vec<f64> = (0..b.b()).filter(|&j| j != i && b.ids[j] == b.ids[i]).map(|j| b.scores[j] as f64).collect();
            let want = b.scores[i] as f64 - others.iter().sum::<f64>() / others.len() as f64;
            prop_assert!((row[0] as f64 - want).abs() < 1e-5, "{} vs {want}", row[0]);
        }
    }

    #[test]
    fn padding_is_exactly_zero_and_outputs_finite(b in batch(2)) {
        let mut ests = all_estimators();
        ests.push(Advantage::grpo_passk());
        for est in &ests {
            let (adv, ret) = match b.run(est) {
                Ok(x) => x,
                // whitening a batch with a single valid token is a typed error, not NaN
                Err(rl_core::Error::InsufficientData { .. }) => continue,
                Err(e) => return Err(TestCaseError::fail(format!("{est:?}: {e}"))),
            };
            for i in 0..b.b() {
                for j in 0..b.t {
                    prop_assert!(adv[i][j].is_finite() && ret[i][j].is_finite());
                    if b.mask[i][j] == 0.0 {
                        prop_assert_eq!(adv[i][j], 0.0, "{:?} adv[{}][{}]", est, i, j);
                        prop_assert_eq!(ret[i][j], 0.0, "{:?} ret[{}][{}]", est, i, j);
                    }
                }
            }
        }
    }

    #[test]
    fn gae_with_unit_gamma_lambda_is_monte_carlo_return_minus_value(b in batch(1)) {
        let (adv, ret) = b.run(&Gae { gamma: 1.0, lambda: 1.0, whiten: Whiten::None }).unwrap();
        for i in 0..b.b() {
            // the outcome score sits on the last valid token: every valid token's return is r_i
            for j in 0..b.t {
                if b.mask[i][j] != 0.0 {
                    prop_assert!(close(ret[i][j], b.scores[i]), "R {} vs {}", ret[i][j], b.scores[i]);
                    prop_assert!(close(adv[i][j], b.scores[i] - b.values[i][j]));
                }
            }
        }
    }

    #[test]
    fn shuffling_rows_changes_no_advantage(
        (b, perm) in batch(2).prop_flat_map(|b| { let n = b.b(); (Just(b), Just((0..n).collect::<Vec<_>>()).prop_shuffle()) })
    ) {
        let shuffled = b.permuted(&perm);
        let mut ests = all_estimators();
        ests.push(Advantage::GrpoPassK(GrpoPassK { norm_by_std: false, ..GrpoPassK::default() }));
        for est in &ests {
            let (Ok((a, r)), Ok((sa, sr))) = (b.run(est), shuffled.run(est)) else {
                prop_assert!(b.run(est).is_err() && shuffled.run(est).is_err());
                continue;
            };
            for (k, &i) in perm.iter().enumerate() {
                for j in 0..b.t {
                    prop_assert!(close(sa[k][j], a[i][j]), "{:?} adv row {} tok {}: {} vs {}", est, i, j, sa[k][j], a[i][j]);
                    prop_assert!(close(sr[k][j], r[i][j]), "{:?} ret row {}", est, i);
                }
            }
        }
    }
}
