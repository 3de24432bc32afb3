//! The other ratio-based surrogates: GSPO, CISPO, SAPO, GMPO, and plain REINFORCE / GPG.
//!
//! Every loss takes [`PolicyLossInput`] tensors, all `(B, T)` f32, and returns a scalar f32
//! differentiable w.r.t. `log_probs`, with the metrics of [`crate::PpoLoss`].

use rayon::prelude::*;
use rl_core::{Error, LossOutput, PolicyLoss, PolicyLossInput, Result};
use serde::{Deserialize, Serialize};

use crate::Aggregation;
use crate::dual::Dual;
use crate::host::{
    CLIP_HIGH, CLIP_LOW, HostBatch, Stats, Tok, check_clip, emit, ratio_dual, run_rows, token_loss,
};
use crate::ppo::{clip_flags, clip_pair};

/// GSPO, sequence-level ratio (arXiv 2507.18071; verl `compute_policy_loss_gspo`,
/// `core_algos.py` L1254-1326; TRL `importance_sampling_level = "sequence"`):
///
/// ```text
/// s̄_b = Σ_t (logπθ − logπold)_bt M_bt / max(L_b, 1)
/// log s_bt = clamp(logπθ_bt − sg(logπθ_bt) + sg(s̄_b), max = 10)   # value s̄_b, gradient ∇logπθ_bt
/// ℓ = max(−A·s, −A·clamp(s, 1 − ε_low, 1 + ε_high))
/// ```
/// verl forces `seq-mean-token-mean`; here it is the default of `aggregation`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GspoLoss {
    /// `ε_low` on the sequence ratio.
    pub clip_low: f64,
    /// `ε_high` on the sequence ratio.
    pub clip_high: f64,
    /// How token losses are reduced.
    pub aggregation: Aggregation,
}

impl Default for GspoLoss {
    /// The GSPO paper's ranges `3e-4 / 4e-4` (§5.1), `seq-mean-token-mean` (verl).
    fn default() -> Self {
        Self { clip_low: 3e-4, clip_high: 4e-4, aggregation: Aggregation::SeqMeanTokenMean }
    }
}

impl PolicyLoss for GspoLoss {
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput> {
        check_clip(self.clip_low, self.clip_high, "gspo")?;
        self.aggregation.validate()?;
        let (loss, grad, stats) = HostBatch::policy(input, |hb| {
            // The per-row mean log-ratio first (a NaN from an invalid input is caught below).
            let t = hb.t;
            let sbar: Vec<f32> = (0..hb.b)
                .into_par_iter()
                .with_max_len(crate::host::ROWS_PER_JOB)
                .map(|b| {
                    let r = b * t..(b + 1) * t;
                    let s: f64 = hb.lp[r.clone()]
                        .iter()
                        .zip(&hb.old[r.clone()])
                        .zip(&hb.mask[r])
                        .filter(|(_, m)| **m != 0.0)
                        .map(|((lp, old), _)| (lp - old) as f64)
                        .sum();
                    (s / hb.lens[b].max(1) as f64) as f32
                })
                .collect();
            let (lo, hi) = ((1.0 - self.clip_low) as f32, (1.0 + self.clip_high) as f32);
            // s_bt depends on the token only through `x − sg(x)`, which is the dual number
            // (0, 1) for every finite logπθ (a token that is not finite is padding, dropped,
            // or an error): so s is one dual number per row, with one `exp` per row.
            let s_row: Vec<Dual> = sbar
                .iter()
                .map(|sb| Dual { v: 0.0, d: 1.0 }.add(Dual::c(*sb)).clamp_max(10.0).exp())
                .collect();
            let w = hb.weights(&self.aggregation, input.group_ids, input.counts)?;
            run_rows(hb, &w, true, |b| {
                // = x.sub(x.detach()).add(Dual::c(sbar[b])).clamp_max(10.0).exp(), x = var(lp)
                let s = s_row[b];
                move |_, _, _, _, adv: f32, _| {
                    let (l1, l2) = clip_pair(adv, s, lo, hi);
                    Tok { l: l1.max(l2), flags: clip_flags(adv, l1, l2) }
                }
            })
        })?;
        Ok(LossOutput { loss: emit(input.log_probs, loss, grad)?, metrics: stats.metrics(loss) })
    }

