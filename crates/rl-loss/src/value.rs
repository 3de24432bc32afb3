//! The PPO value (critic) loss with value clipping.

use rl_core::{Error, LossOutput, Result, ValueLoss, ValueLossInput};
use serde::{Deserialize, Serialize};

use crate::Aggregation;
use crate::dual::Dual;
use crate::host::{HostBatch, Tok, emit, run_tokens};

/// Clipped value loss, verl `compute_value_loss` (`core_algos.py` L1799-1838), ORZ
/// (`orz/ppo/actors.py` L81-130), oat (`ppo.py` L51-112):
///
/// ```text
/// V_c = clamp(V, V_old − c, V_old + c)
/// ℓ   = max((V − R)², (V_c − R)²)           # (V − R)² when `clip` is None
/// loss = ½ · aggregation(ℓ)
/// ```
/// Inputs: [`ValueLossInput`] tensors, all `(B, T)` f32; the loss is a scalar f32
/// differentiable w.r.t. `values`. Metrics: `clipfrac` (verl `vf_clipfrac`, the fraction of
/// valid tokens where the clipped term is larger), `loss`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClippedValueLoss {
    /// Clip range `c` around the rollout-time values (> 0); `None` disables clipping.
    pub clip: Option<f64>,
    /// How token losses are reduced (group-level modes are not available: no group ids).
    pub aggregation: Aggregation,
}

impl Default for ClippedValueLoss {
    /// verl: `critic.cliprange_value 0.5`, `token-mean` (YAML L387).
    fn default() -> Self {
        Self { clip: Some(0.5), aggregation: Aggregation::TokenMean }
    }
}

impl ClippedValueLoss {
    /// Open-Reasoner-Zero (`ppo_base_exp.py` L94-95) and oat: `value_clip 0.2`, token mean.
    pub fn open_reasoner_zero() -> Self {
        Self { clip: Some(0.2), aggregation: Aggregation::TokenMean }
    }
}

impl ValueLoss for ClippedValueLoss {
    fn compute(&self, input: &ValueLossInput<'_>) -> Result<LossOutput> {
        if let Some(c) = self.clip
            && !(c > 0.0 && c.is_finite())
        {
            return Err(Error::config("value_loss.clip", "must be a finite number > 0"));
        }
        let xs = [
            (input.values, "values"),
            (input.old_values, "old_values"),
            (input.returns, "returns"),
        ];
        let (loss, grad, stats) = HostBatch::with(xs, input.response_mask, None, |hb| {
            let w: Vec<f64> = hb
                .weights(&self.aggregation, None, input.counts)?
                .into_iter()
                .map(|w| 0.5 * w)
                .collect();
            // One closure per case, so that the clip is not a branch per token.
            match self.clip.map(|c| c as f32) {
                None => run_tokens(hb, &w, false, |_, _, v, _, ret, _| {
                    Tok::new(Dual::var(v).sub(Dual::c(ret)).square())
                }),
                Some(c) => run_tokens(hb, &w, false, move |_, _, v, old, ret, _| {
                    let v = Dual::var(v);
                    let r = Dual::c(ret);
                    let l1 = v.sub(r).square();
                    let vc = v.min(Dual::c(old + c)).max(Dual::c(old - c));
                    let l2 = vc.sub(r).square();
                    // `flags` = 1 marks a token where the clipped term wins (counted as "low").
                    Tok { l: l1.max(l2), flags: u8::from(l2.v > l1.v) }
                }),
            }
        })?;
        let m = stats.metrics(loss);
        let metrics = rl_core::Metrics::new()
            .with_reduce("loss", loss, rl_core::metrics::Reduce::Sum)
            .with("clipfrac", m.get("clipfrac_low").unwrap_or(0.0));
        Ok(LossOutput { loss: emit(input.values, loss, grad)?, metrics })
    }
}
