//! KL estimators (Schulman, "Approximating KL divergence", 2020), as a reward penalty with a
//! fixed or adaptive coefficient, or as a loss term; each with a straight-through variant.

use candle_core::Tensor;
use rl_core::metrics::Reduce;
use rl_core::{Error, GlobalCounts, LossOutput, Metrics, Result};
use serde::{Deserialize, Serialize};

use crate::Aggregation;
use crate::dual::Dual;
use crate::host::{HostBatch, Tok, emit, host_mask, host_valid, run_tokens};

/// A per-token estimator of `KL(π_θ ‖ π_ref)` from `x = logπθ − logπref`
/// (verl `kl_penalty`, `core_algos.py` L1841-1902):
///
/// | estimator | value | verl names |
/// |---|---|---|
/// | `k1` | `x` | `kl`, `k1` |
/// | `abs` | `|x|` | `abs` |
/// | `k2` | `½x²` | `mse`, `k2` |
/// | `k3` | `clamp(e^k − k − 1, ±10)` with `k = clamp(−x, ±20)` (low variance, `>= 0`) | `low_var_kl`, `k3` |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `x`.
    #[default]
    #[serde(alias = "kl")]
    K1,
    /// `|x|`.
    Abs,
    /// `½x²`.
    #[serde(alias = "mse")]
    K2,
    /// `e^{−x} + x − 1`, clamped as verl.
    #[serde(alias = "low_var_kl")]
    K3,
}

impl KlEstimator {
    #[inline(always)]
    fn dual(self, lp: Dual, reference: f32) -> Dual {
        let x = lp.sub(Dual::c(reference));
        match self {
            Self::K1 => x,
            Self::Abs => x.abs(),
            Self::K2 => x.square().scale(0.5),
            Self::K3 => {
                let k = Dual::c(reference).sub(lp).clamp(-20.0, 20.0);
                k.exp_small().sub(k).sub(Dual::c(1.0)).clamp(-10.0, 10.0)
            }
        }
    }
}

/// An estimator, optionally straight-through: the value of the estimator with the gradient of
/// `k2` (`b − sg(b) + sg(kN)`, `b = ½x²`), i.e. verl's `"k3+"` family, which is broken in
/// verl's current code (the name is not stripped before dispatch) and works here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kl {
    /// The estimator (verl `algorithm.kl_penalty` default: `kl` = k1).
    pub estimator: KlEstimator,
    /// Value of the estimator, gradient of `k2`.
    pub straight_through: bool,
}

impl Kl {
    /// The estimator `est`, not straight-through.
    pub fn new(estimator: KlEstimator) -> Self {
        Self { estimator, straight_through: false }
    }

    /// One token: value and derivative w.r.t. `logπθ`.
    #[inline(always)]
    pub(crate) fn dual(&self, lp: f32, reference: f32) -> Dual {
        let x = Dual::var(lp);
        let f = self.estimator.dual(x, reference);
        if self.straight_through {
            let b = KlEstimator::K2.dual(x, reference);
            b.sub(b.detach()).add(f.detach())
        } else {
            f
        }
    }

    /// Per-token values `kN(logπ, logπref)·M`, `(B, T)` f32, **detached** (for rewards and
    /// metrics; use [`KlLoss`] for a differentiable term). Padding is 0.
    pub fn penalty(
        &self,
        log_probs: &Tensor,
        ref_log_probs: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, t) = rl_core::check::dims2(log_probs, "log_probs")?;
        let (m, _) = host_mask(mask, b, t)?;
        let lp = host_valid(log_probs, &[b, t], &m, "log_probs")?;
        let rf = host_valid(ref_log_probs, &[b, t], &m, "ref_log_probs")?;
        let v: Vec<f32> = (0..m.len())
            .map(|i| if m[i] != 0.0 { self.dual(lp[i], rf[i]).v } else { 0.0 })
            .collect();
        Ok(Tensor::from_vec(v, (b, t), log_probs.device())?)
    }
}

/// A KL term added to the actor loss: `coef · aggregation(kN(logπθ, logπref))`
/// (verl `use_kl_loss`; TRL/oat `beta`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KlLoss {
    /// Estimator.
    pub kl: Kl,
    /// Coefficient (>= 0).
    pub coef: f64,
    /// How token values are reduced.
    pub aggregation: Aggregation,
}

