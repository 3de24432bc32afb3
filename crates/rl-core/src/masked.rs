//! Masked tensor statistics with verl's exact semantics.
//!
//! Transcribed from the formulas of verl `verl/utils/torch_functional.py` (snapshot `b178a3cd56f5`,
//! `masked_sum` L266-284, `masked_mean` L287-301, `masked_var` L304-319, `masked_whiten` L322-339):
//!
//! ```python
//! # Equivalent python code (verl):
//! def masked_sum(v, m, axis=None):
//!     return (torch.where(m.bool(), v, 0.0) * m).sum(axis)      # NaN outside the mask is ignored
//! def masked_mean(v, m, axis=None):
//!     return masked_sum(v, m, axis) / (m.sum(axis) + 1e-8)
//! def masked_var(v, m, unbiased=True):
//!     mean = masked_mean(v, m); var = masked_mean((v - mean) ** 2, m)
//!     n = m.sum()                      # raises if n == 0 or n == 1
//!     return var * n / (n - 1)
//! def masked_whiten(v, m, shift_mean=True):
//!     mean, var = masked_mean(v, m), masked_var(v, m)
//!     w = (v - mean) * torch.rsqrt(var + 1e-8)
//!     return w if shift_mean else w + mean
//! ```
//!
//! All functions take `values` and `mask` of the same shape (any rank, typically `(B, T)` f32);
//! `mask` is 1.0 on valid elements and 0.0 elsewhere. Unlike verl, [`masked_var`] returns a typed
//! [`Error::InsufficientData`] instead of raising, and [`masked_whiten`] can keep padded positions
//! at exactly zero (`zero_padding`), which is what every caller wants.

use candle_core::{D, DType, Tensor};

use crate::{Error, Result, check};

/// verl's epsilon in `masked_mean` and `masked_whiten`.
pub const EPS: f64 = 1e-8;

fn valid(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    check::same_shape(mask, values, "mask")?;
    let m = mask.to_dtype(values.dtype())?;
    let zeros = values.zeros_like()?;
    // where(mask, v, 0) * mask: NaN/inf outside the mask never reach the sum.
    Ok(m.ne(0.0)?.where_cond(values, &zeros)?.mul(&m)?)
}

/// `Σ v·m` over all elements (`dim = None`, returns a scalar) or along `dim` (the dim is removed).
/// Elements outside the mask are ignored even when they are NaN.
pub fn masked_sum(values: &Tensor, mask: &Tensor, dim: Option<usize>) -> Result<Tensor> {
    let v = valid(values, mask)?;
    Ok(match dim {
        None => v.sum_all()?,
        Some(d) => v.sum(d)?,
    })
}

/// `Σ v·m / (Σ m + 1e-8)`: the masked mean; a fully masked row (or tensor) gives exactly 0.
pub fn masked_mean(values: &Tensor, mask: &Tensor, dim: Option<usize>) -> Result<Tensor> {
    let s = masked_sum(values, mask, dim)?;
    let m = mask.to_dtype(values.dtype())?;
    let n = match dim {
        None => m.sum_all()?,
        Some(d) => m.sum(d)?,
    };
    Ok(s.div(&(n + EPS)?)?)
}

fn count(mask: &Tensor) -> Result<usize> {
    let n = mask.to_dtype(DType::F64)?.ne(0.0)?.to_dtype(DType::F64)?.sum_all()?;
    Ok(n.to_scalar::<f64>()? as usize)
}

/// Variance of the valid elements (global, over the whole tensor); Bessel-corrected (`N/(N−1)`)
/// when `unbiased`. Returns a scalar tensor.
///
/// # Errors
/// [`Error::InsufficientData`] when there is no valid element, or only one and `unbiased`.
pub fn masked_var(values: &Tensor, mask: &Tensor, unbiased: bool) -> Result<Tensor> {
    let n = count(mask)?;
    let needed = if unbiased { 2 } else { 1 };
    if n < needed {
        return Err(Error::InsufficientData { what: "masked_var".into(), needed, got: n });
    }
    let mean = masked_mean(values, mask, None)?;
    let centered = valid(values, mask)?.broadcast_sub(&mean)?;
    let var = masked_mean(&centered.sqr()?, mask, None)?;
    if unbiased {
        let msum = mask.to_dtype(values.dtype())?.sum_all()?;
        Ok(var.mul(&msum.affine(1.0, 0.0)?.div(&(msum - 1.0)?)?)?)
    } else {
        Ok(var)
    }
}

