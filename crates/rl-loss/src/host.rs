//! The fused host path shared by every loss: view the inputs on the host (in place for
//! contiguous f32 CPU tensors), run one pass over the tokens computing each token's loss and its
//! exact derivative (with [`Dual`] numbers) while checking the inputs, and attach the gradient
//! to the graph with a custom op.
//!
//! Why: a PPO-style loss is an elementwise function of `log π_θ` followed by a weighted sum, so
//! `∂L/∂logπ_bt = w_b M_bt ℓ'_bt`. Computing it in one fused pass (in parallel over rows) avoids
//! the ~15 full-size temporaries of the composed forward and the ~30 of its backward; reading
//! the inputs in place avoids copying them, and checking them inside the pass avoids reading
//! them twice.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;
use rl_core::host::HostF32 as Held;
use rl_core::{Error, GlobalCounts, LossOutput, Metrics, PolicyLossInput, Result, check};

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
    Ok(Held::new(t)?.into_vec())
}

/// Reads a binary `(B, T)` mask; returns its values and row lengths.
pub(crate) fn host_mask(mask: &Tensor, b: usize, t: usize) -> Result<(Vec<f32>, Vec<usize>)> {
    check::shape(mask, &[b, t], "response_mask")?;
    let m = host_f32(mask)?;
    let (lens, _) = mask_lens(&m, b, t)?;
    Ok((m, lens))
}

/// Row lengths of a flat `(B, T)` mask, which must be 0 or 1, and row extents (one past the
/// last valid token; 0 for an empty row): [`check::mask_rows`].
fn mask_lens(m: &[f32], b: usize, t: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    let rows = check::mask_rows(m, b, t, "response_mask")?;
    Ok((rows.lengths, rows.ends))
}

/// Checks that `v` is finite wherever `mask` is non-zero (flat index of the first that is not).
fn check_valid(v: &[f32], mask: &[f32], what: &str) -> Result<()> {
    let bad = |(x, m): (&f32, &f32)| *m != 0.0 && !x.is_finite();
    if !v.par_iter().zip(mask).any(bad) {
        return Ok(());
    }
    match v.iter().zip(mask).position(bad) {
        Some(index) => Err(Error::NonFinite { what: what.into(), index, value: v[index] as f64 }),
        None => Ok(()),
    }
}

/// Reads a `(B, T)` tensor that must be finite where `mask` is 1.
pub(crate) fn host_valid(x: &Tensor, dims: &[usize], mask: &[f32], what: &str) -> Result<Vec<f32>> {
    check::shape(x, dims, what)?;
    let v = host_f32(x)?;
    check_valid(&v, mask, what)?;
    Ok(v)
}

/// The inputs of a policy loss on the host: flat row-major `(B, T)` slices (borrowed from the
/// tensors' CPU storage when possible, see [`HostF32`](rl_core::host::HostF32)), the mask's row lengths and the inputs'
/// names.
///
/// Built by [`HostBatch::with`] / [`HostBatch::policy`], which check shapes and the mask.
/// **Finiteness at valid positions is checked lazily**: [`run_tokens`] checks it inside its
/// compute pass, [`HostBatch::weights`] before reporting an aggregation error, and losses that
/// read the inputs themselves call [`HostBatch::check`] first. Every error (kind, input and
/// index) is the one an eager check of `rollout_is_weights`, then `[x, y, z]` in order, gives.
#[derive(Debug)]
pub(crate) struct HostBatch<'a> {
    pub b: usize,
    pub t: usize,
    pub lp: &'a [f32],
    pub old: &'a [f32],
    pub adv: &'a [f32],
    pub mask: &'a [f32],
    pub is_w: Option<&'a [f32]>,
    pub lens: Vec<usize>,
    /// Per row, one past its last valid token.
    ends: Vec<usize>,
    names: [&'a str; 3],
}