impl Default for KlLoss {
    /// verl: `kl_loss_type low_var_kl` (k3), `kl_loss_coef 0.001`, `token-mean` (YAML L8-80).
    fn default() -> Self {
        Self { kl: Kl::new(KlEstimator::K3), coef: 0.001, aggregation: Aggregation::TokenMean }
    }
}

impl KlLoss {
    /// The loss (scalar f32, differentiable w.r.t. `log_probs`) and metrics `kl` (the
    /// aggregated estimator, before `coef`) and `loss`. All tensors `(B, T)` f32.
    pub fn compute(
        &self,
        log_probs: &Tensor,
        ref_log_probs: &Tensor,
        mask: &Tensor,
        group_ids: Option<&[usize]>,
        counts: Option<&GlobalCounts>,
    ) -> Result<LossOutput> {
        if !(self.coef >= 0.0 && self.coef.is_finite()) {
            return Err(Error::config("kl_loss.coef", "must be a finite number >= 0"));
        }
        let xs = [
            (log_probs, "log_probs"),
            (ref_log_probs, "ref_log_probs"),
            (ref_log_probs, "ref_log_probs"),
        ];
        let (loss, grad, _) = HostBatch::with(xs, mask, None, |hb| {
            let w: Vec<f64> = hb
                .weights(&self.aggregation, group_ids, counts)?
                .into_iter()
                .map(|w| w * self.coef)
                .collect();
            // One loop per estimator, so that the estimator is a constant inside it.
            macro_rules! run {
                ($($e:ident),*) => {
                    match (self.kl.estimator, self.kl.straight_through) {
                        $(
                            (KlEstimator::$e, false) => run_tokens(hb, &w, false, |_, _, lp, rf, _, _| {
                                Tok::new(Kl::new(KlEstimator::$e).dual(lp, rf))
                            }),
                            (KlEstimator::$e, true) => run_tokens(hb, &w, false, |_, _, lp, rf, _, _| {
                                let kl = Kl { estimator: KlEstimator::$e, straight_through: true };
                                Tok::new(kl.dual(lp, rf))
                            }),
                        )*
                    }
                };
            }
            run!(K1, Abs, K2, K3)
        })?;
        let kl = if self.coef > 0.0 { loss / self.coef } else { 0.0 };
        // Both are shares of mini-batch-normalised totals: they add up over micro-batches.
        let metrics = Metrics::new().with_reduce("kl", kl, Reduce::Sum).with_reduce(
            "loss",
            loss,
            Reduce::Sum,
        );
        Ok(LossOutput { loss: emit(log_probs, loss, grad)?, metrics })
    }
}

/// The KL coefficient `β` of KL-in-reward (verl `core_algos.py` L152-189).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KlController {
    /// Constant `β`.
    Fixed {
        /// `β`.
        coef: f64,
    },
    /// Ziegler et al. 2019: `β ← β·(1 + clip(KL/target − 1, ±0.2)·n_steps/horizon)`.
    Adaptive {
        /// Current `β`.
        coef: f64,
        /// Target KL.
        target: f64,
        /// Horizon in samples.
        horizon: f64,
    },
}

impl Default for KlController {
    /// verl `algorithm.kl_ctrl`: fixed, `kl_coef 0.001` (YAML L576-583).
    fn default() -> Self {
        Self::Fixed { coef: 0.001 }
    }
}

impl KlController {
    /// verl's adaptive controller defaults: `β₀ 0.001`, `target_kl 0.1`, `horizon 10000`.
    pub fn adaptive() -> Self {
        Self::Adaptive { coef: 0.001, target: 0.1, horizon: 10000.0 }
    }

    /// The current `β`.
    pub fn coef(&self) -> f64 {
        match self {
            Self::Fixed { coef } | Self::Adaptive { coef, .. } => *coef,
        }
    }

    /// Updates `β` after a batch of `n_steps` samples whose mean KL was `current_kl`.
    pub fn update(&mut self, current_kl: f64, n_steps: usize) {
        if let Self::Adaptive { coef, target, horizon } = self {
            let e = (current_kl / *target - 1.0).clamp(-0.2, 0.2);
            *coef *= 1.0 + e * n_steps as f64 / *horizon;
        }
    }

    /// Checks `coef >= 0`, `target > 0`, `horizon > 0`.
    pub fn validate(&self) -> Result<()> {
        let ok = match *self {
            Self::Fixed { coef } => coef >= 0.0 && coef.is_finite(),
            Self::Adaptive { coef, target, horizon } => {
                coef >= 0.0 && coef.is_finite() && target > 0.0 && horizon > 0.0
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::config("kl_ctrl", "coef >= 0, target > 0, horizon > 0"))
        }
    }
}