/// Whitens with batch-global statistics: `(v − mean)·rsqrt(var + 1e-8)` with the masked mean and
/// the unbiased masked variance, as verl's `masked_whiten(shift_mean=True)`.
///
/// verl applies the transform to padded positions too (they become non-zero); with
/// `zero_padding = true` those positions are set to exactly 0.0 (what estimators need).
///
/// # Errors
/// [`Error::InsufficientData`] with fewer than two valid elements.
pub fn masked_whiten(values: &Tensor, mask: &Tensor, zero_padding: bool) -> Result<Tensor> {
    let mean = masked_mean(values, mask, None)?;
    let var = masked_var(values, mask, true)?;
    let w = values.broadcast_sub(&mean)?.broadcast_mul(&(var + EPS)?.sqrt()?.recip()?)?;
    if zero_padding { valid(&w, mask) } else { Ok(w) }
}

/// Per-row lengths `Σ_t M_bt` of a `(B, T)` mask, as a `(B,)` tensor of the mask's dtype.
pub fn row_lengths(mask: &Tensor) -> Result<Tensor> {
    check::dims2(mask, "mask")?;
    Ok(mask.sum(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    //! Golden values: printed by `scripts/reference/masked_ops.py` (a transcription of verl's
    //! helpers) and pasted here.
    use super::*;
    use candle_core::Device;

    fn t2(v: &[[f32; 4]; 3]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn values() -> Tensor {
        t2(&[[1.0, 2.0, 3.0, f32::NAN], [4.0, -1.0, 0.5, 2.0], [7.0, f32::INFINITY, 0.0, 0.0]])
    }

    fn mask() -> Tensor {
        t2(&[[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    }

    fn close(a: f32, b: f64) {
        assert!((a as f64 - b).abs() < 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn golden_masked_sum_and_mean() -> Result<()> {
        let (v, m) = (values(), mask());
        // python: masked_sum 18.5 [6.0, 5.5, 7.0]
        close(masked_sum(&v, &m, None)?.to_scalar::<f32>()?, 18.5);
        let rows = masked_sum(&v, &m, Some(1))?.to_vec1::<f32>()?;
        for (a, b) in rows.iter().zip([6.0, 5.5, 7.0]) {
            close(*a, b);
        }
        // python: masked_mean 2.3125 [2.0, 1.375, 7.0]
        close(masked_mean(&v, &m, None)?.to_scalar::<f32>()?, 2.3125);
        let rows = masked_mean(&v, &m, Some(1))?.to_vec1::<f32>()?;
        for (a, b) in rows.iter().zip([2.0, 1.375, 7.0]) {
            close(*a, b);
        }
        Ok(())
    }

    #[test]
    fn golden_masked_var_and_whiten() -> Result<()> {
        let (v, m) = (values(), mask());
        // python: masked_var unbiased 5.924107551574707 biased 5.18359375
        close(masked_var(&v, &m, true)?.to_scalar::<f32>()?, 5.924107551574707);
        close(masked_var(&v, &m, false)?.to_scalar::<f32>()?, 5.18359375);
        // python: masked_whiten (valid), padding zeroed
        let w = masked_whiten(&v, &m, true)?;
        let expect = [
            [-0.5392471551895142, -0.12839217483997345, 0.2824627757072449, 0.0],
            [0.6933177709579468, -1.3609570264816284, -0.7446746230125427, -0.12839217483997345],
            [1.9258826971054077, 0.0, 0.0, 0.0],
        ];
        let got = w.to_vec2::<f32>()?;
        for (gr, er) in got.iter().zip(expect) {
            for (g, e) in gr.iter().zip(er) {
                assert!((*g as f64 - e).abs() < 1e-4, "{g} vs {e}");
            }
        }
        Ok(())
    }

    #[test]
    fn fully_masked_mean_is_zero_not_nan() -> Result<()> {
        let v = Tensor::new(&[[f32::NAN, 1.0]], &Device::Cpu)?;
        let m = Tensor::new(&[[0f32, 0.0]], &Device::Cpu)?;
        assert_eq!(masked_mean(&v, &m, None)?.to_scalar::<f32>()?, 0.0);
        assert_eq!(masked_mean(&v, &m, Some(1))?.to_vec1::<f32>()?, vec![0.0]);
        Ok(())
    }

    #[test]
    fn variance_of_too_few_tokens_is_a_typed_error() -> Result<()> {
        let v = Tensor::new(&[[3f32, 1.0]], &Device::Cpu)?;
        let one = Tensor::new(&[[1f32, 0.0]], &Device::Cpu)?;
        let none = Tensor::new(&[[0f32, 0.0]], &Device::Cpu)?;
        assert!(matches!(
            masked_var(&v, &one, true),
            Err(Error::InsufficientData { needed: 2, got: 1, .. })
        ));
        assert!(masked_var(&v, &one, false).is_ok());
        assert!(matches!(
            masked_var(&v, &none, false),
            Err(Error::InsufficientData { needed: 1, got: 0, .. })
        ));
        assert!(masked_whiten(&v, &one, true).is_err());
        Ok(())
    }

    #[test]
    fn shape_mismatch_is_a_typed_error() {
        let v = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let m = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(masked_sum(&v, &m, None), Err(Error::ShapeMismatch { .. })));
    }
}

/// Count, mean and sum of squared deviations of a set of values, mergeable in any grouping
/// (Chan, Golub and LeVeque's parallel update): the statistics advantage whitening needs, built
/// per row and merged over the batch — and, under data parallelism, over the ranks
/// ([`BatchReduce`]).
///
/// ```
/// use rl_core::masked::Moments;
/// let a = Moments::of_masked(&[1.0, 2.0, 9.0], &[1.0, 1.0, 0.0]);
/// let b = Moments::constant(4.0, 2.0);
/// let all = a.merge(b); // {1, 2, 4, 4}
/// assert_eq!((all.n, all.mean), (4.0, 2.75));
/// assert!((all.m2 - 6.75).abs() < 1e-12);
/// assert_eq!(Moments::from_bytes(&all.to_bytes()), Some(all));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    /// Number of values (a weight: `f64`).
    pub n: f64,
    /// Their mean (0 when `n` is 0).
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Moments {
    /// Moments of the elements of `v` whose `m` is non-zero.
    pub fn of_masked(v: &[f32], m: &[f32]) -> Self {
        let (mut n, mut s) = (0f64, 0f64);
        for (&x, &m) in v.iter().zip(m) {
            if m != 0.0 {
                n += 1.0;
                s += f64::from(x);
            }
        }
        if n == 0.0 {
            return Self::default();
        }
        let mean = s / n;
        let m2 = v
            .iter()
            .zip(m)
            .filter(|(_, m)| **m != 0.0)
            .map(|(&x, _)| (f64::from(x) - mean).powi(2))
            .sum();
        Self { n, mean, m2 }
    }

    /// `weight` copies of `value`.
    pub fn constant(value: f64, weight: f64) -> Self {
        if weight == 0.0 { Self::default() } else { Self { n: weight, mean: value, m2: 0.0 } }
    }

    /// The moments of the union of two sets.
    pub fn merge(self, o: Self) -> Self {
        if self.n == 0.0 {
            return o;
        }
        if o.n == 0.0 {
            return self;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        Self { n, mean: self.mean + d * o.n / n, m2: self.m2 + o.m2 + d * d * self.n * o.n / n }
    }

    /// 24 little-endian bytes (`n`, `mean`, `m2`), for an all-gather.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        for (chunk, v) in b.chunks_exact_mut(8).zip([self.n, self.mean, self.m2]) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The inverse of [`Moments::to_bytes`]; `None` unless `b` is 24 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 24 {
            return None;
        }
        let f = |i: usize| f64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Some(Self { n: f(0), mean: f(1), m2: f(2) })
    }
}

/// Combines one process's batch [`Moments`] with those of every other process of a
/// data-parallel group, so that batch-wide whitening sees the global batch. Given to advantage
/// estimators through [`crate::AdvantageInput::with_batch_reduce`]; every rank must call it the
/// same number of times, in the same order.
#[derive(Clone, Copy)]
pub struct BatchReduce<'a>(pub &'a dyn Fn(Moments) -> Result<Moments>);

impl std::fmt::Debug for BatchReduce<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchReduce(..)")
    }
}
