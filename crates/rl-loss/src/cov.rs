//! Clip-Cov and KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs"):
//! PPO variants that act on the few tokens whose advantage and log-prob covary most.
//!
//! Token covariance: `cov_bt = (A_bt − mean_M A)·(logπθ_bt − mean_M logπθ)` with means over the
//! valid tokens of the micro-batch. The selection is per micro-batch, as in verl (issue #7818).
//! Unlike verl, whose Clip-Cov draws with `torch.randperm`, the draw here is a seeded
//! Fisher–Yates shuffle (SplitMix64): the same inputs and seed always select the same tokens.

use rl_core::{LossOutput, Metrics, PolicyLoss, PolicyLossInput, Result};
use serde::{Deserialize, Serialize};

use crate::Aggregation;
use crate::dual::Dual;
use crate::host::{HostBatch, Tok, check_clip, emit, run_tokens};
use crate::ppo::{clip_flags, clip_pair};

/// SplitMix64 (transcribed in `scripts/reference/loss_reference.py`).
pub(crate) use rl_core::rng::SplitMix64;

/// The first `k` elements of a seeded partial Fisher–Yates shuffle of `items`.
pub(crate) fn seeded_choice(mut items: Vec<usize>, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let k = k.min(items.len());
    for i in 0..k {
        let j = i + (rng.next_u64() % (items.len() - i) as u64) as usize;
        items.swap(i, j);
    }
    items.truncate(k);
    items
}

/// `(cov_bt, N)`: centred covariance of every token (0 outside the mask) and the valid count.
fn covariance(hb: &HostBatch<'_>) -> (Vec<f32>, usize) {
    let n: usize = hb.lens.iter().sum();
    let mean = |v: &[f32]| {
        let s: f64 =
            v.iter().zip(hb.mask).filter(|(_, m)| **m != 0.0).map(|(x, _)| *x as f64).sum();
        (s / (n as f64 + 1e-8)) as f32
    };
    let (ma, ml) = (mean(hb.adv), mean(hb.lp));
    let cov = (0..hb.mask.len())
        .map(|i| if hb.mask[i] != 0.0 { (hb.adv[i] - ma) * (hb.lp[i] - ml) } else { 0.0 })
        .collect();
    (cov, n)
}

/// `max(⌊ratio·N⌋, 1)` as verl computes it (`int(ratio * N)`).
fn count(ratio: f64, n: usize) -> usize {
    ((ratio * n as f64) as usize).max(1)
}

/// Runs `f` over the checked batch: the loss, its gradient and the metrics.
fn finish(
    input: &PolicyLossInput<'_>,
    hb: &HostBatch<'_>,
    agg: &Aggregation,
    chosen: &[bool],
    f: impl Fn(usize, usize, f32, f32, f32, f32) -> Tok + Sync + Clone,
) -> Result<(f64, Vec<f32>, Metrics)> {
    let w = hb.weights(agg, input.group_ids, input.counts)?;
    let (loss, grad, stats) = run_tokens(hb, &w, true, f)?;
    let n: usize = hb.lens.iter().sum();
    let picked = chosen.iter().filter(|c| **c).count();
    let metrics = stats.metrics(loss).with("cov_frac", picked as f64 / n.max(1) as f64);
    Ok((loss, grad, metrics))
}

/// Attaches the gradient of [`finish`]'s result to `log_probs`.
fn output(input: &PolicyLossInput<'_>, r: (f64, Vec<f32>, Metrics)) -> Result<LossOutput> {
    Ok(LossOutput { loss: emit(input.log_probs, r.0, r.1)?, metrics: r.2 })
}

/// Clip-Cov (verl `compute_policy_loss_clip_cov`, `core_algos.py` L1451-1552): the PPO clip
/// loss (ratio without log clamp, no dual clip), except that `max(⌊ratio·N⌋, 1)` tokens drawn
/// among those with `lb < cov < ub` (valid, not already clipped by PPO) have their loss and
/// gradient set to 0. Extra metric: `cov_frac`, the fraction of detached tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipCovLoss {
    /// `ε_low` of the PPO clip.
    pub clip_low: f64,
    /// `ε_high` of the PPO clip.
    pub clip_high: f64,
    /// Fraction of valid tokens to detach (`clip_cov_ratio`).
    pub ratio: f64,
    /// Lower covariance bound (exclusive).
    pub lb: f64,
    /// Upper covariance bound (exclusive).
    pub ub: f64,
    /// Seed of the token draw.
    pub seed: u64,
    /// How token losses are reduced.
    pub aggregation: Aggregation,
}

