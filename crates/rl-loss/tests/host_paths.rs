//! The host path: inputs read in place or copied, rows processed by blocks of tokens up to their
//! last valid token, finiteness checked inside the compute pass.
//!
//! * Long rows (several blocks, a partial last block, holes in the mask, NaN padding) give the
//!   same gradient, bit for bit, and the same loss as the same tokens laid out in short rows.
//! * Contiguous f32 CPU inputs (read in place), strided or f64 inputs (copied) and inputs that
//!   share a storage give bit-identical results.
//! * Errors are the ones an eager check in input order gives.

use candle_core::{DType, Device, Tensor, Var};
use rl_core::{Error, LossOutput, PolicyLoss, PolicyLossInput, ValueLoss, ValueLossInput};
use rl_loss::{
    Aggregation, CispoLoss, ClipCovLoss, ClippedValueLoss, GmpoLoss, GspoLoss, Kl, KlCovLoss,
    KlEstimator, KlLoss, PpoLoss, ReinforceLoss, SapoLoss,
};

const D: Device = Device::Cpu;

/// `(lp, old, adv, mask, is_w)`, flat `b × t`: rows of different lengths, holes in the mask,
/// NaN in `lp` and `old` at every invalid position.
fn batch(b: usize, t: usize) -> [Vec<f32>; 5] {
    let n = b * t;
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let mask: Vec<f32> = (0..n)
        .map(|i| {
            let (row, j) = (i / t, i % t);
            let len = t - (row * 97) % t; // row 0 full, the others shorter
            f32::from(j < len && j % 29 != 17) // and a hole every 29 tokens
        })
        .collect();
    let mut lp: Vec<f32> = (0..n).map(|_| (u() * 0.95 + 0.02).ln()).collect();
    let mut old: Vec<f32> = lp.iter().map(|l| l + (u() - 0.5) * 0.8).collect();
    let adv: Vec<f32> = (0..n).map(|_| u() * 2.0 - 1.0).collect();
    let is_w: Vec<f32> = (0..n).map(|_| u() * 2.0).collect();
    for i in (0..n).filter(|&i| mask[i] == 0.0) {
        (lp[i], old[i]) = (f32::NAN, f32::NAN);
    }
    [lp, old, adv, mask, is_w]
}

fn t(v: &[f32], b: usize, t: usize) -> Tensor {
    Tensor::from_slice(v, (b, t), &D).unwrap()
}

fn grad(out: &LossOutput, x: &Var) -> Vec<u32> {
    let g = out.loss.backward().unwrap();
    let g = g.get(x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    g.iter().map(|x| x.to_bits()).collect()
}

fn scalar(out: &LossOutput) -> f64 {
    out.loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol * a.abs().max(b.abs()).max(1e-30), "{what}: {a} vs {b}");
}

