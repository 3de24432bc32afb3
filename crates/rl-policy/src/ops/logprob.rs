//! log-softmax + gather + entropy, and the output projection fused with it.

use crate::Result;
use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// `(N, V)` logits → `(N, 2)`: `[log p(target), entropy]` per row.
pub(super) struct LogProbEntropy {
    pub(super) targets: Tensor,
}

/// The targets as host `u32`s (contiguous CPU u32 tensor).
pub(super) fn host_targets(t: &Tensor) -> candle_core::Result<Vec<u32>> {
    t.flatten_all()?.to_vec1::<u32>()
}

/// `count` targets with largest value `max` must index `n` rows of `v` logits.
pub(super) fn check_targets(count: usize, max: u32, n: usize, v: usize) -> candle_core::Result<()> {
    if count != n || (n > 0 && max as usize >= v) {
        candle_core::bail!("rl-log-prob-entropy: {count} targets (max {max}) for {n} rows of {v}");
    }
    Ok(())
}

impl Kernel for LogProbEntropy {
    const NAME: &'static str = "rl-log-prob-entropy";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let (n, v) = Shape::from(dims[0]).dims2()?;
        let targets = host_targets(&self.targets)?;
        check_targets(targets.len(), targets.iter().copied().max().unwrap_or(0), n, v)?;
        let [z] = inputs(xs, Self::NAME)?;
        let mut out = vec![T::zero(); 2 * n];
        out.par_chunks_mut(2).zip(z.par_chunks(v)).zip(&targets).for_each(|((o, z), &t)| {
            let max = max_lanes(z);
            // Σ e^(z−m) and Σ e^(z−m)·(z−m), accumulated in f64 (V is large); the exponentials
            // of a block first, in a loop that vectorizes.
            let (mut sum, mut wsum) = (0f64, 0f64);
            let mut e = [T::zero(); 256];
            for block in z.chunks(e.len()) {
                let e = &mut e[..block.len()];
                e.iter_mut().zip(block).for_each(|(e, &x)| *e = (x - max).exp_k());
                sum += sum_lanes(e.len(), |i| e[i].to_f64());
                wsum += sum_lanes(e.len(), |i| (e[i] * (block[i] - max)).to_f64());
            }
            let log_sum = sum.ln();
            o[0] = cast::<T>((z[t as usize] - max).to_f64() - log_sum);
            o[1] = cast::<T>(log_sum - wsum / sum);
        });
        Ok((out, Shape::from((n, 2))))
    }

    fn grads(
        &self,
        args: &[&Tensor],
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let op = Op(LogProbEntropyBwd { targets: self.targets.clone() });
        Ok(vec![Some(args[0].apply_op3_no_bwd(res, &grad.contiguous()?, &op)?)])
    }
}

/// Backward of [`LogProbEntropy`]: `(z, [lp, H], [g_lp, g_H])` → `(N, V)` with
/// `p = softmax(z)`: `∂z_v = g_lp·(1[v = t] − p_v) − g_H·p_v·(log p_v + H)`.
pub(super) struct LogProbEntropyBwd {
    pub(super) targets: Tensor,
}

impl Kernel for LogProbEntropyBwd {
    const NAME: &'static str = "rl-log-prob-entropy-bwd";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let (n, v) = Shape::from(dims[0]).dims2()?;
        let targets = host_targets(&self.targets)?;
        let [z, res, g] = inputs(xs, Self::NAME)?;
        let mut out = vec![T::zero(); n * v];
        out.par_chunks_mut(v).zip(z.par_chunks(v)).enumerate().for_each(|(i, (o, z))| {
            let t = targets[i] as usize;
            let (lp, h) = (res[2 * i], res[2 * i + 1]);
            let (g_lp, g_h) = (g[2 * i], g[2 * i + 1]);
            let lse = z[t] - lp;
            if g_h == T::zero() {
                for (o, &x) in o.iter_mut().zip(z) {
                    *o = -g_lp * (x - lse).exp_k();
                }
            } else {
                for (o, &x) in o.iter_mut().zip(z) {
                    let logp = x - lse;
                    let p = logp.exp_k();
                    *o = -g_lp * p - g_h * p * (logp + h);
                }
            }
            o[t] += g_lp;
        });
        Ok((out, Shape::from(dims[0])))
    }
}

