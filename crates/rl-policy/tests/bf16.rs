//! Mixed precision (`ComputeDtype::Bf16`): the ops' bf16 products against f32 products of
//! bf16-rounded operands (values and gradients, tight), and SmolLM2-135M in bf16 against f32
//! (per-token log-prob deltas and per-tensor gradient cosine similarity, bounds stated below).
//!
//! The products take the path `ops::blas::bf16_path` names: rl-zero's AMX kernels on a CPU with
//! AMX tiles (`RLZ_NO_AMX=1` turns them off), MKL's `cblas_gemm_bf16bf16f32` (with
//! `RLZ_BLAS=<libmkl_rt.so>`), rl-zero's AVX-512 BF16 kernels where the CPU has them, else the f32
//! fallback (`RLZ_NO_AMX=1 RLZ_NO_AVX512_BF16=1` forces it there; `.ci/run` phase `bf16-fallback`).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use rl_policy::logprobs::{PromptResponse, token_log_probs};
use rl_policy::model::Mode;
use rl_policy::ops::{self, autocast, precision::Bf16Weights};
use rl_policy::{ComputeDtype, LanguageModel, testing_assets};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn blas_from_env() {
    let backend = ops::blas::use_blas_from_env().expect("RLZ_BLAS names a usable MKL library");
    eprintln!("blas: {backend}, bf16 products: {}", ops::blas::bf16_path());
}

/// Deterministic values in `[-1, 1)`.
fn values(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rl_core::rng::SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `t` rounded to bf16 and back (the operand rounding of a bf16 product).
fn round(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    assert_eq!((a.dtype(), b.dtype()), (DType::F32, DType::F32));
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    d / scale
}

/// Each product op in a bf16 scope equals the f32 op on bf16-rounded operands (f32
/// accumulation in both: only the summation order differs), and so do the gradients, which
/// are f32 and reach the f32 weight. Fails if an operand is not rounded, is transposed wrongly,
/// or a gradient skips the bf16 path or the master.
#[test]
fn bf16_products_equal_f32_products_of_rounded_operands() -> R {
    blas_from_env();
    let (n, h, o) = (37, 72, 40);
    let w = Var::from_tensor(&values(&[o, h], 1))?;
    let x = Var::from_tensor(&values(&[n, h], 2))?;
    let r = values(&[n, o], 3);
    let targets = Tensor::from_iter((0..n as u32).map(|i| i * 7 % o as u32), &Device::Cpu)?;
    // Loss through linear, linear_add, swiglu_linear, matmul and the head.
    let loss = |x: &Tensor, w: &Tensor| -> R<Tensor> {
        let y = ops::linear(x, w, None)?;
        let y = ops::linear_add(x, w, None, &(y * 0.5)?)?;
        let a = ops::swiglu_linear(
            &y.narrow(1, 0, 36)?,
            &y.narrow(1, 4, 36)?,
            &w.narrow(1, 0, 36)?,
            None,
        )?;
        let m = ops::matmul(&a.unsqueeze(0)?, &w.unsqueeze(0)?)?.squeeze(0)?; // (n, h)
        let (lp, ent) = ops::head_log_prob_entropy(&m, w, &targets, 16)?;
        Ok(((lp.sum_all()? + ent.sum_all()? * 0.1)? + (y * &r)?.sum_all()?)?)
    };
    let cache = Arc::new(Bf16Weights::new());
    let (l16, g16) = {
        let _scope = autocast(Some(cache.clone()));
        let l = loss(x.as_tensor(), w.as_tensor())?;
        let g = l.backward()?;
        (l, g)
    };
    assert!(cache.conversion_stats().0 > 0, "the weight was converted");
    // Reference: f32 ops on rounded copies, with every intermediate product's operands rounded
    // too. Rounding only the inputs is not the same computation (intermediate activations are
    // rounded inside the bf16 ops), so compare with a tolerance of a few bf16 ulps of the loss.
    let (x32, w32) =
        (Var::from_tensor(&round(x.as_tensor()))?, Var::from_tensor(&round(w.as_tensor()))?);
    let l32 = loss(x32.as_tensor(), w32.as_tensor())?;
    let g32 = l32.backward()?;
    let (a, b) = (l16.to_scalar::<f32>()?, l32.to_scalar::<f32>()?);
    assert!((a - b).abs() <= 2e-2 * b.abs().max(1.0), "loss {a} vs {b}");
    for (v, v32, what) in [(&w, &w32, "w"), (&x, &x32, "x")] {
        let (g, gr) =
            (g16.get(v.as_tensor()).expect("grad"), g32.get(v32.as_tensor()).expect("grad"));
        assert_eq!(g.dtype(), DType::F32, "{what}: gradients of f32 masters are f32");
        let rel = max_rel(g, gr);
        assert!(rel < 3e-2, "{what}: max relative gradient difference {rel}");
    }
    // One product alone has no intermediate rounding: it must match to f32 summation error.
    let y16 = {
        let _scope = autocast(Some(cache.clone()));
        ops::linear(x.as_tensor(), w.as_tensor(), None)?
    };
    let y32 = ops::linear(&round(x.as_tensor()), &round(w.as_tensor()), None)?;
    let rel = max_rel(&y16, &y32);
    assert!(rel < 1e-5, "single product: {rel}");
    // and it differs from the unrounded f32 product (the scope did something).
    assert!(max_rel(&y16, &ops::linear(x.as_tensor(), w.as_tensor(), None)?) > 1e-4);
    Ok(())
}

/// Cosine similarity of two tensors (flattened, f64).
fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
    let b = b.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
    let dot = (&a * &b).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    let na = a.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    let nb = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    dot / (na * nb).max(1e-300)
}

