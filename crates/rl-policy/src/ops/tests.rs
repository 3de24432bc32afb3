//! Tests of the fused kernels against their composed formulas (values and gradients).

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::Result;

#[test]
fn exp_f32_is_within_two_ulp_and_zero_for_masked_scores() {
    let mut worst = 0f64;
    for i in 0..=2_000_000 {
        let x = -87.3 + (88.3 + 87.3) * f64::from(i) / 2e6;
        let x = x as f32;
        let exact = f64::from(x).exp();
        let ulp = f64::from(f32::EPSILON) * exact;
        worst = worst.max((f64::from(exp_f32(x)) - exact).abs() / ulp);
    }
    assert!(worst <= 2.0, "max error {worst} ulp");
    assert_eq!(exp_f32(0.0), 1.0);
    assert_eq!(exp_f32(-1e9), 0.0);
    assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    assert!(exp_f32(f32::NAN).is_nan());
    assert!(exp_f32(1e9).is_finite());
}

/// Deterministic values in `[-2, 2)` of the given shape (f64).
fn values(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rl_core::rng::SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.next_f64() * 4.0 - 2.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// Outputs and input gradients of one run, as f64 CPU tensors.
type Run = (Vec<Tensor>, Vec<Option<Tensor>>);

/// Runs `f` on fresh vars of `inputs` (cast to `dtype`, moved to `dev`) with the loss
/// `Σ out · weights`.
fn run_with_grads(
    inputs: &[Tensor],
    dev: &Device,
    dtype: DType,
    f: &dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>,
) -> Run {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts).unwrap();
    let mut loss = Tensor::new(0f64, dev).unwrap().to_dtype(dtype).unwrap();
    for (i, o) in out.iter().enumerate() {
        let w = values(o.dims(), 100 + i as u64).to_dtype(dtype).unwrap().to_device(dev).unwrap();
        loss = (loss + (o * w).unwrap().sum_all().unwrap()).unwrap();
    }
    let store = loss.backward().unwrap();
    let host = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    (out.iter().map(host).collect(), vars.iter().map(|v| store.get(v).map(host)).collect())
}

/// Asserts equal outputs and equal gradients (both present or both absent) within `tol`.
fn assert_same(a: &Run, b: &Run, tol: f64) {
    for (a, b) in a.0.iter().zip(&b.0) {
        assert!(max_diff(a, b) < tol, "outputs differ by {}", max_diff(a, b));
    }
    for (i, (a, b)) in a.1.iter().zip(&b.1).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                assert!(max_diff(a, b) < tol, "gradient {i} differs by {}", max_diff(a, b))
            }
            (None, None) => {}
            _ => panic!("gradient {i} present on one side only"),
        }
    }
}

/// Runs `f` (fused) and `g` (composed) in f64 on the CPU and asserts equal outputs and
/// gradients.
fn check(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>,
    g: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>,
    tol: f64,
) {
    let cpu = Device::Cpu;
    assert_same(
        &run_with_grads(inputs, &cpu, DType::F64, &f),
        &run_with_grads(inputs, &cpu, DType::F64, &g),
        tol,
    );
}

#[test]
fn rms_norm_matches_composed_values_and_gradients() {
    let inputs = [values(&[3, 5, 16], 1), values(&[16], 2)];
    check(
        &inputs,
        |t| Ok(vec![rms_norm(&t[0], &t[1], 1e-6)?]),
        |t| Ok(vec![rms_norm_composed(&t[0], &t[1], 1e-6)?]),
        1e-12,
    );
}

