//! The fused host path shared by every loss: read and check the inputs once, run one pass over
//! the tokens computing each token's loss and its exact derivative (with [`Dual`] numbers), and
//! attach the gradient to the graph with a custom op.
//!
//! Why: a PPO-style loss is an elementwise function of `log π_θ` followed by a weighted sum, so
//! `∂L/∂logπ_bt = w_b M_bt ℓ'_bt`. Computing it in one fused pass (in parallel over rows) avoids
//! the ~15 full-size temporaries of the composed forward and the ~30 of its backward.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use rl_core::{Error, LossOutput, Metrics, PolicyLossInput, Result, check};

use crate::dual::Dual;

/// Token flag: the lower PPO clip is active (`A < 0`, ratio below `1 − ε_low`).
pub(crate) const CLIP_LOW: u8 = 1;
/// Token flag: the upper PPO clip is active (`A > 0`, ratio above `1 + ε_high`).
pub(crate) const CLIP_HIGH: u8 = 2;
/// Token flag: the dual clip is active (`A < 0`, ratio above `c`).
pub(crate) const CLIP_DUAL: u8 = 4;

/// One token's loss (value + derivative w.r.t. its log-prob) and clip flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tok {
    pub l: Dual,
    pub flags: u8,
}

impl Tok {
    pub fn new(l: Dual) -> Self {
        Self { l, flags: 0 }
    }
}

/// Reads a tensor to the host as a flat f32 vector.
pub(crate) fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.flatten_all()?;
    Ok(if t.dtype() == DType::F32 { t.to_vec1()? } else { t.to_dtype(DType::F32)?.to_vec1()? })
}

/// Reads a binary `(B, T)` mask; returns its values and row lengths.
pub(crate) fn host_mask(mask: &Tensor, b: usize, t: usize) -> Result<(Vec<f32>, Vec<usize>)> {
    check::shape(mask, &[b, t], "response_mask")?;
    let m = host_f32(mask)?;
    if let Some(i) = m.iter().position(|x| *x != 0.0 && *x != 1.0) {
        return Err(Error::NonFinite {
            what: "response_mask (must be 0 or 1)".into(),
            index: i,
            value: m[i] as f64,
        });
    }
    let lens = if t == 0 {
        vec![0; b]
    } else {
        m.chunks(t).map(|r| r.iter().filter(|x| **x != 0.0).count()).collect()
    };
    Ok((m, lens))
}

/// Reads a `(B, T)` tensor that must be finite where `mask` is 1.
pub(crate) fn host_valid(x: &Tensor, dims: &[usize], mask: &[f32], what: &str) -> Result<Vec<f32>> {
    check::shape(x, dims, what)?;
    let v = host_f32(x)?;
    match v.iter().zip(mask).position(|(x, m)| *m != 0.0 && !x.is_finite()) {
        Some(index) => Err(Error::NonFinite { what: what.into(), index, value: v[index] as f64 }),
        None => Ok(v),
    }
}

/// The inputs of a policy loss, checked and on the host.
#[derive(Debug)]
pub(crate) struct HostBatch {
    pub b: usize,
    pub t: usize,
    pub lp: Vec<f32>,
    pub old: Vec<f32>,
    pub adv: Vec<f32>,
    pub mask: Vec<f32>,
    pub is_w: Option<Vec<f32>>,
    pub lens: Vec<usize>,
}

impl HostBatch {
    /// Checks shapes (every tensor `(B, T)`, group ids of length `B`), the mask (0/1) and
    /// finiteness of every input at valid positions.
    pub fn new(input: &PolicyLossInput<'_>) -> Result<Self> {
        let hb = Self::from_parts(
            [
                (input.log_probs, "log_probs"),
                (input.old_log_probs, "old_log_probs"),
                (input.advantages, "advantages"),
            ],
            input.response_mask,
            input.rollout_is_weights,
        )?;
        if let Some(ids) = input.group_ids
            && ids.len() != hb.b
        {
            return Err(Error::GroupMismatch { expected: hb.b, got: ids.len() });
        }
        Ok(hb)
    }

    /// The same checks for any three `(B, T)` tensors `[x (differentiated), y, z]`: the runner
    /// sees them as `(logπθ, logπold, A)` (the value loss passes `(V, V_old, R)`).
    pub fn from_parts(
        xs: [(&Tensor, &str); 3],
        mask: &Tensor,
        is_w: Option<&Tensor>,
    ) -> Result<Self> {
        let (b, t) = check::dims2(xs[0].0, xs[0].1)?;
        if b == 0 || t == 0 {
            return Err(Error::Empty { what: format!("{} (B = 0 or T = 0)", xs[0].1) });
        }
        let dims = [b, t];
        let (mask, lens) = host_mask(mask, b, t)?;
        let read = |i: usize| host_valid(xs[i].0, &dims, &mask, xs[i].1);
        let (lp, (old, adv)) = rayon::join(|| read(0), || rayon::join(|| read(1), || read(2)));
        let is_w = match is_w {
            Some(w) => Some(host_valid(w, &dims, &mask, "rollout_is_weights")?),
            None => None,
        };
        Ok(Self { b, t, lp: lp?, old: old?, adv: adv?, mask, is_w, lens })
    }
}