impl Default for ClipCovLoss {
    /// verl: `clip_cov_ratio 0.0002, clip_cov_lb 1.0, clip_cov_ub 5.0` (YAML L64-66), clip 0.2.
    fn default() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.2,
            ratio: 0.0002,
            lb: 1.0,
            ub: 5.0,
            seed: 0,
            aggregation: Aggregation::TokenMean,
        }
    }
}

fn check_ratio(r: f64, field: &str) -> Result<()> {
    if !(r > 0.0 && r <= 1.0) {
        return Err(rl_core::Error::config(field, "must be in (0, 1]"));
    }
    Ok(())
}

impl PolicyLoss for ClipCovLoss {
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput> {
        check_clip(self.clip_low, self.clip_high, "clip_cov")?;
        check_ratio(self.ratio, "clip_cov.ratio")?;
        if self.lb.partial_cmp(&self.ub) != Some(std::cmp::Ordering::Less) {
            return Err(rl_core::Error::config("clip_cov.lb", "must be < ub"));
        }
        self.aggregation.validate()?;
        let r = HostBatch::policy(input, |hb| {
            hb.check()?;
            self.run(input, hb)
        })?;
        output(input, r)
    }
}

impl ClipCovLoss {
    fn run(
        &self,
        input: &PolicyLossInput<'_>,
        hb: &HostBatch<'_>,
    ) -> Result<(f64, Vec<f32>, Metrics)> {
        let (lo, hi) = ((1.0 - self.clip_low) as f32, (1.0 + self.clip_high) as f32);
        let pair = move |lp: f32, old: f32, adv: f32| {
            clip_pair(adv, Dual::var(lp).sub(Dual::c(old)).exp(), lo, hi)
        };
        let (cov, n) = covariance(hb);
        let (lb, ub) = (self.lb as f32, self.ub as f32);
        let candidates: Vec<usize> = (0..cov.len())
            .filter(|&i| {
                let (l1, l2) = pair(hb.lp[i], hb.old[i], hb.adv[i]);
                hb.mask[i] != 0.0 && l2.v <= l1.v && cov[i] > lb && cov[i] < ub
            })
            .collect();
        let mut chosen = vec![false; cov.len()];
        if n > 0 {
            for i in seeded_choice(candidates, count(self.ratio, n), self.seed) {
                chosen[i] = true;
            }
        }
        let chosen = &chosen;
        let f = move |_: usize, i: usize, lp: f32, old: f32, adv: f32, _: f32| {
            let (l1, l2) = pair(lp, old, adv);
            let corr = if chosen[i] { 0.0 } else { 1.0 };
            Tok { l: l1.max(l2).mul(Dual::c(corr)), flags: clip_flags(adv, l1, l2) }
        };
        finish(input, hb, &self.aggregation, chosen, f)
    }
}

/// KL-Cov (verl `compute_policy_loss_kl_cov`, `core_algos.py` L1556-1632): the unclipped
/// surrogate `−A·ρ`, plus `kl_coef·|log ρ|` on the `max(⌊ratio·N⌋, 1)` tokens of largest
/// covariance (ties broken by position). Extra metrics: `cov_frac`, and `ppo_kl`, verl's KL-Cov
/// `ppo_kl` (`ppo_kl_abs`, L1599): the masked mean of `|log ρ|` (the shared `approx_kl` is the
/// mean of `−log ρ`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KlCovLoss {
    /// Fraction of valid tokens penalised (`kl_cov_ratio`).
    pub ratio: f64,
    /// Coefficient of `|log ρ|` (`ppo_kl_coef`).
    pub kl_coef: f64,
    /// How token losses are reduced.
    pub aggregation: Aggregation,
}

impl Default for KlCovLoss {
    /// verl YAML: `kl_cov_ratio 0.0002`, `ppo_kl_coef 0.1` (L67-68; the code falls back to 1.0).
    fn default() -> Self {
        Self { ratio: 0.0002, kl_coef: 0.1, aggregation: Aggregation::TokenMean }
    }
}

