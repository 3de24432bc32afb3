//! Scaled, masked softmax over attention scores, and attention probabilities from queries and keys.

use crate::Result;
use candle_core::{CpuStorage, CustomOp2, D, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// `softmax(scale·scores + mask)` over the last dimension of `(B, G, R, K)` scores; `mask` is
/// `(B, 1, S, K)` and score row `r` uses mask row `r mod S` (grouped-query heads stacked along
/// `R`).
pub(super) struct MaskedSoftmax {
    pub(super) scale: f64,
}

impl MaskedSoftmax {
    /// `(B, G, R, S, K)` from the dims of `scores: (B, G, R, K)` and `mask: (B, 1, S, K)`.
    pub(super) fn dims(
        dims: &[&[usize]],
    ) -> candle_core::Result<(usize, usize, usize, usize, usize)> {
        let (b, g, r, k) = Shape::from(dims[0]).dims4()?;
        let (mb, _, s, mk) = Shape::from(dims[1]).dims4()?;
        if mb != b || mk != k || s == 0 || r % s != 0 {
            candle_core::bail!("rl-masked-softmax: scores {:?} vs mask {:?}", dims[0], dims[1]);
        }
        Ok((b, g, r, s, k))
    }
}

impl Kernel for MaskedSoftmax {
    const NAME: &'static str = "rl-masked-softmax";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let (_, g, r, s, k) = Self::dims(dims)?;
        let [x, m] = inputs(xs, Self::NAME)?;
        let scale = cast::<T>(self.scale);
        // Per mask row, the keys up to its last unmasked one: past it (the causal future,
        // right padding) the probabilities are exactly 0 and are not computed. A row with
        // every key masked keeps them all (a uniform row, as the plain formula gives).
        let ends: Vec<usize> = m
            .chunks(k)
            .map(|mrow| match mrow.iter().rposition(|&v| v > cast::<T>(MASKED)) {
                Some(last) => last + 1,
                None => k,
            })
            .collect();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(k).enumerate().with_min_len(MIN_ROWS).for_each(|(row, y)| {
            let (bi, ri) = (row / (g * r), row % r);
            let mi = bi * s + ri % s;
            let end = ends[mi];
            let (mrow, xrow, y) = (&m[mi * k..][..end], &x[row * k..][..end], &mut y[..end]);
            for ((y, &x), &m) in y.iter_mut().zip(xrow).zip(mrow) {
                *y = x * scale + m;
            }
            let max = max_lanes(y);
            y.iter_mut().for_each(|y| *y = (*y - max).exp_k());
            let inv = T::one() / sum_lanes(y.len(), |i| y[i]);
            y.iter_mut().for_each(|y| *y *= inv);
        });
        Ok((y, Shape::from(dims[0])))
    }

    fn grads(
        &self,
        _args: &[&Tensor],
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let op = Op(SoftmaxBwd { scale: self.scale });
        Ok(vec![Some(res.apply_op2_no_bwd(&grad.contiguous()?, &op)?)])
    }
}

/// Mask values at or below this count as masked for skipping a row's masked tail in
/// [`MaskedSoftmax`] (rl-policy's masks use `-1e9`): there `e^(scale·score + mask − max)` is
/// exactly 0 in f32 and f64 whenever `|scale·score| < 1e7`.
pub(super) const MASKED: f64 = -1e8;

/// Backward of [`MaskedSoftmax`]: `(y, g)` → `scale · y · (g − Σ_k g_k y_k)` per row.
pub(super) struct SoftmaxBwd {
    pub(super) scale: f64,
}

impl Kernel for SoftmaxBwd {
    const NAME: &'static str = "rl-softmax-bwd";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let k = dims[0].last().copied().unwrap_or(1).max(1);
        let [y, g] = inputs(xs, Self::NAME)?;
        let scale = cast::<T>(self.scale);
        let mut out = vec![T::zero(); y.len()];
        out.par_chunks_mut(k)
            .zip(y.par_chunks(k).zip(g.par_chunks(k)))
            .with_min_len(MIN_ROWS)
            .for_each(|(o, (y, g))| {
                let dot = sum_lanes(y.len(), |i| y[i] * g[i]);
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = scale * y * (g - dot);
                }
            });
        Ok((out, Shape::from(dims[0])))
    }
}

/// `(q, k)` → `softmax(scale · q·kᵀ + mask)`: the attention scores exist only inside the forward
/// pass (the backward pass needs the probabilities, not the scores), so the graph does not keep
/// a `(B, G, R, K)` scores tensor alive per layer.
pub(super) struct AttentionProbs {
    /// `(B, 1, S, K)` additive mask.
    pub(super) mask: Tensor,
    pub(super) scale: f64,
    /// The products `q·kᵀ` (and the backward ones) with bf16 operands, f32 accumulation.
    pub(super) bf16: bool,
}

impl AttentionProbs {
    /// The product `(B·G, R, K, d)` and operand layouts of the scores `q·kᵀ` of contiguous
    /// `q: (B, G, R, d)` and `k: (B, G, K, d)`, and the scores' `(B, G, R, K)` layout.
    #[allow(clippy::type_complexity)]
    pub(super) fn scores_layout(
        lq: &Layout,
        lk: &Layout,
    ) -> candle_core::Result<((usize, usize, usize, usize), Layout, Layout, Layout)> {
        let (b, g, r, d) = lq.shape().dims4()?;
        let (kb, kg, kk, kd) = lk.shape().dims4()?;
        if (kb, kg, kd) != (b, g, d) || !lq.is_contiguous() || !lk.is_contiguous() {
            candle_core::bail!("rl-attention: q {:?} and k {:?} do not fit", lq.dims(), lk.dims());
        }
        let lhs = Layout::contiguous_with_offset((b * g, r, d), lq.start_offset());
        let rhs =
            Layout::contiguous_with_offset((b * g, kk, d), lk.start_offset()).transpose(1, 2)?;
        Ok(((b * g, r, kk, d), lhs, rhs, Layout::contiguous((b, g, r, kk))))
    }
}