impl HostBatch<'_> {
    /// Runs `f` on the checked-shape inputs of a policy loss (every tensor `(B, T)`, group ids
    /// of length `B`, a binary mask).
    pub fn policy<R>(
        input: &PolicyLossInput<'_>,
        f: impl FnOnce(&HostBatch<'_>) -> Result<R>,
    ) -> Result<R> {
        Self::with(
            [
                (input.log_probs, "log_probs"),
                (input.old_log_probs, "old_log_probs"),
                (input.advantages, "advantages"),
            ],
            input.response_mask,
            input.rollout_is_weights,
            |hb| {
                if let Some(ids) = input.group_ids
                    && ids.len() != hb.b
                {
                    hb.check()?;
                    return Err(Error::GroupMismatch { expected: hb.b, got: ids.len() });
                }
                f(hb)
            },
        )
    }

    /// The same for any three `(B, T)` tensors `[x (differentiated), y, z]`: the runner sees
    /// them as `(logπθ, logπold, A)` (the value loss passes `(V, V_old, R)`).
    pub fn with<R>(
        xs: [(&Tensor, &str); 3],
        mask: &Tensor,
        is_w: Option<&Tensor>,
        f: impl FnOnce(&HostBatch<'_>) -> Result<R>,
    ) -> Result<R> {
        let (b, t) = check::dims2(xs[0].0, xs[0].1)?;
        if b == 0 || t == 0 {
            return Err(Error::Empty { what: format!("{} (B = 0 or T = 0)", xs[0].1) });
        }
        let dims = [b, t];
        check::shape(mask, &dims, "response_mask")?;
        let mask = Held::new(mask)?;
        let (lens, ends) = mask_lens(mask.as_slice(), b, t)?;
        // Inputs in the order they are checked: each one's shape, then its finiteness.
        let order: Vec<(&Tensor, &str)> =
            is_w.map(|w| (w, "rollout_is_weights")).into_iter().chain(xs).collect();
        if let Some(k) = order.iter().position(|(x, _)| x.dims() != dims) {
            for (x, what) in &order[..k] {
                check_valid(Held::new(x)?.as_slice(), mask.as_slice(), what)?;
            }
            let (x, what) = order[k];
            return Err(Error::shape(what, &dims, x.dims()));
        }
        let is_w = is_w.map(Held::new).transpose()?;
        let held = [Held::new(xs[0].0)?, Held::new(xs[1].0)?, Held::new(xs[2].0)?];
        let all = held.iter().chain(is_w.as_ref()).chain([&mask]);
        if all.into_iter().any(|h| h.as_slice().len() != b * t) {
            return Err(Error::msg("rl-loss: an input's host view has the wrong length"));
        }
        let hb = HostBatch {
            b,
            t,
            lp: held[0].as_slice(),
            old: held[1].as_slice(),
            adv: held[2].as_slice(),
            mask: mask.as_slice(),
            is_w: is_w.as_ref().map(Held::as_slice),
            lens,
            ends,
            names: [xs[0].1, xs[1].1, xs[2].1],
        };
        f(&hb)
    }

    /// Checks that every input is finite at valid positions (`rollout_is_weights` first, then
    /// `x, y, z`); the error names the first offending input and its first offending index.
    pub fn check(&self) -> Result<()> {
        if let Some(w) = self.is_w {
            check_valid(w, self.mask, "rollout_is_weights")?;
        }
        for (v, what) in [self.lp, self.old, self.adv].into_iter().zip(self.names) {
            check_valid(v, self.mask, what)?;
        }
        Ok(())
    }

    /// [`crate::Aggregation::row_weights`] of this batch; an aggregation error is reported only
    /// once the inputs are known to be valid (else the input error comes first).
    pub fn weights(
        &self,
        agg: &crate::Aggregation,
        group_ids: Option<&[usize]>,
        counts: Option<&GlobalCounts>,
    ) -> Result<Vec<f64>> {
        agg.row_weights(&self.lens, self.t, group_ids, counts).or_else(|e| {
            self.check()?;
            Err(e)
        })
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
        let r = crate::expf::exp_small(logr) as f64;
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
        use rl_core::metrics::Reduce;
        let n = self.n.max(1.0);
        let empty = self.n == 0.0;
        Metrics::new()
            .with_reduce("loss", loss, Reduce::Sum)
            .with("approx_kl", self.neg_logr_sum / n)
            .with("ratio_mean", if empty { 1.0 } else { self.ratio_sum / n })
            .with_reduce("ratio_min", if empty { 1.0 } else { self.ratio_min }, Reduce::Min)
            .with_reduce("ratio_max", if empty { 1.0 } else { self.ratio_max }, Reduce::Max)
            .with("clipfrac", (self.low + self.high) / n)
            .with("clipfrac_low", self.low / n)
            .with("clipfrac_high", self.high / n)
            .with("clipfrac_dual", self.dual / n)
    }
}

/// [`Stats`] of one row in cheap types: integer counts and f32 extremes (the same values:
/// counts are exact in f64, and f32 → f64 is exact and monotonic); the sums stay f64.
#[derive(Clone, Copy, Debug)]
struct RowStats {
    n: u64,
    low: u64,
    high: u64,
    dual: u64,
    ratio_sum: f64,
    neg_logr_sum: f64,
    ratio_min: f32,
    ratio_max: f32,
}

impl RowStats {
    fn stats(self) -> Stats {
        Stats {
            n: self.n as f64,
            ratio_sum: self.ratio_sum,
            ratio_min: self.ratio_min as f64,
            ratio_max: self.ratio_max as f64,
            neg_logr_sum: self.neg_logr_sum,
            low: self.low as f64,
            high: self.high as f64,
            dual: self.dual as f64,
        }
    }
}

/// The token ratio `exp(clamp(logπθ − logπold, ±20))` as a dual number, given its value `r`:
/// what `Dual::var(lp).sub(Dual::c(old)).clamp(-20.0, 20.0).exp()` computes, without a
/// second `exp` (derivative `r` inside the clamp, 0 outside).
#[inline(always)]
#[allow(clippy::manual_range_contains)] // `contains` differs on NaN, which `clamp` passes on
pub(crate) fn ratio_dual(lp: f32, old: f32, r: f32) -> Dual {
    let logr = lp - old;
    Dual { v: r, d: if logr < -20.0 || logr > 20.0 { 0.0 } else { r } }
}

/// Runs a per-token loss over the batch: `loss = Σ_b w_b Σ_t M_bt ℓ_bt·is_bt` and its gradient
/// `w_b M_bt ℓ'_bt is_bt`. `f(row, flat_index, logπθ, logπold, A, ρ)` gives one token's loss;
/// with `ratio_stats`, `ρ = exp(clamp(logπθ − logπold, ±20))` (see [`ratio_dual`]) and its
/// ratio / approx-KL diagnostics are added, else `ρ` is NaN.
///
/// One pass, parallel over rows, also checks that every input is finite at the valid
/// positions; if one is not, the result is dropped and [`HostBatch::check`] reports it. Rows
/// are summed in order, so the result does not depend on how rayon splits the work.
pub(crate) fn run_tokens<F>(
    hb: &HostBatch<'_>,
    weights: &[f64],
    ratio_stats: bool,
    f: F,
) -> Result<(f64, Vec<f32>, Stats)>
where
    F: Fn(usize, usize, f32, f32, f32, f32) -> Tok + Sync + Clone,
{
    run_rows(hb, weights, ratio_stats, |_| f.clone())
}

/// [`run_tokens`] with one closure per row, `row(b)`: what a token's loss needs from its row
/// is captured by value in it (a load from a per-row table inside the token loop keeps that
/// loop from vectorising).
pub(crate) fn run_rows<F, R>(
    hb: &HostBatch<'_>,
    weights: &[f64],
    ratio_stats: bool,
    row: R,
) -> Result<(f64, Vec<f32>, Stats)>
where
    F: Fn(usize, usize, f32, f32, f32, f32) -> Tok,
    R: Fn(usize) -> F + Sync,
{
    let t = hb.t;
    let mut grad = vec![0f32; hb.b * t];
    let rows: Vec<(f64, RowStats, bool)> = grad
        .par_chunks_mut(t)
        .enumerate()
        .with_max_len(ROWS_PER_JOB)
        .map(|(b, g)| {
            // Only up to the row's last valid token: the padding after it keeps gradient 0.
            let r = b * t..b * t + hb.ends[b];
            let g = &mut g[..hb.ends[b]];
            let f = row(b);
            let inputs = Row {
                start: b * t,
                lp: &hb.lp[r.clone()],
                old: &hb.old[r.clone()],
                adv: &hb.adv[r.clone()],
                mask: &hb.mask[r.clone()],
                w: weights[b],
                n: hb.lens[b],
            };
            match (ratio_stats, hb.is_w.map(|w| &w[r])) {
                (true, None) => inputs.run::<true>(b, None, g, f),
                (true, is_w) => inputs.run::<true>(b, is_w, g, f),
                (false, None) => inputs.run::<false>(b, None, g, f),
                (false, is_w) => inputs.run::<false>(b, is_w, g, f),
            }
        })
        .collect();
    let (mut loss, mut stats, mut finite) = (0f64, Stats::default(), true);
    for (l, st, ok) in rows {
        loss += l;
        stats = stats.merge(st.stats());
        finite &= ok;
    }
    if !finite {
        hb.check()?;
    }
    Ok((loss, grad, stats))
}

/// One row of [`run_tokens`], up to its last valid token.
struct Row<'a> {
    /// Flat index of the row's first token.
    start: usize,
    lp: &'a [f32],
    old: &'a [f32],
    adv: &'a [f32],
    mask: &'a [f32],
    /// The row's weight.
    w: f64,
    /// Its number of valid tokens.
    n: usize,
}

