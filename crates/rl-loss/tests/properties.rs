//! Invariants: on-policy PPO is minus the aggregated advantage, padding never changes a loss or
//! its gradient, micro-batches with global counts add up to the full batch in every aggregation
//! mode, KL estimators vanish on equal policies, and bad input is a typed error.

use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;
use rl_core::{Error, GlobalCounts, PolicyLoss, PolicyLossInput, ValueLoss, ValueLossInput};
use rl_loss::{
    Aggregation, CispoLoss, ClipCovLoss, ClippedValueLoss, GmpoLoss, GspoLoss, Kl, KlCovLoss,
    KlEstimator, KlLoss, PolicyLossConfig, PpoLoss, ReinforceLoss, SapoLoss,
};

const D: Device = Device::Cpu;

fn t(v: &[f32], b: usize, t: usize) -> Tensor {
    Tensor::from_slice(v, (b, t), &D).unwrap()
}

fn vals(x: &Tensor) -> Vec<f32> {
    x.flatten_all().unwrap().to_vec1().unwrap()
}

/// A small batch: `(log_probs, old, adv, mask)` as flat vectors of `b × t`.
#[derive(Clone, Debug)]
struct Batch {
    b: usize,
    t: usize,
    lp: Vec<f32>,
    old: Vec<f32>,
    adv: Vec<f32>,
    mask: Vec<f32>,
}

impl Batch {
    fn lens(&self) -> Vec<usize> {
        self.mask.chunks(self.t).map(|r| r.iter().filter(|x| **x != 0.0).count()).collect()
    }

    /// Copies rows `r` into a new batch.
    fn rows(&self, r: std::ops::Range<usize>) -> Batch {
        let s = r.start * self.t..r.end * self.t;
        Batch {
            b: r.len(),
            t: self.t,
            lp: self.lp[s.clone()].to_vec(),
            old: self.old[s.clone()].to_vec(),
            adv: self.adv[s.clone()].to_vec(),
            mask: self.mask[s].to_vec(),
        }
    }

    /// Copies rows `keep` (in that order) into a new batch.
    fn select(&self, keep: &[usize]) -> Batch {
        let pick = |v: &[f32]| -> Vec<f32> {
            keep.iter().flat_map(|&r| v[r * self.t..(r + 1) * self.t].iter().copied()).collect()
        };
        Batch {
            b: keep.len(),
            t: self.t,
            lp: pick(&self.lp),
            old: pick(&self.old),
            adv: pick(&self.adv),
            mask: pick(&self.mask),
        }
    }

    /// Appends `extra` padding columns holding NaN (log-probs, advantages) and garbage.
    fn padded(&self, extra: usize) -> Batch {
        let t2 = self.t + extra;
        let pad = |v: &[f32], fill: f32| -> Vec<f32> {
            v.chunks(self.t)
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(fill, extra)))
                .collect()
        };
        Batch {
            b: self.b,
            t: t2,
            lp: pad(&self.lp, f32::NAN),
            old: pad(&self.old, 1e30),
            adv: pad(&self.adv, f32::NAN),
            mask: pad(&self.mask, 0.0),
        }
    }
}

fn batch() -> impl Strategy<Value = Batch> {
    (1usize..5, 1usize..7).prop_flat_map(|(b, t)| {
        let n = b * t;
        (
            prop::collection::vec(-4.0f32..-0.05, n),
            prop::collection::vec(-0.4f32..0.4, n),
            prop::collection::vec(-2.0f32..2.0, n),
            prop::collection::vec(0..=t, b),
        )
            .prop_map(move |(lp, noise, adv, lens)| {
                let old = lp.iter().zip(&noise).map(|(l, e)| l + e).collect();
                let mask = (0..n).map(|i| if i % t < lens[i / t] { 1.0 } else { 0.0 }).collect();
                Batch { b, t, lp, old, adv, mask }
            })
    })
}