#[test]
fn fused_residual_and_mlp_projections_match_composed_values_and_gradients() {
    // x: (B, S, in), w: (out, in), r: (B, S, out); gate/up: (B, S, I), w_down: (out, I).
    let inputs = [values(&[2, 3, 6], 40), values(&[5, 6], 41), values(&[2, 3, 5], 42)];
    check(
        &inputs,
        |t| Ok(vec![linear_add(&t[0], &t[1], None, &t[2])?]),
        |t| Ok(vec![(&t[2] + t[0].broadcast_matmul(&t[1].t()?)?)?]),
        1e-12,
    );
    let inputs = [values(&[2, 3, 7], 43), values(&[2, 3, 7], 44), values(&[4, 7], 45)];
    check(
        &inputs,
        |t| Ok(vec![swiglu_linear(&t[0], &t[1], &t[2], None)?]),
        |t| Ok(vec![swiglu_composed(&t[0], &t[1])?.broadcast_matmul(&t[2].t()?)?]),
        1e-12,
    );
    // Bit for bit against the unfused ops in f32 (the model's outputs must not move).
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let d = |a: &Tensor, b: &Tensor| {
        max_diff(&a.to_dtype(DType::F64).unwrap(), &b.to_dtype(DType::F64).unwrap())
    };
    let (x, w, r) = (f(&values(&[4, 6], 46)), f(&values(&[5, 6], 47)), f(&values(&[4, 5], 48)));
    let fused = linear_add(&x, &w, None, &r).unwrap();
    assert_eq!(d(&fused, &(&r + linear(&x, &w, None).unwrap()).unwrap()), 0.0);
    let (a, u) = (f(&values(&[4, 7], 49)), f(&values(&[4, 7], 50)));
    let w = f(&values(&[3, 7], 51));
    let fused = swiglu_linear(&a, &u, &w, None).unwrap();
    let plain = linear(&swiglu(&a, &u).unwrap(), &w, None).unwrap();
    assert_eq!(d(&fused, &plain), 0.0);
    // Mismatched shapes are errors, not panics.
    assert!(linear_add(&x, &w, None, &r.narrow(1, 0, 4).unwrap()).is_err());
    assert!(swiglu_linear(&a, &u.narrow(1, 0, 6).unwrap(), &w, None).is_err());
}

#[test]
fn split_and_merge_heads_match_composed_values_and_gradients() {
    let (b, s, n, g, d) = (2, 5, 6, 2, 8);
    let angles = values(&[b, s, d / 2], 3);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let inputs = [values(&[b, s, n * d], 4)];
    for (groups, rot) in [(g, Some((&cos, &sin))), (n, Some((&cos, &sin))), (g, None)] {
        check(
            &inputs,
            |t| Ok(vec![split_heads(&t[0], n, groups, rot)?]),
            |t| Ok(vec![split_heads_composed(&t[0], n, groups, rot)?]),
            1e-12,
        );
    }
    let inputs = [values(&[b, g, n / g * s, d], 5)];
    check(
        &inputs,
        |t| Ok(vec![merge_heads(&t[0], n)?]),
        |t| Ok(vec![merge_heads_composed(&t[0], n)?]),
        1e-12,
    );
    // merge undoes split
    let x = values(&[b, s, n * d], 6);
    let back = merge_heads(&split_heads(&x, n, g, None).unwrap(), n).unwrap();
    assert_eq!(max_diff(&x, &back), 0.0);
}

#[test]
fn linear_matches_composed_values_and_gradients() {
    let inputs = [values(&[3, 4, 7], 16), values(&[5, 7], 17), values(&[5], 18)];
    check(
        &inputs,
        |t| Ok(vec![linear(&t[0], &t[1], Some(&t[2]))?]),
        |t| {
            let lin = candle_nn::Linear::new(t[1].clone(), Some(t[2].clone()));
            Ok(vec![candle_nn::Module::forward(&lin, &t[0])?])
        },
        1e-12,
    );
}

#[test]
fn masked_softmax_matches_composed_values_and_gradients() {
    // 2 key/value groups x 3 stacked query heads x S = 4 queries, K = 6 keys
    let (b, g, reps, s, k) = (2, 2, 3, 4, 6);
    let mask: Vec<f64> = (0..b * s * k)
        .map(|i| if (i % k) <= (i / k) % s + 2 && i % 7 != 3 { 0.0 } else { -1e9 })
        .collect();
    let mask = Tensor::from_vec(mask, (b, 1, s, k), &Device::Cpu).unwrap();
    let inputs = [values(&[b, g, reps * s, k], 5)];
    check(
        &inputs,
        |t| Ok(vec![masked_softmax(&t[0], &mask, 0.35)?]),
        |t| Ok(vec![masked_softmax_composed(&t[0], &mask, 0.35)?]),
        1e-12,
    );
}

#[test]
fn attention_probs_match_composed_values_and_gradients() {
    let (b, g, reps, s, k, d) = (2, 2, 3, 4, 6, 5);
    let mask: Vec<f64> =
        (0..b * s * k).map(|i| if (i % k) <= (i / k) % s + 2 { 0.0 } else { -1e9 }).collect();
    let mask = Tensor::from_vec(mask, (b, 1, s, k), &Device::Cpu).unwrap();
    let inputs = [values(&[b, g, reps * s, d], 30), values(&[b, g, k, d], 31)];
    check(
        &inputs,
        |t| Ok(vec![attention_probs(&t[0], &t[1], &mask, 0.4)?]),
        |t| Ok(vec![masked_softmax_composed(&t[0].matmul(&t[1].t()?)?, &mask, 0.4)?]),
        1e-12,
    );
    let wrong = values(&[b, g, k, d + 1], 32); // head sizes differ
    assert!(attention_probs(&inputs[0], &wrong, &mask, 0.4).is_err());
}