/// A loss as a function of `(lp, old, adv, mask, is_w)`.
type Case = (&'static str, Box<dyn Fn(&Var, &Tensor, &Tensor, &Tensor, &Tensor) -> LossOutput>);

/// Losses whose value is a sum over tokens with a weight that only depends on the token count
/// (so laying the same tokens out in other rows must not change them).
fn token_losses() -> Vec<Case> {
    let policy = |l: Box<dyn PolicyLoss>, with_is: bool| {
        move |lp: &Var, old: &Tensor, adv: &Tensor, mask: &Tensor, is_w: &Tensor| {
            let mut i = PolicyLossInput::new(lp, old, adv, mask);
            if with_is {
                i.rollout_is_weights = Some(is_w);
            }
            l.compute(&i).unwrap()
        }
    };
    let mut v: Vec<Case> = vec![
        ("ppo verl", Box::new(policy(Box::new(PpoLoss::verl()), false))),
        ("ppo verl + is", Box::new(policy(Box::new(PpoLoss::verl()), true))),
        ("ppo plain", Box::new(policy(Box::<PpoLoss>::default(), false))),
        ("cispo", Box::new(policy(Box::<CispoLoss>::default(), false))),
        ("cispo trl + is", Box::new(policy(Box::new(CispoLoss::trl()), true))),
        (
            "sapo",
            Box::new(policy(
                Box::new(SapoLoss { aggregation: Aggregation::TokenMean, ..SapoLoss::default() }),
                false,
            )),
        ),
        ("reinforce", Box::new(policy(Box::<ReinforceLoss>::default(), false))),
        ("clip-cov", Box::new(policy(Box::<ClipCovLoss>::default(), false))),
        (
            "kl-cov",
            Box::new(policy(Box::new(KlCovLoss { ratio: 0.01, ..KlCovLoss::default() }), false)),
        ),
        (
            "value",
            Box::new(|lp: &Var, old: &Tensor, adv: &Tensor, mask: &Tensor, _: &Tensor| {
                let i = ValueLossInput {
                    values: lp,
                    old_values: old,
                    returns: adv,
                    response_mask: mask,
                    counts: None,
                };
                ClippedValueLoss::default().compute(&i).unwrap()
            }),
        ),
    ];
    for est in [KlEstimator::K1, KlEstimator::Abs, KlEstimator::K2, KlEstimator::K3] {
        for st in [false, true] {
            let kl = KlLoss {
                kl: Kl { estimator: est, straight_through: st },
                coef: 0.5,
                aggregation: Aggregation::SeqSumTokenSumNorm { scale: Some(1000.0) },
            };
            v.push((
                "kl",
                Box::new(move |lp: &Var, old: &Tensor, _: &Tensor, mask: &Tensor, _: &Tensor| {
                    kl.compute(lp, old, mask, None, None).unwrap()
                }),
            ));
        }
    }
    v
}

#[test]
fn long_rows_equal_the_same_tokens_in_short_rows() {
    // 3 rows of 320 tokens (5 blocks of 64) = 16 rows of 60 (one partial block each).
    let (b, tt) = (3, 320);
    let (b2, t2) = (16, 60);
    let [lp, old, adv, mask, is_w] = batch(b, tt);
    for (name, f) in token_losses() {
        let long_lp = Var::from_tensor(&t(&lp, b, tt)).unwrap();
        let long =
            f(&long_lp, &t(&old, b, tt), &t(&adv, b, tt), &t(&mask, b, tt), &t(&is_w, b, tt));
        let short_lp = Var::from_tensor(&t(&lp, b2, t2)).unwrap();
        let short =
            f(&short_lp, &t(&old, b2, t2), &t(&adv, b2, t2), &t(&mask, b2, t2), &t(&is_w, b2, t2));
        close(scalar(&long), scalar(&short), 1e-6, name);
        assert_eq!(grad(&long, &long_lp), grad(&short, &short_lp), "{name}: gradient");
        for (k, v) in long.metrics.iter() {
            close(v, short.metrics.get(k).unwrap(), 1e-9, &format!("{name}: {k}"));
        }
    }
}

/// Every loss on `(lp, old, adv, mask, is_w)` tensors, for the in-place / copied comparison.
fn all_losses() -> Vec<Case> {
    let mut v = token_losses();
    let policy = |l: Box<dyn PolicyLoss>| {
        move |lp: &Var, old: &Tensor, adv: &Tensor, mask: &Tensor, _: &Tensor| {
            l.compute(&PolicyLossInput::new(lp, old, adv, mask)).unwrap()
        }
    };
    v.push((
        "gspo",
        Box::new(policy(Box::new(GspoLoss {
            clip_low: 0.1,
            clip_high: 0.2,
            ..GspoLoss::default()
        }))),
    ));
    v.push(("gmpo", Box::new(policy(Box::<GmpoLoss>::default()))));
    v
}

#[test]
fn inputs_read_in_place_or_copied_give_identical_results() {
    let (b, tt) = (4, 150);
    let [lp, old, adv, mask, is_w] = batch(b, tt);
    // Strided and f64 tensors are copied; contiguous f32 ones are read in place.
    let strided = |v: &[f32]| t(v, b, tt).t().unwrap().contiguous().unwrap().t().unwrap();
    let f64s = |v: &[f32]| t(v, b, tt).to_dtype(DType::F64).unwrap();
    for (name, f) in all_losses() {
        let x = Var::from_tensor(&t(&lp, b, tt)).unwrap();
        let base = f(&x, &t(&old, b, tt), &t(&adv, b, tt), &t(&mask, b, tt), &t(&is_w, b, tt));
        let (g0, l0) = (grad(&base, &x), scalar(&base).to_bits());
        for (how, old2, adv2, mask2, is2) in [
            ("f64", f64s(&old), f64s(&adv), f64s(&mask), f64s(&is_w)),
            ("strided", strided(&old), strided(&adv), strided(&mask), strided(&is_w)),
        ] {
            let out = f(&x, &old2, &adv2, &mask2, &is2);
            assert_eq!(scalar(&out).to_bits(), l0, "{name} ({how}): loss");
            assert_eq!(grad(&out, &x), g0, "{name} ({how}): gradient");
            assert_eq!(out.metrics, base.metrics, "{name} ({how}): metrics");
        }
    }
    assert!(!strided(&old).is_contiguous());
    // log-probs behind a strided view of the variable: copied, same values and gradient.
    let x = Var::from_tensor(&t(&lp, b, tt)).unwrap();
    let view = x.as_tensor().t().unwrap().contiguous().unwrap().t().unwrap();
    assert!(!view.is_contiguous());
    let (o, a, m) = (t(&old, b, tt), t(&adv, b, tt), t(&mask, b, tt));
    let direct = PpoLoss::verl().compute(&PolicyLossInput::new(&x, &o, &a, &m)).unwrap();
    let viewed = PpoLoss::verl().compute(&PolicyLossInput::new(&view, &o, &a, &m)).unwrap();
    assert_eq!(scalar(&direct).to_bits(), scalar(&viewed).to_bits());
    assert_eq!(grad(&direct, &x), grad(&viewed, &x));
}

#[test]
fn inputs_that_share_a_storage() {
    // old = lp.detach() (on-policy) and the KL reference passed as log-probs share a storage.
    let [lp, _, adv, mask, _] = batch(3, 100);
    let lp: Vec<f32> = lp.iter().map(|x| if x.is_nan() { -1.0 } else { *x }).collect();
    let x = Var::from_tensor(&t(&lp, 3, 100)).unwrap();
    let old = x.as_tensor().detach();
    let (adv, mask) = (t(&adv, 3, 100), t(&mask, 3, 100));
    let out = PpoLoss::dapo().compute(&PolicyLossInput::new(&x, &old, &adv, &mask)).unwrap();
    let copy = t(&lp, 3, 100);
    let out2 = PpoLoss::dapo().compute(&PolicyLossInput::new(&x, &copy, &adv, &mask)).unwrap();
    assert_eq!(scalar(&out).to_bits(), scalar(&out2).to_bits());
    assert_eq!(grad(&out, &x), grad(&out2, &x));
    let kl = KlLoss::default().compute(&x, &old, &mask, None, None).unwrap();
    assert_eq!(scalar(&kl), 0.0);
}

#[test]
fn errors_come_in_input_order() {
    let (b, tt) = (3, 130);
    let [mut lp, mut old, adv, mask, mut is_w] = batch(b, tt);
    let valid: Vec<usize> = (0..b * tt).filter(|&i| mask[i] != 0.0).collect();
    let (i, j) = (valid[70], valid[5]); // j < i, both valid (i in the second block of row 0)
    lp[i] = f32::INFINITY;
    old[j] = f32::NAN;
    is_w[i] = f32::NAN;
    let x = Var::from_tensor(&t(&lp, b, tt)).unwrap();
    let (old, adv, mask, is_w) = (t(&old, b, tt), t(&adv, b, tt), t(&mask, b, tt), t(&is_w, b, tt));
    let short = t(&vec![0.0; (b - 1) * tt], b - 1, tt);
    let ppo = PpoLoss::verl();
    let err = |i: PolicyLossInput<'_>| ppo.compute(&i).unwrap_err();
    let non_finite = |e: Error| match e {
        Error::NonFinite { what, index, .. } => (what, index),
        e => panic!("expected NonFinite, got {e:?}"),
    };
    // log_probs before old_log_probs, whatever the positions.
    assert_eq!(
        non_finite(err(PolicyLossInput::new(&x, &old, &adv, &mask))),
        ("log_probs".into(), i)
    );
    // The rollout IS weights come first.
    let mut with_is = PolicyLossInput::new(&x, &old, &adv, &mask);
    with_is.rollout_is_weights = Some(&is_w);
    assert_eq!(non_finite(err(with_is)), ("rollout_is_weights".into(), i));
    // A non-finite input before a mis-shaped one is reported first; after it, the shape is.
    assert_eq!(non_finite(err(PolicyLossInput::new(&x, &old, &short, &mask))).0, "log_probs");
    let clean = Var::from_tensor(&t(&vec![-1.0; b * tt], b, tt)).unwrap();
    assert!(matches!(
        err(PolicyLossInput::new(&clean, &short, &old, &mask)),
        Error::ShapeMismatch { .. }
    ));
    // Input errors come before group-id and aggregation errors.
    let mut grouped = PolicyLossInput::new(&x, &old, &adv, &mask);
    grouped.group_ids = Some(&[0, 1][..]);
    assert_eq!(non_finite(err(grouped)).0, "log_probs");
    let group_mean = PpoLoss { aggregation: Aggregation::GroupTokenMean, ..PpoLoss::verl() };
    let e = group_mean.compute(&PolicyLossInput::new(&x, &old, &adv, &mask)).unwrap_err();
    assert_eq!(non_finite(e).0, "log_probs");
    // The losses that read their inputs before the token pass check them first.
    for l in [
        Box::<GmpoLoss>::default() as Box<dyn PolicyLoss>,
        Box::<GspoLoss>::default(),
        Box::<ClipCovLoss>::default(),
        Box::<KlCovLoss>::default(),
    ] {
        let e = l.compute(&PolicyLossInput::new(&x, &old, &adv, &mask)).unwrap_err();
        assert_eq!(non_finite(e), ("log_probs".into(), i));
    }
    let e = KlLoss::default().compute(&clean, &old, &mask, None, None).unwrap_err();
    assert_eq!(non_finite(e), ("ref_log_probs".into(), j));
}