/// Loss value and gradient w.r.t. log-probs of `loss` on `x`.
fn run(
    loss: &dyn PolicyLoss,
    x: &Batch,
    ids: Option<&[usize]>,
    counts: Option<&GlobalCounts>,
) -> rl_core::Result<(f32, Vec<f32>, rl_core::Metrics)> {
    let lp = Var::from_tensor(&t(&x.lp, x.b, x.t))?;
    let (old, adv, mask) = (t(&x.old, x.b, x.t), t(&x.adv, x.b, x.t), t(&x.mask, x.b, x.t));
    let mut input = PolicyLossInput::new(&lp, &old, &adv, &mask);
    input.group_ids = ids;
    input.counts = counts;
    let out = loss.compute(&input)?;
    let g = out.loss.backward()?;
    Ok((out.loss.to_scalar()?, vals(g.get(&lp).unwrap()), out.metrics))
}

fn modes() -> Vec<Aggregation> {
    vec![
        Aggregation::TokenMean,
        Aggregation::SeqMeanTokenSum,
        Aggregation::SeqMeanTokenMean,
        Aggregation::SeqMeanTokenSumNorm { max_len: Some(9) },
        Aggregation::SeqMeanTokenSumNorm { max_len: None },
        Aggregation::SeqSumTokenSumNorm { scale: None },
        Aggregation::GroupTokenMean,
        Aggregation::Luspo,
    ]
}

fn policy_losses(agg: Aggregation) -> Vec<PolicyLossConfig> {
    vec![
        PolicyLossConfig::Ppo(PpoLoss { aggregation: agg, ..PpoLoss::dapo() }),
        PolicyLossConfig::Gspo(GspoLoss { clip_low: 0.01, clip_high: 0.02, aggregation: agg }),
        PolicyLossConfig::Cispo(CispoLoss { aggregation: agg, ..CispoLoss::default() }),
        PolicyLossConfig::Sapo(SapoLoss { aggregation: agg, ..SapoLoss::default() }),
        PolicyLossConfig::ClipCov(ClipCovLoss {
            ratio: 0.3,
            lb: -1.0,
            aggregation: agg,
            ..Default::default()
        }),
        PolicyLossConfig::KlCov(KlCovLoss { ratio: 0.3, aggregation: agg, ..Default::default() }),
        PolicyLossConfig::Reinforce(ReinforceLoss { aggregation: agg }),
    ]
}

fn close(a: f32, b: f32, what: &str) {
    assert!((a - b).abs() <= 2e-5 * a.abs().max(b.abs()).max(1.0), "{what}: {a} vs {b}");
}

fn fixed_batch() -> Batch {
    let (b, t) = (6, 5);
    let lens = [5, 3, 0, 4, 1, 5];
    let n = b * t;
    let f = |k: f32| (0..n).map(|i| ((i as f32 * k).sin() * 0.5) - 1.0).collect::<Vec<_>>();
    let lp = f(1.3);
    let old = lp.iter().zip(f(2.9)).map(|(l, e)| l + 0.6 * (e + 1.0)).collect();
    let adv =
        (0..n).map(|i| ((i / t) as f32 - 2.5) * 0.7 + (i as f32 * 0.37).cos() * 0.2).collect();
    let mask = (0..n).map(|i| if i % t < lens[i / t] { 1.0 } else { 0.0 }).collect();
    Batch { b, t, lp, old, adv, mask }
}