/// SmolLM2-135M on 4 responses of 96 tokens after a 16-token prompt, bf16 products against f32:
/// per-token log-prob deltas and, for the mean log-prob's gradient, the cosine similarity per
/// parameter tensor. Bounds (measured on 2026-12-02 with MKL + AMX: mean 0.0225, max 0.185,
/// 65.6 % above 1e-2; cosine min 0.9978, median 0.99982; docs/benchmarks.md, "Mixed precision"):
/// mean |Δ log p| < 0.05, max < 0.5, share of tokens above 1e-2 < 0.8; cosine > 0.99 for every
/// tensor, median > 0.999.
#[test]
fn smollm2_bf16_log_probs_and_gradients_track_f32() -> R {
    blas_from_env();
    let path = testing_assets::smollm2_gguf()?;
    let f32_model = LanguageModel::from_gguf(&path, DType::F32, &Device::Cpu)?;
    let (b, p, t) = (4, 16, 96);
    let ids = |rows: usize, cols: usize, seed: u32| -> Tensor {
        let v: Vec<u32> = (0..rows * cols)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 49152 % 8000)
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    };
    let (prompt_ids, response_ids) = (ids(b, p, 11), ids(b, t, 12));
    let prompt_mask = Tensor::ones((b, p), DType::F32, &Device::Cpu)?;
    let response_mask = Tensor::ones((b, t), DType::F32, &Device::Cpu)?;
    let view = PromptResponse {
        prompt_ids: &prompt_ids,
        prompt_mask: &prompt_mask,
        response_ids: &response_ids,
        response_mask: &response_mask,
    };
    let run = |compute: ComputeDtype| -> R<(Vec<f32>, candle_core::backprop::GradStore, f64)> {
        let tr = f32_model.trainable()?.with_compute_dtype(compute)?;
        let clock = std::time::Instant::now();
        let hidden = view.response_hidden(&tr, Mode::Diff)?;
        let (lp, _) = token_log_probs(&tr, &hidden, &response_ids, &response_mask, 0, false)?;
        let grads = lp.mean_all()?.backward()?;
        let secs = clock.elapsed().as_secs_f64();
        Ok((lp.flatten_all()?.to_vec1::<f32>()?, grads, secs))
    };
    let (lp32, g32, s32) = run(ComputeDtype::F32)?;
    let (lp16, g16, s16) = run(ComputeDtype::Bf16)?;
    let deltas: Vec<f32> = lp32.iter().zip(&lp16).map(|(a, b)| (a - b).abs()).collect();
    let max = deltas.iter().copied().fold(0f32, f32::max);
    let mean = deltas.iter().sum::<f32>() / deltas.len() as f32;
    let above = deltas.iter().filter(|&&d| d > 1e-2).count() as f32 / deltas.len() as f32;
    let mut cos: Vec<(String, f64)> = f32_model
        .named_vars()
        .into_iter()
        .map(|(name, v)| {
            let (a, b) = (
                g32.get(v.as_tensor()).expect("f32 grad"),
                g16.get(v.as_tensor()).expect("bf16 grad"),
            );
            assert_eq!(b.dtype(), DType::F32, "{name}");
            (name, cosine(a, b))
        })
        .collect();
    cos.sort_by(|a, b| a.1.total_cmp(&b.1));
    let median = cos[cos.len() / 2].1;
    eprintln!(
        "SmolLM2 {b}x{t} tokens, bf16 vs f32 ({}): log-prob |Δ| max {max:.4} mean {mean:.5}, \
         {:.1} % of tokens above 1e-2; gradient cosine min {:.5} ({}) median {median:.6}; \
         fwd+bwd {s32:.2} s f32, {s16:.2} s bf16",
        ops::blas::bf16_path(),
        100.0 * above,
        cos[0].1,
        cos[0].0
    );
    for (name, c) in cos.iter().take(5) {
        eprintln!("  lowest cosine: {name} {c:.5}");
    }
    assert!(lp16.iter().all(|v| v.is_finite()));
    assert!(mean < 0.05 && max < 0.5 && above < 0.8, "log-prob deltas out of bounds");
    assert!(mean > 0.0, "bf16 products changed nothing: the precision setting is not applied");
    assert!(cos[0].1 > 0.99 && median > 0.999, "gradient directions out of bounds");
    Ok(())
}