impl CustomOp2 for AttentionProbs {
    fn name(&self) -> &'static str {
        "rl-attention-probs"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (bmnk, lhs, rhs, ls) = Self::scores_layout(lq, lk)?;
        let scores = match self.bf16 {
            true => blas::matmul_bf16_storage(q, &lhs, k, &rhs, bmnk)?,
            false => blas::matmul_storage(q, &lhs, k, &rhs, bmnk)?,
        };
        let (mask, lm) = self.mask.storage_and_layout();
        let candle_core::Storage::Cpu(mask) = &*mask else {
            candle_core::bail!("rl-attention: the mask must be on the CPU");
        };
        run_kernel(&MaskedSoftmax { scale: self.scale }, &[(&scores, &ls), (mask, lm)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (bmnk, lhs, rhs, ls) = Self::scores_layout(lq, lk)?;
        let scores = q.matmul(k, bmnk, &lhs, &rhs)?;
        let (mask, lm) = self.mask.storage_and_layout();
        let candle_core::Storage::Cuda(mask) = &*mask else {
            candle_core::bail!("rl-attention: the mask must be on the queries' CUDA device");
        };
        cuda::run(&MaskedSoftmax { scale: self.scale }, &[(&scores, &ls), (mask, lm)])
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // d scores = scale · p · (g − Σ g p); dq = d scores · k, dk = d scoresᵀ · q
        let ds =
            res.apply_op2_no_bwd(&grad.contiguous()?, &Op(SoftmaxBwd { scale: self.scale }))?;
        // A bf16 `k` is a key cache without a graph (see [`attention_probs`]): no gradient.
        let cache = precision::is_bf16_cache(k);
        let (ds, q, k) = match self.bf16 {
            true => (blas::to_bf16(&ds)?, blas::to_bf16(q)?, blas::to_bf16(k)?),
            false => (ds, q.detach(), k.detach()),
        };
        let dq = blas::mm(&ds, &k)?;
        let dk = match cache {
            true => None,
            false => Some(blas::mm(&ds.transpose(2, 3)?, &q)?),
        };
        Ok((Some(dq), dk))
    }
}

/// Attention probabilities `softmax(scale · q·kᵀ + mask)` over the keys: `q: (B, G, R, d)`,
/// `k: (B, G, K, d)`, `mask: (B, 1, S, K)` additive with `R` a multiple of `S` (row `r` uses mask
/// row `r mod S`, as [`masked_softmax`]) → `(B, G, R, K)`. Differentiable in `q` and `k`.
///
/// Equals `masked_softmax(&q.matmul(&k.t()?)?, mask, scale)` (tests compare values and
/// gradients); with the fused kernels the scores are a temporary of the forward pass instead of
/// a graph tensor kept until the backward pass (for SmolLM2 at 8 × 272 tokens, 21 MiB per layer).
///
/// # Errors
/// Shape or dtype mismatches.
///
/// In a bf16 [`autocast`](super::precision::autocast) scope the products `q·kᵀ` take bf16
/// operands and accumulate in f32; the softmax runs in f32. There, on the CPU, `k` may also be
/// a bf16 tensor without a graph (a bf16 key cache): the same product as with its f32 values.
pub fn attention_probs(q: &Tensor, k: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let bf16 = precision::bf16_for(q).is_some();
    let fused = fused_available(q) && (q.device().is_cpu() || !bf16);
    let bf16_k = bf16 && q.device().is_cpu() && precision::is_bf16_cache(k);
    if fused && (k.dtype() == q.dtype() || bf16_k) && mask.dtype() == q.dtype() {
        let op = AttentionProbs { mask: mask.contiguous()?, scale, bf16 };
        return Ok(q.contiguous()?.apply_op2(&k.contiguous()?, op)?);
    }
    // `matmul` follows the autocast scope.
    masked_softmax(&matmul(q, &k.t()?)?, mask, scale)
}

/// `softmax(scale · scores + mask)` over the last dimension. `scores: (B, G, R, K)`,
/// `mask: (B, 1, S, K)` additive (0 or a large negative value) with `R` a multiple of `S`:
/// score row `r` uses mask row `r mod S`, so grouped-query heads can be stacked along `R`
/// without repeating keys. Differentiable in `scores`.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if fused_available(scores) && mask.dtype() == scores.dtype() {
        let op = Op(MaskedSoftmax { scale });
        return Ok(scores.contiguous()?.apply_op2(&mask.contiguous()?, op)?);
    }
    masked_softmax_composed(scores, mask, scale)
}

/// [`masked_softmax`] from primitive candle ops.
pub fn masked_softmax_composed(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, _, r, _) = scores.dims4()?;
    let (_, _, s, _) = mask.dims4()?;
    let reps = r / s.max(1);
    let mask = Tensor::cat(&vec![mask; reps], 2)?;
    let z = (scores * scale)?.broadcast_add(&mask)?;
    Ok(candle_nn::ops::softmax(&z, D::Minus1)?)
}