/// Per-row log-probability of `targets` and entropy of `softmax(logits)`, without materialising
/// the `(N, V)` log-softmax: `logits: (N, V)` (f32/f64), `targets: (N)` u32 (each `< V`) →
/// `(log p(target), −Σ p log p)`, both `(N)` in the logits dtype. Differentiable in `logits`
/// (the backward pass builds one `(N, V)` gradient).
///
/// # Errors
/// Shape or dtype mismatches, a target `>= V`.
pub fn log_prob_entropy(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let targets = targets.to_dtype(DType::U32)?.flatten_all()?.to_device(logits.device())?;
    if fused_available(logits) {
        let out = logits.contiguous()?.apply_op1(Op(LogProbEntropy { targets }))?;
        return Ok((out.narrow(1, 0, 1)?.squeeze(1)?, out.narrow(1, 1, 1)?.squeeze(1)?));
    }
    log_prob_entropy_composed(logits, &targets)
}

// ----------------------------------------------------------------------------------------------
// Output projection + log-softmax + gather + entropy

/// `(x, w)` → `(N, 2)` = `[log p(target), entropy]` of the logits `x · wᵀ`, precomputed by
/// [`head_log_prob_entropy`] on detached inputs. The op keeps the logits chunk by chunk (the
/// backward pass needs them) outside the autograd graph, so the backward pass builds one
/// chunk-sized logits gradient at a time and never an `(N, V)` one, and the graph holds no
/// `(N, V)` node whose gradient candle would zero-fill and accumulate. The backward pass releases
/// each chunk's logits as soon as it has used them (the head is the first node a backward pass
/// reaches, so the logits do not stay alive beside the gradients of every layer below); a
/// second backward pass through the same graph recomputes them.
pub(super) struct HeadLogProb {
    /// `(rows)` targets of consecutive row chunks.
    pub(super) targets: Vec<Tensor>,
    /// The `(rows, V)` logits of each chunk, until a backward pass takes them.
    pub(super) logits: std::sync::Mutex<Vec<Tensor>>,
    /// `(N, 2)` result.
    pub(super) out: Tensor,
    /// Where `w`'s gradient accumulates when a [`GradSink`] holds it.
    pub(super) sink: Option<std::sync::Arc<sink::Slot>>,
    /// `w`'s bf16 copy when the products run in bf16 (f32 accumulation).
    pub(super) w16: Option<Tensor>,
}

/// The logits `x · wᵀ` of detached `x` and `w` (f32): with `w16` (`w`'s bf16 copy) from bf16
/// operands with f32 accumulation.
fn head_logits(x: &Tensor, w: &Tensor, w16: Option<&Tensor>) -> Result<Tensor> {
    match w16 {
        Some(w16) => Ok(blas::mm(&blas::to_bf16(x)?, &w16.t()?)?),
        None => linear(x, w, None),
    }
}