/// At most this many rows per rayon job: on a shared machine a thread can lose its core in the
/// middle of a job, and with small jobs the other threads take over the rest.
pub(crate) const ROWS_PER_JOB: usize = 8;

/// Tokens per block of [`Row::run`].
const BLOCK: usize = 64;

impl Row<'_> {
    /// The row's weighted loss, diagnostics and whether its valid inputs are finite; writes its
    /// gradient to `g`.
    ///
    /// By blocks of [`BLOCK`] tokens, in loops the compiler vectorises (no branch, no call):
    /// the ratios; every token of the block (padding included, whose values are dropped by
    /// selects) with its gradient, clip counts and extreme ratios. Then, in order, the three
    /// f64 sums over the valid tokens (a padding token adds +0.0, which leaves a sum that
    /// starts at +0.0 unchanged): the same sums, bit for bit, as one sequential loop.
    #[inline(always)]
    fn run<const RATIO: bool>(
        &self,
        b: usize,
        is_w: Option<&[f32]>,
        g: &mut [f32],
        f: impl Fn(usize, usize, f32, f32, f32, f32) -> Tok,
    ) -> (f64, RowStats, bool) {
        use crate::dual::sel;
        let (mut s, mut ratio_sum, mut neg_logr_sum, mut bad) = (0f64, 0f64, 0f64, false);
        let (mut low, mut high, mut dual) = (0u64, 0u64, 0u64);
        let (mut rmin, mut rmax) = (f32::INFINITY, f32::NEG_INFINITY);
        let (mut v, mut d, mut logr, mut ratio) =
            ([0f32; BLOCK], [0f32; BLOCK], [0f32; BLOCK], [0f32; BLOCK]);
        for (c, g) in g.chunks_mut(BLOCK).enumerate() {
            let o = c * BLOCK;
            let n = g.len();
            let (lp, old, adv, mask) = (
                &self.lp[o..o + n],
                &self.old[o..o + n],
                &self.adv[o..o + n],
                &self.mask[o..o + n],
            );
            let is_w = is_w.map(|w| &w[o..o + n]);
            if RATIO {
                for j in 0..n {
                    logr[j] = (lp[j] - old[j]).clamp(-20.0, 20.0);
                }
                for j in 0..n {
                    ratio[j] = crate::expf::exp_small(logr[j]);
                }
            }
            let (mut lo, mut hi, mut du) = (0u32, 0u32, 0u32);
            for j in 0..n {
                let (x, y, z) = (lp[j], old[j], adv[j]);
                let valid = mask[j] != 0.0;
                let mut ok = x.is_finite() & y.is_finite() & z.is_finite();
                let r = if RATIO { ratio[j] } else { f32::NAN };
                let mut tok = f(b, self.start + o + j, x, y, z, r);
                if let Some(is) = is_w {
                    ok &= is[j].is_finite();
                    tok.l = tok.l.mul(Dual::c(is[j]));
                }
                bad |= valid & !ok;
                (v[j], d[j]) = (tok.l.v, tok.l.d);
                let fl = u32::from(tok.flags) * u32::from(valid);
                lo += fl & u32::from(CLIP_LOW);
                hi += (fl & u32::from(CLIP_HIGH)) >> 1;
                du += (fl & u32::from(CLIP_DUAL)) >> 2;
                if RATIO {
                    g[j] = sel(valid, (self.w * d[j] as f64) as f32, 0.0);
                }
            }
            if RATIO {
                for j in 0..n {
                    let valid = mask[j] != 0.0;
                    rmin = rmin.min(if valid { ratio[j] } else { f32::INFINITY });
                    rmax = rmax.max(if valid { ratio[j] } else { f32::NEG_INFINITY });
                }
            }
            (low, high, dual) = (low + lo as u64, high + hi as u64, dual + du as u64);
            if !RATIO {
                // In a loop of its own when `f` may evaluate `exp` (the KL estimators): a
                // store to `g` next to its table lookup keeps the loop above from vectorising.
                for j in 0..n {
                    g[j] = sel(mask[j] != 0.0, (self.w * d[j] as f64) as f32, 0.0);
                }
            }
            for j in 0..n {
                let valid = mask[j] != 0.0;
                s += sel(valid, v[j], 0.0) as f64;
                if RATIO {
                    ratio_sum += sel(valid, ratio[j], 0.0) as f64;
                    neg_logr_sum -= sel(valid, logr[j], 0.0) as f64;
                }
            }
        }
        let st = RowStats {
            n: self.n as u64,
            low,
            high,
            dual,
            ratio_sum,
            neg_logr_sum,
            ratio_min: rmin,
            ratio_max: rmax,
        };
        (self.w * s, st, !bad)
    }
}