#[test]
fn micro_batches_with_global_counts_add_up_to_the_full_batch_in_every_mode() {
    let full = fixed_batch();
    let ids = [0usize, 0, 1, 1, 2, 2];
    let counts = GlobalCounts::from_batch(&t(&full.mask, full.b, full.t), &ids).unwrap();
    let splits = [0..2, 2..3, 3..6];
    for agg in modes() {
        for loss in policy_losses(agg) {
            if matches!(loss, PolicyLossConfig::ClipCov(_) | PolicyLossConfig::KlCov(_)) {
                continue; // their token selection is per micro-batch by definition
            }
            let (l_full, g_full, _) = run(&loss, &full, Some(&ids), None).unwrap();
            let (mut l_sum, mut g_cat) = (0f32, Vec::new());
            for r in splits.clone() {
                let (l, g, m) =
                    run(&loss, &full.rows(r.clone()), Some(&ids[r]), Some(&counts)).unwrap();
                assert!(m.iter().all(|(_, v)| v.is_finite()), "{loss:?}: {m:?}");
                l_sum += l;
                g_cat.extend(g);
            }
            close(l_sum, l_full, &format!("{loss:?} loss"));
            for (a, b) in g_cat.iter().zip(&g_full) {
                close(*a, *b, &format!("{loss:?} grad"));
            }
        }
    }
    // GMPO (sequence mean), value loss and KL loss accumulate the same way.
    let gmpo = GmpoLoss::default();
    let (l_full, _, _) = run(&gmpo, &full, None, None).unwrap();
    let l_sum: f32 = splits
        .iter()
        .map(|r| run(&gmpo, &full.rows(r.clone()), None, Some(&counts)).unwrap().0)
        .sum();
    close(l_sum, l_full, "gmpo");
    let value = ClippedValueLoss::default();
    let kl = KlLoss { coef: 0.5, ..KlLoss::default() };
    let eval = |x: &Batch, c: Option<&GlobalCounts>| {
        let (v, o, r, m) =
            (t(&x.lp, x.b, x.t), t(&x.old, x.b, x.t), t(&x.adv, x.b, x.t), t(&x.mask, x.b, x.t));
        let input = ValueLossInput {
            values: &v,
            old_values: &o,
            returns: &r,
            response_mask: &m,
            counts: c,
        };
        let a = value.compute(&input).unwrap().loss.to_scalar::<f32>().unwrap();
        let b = kl.compute(&v, &o, &m, None, c).unwrap().loss.to_scalar::<f32>().unwrap();
        (a, b)
    };
    let (vf, kf) = eval(&full, None);
    let parts: Vec<(f32, f32)> =
        splits.iter().map(|r| eval(&full.rows(r.clone()), Some(&counts))).collect();
    close(parts.iter().map(|p| p.0).sum(), vf, "value");
    close(parts.iter().map(|p| p.1).sum(), kf, "kl");
}

#[test]
fn a_fully_masked_micro_batch_contributes_zero_not_nan() {
    let mut x = fixed_batch();
    x.mask.iter_mut().for_each(|m| *m = 0.0);
    x.lp[0] = f32::NAN; // padding may hold anything
    let ids = [0usize, 0, 1, 1, 2, 2];
    for agg in modes() {
        for loss in policy_losses(agg) {
            for counts in [
                None,
                Some(GlobalCounts {
                    tokens: Some(10.0),
                    sequences: Some(3.0),
                    groups: Some(2.0),
                    group_tokens: None,
                }),
            ] {
                let (l, g, m) = run(&loss, &x, Some(&ids), counts.as_ref()).unwrap();
                assert_eq!(l, 0.0, "{loss:?}");
                assert!(g.iter().all(|v| *v == 0.0), "{loss:?}");
                assert!(m.iter().all(|(_, v)| v.is_finite()), "{loss:?} {m:?}");
            }
        }
    }
    assert_eq!(run(&GmpoLoss::default(), &x, None, None).unwrap().0, 0.0);
}