    /// A zero advantage gives a zero token loss and gradient; the aggregation's row weights
    /// depend only on the row, the counts and `T`.
    fn zero_advantage_rows_inert(&self) -> bool {
        true
    }
}

/// CISPO (MiniMax-M1, arXiv 2506.13585; verl `core_algos.py` L1722-1779): the clipped ratio is a
/// stop-gradient weight on the REINFORCE term, so clipped tokens keep their gradient:
///
/// ```text
/// ρ = exp(clamp(logπθ − logπold, ±20));  ℓ = −sg(clamp(ρ, 1 − ε_low, 1 + ε_high))·A·logπθ
/// ```
/// `clipfrac_low` / `clipfrac_high` count ratios below / above the band.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CispoLoss {
    /// `ε_low` (1.0 disables the lower bound: the ratio is never negative).
    pub clip_low: f64,
    /// `ε_high`.
    pub clip_high: f64,
    /// How token losses are reduced.
    pub aggregation: Aggregation,
}

impl Default for CispoLoss {
    /// verl: the actor's `clip_ratio_low/high` (0.2 / 0.2), `token-mean`.
    fn default() -> Self {
        Self { clip_low: 0.2, clip_high: 0.2, aggregation: Aggregation::TokenMean }
    }
}

impl CispoLoss {
    /// TRL `loss_type = "cispo"`: upper bound only, `epsilon_high = 5.0` (TRL clamps the ratio at
    /// `ε_max = 5`, i.e. `ε_high = 4` here), token-level (`dapo`) normalisation.
    pub fn trl() -> Self {
        Self { clip_low: 1.0, clip_high: 4.0, aggregation: Aggregation::TokenMean }
    }
}

impl PolicyLoss for CispoLoss {
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput> {
        // The lower bound may be disabled (ε_low = 1, TRL), so ε_low > ε_high is allowed here.
        check_clip(self.clip_low, self.clip_low.max(self.clip_high), "cispo")?;
        check_clip(self.clip_high, self.clip_high, "cispo")?;
        self.aggregation.validate()?;
        let (lo, hi) = ((1.0 - self.clip_low) as f32, (1.0 + self.clip_high) as f32);
        let f = move |_: usize, _: usize, lp: f32, _: f32, adv: f32, r: f32| {
            let ratio = Dual::c(r); // = Dual::c(lp - old).clamp(-20.0, 20.0).exp()
            let w = ratio.clamp(lo, hi).detach();
            // (lo < 1 < hi: at most one holds.)
            let flags = (CLIP_LOW * u8::from(ratio.v < lo)) | (CLIP_HIGH * u8::from(ratio.v > hi));
            Tok { l: w.neg().mul(Dual::c(adv)).mul(Dual::var(lp)), flags }
        };
        token_loss(input, &self.aggregation, f)
    }

    /// A zero advantage gives a zero token loss and gradient; the aggregation's row weights
    /// depend only on the row, the counts and `T`.
    fn zero_advantage_rows_inert(&self) -> bool {
        true
    }
}

/// SAPO, soft adaptive gate (arXiv 2511.20347; verl `core_algos.py` L1330-1411; TRL
/// `loss_type = "sapo"`):
///
/// ```text
/// ρ = exp(clamp(logπθ − logπold, ±20));  τ = τ_pos if A > 0 else τ_neg
/// ℓ = −σ(τ(ρ − 1))·(4/τ)·A
/// ```
/// No hard clip: the clip fractions are 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SapoLoss {
    /// Temperature for positive advantages (> 0).
    pub tau_pos: f64,
    /// Temperature for non-positive advantages (> 0).
    pub tau_neg: f64,
    /// How token losses are reduced.
    pub aggregation: Aggregation,
}

