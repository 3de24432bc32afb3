//! The CPU matrix products in Intel MKL (`RLZ_BLAS=<libmkl_rt.so>`, from scripts/setup_mkl.sh)
//! agree with candle's own (the `gemm` crate) for the layouts the decoder uses. Without
//! `RLZ_BLAS` the test says so and checks only that the default backend is in use; CI sets it.
//! The golden and tiny-model tests also run under `RLZ_BLAS`, checking the whole model.

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use rl_policy::ops::{self, blas};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn values(shape: &[usize], seed: u64, dtype: DType) -> R<Tensor> {
    let mut rng = rl_core::rng::SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> R<f64> {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?;
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

#[test]
fn mkl_products_match_candle() -> R {
    let backend = blas::use_blas_from_env()?;
    if std::env::var("RLZ_BLAS").is_err() {
        eprintln!("RLZ_BLAS is unset: MKL is not tested here (CI sets it)");
        assert_eq!(backend, "gemm");
        return Ok(());
    }
    assert!(backend.starts_with("mkl:"), "{backend}");
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
        // Linear layers: x · wᵀ forward, and the backward products through the gradients.
        for (m, k, n) in [(1, 7, 9), (300, 96, 200), (2176 / 8, 576, 192)] {
            let x = Var::from_tensor(&values(&[m, k], 1, dtype)?)?;
            let w = Var::from_tensor(&values(&[n, k], 2, dtype)?)?;
            let y = ops::linear(&x, &w, None)?;
            let reference = x.matmul(&w.t()?)?;
            assert!(max_diff(&y, &reference)? <= tol, "linear {m}x{k}x{n} {dtype:?}");
            let g = values(&[m, n], 3, dtype)?;
            let ours = (y * &g)?.sum_all()?.backward()?;
            let theirs = (reference * &g)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                let (a, b) = (ours.get(v).ok_or("grad")?, theirs.get(v).ok_or("grad")?);
                assert!(max_diff(a, b)? <= tol * 10.0, "linear gradient {m}x{k}x{n} {dtype:?}");
            }
        }
        // Batched attention products, a transposed and a narrowed operand.
        let p = values(&[2, 3, 6, 5], 4, dtype)?;
        let v = values(&[2, 3, 5, 4], 5, dtype)?;
        let q = values(&[2, 3, 6, 4], 6, dtype)?;
        for (a, b) in
            [(p.clone(), v.clone()), (p.transpose(2, 3)?, q), (p.i((.., 1..3))?, v.i((.., 1..3))?)]
        {
            let d = max_diff(&ops::matmul(&a, &b)?, &a.contiguous()?.matmul(&b.contiguous()?)?)?;
            assert!(d <= tol, "{:?}·{:?} {dtype:?}: {d}", a.dims(), b.dims());
        }
    }
    Ok(())
}