#[test]
fn clip_cov_selection_is_deterministic_under_a_seed() {
    let x = fixed_batch();
    let with = |seed| ClipCovLoss { ratio: 0.2, lb: -5.0, ub: 5.0, seed, ..Default::default() };
    let a = run(&with(1), &x, None, None).unwrap();
    let b = run(&with(1), &x, None, None).unwrap();
    assert_eq!(a.1, b.1);
    assert_eq!(a.2.get("cov_frac"), Some(3.0 / 18.0));
    let differs = (2..10).any(|s| run(&with(s), &x, None, None).unwrap().1 != a.1);
    assert!(differs, "other seeds select other tokens");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn on_policy_ppo_is_minus_the_aggregated_advantage(x in batch(), dual in prop::option::of(1.5f64..5.0)) {
        let ids: Vec<usize> = (0..x.b).map(|i| i / 2).collect();
        let mask = t(&x.mask, x.b, x.t);
        for agg in modes() {
            let on = Batch { old: x.lp.clone(), ..x.clone() };
            let loss = PpoLoss { clip_low: 0.2, clip_high: 0.28, dual_clip: dual, aggregation: agg };
            let (l, g, m) = run(&loss, &on, Some(&ids), None).unwrap();
            let neg_adv = (t(&x.adv, x.b, x.t) * -1.0).unwrap();
            let want = agg.aggregate(&neg_adv, &mask, Some(&ids), None).unwrap().to_scalar::<f32>().unwrap();
            close(l, want, "on-policy loss");
            prop_assert_eq!(m.get("ratio_mean"), Some(1.0));
            prop_assert_eq!(m.get("clipfrac"), Some(0.0));
            // The gradient is the plain policy gradient −A·w_b·M.
            let w = agg.row_weights(&x.lens(), x.t, Some(&ids), None).unwrap();
            for (i, gi) in g.iter().enumerate() {
                close(*gi, (-(x.adv[i] as f64) * w[i / x.t] * x.mask[i] as f64) as f32, "on-policy grad");
            }
        }
    }

    #[test]
    fn padding_never_changes_loss_or_gradient(x in batch(), extra in 1usize..4) {
        let ids: Vec<usize> = (0..x.b).map(|i| i % 2).collect();
        let p = x.padded(extra);
        for agg in modes() {
            if matches!(agg, Aggregation::SeqMeanTokenSumNorm { max_len: None } | Aggregation::SeqSumTokenSumNorm { scale: None } | Aggregation::Luspo) {
                continue; // these normalise by T itself
            }
            let mut losses = policy_losses(agg);
            losses.push(PolicyLossConfig::Gmpo(GmpoLoss::default()));
            for loss in losses {
                let (l, g, _) = run(&loss, &x, Some(&ids), None).unwrap();
                let (lp_, gp, _) = run(&loss, &p, Some(&ids), None).unwrap();
                prop_assert_eq!(l, lp_, "{:?}", loss);
                for b in 0..x.b {
                    prop_assert_eq!(&g[b * x.t..(b + 1) * x.t], &gp[b * p.t..b * p.t + x.t]);
                    prop_assert!(gp[b * p.t + x.t..(b + 1) * p.t].iter().all(|v| *v == 0.0));
                }
            }
        }
    }

    /// What `PolicyLoss::zero_advantage_rows_inert` promises the trainer: with mini-batch-wide
    /// counts and the same padded length, leaving out rows whose advantages are all zero changes
    /// neither the loss nor the gradient of the other rows, and those rows' gradient is zero.
    /// Every loss claims it but the two that select tokens by a batch covariance.
    #[test]
    fn zero_advantage_rows_are_inert_where_claimed(
        x in batch(),
        zero in prop::collection::vec(any::<bool>(), 5),
    ) {
        let ids: Vec<usize> = (0..x.b).map(|i| i / 2).collect();
        let mut x = x;
        let width = x.t;
        for (row, _) in x.adv.chunks_mut(width).zip(&zero).filter(|(_, z)| **z) {
            row.iter_mut().for_each(|a| *a = 0.0);
        }
        let keep: Vec<usize> = (0..x.b).filter(|b| !zero[*b]).collect();
        let kept = x.select(&keep);
        let kept_ids: Vec<usize> = keep.iter().map(|&b| ids[b]).collect();
        let counts = GlobalCounts::from_batch(&t(&x.mask, x.b, x.t), &ids).unwrap();
        for agg in modes() {
            let mut losses = policy_losses(agg);
            losses.push(PolicyLossConfig::Gmpo(GmpoLoss::default()));
            for loss in losses {
                let batch_stats = matches!(loss, PolicyLossConfig::ClipCov(_) | PolicyLossConfig::KlCov(_));
                prop_assert_eq!(loss.zero_advantage_rows_inert(), !batch_stats, "{:?}", loss);
                if !loss.zero_advantage_rows_inert() || keep.is_empty() {
                    continue;
                }
                let (l, g, _) = run(&loss, &x, Some(&ids), Some(&counts)).unwrap();
                let (lk, gk, _) = run(&loss, &kept, Some(&kept_ids), Some(&counts)).unwrap();
                close(lk, l, &format!("{loss:?} loss"));
                for (k, &b) in keep.iter().enumerate() {
                    for j in 0..x.t {
                        close(gk[k * x.t + j], g[b * x.t + j], &format!("{loss:?} grad"));
                    }
                }
                for b in (0..x.b).filter(|b| zero[*b]) {
                    prop_assert!(g[b * x.t..(b + 1) * x.t].iter().all(|v| *v == 0.0), "{:?}", loss);
                }
            }
        }
    }

    #[test]
    fn kl_estimators_vanish_on_equal_policies_and_k3_is_nonnegative(
        lp in prop::collection::vec(-20.0f32..0.0, 1..12),
        shift in prop::collection::vec(-30.0f32..30.0, 1..12),
    ) {
        let n = lp.len().min(shift.len());
        let a = t(&lp[..n], 1, n);
        let b = t(&lp.iter().zip(&shift).map(|(l, s)| l + s).collect::<Vec<_>>(), 1, n);
        let mask = Tensor::ones((1, n), candle_core::DType::F32, &D).unwrap();
        for est in [KlEstimator::K1, KlEstimator::Abs, KlEstimator::K2, KlEstimator::K3] {
            for st in [false, true] {
                let kl = Kl { estimator: est, straight_through: st };
                prop_assert!(vals(&kl.penalty(&a, &a, &mask).unwrap()).iter().all(|v| *v == 0.0));
            }
        }
        let k3 = Kl::new(KlEstimator::K3).penalty(&a, &b, &mask).unwrap();
        prop_assert!(vals(&k3).iter().all(|v| *v >= 0.0));
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = fixed_batch();
    let loss = PpoLoss::default();
    let (b, tt) = (x.b, x.t);
    let lp = t(&x.lp, b, tt);
    let (old, adv, mask) = (t(&x.old, b, tt), t(&x.adv, b, tt), t(&x.mask, b, tt));
    let short = t(&x.adv[..(b - 1) * tt], b - 1, tt);
    let err = |i: PolicyLossInput<'_>| loss.compute(&i).unwrap_err();
    assert!(matches!(
        err(PolicyLossInput::new(&lp, &old, &short, &mask)),
        Error::ShapeMismatch { .. }
    ));
    assert!(matches!(
        err(PolicyLossInput::new(&lp, &old, &adv, &short)),
        Error::ShapeMismatch { .. }
    ));
    let mut nan = x.adv.clone();
    nan[1] = f32::NAN; // row 0 is fully valid
    let nan = t(&nan, b, tt);
    assert!(matches!(
        err(PolicyLossInput::new(&lp, &old, &nan, &mask)),
        Error::NonFinite { index: 1, .. }
    ));
    let mut inf = x.old.clone();
    inf[0] = f32::INFINITY;
    let inf = t(&inf, b, tt);
    assert!(matches!(err(PolicyLossInput::new(&lp, &inf, &adv, &mask)), Error::NonFinite { .. }));
    let half = (&mask * 0.5).unwrap();
    // The first 0.5 of the halved mask: the first valid token of row 0.
    let col = x.mask[..tt].iter().position(|m| *m != 0.0).expect("row 0 has a valid token");
    match err(PolicyLossInput::new(&lp, &old, &adv, &half)) {
        Error::InvalidMask { what, row, col: c, value } => {
            assert_eq!((what.as_str(), row, c, value), ("response_mask", 0, col, 0.5));
        }
        e => panic!("expected InvalidMask, got {e:?}"),
    }
    let mut i = PolicyLossInput::new(&lp, &old, &adv, &mask);
    let ids = [0usize; 2];
    i.group_ids = Some(&ids);
    assert!(matches!(err(i), Error::GroupMismatch { expected: 6, got: 2 }));
    let grouped = PpoLoss { aggregation: Aggregation::GroupTokenMean, ..PpoLoss::default() };
    let no_ids = grouped.compute(&PolicyLossInput::new(&lp, &old, &adv, &mask)).unwrap_err();
    assert!(matches!(no_ids, Error::Config { .. }));
    let empty = Tensor::zeros((0, 3), candle_core::DType::F32, &D).unwrap();
    assert!(matches!(
        err(PolicyLossInput::new(&empty, &empty, &empty, &empty)),
        Error::Empty { .. }
    ));
    let rank1 = Tensor::zeros(3, candle_core::DType::F32, &D).unwrap();
    assert!(matches!(
        err(PolicyLossInput::new(&rank1, &rank1, &rank1, &rank1)),
        Error::ShapeMismatch { .. }
    ));
    // Invalid clip ranges, for every loss that clips.
    let input = PolicyLossInput::new(&lp, &old, &adv, &mask);
    let bad: Vec<Box<dyn PolicyLoss>> = vec![
        Box::new(PpoLoss { clip_low: 0.0, ..PpoLoss::default() }),
        Box::new(PpoLoss { clip_low: 0.3, clip_high: 0.2, ..PpoLoss::default() }),
        Box::new(PpoLoss { dual_clip: Some(1.0), ..PpoLoss::default() }),
        Box::new(GspoLoss { clip_low: -1e-4, ..GspoLoss::default() }),
        Box::new(CispoLoss { clip_high: 0.0, ..CispoLoss::default() }),
        Box::new(GmpoLoss { clip_low: 0.5, clip_high: 0.1 }),
        Box::new(SapoLoss { tau_neg: 0.0, ..SapoLoss::default() }),
        Box::new(ClipCovLoss { lb: 5.0, ub: 1.0, ..ClipCovLoss::default() }),
        Box::new(KlCovLoss { ratio: 0.0, ..KlCovLoss::default() }),
    ];
    for l in bad {
        assert!(matches!(l.compute(&input), Err(Error::Config { .. })));
    }
}

#[test]
fn recipes_round_trip_and_unknown_names_fail() {
    for c in [
        PolicyLossConfig::open_reasoner_zero(),
        PolicyLossConfig::dr_grpo(3000),
        PolicyLossConfig::dapo(),
        PolicyLossConfig::grpo(),
        PolicyLossConfig::gspo(),
        PolicyLossConfig::Cispo(CispoLoss::trl()),
        PolicyLossConfig::Sapo(SapoLoss::default()),
        PolicyLossConfig::Gmpo(GmpoLoss::default()),
        PolicyLossConfig::ClipCov(ClipCovLoss::default()),
        PolicyLossConfig::KlCov(KlCovLoss::default()),
        PolicyLossConfig::Reinforce(ReinforceLoss::bypass()),
    ] {
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<PolicyLossConfig>(&j).unwrap(), c, "{j}");
        let s = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<PolicyLossConfig>(&s).unwrap(), c, "{s}");
    }
    assert!(serde_json::from_str::<PolicyLossConfig>(r#"{"type":"vanilla"}"#).is_err());
    assert!(serde_json::from_str::<PolicyLossConfig>(r#"{"type":"ppo","clip_hi":0.3}"#).is_err());
    let d: PolicyLossConfig = toml::from_str("type = \"ppo\"").unwrap();
    assert_eq!(d, PolicyLossConfig::default());
}