/// The whole path of a per-token policy loss: check the input, weight rows by `agg`, run `f`
/// over the valid tokens, attach the gradient.
pub(crate) fn token_loss<F>(
    input: &PolicyLossInput<'_>,
    agg: &crate::Aggregation,
    f: F,
) -> Result<LossOutput>
where
    F: Fn(usize, usize, f32, f32, f32, f32) -> Tok + Sync + Clone,
{
    let (loss, grad, stats) = HostBatch::policy(input, |hb| {
        let w = hb.weights(agg, input.group_ids, input.counts)?;
        run_tokens(hb, &w, true, f)
    })?;
    Ok(LossOutput { loss: emit(input.log_probs, loss, grad)?, metrics: stats.metrics(loss) })
}

/// A scalar whose value was computed on the host and whose gradient w.r.t. its argument is a
/// precomputed `(B, T)` f32 CPU tensor (times the incoming gradient).
struct HostLoss {
    value: f64,
    grad: Tensor,
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
        // The incoming gradient is a scalar. At 1 (`loss.backward()`), hand out the stored
        // gradient itself (candle adds it into a fresh accumulator, so it is never written);
        // else scale it on the host in one pass.
        let g = g.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let grad = if g == 1.0 {
            self.grad.clone()
        } else {
            let (s, l) = self.grad.storage_and_layout();
            let v = match (&*s, l.contiguous_offsets()) {
                (Storage::Cpu(c), Some((a, b))) => &c.as_slice::<f32>()?[a..b],
                _ => candle_core::bail!("rl-loss: host gradient is not a contiguous CPU tensor"),
            };
            let scaled: Vec<f32> = v.par_iter().map(|x| x * g).collect();
            Tensor::from_vec(scaled, arg.shape(), arg.device())?
        };
        grad.to_dtype(arg.dtype()).map(Some)
    }
}

/// Builds the scalar loss tensor attached to `x`'s graph: value `value`, `∂/∂x = grad`.
///
/// On the CPU this is a custom op (exact value; `grad` becomes a tensor without a copy). On
/// other devices, where the op has no kernel, the same value and gradient come from the
/// surrogate `Σ x·g + (value − Σ x·g)`.
pub(crate) fn emit(x: &Tensor, value: f64, grad: Vec<f32>) -> Result<Tensor> {
    let x = match x.dtype() {
        DType::F32 | DType::F64 => x.clone(),
        _ => x.to_dtype(DType::F32)?,
    };
    if x.device().is_cpu() {
        let grad = Tensor::from_vec(grad, x.shape(), x.device())?;
        return Ok(x.apply_op1_arc(Arc::new(Box::new(HostLoss { value, grad })))?);
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
