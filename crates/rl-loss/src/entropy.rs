//! Entropy of the next-token distribution, and the entropy bonus.

use candle_core::{D, Tensor};
use rl_core::metrics::Reduce;
use rl_core::{Error, GlobalCounts, LossOutput, Metrics, Result};
use serde::{Deserialize, Serialize};

use crate::Aggregation;

/// `H(z) = logsumexp(z) − Σ_v softmax(z)_v z_v` over the last dimension (verl
/// `entropy_from_logits`, `torch_functional.py` L224-238).
///
/// Takes logits of any shape `(..., V)` (typically `(B, T, V)`, f32) and returns `(...)`,
/// differentiable w.r.t. the logits (composed from ops that have backward passes).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let z = Tensor::new(&[[[0f32, 0.0, 0.0, 0.0]]], &Device::Cpu)?; // uniform over 4
/// let h = rl_loss::entropy_from_logits(&z)?;
/// assert!((h.flatten_all()?.to_vec1::<f32>()?[0] - 4f32.ln()).abs() < 1e-6);
/// # Ok::<(), rl_core::Error>(())
/// ```
pub fn entropy_from_logits(logits: &Tensor) -> Result<Tensor> {
    let lse = logits.log_sum_exp(D::Minus1)?;
    let p = logits.broadcast_sub(&lse.unsqueeze(D::Minus1)?)?.exp()?;
    Ok((lse - (p * logits)?.sum(D::Minus1)?)?)
}

/// [`entropy_from_logits`] of `(B, T, V)` logits computed `chunk` positions of `T` at a time
/// (bounding the size of the `(B, chunk, V)` temporaries); returns `(B, T)`.
pub fn entropy_from_logits_chunked(logits: &Tensor, chunk: usize) -> Result<Tensor> {
    let (_, t, _) = logits.dims3()?;
    if chunk == 0 {
        return Err(Error::config("entropy.chunk", "must be >= 1"));
    }
    let parts = (0..t)
        .step_by(chunk)
        .map(|s| entropy_from_logits(&logits.narrow(1, s, chunk.min(t - s))?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 1)?)
}

/// The entropy bonus: `loss = −coef · aggregation(H)`, to be added to the policy loss
/// (verl `policy_loss −= entropy_coeff · H`, `dp_actor.py`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntropyBonus {
    /// Coefficient (>= 0; verl `entropy_coeff`).
    pub coef: f64,
    /// How token entropies are reduced (use the policy loss's mode).
    pub aggregation: Aggregation,
}

impl Default for EntropyBonus {
    /// verl: `entropy_coeff 0` (YAML L72), `token-mean`.
    fn default() -> Self {
        Self { coef: 0.0, aggregation: Aggregation::TokenMean }
    }
}

impl EntropyBonus {
    /// Takes `(B, T)` f32 token entropies (e.g. from [`entropy_from_logits`] or the policy) and
    /// the mask; returns the scalar loss (differentiable w.r.t. `entropy`) and metrics
    /// `entropy` (the aggregated entropy) and `loss`.
    pub fn compute(
        &self,
        entropy: &Tensor,
        mask: &Tensor,
        group_ids: Option<&[usize]>,
        counts: Option<&GlobalCounts>,
    ) -> Result<LossOutput> {
        if !(self.coef >= 0.0 && self.coef.is_finite()) {
            return Err(Error::config("entropy.coef", "must be a finite number >= 0"));
        }
        rl_core::check::finite_masked(entropy, mask, "entropy")?;
        let h = self.aggregation.aggregate(entropy, mask, group_ids, counts)?;
        let value = h.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let loss = (h * -self.coef)?;
        // Both are shares of mini-batch-normalised totals: they add up over micro-batches.
        let metrics = Metrics::new().with_reduce("entropy", value, Reduce::Sum).with_reduce(
            "loss",
            -self.coef * value,
            Reduce::Sum,
        );
        Ok(LossOutput { loss, metrics })
    }
}
/// `EntropyBonus` as an actor-loss term (asks the trainer for the policy's entropies).
impl rl_core::LossTerm for EntropyBonus {
    fn compute(&self, i: &rl_core::TermInput<'_>) -> Result<LossOutput> {
        let h = i.entropy.ok_or_else(|| {
            Error::Unsupported("entropy bonus: the policy returned no entropy".into())
        })?;
        EntropyBonus::compute(self, h, i.response_mask, Some(i.group_ids), Some(i.counts))
    }

    fn name(&self) -> &str {
        "entropy_bonus"
    }

    fn needs_entropy(&self) -> bool {
        true
    }
}