/// Diagnostics accumulated over valid tokens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats {
    n: f64,
    ratio_sum: f64,
    ratio_min: f64,
    ratio_max: f64,
    neg_logr_sum: f64,
    low: f64,
    high: f64,
    dual: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            n: 0.0,
            ratio_sum: 0.0,
            ratio_min: f64::INFINITY,
            ratio_max: f64::NEG_INFINITY,
            neg_logr_sum: 0.0,
            low: 0.0,
            high: 0.0,
            dual: 0.0,
        }
    }
}

impl Stats {
    /// Adds one valid token with log-ratio `logr = logπθ − logπold` and clip flags.
    pub fn push(&mut self, logr: f32, flags: u8) {
        let logr = logr.clamp(-20.0, 20.0);
        let r = logr.exp() as f64;
        let logr = logr as f64;
        self.n += 1.0;
        self.ratio_sum += r;
        self.ratio_min = self.ratio_min.min(r);
        self.ratio_max = self.ratio_max.max(r);
        self.neg_logr_sum -= logr;
        self.low += f64::from(flags & CLIP_LOW != 0);
        self.high += f64::from(flags & CLIP_HIGH != 0);
        self.dual += f64::from(flags & CLIP_DUAL != 0);
    }

    /// Adds one valid token's clip flags only (losses without a policy ratio).
    pub fn push_flags(&mut self, flags: u8) {
        self.n += 1.0;
        self.low += f64::from(flags & CLIP_LOW != 0);
        self.high += f64::from(flags & CLIP_HIGH != 0);
        self.dual += f64::from(flags & CLIP_DUAL != 0);
    }

    pub fn merge(mut self, o: Self) -> Self {
        self.n += o.n;
        self.ratio_sum += o.ratio_sum;
        self.ratio_min = self.ratio_min.min(o.ratio_min);
        self.ratio_max = self.ratio_max.max(o.ratio_max);
        self.neg_logr_sum += o.neg_logr_sum;
        self.low += o.low;
        self.high += o.high;
        self.dual += o.dual;
        self
    }

    /// `approx_kl` (verl `ppo_kl` = masked mean of `−log ρ`), `ratio_{mean,min,max}` of the
    /// token ratio `exp(clamp(logπθ − logπold, ±20))`, `clipfrac` (= `clipfrac_low +
    /// clipfrac_high`, verl `pg_clipfrac`), `clipfrac_dual` (verl `pg_clipfrac_lower`) and `loss`.
    /// With no valid token every statistic is neutral (fractions 0, ratios 1), never NaN.
    pub fn metrics(&self, loss: f64) -> Metrics {
        let n = self.n.max(1.0);
        let empty = self.n == 0.0;
        Metrics::new()
            .with("loss", loss)
            .with("approx_kl", self.neg_logr_sum / n)
            .with("ratio_mean", if empty { 1.0 } else { self.ratio_sum / n })
            .with("ratio_min", if empty { 1.0 } else { self.ratio_min })
            .with("ratio_max", if empty { 1.0 } else { self.ratio_max })
            .with("clipfrac", (self.low + self.high) / n)
            .with("clipfrac_low", self.low / n)
            .with("clipfrac_high", self.high / n)
            .with("clipfrac_dual", self.dual / n)
    }
}

/// Runs a per-token loss over the batch: `loss = Σ_b w_b Σ_t M_bt ℓ_bt·is_bt` and its gradient
/// `w_b M_bt ℓ'_bt is_bt`. `f(row, flat_index, logπθ, logπold, A)` gives one token's loss;
/// `ratio_stats` adds the ratio / approx-KL diagnostics of `exp(logπθ − logπold)`.
pub(crate) fn run_tokens<F>(
    hb: &HostBatch,
    weights: &[f64],
    ratio_stats: bool,
    f: F,
) -> (f64, Vec<f32>, Stats)
where
    F: Fn(usize, usize, f32, f32, f32) -> Tok + Sync,
{
    let t = hb.t;
    let mut grad = vec![0f32; hb.b * t];
    let (loss, stats) = grad
        .par_chunks_mut(t)
        .enumerate()
        .map(|(b, g)| {
            let mut s = 0f64;
            let mut st = Stats::default();
            let w = weights[b];
            for (j, gj) in g.iter_mut().enumerate() {
                let i = b * t + j;
                if hb.mask[i] == 0.0 {
                    continue;
                }
                let (lp, old, adv) = (hb.lp[i], hb.old[i], hb.adv[i]);
                let mut tok = f(b, i, lp, old, adv);
                if let Some(is) = &hb.is_w {
                    tok.l = tok.l.mul(Dual::c(is[i]));
                }
                if ratio_stats {
                    st.push(lp - old, tok.flags);
                } else {
                    st.push_flags(tok.flags);
                }
                s += tok.l.v as f64;
                *gj = (w * tok.l.d as f64) as f32;
            }
            (w * s, st)
        })
        .reduce(|| (0.0, Stats::default()), |a, b| (a.0 + b.0, a.1.merge(b.1)));
    (loss, grad, stats)
}

