//! AdamW, gradient clipping and the cosine schedule against PyTorch
//! (`scripts/reference/trainer_adamw.py` → `tests/fixtures/adamw.json`).

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rl_trainer::{AdamW, AdamWConfig, LrSchedule, clip_grad_norm};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    config: Config,
    shapes: Vec<Vec<usize>>,
    init: Vec<Vec<f64>>,
    steps: Vec<Step>,
    cosine: Cosine,
}

#[derive(Deserialize)]
struct Config {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    max_norm: f64,
}

#[derive(Deserialize)]
struct Step {
    grads: Vec<Vec<f64>>,
    pre_clip_norm: f64,
    params_after: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct Cosine {
    base_lr: f64,
    warmup_steps: usize,
    total_steps: usize,
    min_lr_ratio: f64,
    lrs: Vec<f64>,
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/adamw.json");
    serde_json::from_str(text).expect("fixture parses")
}

#[test]
fn adamw_with_clipping_matches_torch() -> rl_trainer::Result<()> {
    for fused in [true, false] {
        adamw_matches_torch(fused)?;
    }
    Ok(())
}

fn adamw_matches_torch(fused: bool) -> rl_trainer::Result<()> {
    let f = fixture();
    let dev = Device::Cpu;
    let vars = f
        .init
        .iter()
        .zip(&f.shapes)
        .map(|(v, s)| Var::from_tensor(&Tensor::from_vec(v.clone(), s.as_slice(), &dev)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let c = &f.config;
    let cfg =
        AdamWConfig { beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay };
    let mut opt = AdamW::new(vars.clone(), cfg)?.with_fused(fused);
    for (k, step) in f.steps.iter().enumerate() {
        let mut grads = GradStore::default();
        for ((var, g), s) in vars.iter().zip(&step.grads).zip(&f.shapes) {
            grads.insert(var.as_tensor(), Tensor::from_vec(g.clone(), s.as_slice(), &dev)?);
        }
        let report = clip_grad_norm(&mut grads, &vars, Some(c.max_norm))?;
        assert!(report.finite && report.clipped);
        assert!((report.norm - step.pre_clip_norm).abs() < 1e-10, "step {k}: norm {}", report.norm);
        opt.step(&grads, c.lr)?;
        for (var, expected) in vars.iter().zip(&step.params_after) {
            rl_core::testing::assert_close(var.as_tensor(), expected, 1e-10);
        }
    }
    assert_eq!(opt.steps(), f.steps.len() as u64);
    Ok(())
}

#[test]
fn adamw_state_round_trip_continues_identically() -> rl_trainer::Result<()> {
    let f = fixture();
    let dev = Device::Cpu;
    let make = || -> rl_trainer::Result<(Vec<Var>, AdamW)> {
        let vars = f
            .init
            .iter()
            .zip(&f.shapes)
            .map(|(v, s)| Var::from_tensor(&Tensor::from_vec(v.clone(), s.as_slice(), &dev)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let opt = AdamW::new(vars.clone(), AdamWConfig::openrlhf())?;
        Ok((vars, opt))
    };
    let grads_of = |vars: &[Var], step: &Step| -> candle_core::Result<GradStore> {
        let mut grads = GradStore::default();
        for ((var, g), s) in vars.iter().zip(&step.grads).zip(&f.shapes) {
            grads.insert(var.as_tensor(), Tensor::from_vec(g.clone(), s.as_slice(), &dev)?);
        }
        Ok(grads)
    };
    let (va, mut a) = make()?;
    for s in &f.steps[..3] {
        a.step(&grads_of(&va, s)?, 1e-2)?;
    }
    let (steps, state) = a.state()?;
    let (vb, mut b) = make()?;
    for (x, y) in vb.iter().zip(&va) {
        x.set(y.as_tensor())?;
    }
    b.load_state(steps, &state)?;
    a.step(&grads_of(&va, &f.steps[3])?, 1e-2)?;
    b.step(&grads_of(&vb, &f.steps[3])?, 1e-2)?;
    for (x, y) in va.iter().zip(&vb) {
        let d = x.as_tensor().sub(y.as_tensor())?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert_eq!(d, 0.0);
    }
    // A state for other vars is rejected.
    let (_, mut c) = {
        let v = Var::new(&[1f64, 2.0], &dev)?;
        (v.clone(), AdamW::new(vec![v], AdamWConfig::default())?)
    };
    assert!(matches!(
        c.load_state(steps, &state),
        Err(rl_trainer::TrainerError::Checkpoint { .. })
    ));
    Ok(())
}

#[test]
fn non_finite_gradient_norm_is_reported_and_left_alone() -> rl_trainer::Result<()> {
    let dev = Device::Cpu;
    let v = Var::new(&[1f32, 2.0], &dev)?;
    let mut grads = GradStore::default();
    grads.insert(v.as_tensor(), Tensor::new(&[f32::NAN, 1.0], &dev)?);
    let r = clip_grad_norm(&mut grads, std::slice::from_ref(&v), Some(1.0))?;
    assert!(!r.finite && !r.clipped && r.norm.is_nan());
    let g = grads.get(v.as_tensor()).expect("kept").to_vec1::<f32>()?;
    assert!(g[0].is_nan() && g[1] == 1.0);
    // Below the threshold nothing is scaled.
    grads.insert(v.as_tensor(), Tensor::new(&[0.3f32, 0.4], &dev)?);
    let r = clip_grad_norm(&mut grads, std::slice::from_ref(&v), Some(1.0))?;
    assert!(r.finite && !r.clipped && (r.norm - 0.5).abs() < 1e-7);
    Ok(())
}

#[test]
fn cosine_with_min_lr_matches_transformers() {
    let c = fixture().cosine;
    let s = LrSchedule::WarmupCosine {
        warmup_steps: c.warmup_steps,
        total_steps: c.total_steps,
        min_lr_ratio: c.min_lr_ratio,
    };
    // Up to and including `total_steps`; after it we stay at the minimum (transformers restarts).
    for (k, expected) in c.lrs.iter().enumerate().take(c.total_steps + 1) {
        let got = s.lr(c.base_lr, k);
        assert!((got - expected).abs() < 1e-12, "step {k}: {got} vs {expected}");
    }
    assert_eq!(s.lr(c.base_lr, c.total_steps + 7), c.base_lr * c.min_lr_ratio);
    assert!(s.validate("s").is_ok());
    let bad = LrSchedule::WarmupCosine { warmup_steps: 10, total_steps: 5, min_lr_ratio: 0.1 };
    assert!(bad.validate("s").is_err());
}

/// The fused in-place f32 kernels and the tensor-op path take the same steps.
#[test]
fn fused_and_tensor_paths_agree_in_f32() -> rl_trainer::Result<()> {
    let dev = Device::Cpu;
    let run = |fused: bool| -> rl_trainer::Result<Vec<f32>> {
        let w = Var::new(&[[0.5f32, -1.5, 2.0], [0.1, 0.0, -0.3]], &dev)?;
        let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::openrlhf() };
        let mut opt = AdamW::new(vec![w.clone()], cfg)?.with_fused(fused);
        for k in 0..4 {
            // A non-contiguous gradient (a transpose) exercises the copy to contiguous.
            let g = Tensor::new(&[[1f32, -2.0], [0.5, 3.0], [-(k as f32), 0.25]], &dev)?.t()?;
            let mut grads = GradStore::default();
            grads.insert(w.as_tensor(), g);
            opt.step(&grads, 0.05)?;
        }
        Ok(w.as_tensor().flatten_all()?.to_vec1::<f32>()?)
    };
    let (a, b) = (run(true)?, run(false)?);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
    Ok(())
}

/// `step_releasing` takes the same steps as `step` and removes exactly the optimized vars'
/// gradients from the store.
#[test]
fn releasing_step_equals_step_and_frees_the_applied_gradients() -> rl_trainer::Result<()> {
    let dev = Device::Cpu;
    let other = Tensor::new(&[7f32], &dev)?;
    let run = |release: bool| -> rl_trainer::Result<Vec<f32>> {
        let w = Var::new(&[[0.5f32, -1.5, 2.0], [0.1, 0.0, -0.3]], &dev)?;
        let frozen = Var::new(&[1f32, 2.0], &dev)?;
        let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::openrlhf() };
        let mut opt = AdamW::new(vec![w.clone(), frozen.clone()], cfg)?;
        for k in 0..3 {
            let g = Tensor::new(&[[1f32, -2.0, 0.5], [3.0, -(k as f32), 0.25]], &dev)?;
            let mut grads = GradStore::default();
            grads.insert(w.as_tensor(), g);
            grads.insert(&other, other.clone());
            if release {
                opt.step_releasing(&mut grads, 0.05)?;
                assert!(grads.get(w.as_tensor()).is_none(), "the applied gradient is released");
                assert!(grads.get(&other).is_some(), "other gradients stay");
            } else {
                opt.step(&grads, 0.05)?;
                assert!(grads.get(w.as_tensor()).is_some());
            }
        }
        assert_eq!(frozen.as_tensor().to_vec1::<f32>()?, [1.0, 2.0], "no gradient, no change");
        Ok(w.as_tensor().flatten_all()?.to_vec1::<f32>()?)
    };
    assert_eq!(run(true)?, run(false)?);
    Ok(())
}

mod props {
    use proptest::prelude::*;
    use rl_trainer::LrSchedule;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// After warm-up the cosine schedule never increases and stays in [min_ratio, 1].
        #[test]
        fn cosine_is_monotone_after_warmup(w in 0usize..20, extra in 1usize..200, r in 0.0f64..1.0) {
            let s = LrSchedule::WarmupCosine { warmup_steps: w, total_steps: w + extra, min_lr_ratio: r };
            let mut prev = f64::INFINITY;
            for k in w..(w + extra + 5) {
                let f = s.factor(k);
                prop_assert!(f <= prev + 1e-12 && f >= r - 1e-12 && f <= 1.0 + 1e-12);
                prev = f;
            }
            for k in 0..w {
                prop_assert!(s.factor(k) < 1.0);
            }
        }
    }
}