#[test]
fn swiglu_matches_composed_values_and_gradients() {
    let inputs = [values(&[4, 7, 9], 6), values(&[4, 7, 9], 7)];
    check(
        &inputs,
        |t| Ok(vec![swiglu(&t[0], &t[1])?]),
        |t| Ok(vec![swiglu_composed(&t[0], &t[1])?]),
        1e-12,
    );
}

#[test]
fn log_prob_entropy_matches_composed_values_and_gradients() {
    let (n, v) = (6, 11);
    let targets = Tensor::from_vec(vec![0u32, 10, 3, 3, 7, 5], n, &Device::Cpu).unwrap();
    let inputs = [(values(&[n, v], 8) * 3.0).unwrap()];
    check(
        &inputs,
        |t| {
            let (a, b) = log_prob_entropy(&t[0], &targets)?;
            Ok(vec![a, b])
        },
        |t| {
            let (a, b) = log_prob_entropy_composed(&t[0], &targets)?;
            Ok(vec![a, b])
        },
        1e-12,
    );
    // the log-prob alone (entropy unused: its gradient is zero)
    check(
        &inputs,
        |t| Ok(vec![log_prob_entropy(&t[0], &targets)?.0]),
        |t| Ok(vec![log_prob_entropy_composed(&t[0], &targets)?.0]),
        1e-12,
    );
}

#[test]
fn head_log_prob_entropy_matches_linear_then_log_prob_entropy() {
    let (n, h, v) = (7, 5, 13);
    let targets = Tensor::from_vec(vec![0u32, 12, 3, 3, 7, 5, 11], n, &Device::Cpu).unwrap();
    let inputs = [values(&[n, h], 20), values(&[v, h], 21)];
    for chunk in [1, 3, 7, 100] {
        check(
            &inputs,
            |t| {
                let (a, b) = head_log_prob_entropy(&t[0], &t[1], &targets, chunk)?;
                Ok(vec![a, b])
            },
            |t| {
                let logits = (t[0].matmul(&t[1].t()?))?;
                let (a, b) = log_prob_entropy_composed(&logits, &targets)?;
                Ok(vec![a, b])
            },
            1e-12,
        );
    }
    let bad = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 13], &Device::Cpu).unwrap(); // 13 >= V
    assert!(head_log_prob_entropy(&inputs[0], &inputs[1], &bad, 3).is_err());
}

#[test]
fn head_backward_twice_recomputes_the_released_logits() {
    // The first backward pass releases the kept logits; a second one through the same graph
    // must recompute them and give the same gradients.
    let (n, h, v) = (7, 5, 13);
    let targets = Tensor::from_vec(vec![0u32, 12, 3, 3, 7, 5, 11], n, &Device::Cpu).unwrap();
    let x = Var::from_tensor(&values(&[n, h], 30)).unwrap();
    let w = Var::from_tensor(&values(&[v, h], 31)).unwrap();
    let (lp, ent) = head_log_prob_entropy(&x, &w, &targets, 3).unwrap();
    let loss = (lp.sum_all().unwrap() + (ent * 0.5).unwrap().sum_all().unwrap()).unwrap();
    let first = loss.backward().unwrap();
    let second = loss.backward().unwrap();
    for var in [&x, &w] {
        let (a, b) = (first.get(var).unwrap(), second.get(var).unwrap());
        assert!(max_diff(a, b) == 0.0, "gradients differ: {}", max_diff(a, b));
        assert!(max_diff(a, &a.zeros_like().unwrap()) > 0.0);
    }
}

#[test]
fn f32_kernels_agree_with_f64() {
    let x = values(&[4, 32], 9);
    let w = values(&[32], 10);
    let y64 = rms_norm(&x, &w, 1e-5).unwrap();
    let y32 =
        rms_norm(&x.to_dtype(DType::F32).unwrap(), &w.to_dtype(DType::F32).unwrap(), 1e-5).unwrap();
    assert!(max_diff(&y64, &y32.to_dtype(DType::F64).unwrap()) < 1e-5);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let x = values(&[2, 3, 4 * 8], 11);
    let cos = values(&[2, 3, 3], 12); // wrong half-size
    assert!(split_heads(&x, 4, 2, Some((&cos, &cos))).is_err());
    assert!(split_heads(&x, 4, 3, None).is_err()); // 4 heads in 3 groups
    let logits = values(&[2, 5], 13);
    let targets = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap(); // 5 >= V
    assert!(log_prob_entropy(&logits, &targets).is_err());
    let scores = values(&[1, 1, 3, 4], 14);
    let mask = values(&[1, 1, 2, 4], 15); // 3 rows not a multiple of 2
    assert!(masked_softmax(&scores, &mask, 1.0).is_err());
}

