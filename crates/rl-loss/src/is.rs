//! Rollout-vs-trainer importance-sampling correction: truncated IS weights (TIS).

use candle_core::Tensor;
use rl_core::{Error, Metrics, Result};
use serde::{Deserialize, Serialize};

use crate::host::{host_mask, host_valid};

/// Where the rollout/trainer ratio is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsLevel {
    /// One weight per token: `exp(logπtrain − logπrollout)`.
    #[default]
    Token,
    /// One weight per sequence, `exp(Σ_t (logπtrain − logπrollout) M)`, on every token.
    Sequence,
}

/// Truncated importance-sampling weights correcting the mismatch between the rollout engine's
/// log-probs and the trainer's (verl `rollout_corr_helper.py` L481-598; oat `tis_c`; TRL
/// `vllm_importance_sampling_*`):
///
/// ```text
/// token:    w = exp(clamp(logπtrain − logπrollout, ±20))
/// sequence: w_b = exp(clamp(Σ_t (logπtrain − logπrollout) M, ±20))
/// w ← min(w·M, threshold)          # detached; 0 on padding
/// ```
/// Pass the result as [`rl_core::PolicyLossInput::rollout_is_weights`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TruncatedIs {
    /// Token or sequence level.
    pub level: IsLevel,
    /// Upper truncation (> 0).
    pub threshold: f64,
}

impl Default for TruncatedIs {
    /// verl `rollout_is_threshold 2.0` (YAML L563-570), oat `tis_c 2.0`, token level.
    fn default() -> Self {
        Self { level: IsLevel::Token, threshold: 2.0 }
    }
}

impl TruncatedIs {
    /// Weights `(B, T)` f32 (detached) from the trainer's and the rollout engine's `(B, T)`
    /// log-probs; metrics `is_weight_mean` and `is_truncated_frac` over valid tokens.
    pub fn weights(
        &self,
        trainer_log_probs: &Tensor,
        rollout_log_probs: &Tensor,
        mask: &Tensor,
    ) -> Result<(Tensor, Metrics)> {
        if !(self.threshold > 0.0 && self.threshold.is_finite()) {
            return Err(Error::config("is.threshold", "must be a finite number > 0"));
        }
        let (b, t) = rl_core::check::dims2(trainer_log_probs, "trainer_log_probs")?;
        let (m, lens) = host_mask(mask, b, t)?;
        let lp = host_valid(trainer_log_probs, &[b, t], &m, "trainer_log_probs")?;
        let ro = host_valid(rollout_log_probs, &[b, t], &m, "rollout_log_probs")?;
        let logr: Vec<f32> =
            (0..m.len()).map(|i| if m[i] != 0.0 { lp[i] - ro[i] } else { 0.0 }).collect();
        let raw: Vec<f32> = match self.level {
            IsLevel::Token => logr.iter().map(|x| x.clamp(-20.0, 20.0).exp()).collect(),
            IsLevel::Sequence => logr
                .chunks(t)
                .flat_map(|row| {
                    let s = row.iter().map(|x| *x as f64).sum::<f64>() as f32;
                    std::iter::repeat_n(s.clamp(-20.0, 20.0).exp(), t)
                })
                .collect(),
        };
        let th = self.threshold as f32;
        let w: Vec<f32> = raw.iter().zip(&m).map(|(w, m)| (w * m).min(th)).collect();
        let n = lens.iter().sum::<usize>().max(1) as f64;
        let valid = || w.iter().zip(&raw).zip(&m).filter(|(_, m)| **m != 0.0);
        let mean = valid().map(|((w, _), _)| *w as f64).sum::<f64>() / n;
        let trunc = valid().filter(|((_, r), _)| **r > th).count() as f64 / n;
        let metrics = Metrics::new().with("is_weight_mean", mean).with("is_truncated_frac", trunc);
        Ok((Tensor::from_vec(w, (b, t), trainer_log_probs.device())?, metrics))
    }
}