/// KL in the reward, as a recipe option (verl `algorithm.use_kl_in_reward` with `kl_penalty` and
/// `kl_ctrl`, `ray_trainer.py` `apply_kl_penalty`): before the advantages are estimated, every
/// token's reward becomes `r_t − β·kN(logπ_old, logπ_ref)` ([`kl_in_reward`]); the controller's
/// `β` is part of the trainer's checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KlInReward {
    /// The estimator (verl `kl_penalty`, default `kl` = k1).
    pub kl: Kl,
    /// The coefficient `β` and how it adapts (verl `kl_ctrl`, default fixed 0.001).
    pub controller: KlController,
}

/// `KlLoss` as an actor-loss term: reads the rollout's reference log-probs (so a trainer refuses
/// to build it without a reference model).
impl rl_core::LossTerm for KlLoss {
    fn compute(&self, i: &rl_core::TermInput<'_>) -> Result<LossOutput> {
        let r = i.ref_log_probs.ok_or_else(|| {
            Error::config(
                "algorithm.kl_loss",
                "needs reference log-probs: give the trainer a reference model",
            )
        })?;
        KlLoss::compute(self, i.log_probs, r, i.response_mask, Some(i.group_ids), Some(i.counts))
    }

    fn name(&self) -> &str {
        "kl"
    }

    fn needs_reference(&self) -> bool {
        true
    }
}

/// KL in the reward (verl `apply_kl_penalty`, `ray_trainer.py` L70-109):
/// `rewards = scores − β·kN(logπold, logπref)·M`; `current_kl = mean_b(masked_mean_t(kld))`;
/// then `ctrl.update(current_kl, B)`.
///
/// Takes `(B, T)` f32 token-level scores, old and reference log-probs and the mask; returns the
/// `(B, T)` f32 penalised rewards (detached) and metrics `kl` (`current_kl`) and `kl_coef` (the
/// `β` that was applied).
pub fn kl_in_reward(
    token_level_scores: &Tensor,
    old_log_probs: &Tensor,
    ref_log_probs: &Tensor,
    mask: &Tensor,
    kl: &Kl,
    ctrl: &mut KlController,
) -> Result<(Tensor, Metrics)> {
    ctrl.validate()?;
    let (b, t) = rl_core::check::dims2(old_log_probs, "old_log_probs")?;
    rl_core::check::shape(token_level_scores, &[b, t], "token_level_scores")?;
    let kld = kl.penalty(old_log_probs, ref_log_probs, mask)?;
    let beta = ctrl.coef();
    let rewards = (token_level_scores - (&kld * beta)?)?;
    let lens = rl_core::masked::row_lengths(&mask.to_dtype(candle_core::DType::F32)?)?;
    let per_row = kld.sum(1)?.div(&(lens + rl_core::masked::EPS)?)?;
    let current = per_row.mean_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    ctrl.update(current, b);
    Ok((rewards, Metrics::new().with("kl", current).with("kl_coef", beta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straight_through_has_k2_gradient_and_kn_value() {
        for est in [KlEstimator::K1, KlEstimator::Abs, KlEstimator::K2, KlEstimator::K3] {
            let st = Kl { estimator: est, straight_through: true };
            let plain = Kl::new(est).dual(-1.0, -1.7);
            let d = st.dual(-1.0, -1.7);
            assert!((d.v - plain.v).abs() < 1e-6, "{est:?}");
            assert!((d.d - 0.7).abs() < 1e-6, "{est:?}: gradient of k2 is x = 0.7");
        }
    }

    #[test]
    fn adaptive_controller_follows_verl() {
        let mut c = KlController::Adaptive { coef: 0.1, target: 0.1, horizon: 100.0 };
        c.update(0.5, 10); // error clipped to +0.2
        assert!((c.coef() - 0.1 * 1.02).abs() < 1e-12);
        let mut f = KlController::default();
        f.update(10.0, 10);
        assert_eq!(f.coef(), 0.001);
    }

    #[test]
    fn serde_names_and_aliases() {
        let k: KlEstimator = serde_json::from_str("\"low_var_kl\"").unwrap();
        assert_eq!(k, KlEstimator::K3);
        assert!(serde_json::from_str::<KlEstimator>("\"k4\"").is_err());
        let c: KlController = serde_json::from_str(r#"{"type":"fixed","coef":0.05}"#).unwrap();
        assert_eq!(c.coef(), 0.05);
    }
}