/// The whole path of a per-token policy loss: check the input, weight rows by `agg`, run `f`
/// over the valid tokens, attach the gradient. Returns the output and the raw diagnostics.
pub(crate) fn token_loss<F>(
    input: &PolicyLossInput<'_>,
    agg: &crate::Aggregation,
    f: F,
) -> Result<(LossOutput, HostBatch)>
where
    F: Fn(usize, usize, f32, f32, f32) -> Tok + Sync,
{
    let hb = HostBatch::new(input)?;
    let w = agg.row_weights(&hb.lens, hb.t, input.group_ids, input.counts)?;
    let (loss, grad, stats) = run_tokens(&hb, &w, true, f);
    let out = LossOutput { loss: emit(input.log_probs, loss, grad)?, metrics: stats.metrics(loss) };
    Ok((out, hb))
}

/// A scalar whose value was computed on the host and whose gradient w.r.t. its argument is a
/// precomputed vector (times the incoming gradient).
struct HostLoss {
    value: f64,
    grad: Arc<Vec<f32>>,
}

impl CustomOp1 for HostLoss {
    fn name(&self) -> &'static str {
        "rl-loss-host"
    }

    fn cpu_fwd(&self, s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F64(_) => CpuStorage::F64(vec![self.value]),
            _ => CpuStorage::F32(vec![self.value as f32]),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // The incoming gradient is a scalar: scale on the host (one pass, no broadcast op).
        let g = g.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let grad: Vec<f32> = if g == 1.0 {
            self.grad.to_vec()
        } else {
            self.grad.par_iter().map(|x| x * g).collect()
        };
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?.to_dtype(arg.dtype())?))
    }
}

/// Builds the scalar loss tensor attached to `x`'s graph: value `value`, `∂/∂x = grad`.
///
/// On the CPU this is a custom op (exact value). On other devices, where the op has no kernel,
/// the same value and gradient come from the surrogate `Σ x·g + (value − Σ x·g)`.
pub(crate) fn emit(x: &Tensor, value: f64, grad: Vec<f32>) -> Result<Tensor> {
    let x = match x.dtype() {
        DType::F32 | DType::F64 => x.clone(),
        _ => x.to_dtype(DType::F32)?,
    };
    if x.device().is_cpu() {
        return Ok(x.apply_op1_arc(Arc::new(Box::new(HostLoss { value, grad: Arc::new(grad) })))?);
    }
    let xs = host_f32(&x)?;
    let dot: f64 = xs.iter().zip(&grad).map(|(a, b)| *a as f64 * *b as f64).sum();
    let g = Tensor::from_vec(grad, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&g)?.sum_all()?.affine(1.0, value - dot)?)
}

/// Validates a clip range `(ε_low, ε_high)`: both finite and > 0, `ε_low < 1`, `ε_low <= ε_high`.
pub(crate) fn check_clip(low: f64, high: f64, what: &str) -> Result<()> {
    if !(low > 0.0 && low.is_finite()) {
        return Err(Error::config(format!("{what}.clip_low"), "must be a finite number > 0"));
    }
    if !(high > 0.0 && high.is_finite()) {
        return Err(Error::config(format!("{what}.clip_high"), "must be a finite number > 0"));
    }
    if low > high {
        return Err(Error::config(format!("{what}.clip_low"), "must be <= clip_high"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn emit_value_and_gradient_on_both_paths() -> Result<()> {
        let x = Var::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
        let grad = vec![0.5f32, -1.0, 2.0, 0.25];
        let loss = emit(x.as_tensor(), 1.5, grad.clone())?;
        assert_eq!(loss.to_scalar::<f32>()?, 1.5);
        let scaled = (loss * 3.0)?;
        let g = scaled.backward()?.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(g, vec![1.5, -3.0, 6.0, 0.75]);
        Ok(())
    }

    #[test]
    fn clip_ranges_are_validated() {
        assert!(check_clip(0.2, 0.28, "ppo").is_ok());
        assert!(check_clip(0.0, 0.2, "ppo").is_err());
        assert!(check_clip(0.3, 0.2, "ppo").is_err());
        assert!(check_clip(0.2, f64::NAN, "ppo").is_err());
    }
}