impl Default for SapoLoss {
    /// verl / TRL: `tau_pos 1.0`, `tau_neg 1.05`, `seq-mean-token-mean` (verl forces it).
    fn default() -> Self {
        Self { tau_pos: 1.0, tau_neg: 1.05, aggregation: Aggregation::SeqMeanTokenMean }
    }
}

impl PolicyLoss for SapoLoss {
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput> {
        for (name, tau) in [("sapo.tau_pos", self.tau_pos), ("sapo.tau_neg", self.tau_neg)] {
            if !(tau > 0.0 && tau.is_finite()) {
                return Err(Error::config(name, "must be a finite number > 0"));
            }
        }
        self.aggregation.validate()?;
        let (tau_pos, tau_neg) = (self.tau_pos, self.tau_neg);
        let f = move |_: usize, _: usize, lp: f32, old: f32, adv: f32, r: f32| {
            let tau = if adv > 0.0 { tau_pos } else { tau_neg } as f32;
            // = Dual::var(lp).sub(Dual::c(old)).clamp(-20.0, 20.0).exp()
            let ratio = ratio_dual(lp, old, r);
            let gate = ratio.sub(Dual::c(1.0)).scale(tau).sigmoid();
            Tok::new(gate.scale(4.0 / tau).mul(Dual::c(adv)).neg())
        };
        token_loss(input, &self.aggregation, f)
    }

    /// A zero advantage gives a zero token loss and gradient; the aggregation's row weights
    /// depend only on the row, the counts and `T`.
    fn zero_advantage_rows_inert(&self) -> bool {
        true
    }
}

/// GMPO, geometric-mean policy optimisation (arXiv 2507.20673; verl
/// `compute_policy_loss_geo_mean`, `core_algos.py` L1636-1718):
///
/// ```text
/// log ρ = logπθ − logπold;  log ρ_c = clamp(log ρ, −ε_low, ε_high)      # clip in log space
/// m = sgn(A)·min(sgn(A)·log ρ, sgn(A)·log ρ_c)
/// ratio_b = exp(Σ_t m M / L_b);  Ā_b = Σ_t A M / L_b;  ℓ_b = −Ā_b·ratio_b
/// loss = mean over sequences of ℓ_b
/// ```
/// verl ignores the aggregation mode and divides by all `B` rows; here the mean is over rows
/// with at least one valid token (the same unless a row is fully masked), with the sequence
/// count of [`rl_core::GlobalCounts`] under gradient accumulation. Rollout IS weights are not
/// supported (typed error).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GmpoLoss {
    /// `ε_low` on the log ratio.
    pub clip_low: f64,
    /// `ε_high` on the log ratio.
    pub clip_high: f64,
}

impl Default for GmpoLoss {
    /// verl's GMPO example: `clip_ratio_low = clip_ratio_high = 0.4`
    /// (`examples/gmpo_trainer/test_dapo_7b_math.sh` L14-15).
    fn default() -> Self {
        Self { clip_low: 0.4, clip_high: 0.4 }
    }
}

impl PolicyLoss for GmpoLoss {
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput> {
        check_clip(self.clip_low, self.clip_high, "gmpo")?;
        if input.rollout_is_weights.is_some() {
            return Err(Error::Unsupported("GMPO with rollout IS weights".into()));
        }
        let (loss, grad, stats) = HostBatch::policy(input, |hb| {
            hb.check()?;
            self.run(hb, input.counts)
        })?;
        Ok(LossOutput { loss: emit(input.log_probs, loss, grad)?, metrics: stats.metrics(loss) })
    }

    /// `ℓ_b = −Ā_b·ratio_b` is zero with its gradient when the row's advantages are; the
    /// sequence mean uses [`rl_core::GlobalCounts::sequences`].
    fn zero_advantage_rows_inert(&self) -> bool {
        true
    }
}