impl HeadLogProb {
    pub(super) fn result<S: candle_core::backend::BackendStorage>(
        &self,
        pick: impl Fn(&candle_core::Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let (storage, layout) = self.out.storage_and_layout();
        match pick(&storage) {
            Some(s) => Ok((s.try_clone(layout)?, self.out.shape().clone())),
            None => candle_core::bail!("rl-head-log-prob: result on another device"),
        }
    }
}

impl CustomOp2 for HeadLogProb {
    fn name(&self) -> &'static str {
        "rl-head-log-prob"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result(|s| match s {
            candle_core::Storage::Cpu(s) => Some(s),
            _ => None,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.result(|s| match s {
            candle_core::Storage::Cuda(s) => Some(s),
            _ => None,
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.detach(), w.detach(), grad.contiguous()?);
        let kept = std::mem::take(&mut *self.logits.lock().unwrap_or_else(|e| e.into_inner()));
        let mut kept = kept.into_iter();
        let (mut dx, mut dw, mut start) = (Vec::new(), None::<Tensor>, 0);
        for targets in &self.targets {
            let rows = targets.dim(0)?;
            let xs = x.narrow(0, start, rows)?;
            let logits = match kept.next() {
                Some(logits) => logits,
                None => head_logits(&xs, &w, self.w16.as_ref())
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            };
            let res = self.out.narrow(0, start, rows)?;
            let op = Op(LogProbEntropyBwd { targets: targets.clone() });
            let g = logits.apply_op3_no_bwd(&res, &grad.narrow(0, start, rows)?, &op)?;
            drop(logits);
            let part = match &self.w16 {
                Some(w16) => {
                    let g = blas::to_bf16(&g)?;
                    dx.push(blas::mm(&g, w16)?);
                    blas::mm(&g.t()?, &blas::to_bf16(&xs)?)?
                }
                None => {
                    dx.push(blas::mm(&g, &w)?);
                    blas::mm(&g.t()?, &xs)?
                }
            };
            dw = Some(match dw {
                Some(acc) => (acc + part)?,
                None => part,
            });
            start += rows;
        }
        let dw = match dw {
            Some(dw) => dw,
            None => w.zeros_like()?,
        };
        Ok((Some(Tensor::cat(&dx, 0)?), sunk(&self.sink, dw)?))
    }
}

/// [`log_prob_entropy`] of the logits `x · wᵀ` (an output projection without bias), computed
/// `chunk_rows` rows at a time: `x: (N, H)`, `w: (V, H)`, `targets: (N)` u32 (each `< V`) →
/// `(log p(target), entropy)`, both `(N)`. Differentiable in `x` and `w`.
///
/// Same values and gradients as `log_prob_entropy(&linear(x, w, None)?, targets)` (tests compare
/// them), but where the fused kernels apply no `(N, V)` tensor enters the autograd graph: the
/// logits are kept per chunk for the backward pass, which turns each chunk's logits gradient into
/// the gradients of `x` and `w` before building the next. That saves the `(N, V)` gradient and
/// candle's zero-filled accumulator for it (≈ 1.3 GiB of transient memory for SmolLM2 at
/// 8 × 256 tokens) and the graph nodes of per-chunk reshapes.
///
/// In a bf16 [`autocast`](super::precision::autocast) scope the products take bf16 operands
/// and accumulate in f32; the log-softmax, gather and entropy run on f32 logits.
///
/// # Errors
/// Shape or dtype mismatches, a target `>= V`.
pub fn head_log_prob_entropy(
    x: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    chunk_rows: usize,
) -> Result<(Tensor, Tensor)> {
    let (n, _) = x.dims2()?;
    let targets = targets.to_dtype(DType::U32)?.flatten_all()?.to_device(x.device())?;
    if !(fused_available(x) && x.dtype() == w.dtype()) || n == 0 {
        return log_prob_entropy(&linear(x, w, None)?, &targets);
    }
    let (xd, wd) = (x.detach(), w.detach());
    let bf16 = precision::bf16_for(x).filter(|_| w.dtype() == DType::F32);
    let w16 = bf16.map(|c| c.get(w)).transpose()?;
    // Without a graph to record into (no-grad passes such as old-log-prob recomputation) each
    // chunk's logits are dropped as soon as they are reduced.
    let keep = x.track_op() || w.track_op();
    let chunk_rows = chunk_rows.max(1);
    let (mut logits_kept, mut chunk_targets, mut outs, mut start) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    while start < n {
        let rows = chunk_rows.min(n - start);
        let logits = head_logits(&xd.narrow(0, start, rows)?, &wd, w16.as_ref())?;
        let t = targets.narrow(0, start, rows)?;
        outs.push(logits.apply_op1_no_bwd(&Op(LogProbEntropy { targets: t.clone() }))?);
        if keep {
            logits_kept.push(logits);
            chunk_targets.push(t);
        }
        start += rows;
    }
    let out = Tensor::cat(&outs, 0)?;
    if !keep {
        return Ok((out.narrow(1, 0, 1)?.squeeze(1)?, out.narrow(1, 1, 1)?.squeeze(1)?));
    }
    let op = HeadLogProb {
        targets: chunk_targets,
        logits: std::sync::Mutex::new(logits_kept),
        out,
        sink: sink::slot(w),
        w16,
    };
    let res = x.apply_op2(w, op)?;
    Ok((res.narrow(1, 0, 1)?.squeeze(1)?, res.narrow(1, 1, 1)?.squeeze(1)?))
}

/// [`log_prob_entropy`] from primitive candle ops (`targets: (N)` u32).
pub fn log_prob_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, _) = logits.dims2()?;
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let lp = lsm.gather(&targets.reshape((n, 1))?, 1)?.squeeze(1)?;
    let ent = (lsm.exp()? * &lsm)?.sum(D::Minus1)?.neg()?;
    Ok((lp, ent))
}