/// Every fused op on the GPU against the CPU kernels (the oracle), values and gradients, in
/// f64 and f32 (and half types against f32 CPU, loosely). Needs a CUDA GPU: compiled by
/// `scripts/check_cuda.sh`, run with `cargo test -p rl-policy --features cuda` on a GPU machine.
#[cfg(feature = "cuda")]
#[test]
fn cuda_kernels_match_cpu_kernels() {
    type Case = (&'static str, Vec<Tensor>, Box<dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>>);
    let gpu = Device::new_cuda(0).expect("this test needs a CUDA GPU");
    let (b, s, n, g, d) = (2, 5, 6, 2, 8);
    let angles = values(&[b, s, d / 2], 3);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let mask: Vec<f64> =
        (0..b * 4 * 6).map(|i| if (i % 6) <= (i / 6) % 4 + 2 { 0.0 } else { -1e9 }).collect();
    let mask = Tensor::from_vec(mask, (b, 1, 4, 6), &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(vec![0u32, 300, 3, 3, 7, 511], 6, &Device::Cpu).unwrap();
    let head_targets = targets.clone();
    let cases: Vec<Case> = vec![
        (
            "rms_norm",
            vec![values(&[3, 5, 600], 1), values(&[600], 2)],
            Box::new(|t: &[Tensor]| Ok(vec![rms_norm(&t[0], &t[1], 1e-6)?])),
        ),
        (
            "split_heads",
            vec![values(&[b, s, n * d], 4), cos, sin],
            Box::new(move |t: &[Tensor]| {
                let rot = Some((&t[1], &t[2]));
                Ok(vec![split_heads(&t[0], n, g, rot)?, split_heads(&t[0], n, n, None)?])
            }),
        ),
        (
            "merge_heads",
            vec![values(&[b, g, n / g * s, d], 5)],
            Box::new(move |t: &[Tensor]| Ok(vec![merge_heads(&t[0], n)?])),
        ),
        (
            "masked_softmax",
            vec![values(&[b, 2, 3 * 4, 6], 5), mask.clone()],
            Box::new(|t: &[Tensor]| Ok(vec![masked_softmax(&t[0], &t[1].detach(), 0.35)?])),
        ),
        (
            "attention_probs",
            vec![values(&[b, 2, 3 * 4, 8], 9), values(&[b, 2, 6, 8], 10), mask.clone()],
            Box::new(|t: &[Tensor]| Ok(vec![attention_probs(&t[0], &t[1], &t[2].detach(), 0.3)?])),
        ),
        (
            "head_log_prob_entropy",
            vec![values(&[6, 16], 11), values(&[512, 16], 12)],
            Box::new(move |t: &[Tensor]| {
                let (lp, h) = head_log_prob_entropy(&t[0], &t[1], &head_targets, 4)?;
                Ok(vec![lp, h])
            }),
        ),
        (
            "swiglu",
            vec![values(&[4, 7, 300], 6), values(&[4, 7, 300], 7)],
            Box::new(|t: &[Tensor]| Ok(vec![swiglu(&t[0], &t[1])?])),
        ),
        (
            "log_prob_entropy",
            vec![(values(&[6, 512], 8) * 3.0).unwrap()],
            Box::new(move |t: &[Tensor]| {
                let (lp, h) = log_prob_entropy(&t[0], &targets)?;
                Ok(vec![lp, h])
            }),
        ),
    ];
    let cpu = Device::Cpu;
    for (name, inputs, f) in &cases {
        for (dtype, oracle, tol) in [
            (DType::F64, DType::F64, 1e-10),
            (DType::F32, DType::F32, 1e-4),
            (DType::F16, DType::F32, 2e-2),
            (DType::BF16, DType::F32, 1e-1),
        ] {
            eprintln!("{name} {dtype:?}");
            let want = run_with_grads(inputs, &cpu, oracle, f.as_ref());
            let got = run_with_grads(inputs, &gpu, dtype, f.as_ref());
            assert_same(&want, &got, tol);
        }
    }
}