impl GmpoLoss {
    /// The loss, its gradient and diagnostics on checked inputs.
    fn run(
        &self,
        hb: &HostBatch<'_>,
        counts: Option<&rl_core::GlobalCounts>,
    ) -> Result<(f64, Vec<f32>, Stats)> {
        let t = hb.t;
        let w = hb.weights(&Aggregation::SeqMeanTokenSum, None, counts)?;
        let (lo, hi) = (-(self.clip_low as f32), self.clip_high as f32);
        let mut grad = vec![0f32; hb.b * t];
        let (mut loss, mut stats) = (0f64, Stats::default());
        for (b, g) in grad.chunks_mut(t).enumerate() {
            let r = b * t..(b + 1) * t;
            let (lp, old, adv, mask) =
                (&hb.lp[r.clone()], &hb.old[r.clone()], &hb.adv[r.clone()], &hb.mask[r]);
            let len = hb.lens[b] as f32 + 1e-8;
            let (mut msum, mut asum) = (Dual::c(0.0), 0f32);
            for j in 0..t {
                if mask[j] == 0.0 {
                    continue;
                }
                let m = self.token(lp[j], old[j], adv[j]);
                g[j] = m.d; // ∂m/∂logπθ for now, scaled below
                msum = msum.add(m);
                asum += adv[j];
                let clipped = (lp[j] - old[j]).clamp(lo, hi) != lp[j] - old[j];
                let flags = match (clipped, adv[j] > 0.0, adv[j] < 0.0) {
                    (true, true, _) => CLIP_HIGH,
                    (true, _, true) => CLIP_LOW,
                    _ => 0,
                };
                stats.push(lp[j] - old[j], flags);
            }
            let ratio = crate::expf::exp(msum.v / len);
            let abar = asum / len;
            loss += w[b] * (-abar * ratio) as f64;
            let scale = w[b] * (-abar * ratio / len) as f64;
            g.iter_mut().for_each(|x| *x = (*x as f64 * scale) as f32);
        }
        Ok((loss, grad, stats))
    }

    /// `m = sgn(A)·min(sgn(A)·log ρ, sgn(A)·clamp(log ρ, −ε_low, ε_high))` for one token.
    fn token(&self, lp: f32, old: f32, adv: f32) -> Dual {
        let sgn = if adv > 0.0 {
            1.0
        } else if adv < 0.0 {
            -1.0
        } else {
            0.0
        };
        let logr = Dual::var(lp).sub(Dual::c(old));
        let logr_c = logr.clamp(-(self.clip_low as f32), self.clip_high as f32);
        logr.scale(sgn).min(logr_c.scale(sgn)).scale(sgn)
    }
}

/// Plain policy gradient: GPG (verl `compute_policy_loss_gpg`, `core_algos.py` L1415-1447) and
/// verl's bypass-mode REINFORCE (`core_algos.py` L1984-2200, with the rollout IS weights):
///
/// ```text
/// ℓ = −logπθ·A   (× rollout_is_weights when given)
/// ```
/// `old_log_probs` only feed the ratio metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReinforceLoss {
    /// How token losses are reduced (GPG: verl's default `token-mean`).
    pub aggregation: Aggregation,
}

impl ReinforceLoss {
    /// verl's bypass-mode REINFORCE default aggregation: `seq-mean-token-sum`.
    pub fn bypass() -> Self {
        Self { aggregation: Aggregation::SeqMeanTokenSum }
    }
}

impl PolicyLoss for ReinforceLoss {
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput> {
        self.aggregation.validate()?;
        let f = |_: usize, _: usize, lp: f32, _: f32, adv: f32, _: f32| {
            Tok::new(Dual::var(lp).neg().mul(Dual::c(adv)))
        };
        token_loss(input, &self.aggregation, f)
    }

    /// A zero advantage gives a zero token loss and gradient; the aggregation's row weights
    /// depend only on the row, the counts and `T`.
    fn zero_advantage_rows_inert(&self) -> bool {
        true
    }
}