impl PolicyLoss for KlCovLoss {
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput> {
        check_ratio(self.ratio, "kl_cov.ratio")?;
        if !(self.kl_coef >= 0.0 && self.kl_coef.is_finite()) {
            return Err(rl_core::Error::config("kl_cov.kl_coef", "must be a finite number >= 0"));
        }
        self.aggregation.validate()?;
        let r = HostBatch::policy(input, |hb| {
            hb.check()?;
            self.run(input, hb)
        })?;
        output(input, r)
    }
}

impl KlCovLoss {
    fn run(
        &self,
        input: &PolicyLossInput<'_>,
        hb: &HostBatch<'_>,
    ) -> Result<(f64, Vec<f32>, Metrics)> {
        let (cov, n) = covariance(hb);
        let mut valid: Vec<usize> = (0..cov.len()).filter(|&i| hb.mask[i] != 0.0).collect();
        // Largest covariance first; the sort is stable, so ties keep their position order.
        valid.sort_by(|a, b| cov[*b].total_cmp(&cov[*a]));
        let mut chosen = vec![false; cov.len()];
        if n > 0 {
            valid.iter().take(count(self.ratio, n)).for_each(|i| chosen[*i] = true);
        }
        let coef = self.kl_coef as f32;
        let chosen = &chosen;
        let f = move |_: usize, i: usize, lp: f32, old: f32, adv: f32, _: f32| {
            let logr = Dual::var(lp).sub(Dual::c(old));
            let l = Dual::c(-adv).mul(logr.exp());
            Tok::new(if chosen[i] { l.add(logr.abs().scale(coef)) } else { l })
        };
        let (loss, grad, metrics) = finish(input, hb, &self.aggregation, chosen, f)?;
        Ok((loss, grad, metrics.with("ppo_kl", mean_abs_log_ratio(hb))))
    }
}

/// verl's KL-Cov `ppo_kl`: `masked_mean(|logπθ − logπold|)` over the valid tokens (0 when there
/// is none).
fn mean_abs_log_ratio(hb: &HostBatch<'_>) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for ((&lp, &old), &m) in hb.lp.iter().zip(hb.old).zip(hb.mask) {
        if m != 0.0 {
            sum += (lp as f64 - old as f64).abs();
            n += 1;
        }
    }
    if n == 0 { 0.0 } else { sum / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_cov_reports_verl_ppo_kl_as_mean_abs_log_ratio() -> Result<()> {
        use candle_core::{Device, Tensor, Var};
        let d = Device::Cpu;
        let lp = Var::from_tensor(&Tensor::new(&[[-1.0f32, -0.5, -2.0], [-0.25, -3.0, 9.0]], &d)?)?;
        let old = Tensor::new(&[[-1.5f32, -0.25, -1.0], [-0.75, -2.0, 0.0]], &d)?;
        let adv = Tensor::new(&[[1.0f32, -1.0, 0.5], [0.25, 2.0, 0.0]], &d)?;
        let mask = Tensor::new(&[[1.0f32, 1.0, 1.0], [1.0, 1.0, 0.0]], &d)?;
        let out = KlCovLoss::default().compute(&PolicyLossInput::new(&lp, &old, &adv, &mask))?;
        // |Δ| on the valid tokens: 0.5, 0.25, 1, 0.5, 1 (the padded 9 is ignored).
        assert_eq!(out.metrics.get("ppo_kl"), Some(3.25 / 5.0));
        // The shared `approx_kl` stays the mean of −Δ: −(0.5 − 0.25 − 1 + 0.5 − 1) / 5.
        let approx = out.metrics.get("approx_kl").expect("approx_kl");
        assert!((approx - 1.25 / 5.0).abs() < 1e-6, "{approx}");
        Ok(())
    }

    #[test]
    fn seeded_choice_is_deterministic_and_a_subset() {
        let items: Vec<usize> = (10..30).collect();
        let a = seeded_choice(items.clone(), 5, 7);
        assert_eq!(a, seeded_choice(items.clone(), 5, 7));
        assert_ne!(a, seeded_choice(items.clone(), 5, 8));
        assert!(a.iter().all(|x| items.contains(x)));
        assert_eq!(seeded_choice(items, 50, 1).len(), 20);
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (published test vector).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
