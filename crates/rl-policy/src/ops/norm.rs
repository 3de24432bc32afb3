//! RMS norm.

use crate::Result;
use candle_core::{D, Shape, Tensor};
use rayon::prelude::*;

use super::*;

pub(super) struct RmsNorm {
    pub(super) eps: f64,
}

pub(super) fn rms_scale<T: Real>(row: &[T], eps: f64) -> T {
    let ss = sum_lanes(row.len(), |i| (row[i] * row[i]).to_f64());
    cast::<T>(1.0 / (ss / row.len() as f64 + eps).sqrt())
}

impl Kernel for RmsNorm {
    const NAME: &'static str = "rl-rms-norm";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let [x, w] = inputs(xs, Self::NAME)?;
        let h = w.len();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(h).zip(x.par_chunks(h)).with_min_len(MIN_ROWS).for_each(|(y, x)| {
            let r = rms_scale(x, self.eps);
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        });
        Ok((y, Shape::from(dims[0])))
    }

    fn grads(
        &self,
        args: &[&Tensor],
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let (x, w) = (args[0], args[1]);
        let h = w.elem_count();
        let n = x.elem_count() / h.max(1);
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &Op(RmsNormBwd { eps: self.eps }))?;
        let gx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let gw = both.narrow(0, n, 1)?.reshape(w.shape())?;
        Ok(vec![Some(gx), Some(gw)])
    }
}

/// Backward of [`RmsNorm`]: `(x, w, g)` → `(N + 1, H)`, rows `0..N` the gradient of `x`, row `N`
/// the gradient of `w`. With `r = 1/√(mean(x²) + eps)`:
/// `∂x_j = r·g_j·w_j − x_j·r³·Σ_k g_k w_k x_k / H`, `∂w_j = Σ_rows g_j·x_j·r`.
pub(super) struct RmsNormBwd {
    pub(super) eps: f64,
}

impl Kernel for RmsNormBwd {
    const NAME: &'static str = "rl-rms-norm-bwd";

    fn run<T: Real>(
        &self,
        xs: &[&[T]],
        _dims: &[&[usize]],
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let [x, w, g] = inputs(xs, Self::NAME)?;
        let h = w.len();
        let n = x.len() / h;
        let mut out = vec![T::zero(); x.len() + h];
        let (gx, _) = out.split_at_mut(x.len());
        let block = h * MIN_ROWS;
        let gw = gx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block).zip(g.par_chunks(block)))
            .map(|(gx, (x, g))| {
                let mut gw = vec![T::zero(); h];
                for ((gx, x), g) in gx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                    let r = rms_scale(x, self.eps);
                    let dot = sum_lanes(h, |j| g[j] * w[j] * x[j]);
                    let c = r * r * r * dot / cast::<T>(h as f64);
                    for j in 0..h {
                        gx[j] = r * g[j] * w[j] - x[j] * c;
                        gw[j] += g[j] * x[j] * r;
                    }
                }
                gw
            })
            .reduce(
                || vec![T::zero(); h],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        out[n * h..].copy_from_slice(&gw);
        Ok((out, Shape::from((n + 1, h))))
    }
}

/// RMS normalisation over the last dimension, `x / √(mean(x²) + eps) · w`, as transformers'
/// `LlamaRMSNorm` (for f32/f64 inputs). `x: (..., H)`, `w: (H)`; same dtype. Differentiable in
/// `x` and `w`.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_available(x) && x.dtype() == w.dtype() && x.dim(D::Minus1)? == w.elem_count() {
        Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Op(RmsNorm { eps }))?)
    } else {
        rms_norm_composed(x, w, eps)
    }
}

/// [`rms_norm`] from primitive candle ops (any device and dtype; f32 statistics for half types).
pub fn rms_norm_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm_slow(x, w, eps as f32)?)
}
