//! Loss aggregation: how a `(B, T)` matrix of per-token losses becomes one scalar.
//!
//! Every mode is a weighted sum `L = Σ_b w_b · Σ_t M_bt ℓ_bt` with a per-sequence weight `w_b`
//! computed from the mask and, under gradient accumulation, from the **mini-batch-wide** counts
//! in [`GlobalCounts`]. Because the weights of a micro-batch use the counts of the whole
//! mini-batch, the micro-batch losses (and gradients) add up exactly to the full-batch loss.
//! A fully masked row has zero weight and a fully masked micro-batch contributes exactly 0.

use std::collections::BTreeMap;

use candle_core::Tensor;
use rl_core::{Error, GlobalCounts, Result};
use serde::{Deserialize, Serialize};

/// How per-token losses are reduced to a scalar. `L_b = Σ_t M_bt` is the length of row `b`.
///
/// | mode | loss | source |
/// |---|---|---|
/// | `token-mean` | `Σ_bt ℓM / N_tokens` | verl `agg_loss` (`core_algos.py` L1025-1081), DAPO paper, TRL `dapo`/`bnpo`, ORZ |
/// | `seq-mean-token-sum` | `Σ_b (Σ_t ℓM) / N_seq` | verl |
/// | `seq-mean-token-mean` | `Σ_b (Σ_t ℓM / L_b) / N_seq` | verl, TRL `grpo`, oat `grpo` (the GRPO paper) |
/// | `seq-mean-token-sum-norm` | `Σ_b (Σ_t ℓM) / (max_len · N_seq)` | Dr. GRPO paper, oat `drgrpo` (`ppo.py` L216-224), TRL `dr_grpo` |
/// | `seq-sum-token-sum-norm` | `Σ_b (Σ_t ℓM) / scale` | verl's `seq-mean-token-sum-norm` (no division by the batch size) |
/// | `group-token-mean` | `Σ_g (Σ_{b∈g,t} ℓM / N_g) / N_groups` | DAPO paper eq. 8 read per group |
/// | `luspo` | `Σ_b L_b (Σ_t ℓM) / (N_seq · T)` | TRL `loss_type="luspo"` (`grpo_trainer.py` L3143-3148), LUSPO (arXiv 2602.05261) |
///
/// `N_tokens`, `N_seq` (rows with at least one valid token), `N_g` (valid tokens of group `g`)
/// and `N_groups` (groups with at least one valid token) come from [`GlobalCounts`] when given,
/// else from the micro-batch itself.
///
/// verl's `seq-mean-token-sum-norm` sums over sequences without dividing by the batch size, so
/// its loss grows with the (micro-)batch size (verl issue #3741); the Dr. GRPO paper and oat
/// divide by `B · max_len`. [`Aggregation::SeqMeanTokenSumNorm`] is the paper's version;
/// [`Aggregation::SeqSumTokenSumNorm`] is verl's, for exact comparisons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Aggregation {
    /// Mean over all valid tokens of the mini-batch.
    #[default]
    TokenMean,
    /// Sum over each sequence's tokens, mean over sequences.
    SeqMeanTokenSum,
    /// Mean over each sequence's tokens, mean over sequences.
    SeqMeanTokenMean,
    /// Dr. GRPO: sum over each sequence's tokens divided by a constant `max_len`, mean over
    /// sequences.
    SeqMeanTokenSumNorm {
        /// The constant normaliser (oat: `generate_max_length`, TRL: `max_completion_length`).
        /// `None` in a recipe means the generation budget `sampling.max_new_tokens` (filled in by
        /// [`Aggregation::resolve_budget`] when the trainer is built, as TRL derives it); `None`
        /// at compute time falls back to the padded length `T` of the tensor.
        #[serde(default)]
        max_len: Option<usize>,
    },
    /// verl's `seq-mean-token-sum-norm`: the sum over all tokens divided by a constant only.
    SeqSumTokenSumNorm {
        /// The constant (verl `loss_scale_factor`); `None` = the padded length `T`.
        #[serde(default)]
        scale: Option<f64>,
    },
    /// Token mean within each group (prompt), then mean over groups. Needs group ids.
    GroupTokenMean,
    /// TRL's `luspo` (Length-Unbiased Sequence Policy Optimization, arXiv 2602.05261): each
    /// row's token sum weighted by its length, over `B · T`: `Σ_b L_b Σ_t M_bt ℓ_bt / (B · T)`
    /// (TRL `(per_token_loss * mask.sum(1, keepdim=True)).mean()`, `grpo_trainer.py` L3143-3148
    /// at trl `f2cd57710ae3`).
    ///
    /// `B` is `N_seq`, the rows with a valid token ([`GlobalCounts::sequences`] when given, so
    /// micro-batches add up; TRL's mean also counts empty rows, which only matters when a
    /// response is empty); `T` is the padded length. Positions outside the
    /// mask are excluded (TRL's token-level branch multiplies unmasked losses; with its
    /// recommended `importance_sampling_level="sequence"` the loss is `(B, 1)` and there is no
    /// padding). TRL's sequence-level form `Σ_b L_b ℓ_b / B`, on a loss matrix that repeats the
    /// sequence loss `ℓ_b` on each valid token (as [`crate::GspoLoss`] does), is
    /// `seq-sum-token-sum-norm` with `scale = B`.
    Luspo,
}

fn positive(x: Option<f64>, local: f64) -> f64 {
    x.unwrap_or(local)
}

fn inv(x: f64) -> f64 {
    if x > 0.0 { 1.0 / x } else { 0.0 }
}

impl Aggregation {
    /// Checks the mode's parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::SeqMeanTokenSumNorm { max_len: Some(0) } => {
                Err(Error::config("aggregation.max_len", "must be >= 1"))
            }
            Self::SeqSumTokenSumNorm { scale: Some(s) } if !(s > 0.0 && s.is_finite()) => {
                Err(Error::config("aggregation.scale", "must be a finite number > 0"))
            }
            _ => Ok(()),
        }
    }

    /// Fills a Dr. GRPO normaliser left unset with the generation budget `max_new_tokens` (the
    /// value the paper and TRL use); every other mode is unchanged.
    ///
    /// ```
    /// use rl_loss::Aggregation;
    /// let mut a = Aggregation::SeqMeanTokenSumNorm { max_len: None };
    /// a.resolve_budget(256);
    /// assert_eq!(a, Aggregation::SeqMeanTokenSumNorm { max_len: Some(256) });
    /// ```
    pub fn resolve_budget(&mut self, max_new_tokens: usize) {
        if let Self::SeqMeanTokenSumNorm { max_len: max_len @ None } = self {
            *max_len = Some(max_new_tokens);
        }
    }

    /// The per-row weights `w_b` such that `loss = Σ_b w_b Σ_t M_bt ℓ_bt`.
    ///
    /// `lens` are the row lengths `L_b`, `t` the padded length, `group_ids` one id per row
    /// (required by [`Aggregation::GroupTokenMean`]).
    pub fn row_weights(
        &self,
        lens: &[usize],
        t: usize,
        group_ids: Option<&[usize]>,
        counts: Option<&GlobalCounts>,
    ) -> Result<Vec<f64>> {
        self.validate()?;
        let none = GlobalCounts::default();
        let c = counts.unwrap_or(&none);
        let n_seq = || positive(c.sequences, lens.iter().filter(|l| **l > 0).count() as f64);
        let nonempty = |l: usize| if l > 0 { 1.0 } else { 0.0 };
        Ok(match *self {
            Self::TokenMean => {
                let n = positive(c.tokens, lens.iter().sum::<usize>() as f64);
                vec![inv(n); lens.len()]
            }
            Self::SeqMeanTokenSum => {
                let g = inv(n_seq());
                lens.iter().map(|l| nonempty(*l) * g).collect()
            }
            Self::SeqMeanTokenMean => {
                let g = inv(n_seq());
                lens.iter().map(|l| inv(*l as f64) * g).collect()
            }
            Self::SeqMeanTokenSumNorm { max_len } => {
                let w = inv(n_seq() * max_len.unwrap_or(t) as f64);
                lens.iter().map(|l| nonempty(*l) * w).collect()
            }
            Self::SeqSumTokenSumNorm { scale } => vec![inv(scale.unwrap_or(t as f64)); lens.len()],
            Self::Luspo => {
                let g = inv(n_seq() * t as f64);
                lens.iter().map(|l| *l as f64 * g).collect()
            }
            Self::GroupTokenMean => {
                let ids = group_ids.ok_or_else(|| {
                    Error::config("aggregation", "group-token-mean needs group ids")
                })?;
                if ids.len() != lens.len() {
                    return Err(Error::GroupMismatch { expected: lens.len(), got: ids.len() });
                }
                let mut local: BTreeMap<usize, f64> = BTreeMap::new();
                for (id, l) in ids.iter().zip(lens) {
                    *local.entry(*id).or_insert(0.0) += *l as f64;
                }
                let tokens = c.group_tokens.as_ref().unwrap_or(&local);
                let n_groups = match (&c.group_tokens, c.groups) {
                    (Some(m), _) => m.values().filter(|n| **n > 0.0).count() as f64,
                    (None, Some(g)) => g,
                    (None, None) => local.values().filter(|n| **n > 0.0).count() as f64,
                };
                let g = inv(n_groups);
                let mut w = Vec::with_capacity(lens.len());
                for (id, l) in ids.iter().zip(lens) {
                    let n = tokens.get(id).copied().ok_or_else(|| {
                        Error::config("counts.group_tokens", format!("no count for group {id}"))
                    })?;
                    w.push(nonempty(*l) * inv(n) * g);
                }
                w
            }
        })
    }

    /// Aggregates a differentiable `(B, T)` f32 loss matrix with a `(B, T)` mask into a scalar.
    /// Positions outside the mask are ignored even when they hold NaN.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use rl_loss::Aggregation;
    /// let l = Tensor::new(&[[1f32, 2.0, 9.0], [3.0, 0.0, 0.0]], &Device::Cpu)?;
    /// let m = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 0.0, 0.0]], &Device::Cpu)?;
    /// let tok = Aggregation::TokenMean.aggregate(&l, &m, None, None)?;
    /// assert_eq!(tok.to_scalar::<f32>()?, 2.0); // (1 + 2 + 3) / 3
    /// let seq = Aggregation::SeqMeanTokenMean.aggregate(&l, &m, None, None)?;
    /// assert_eq!(seq.to_scalar::<f32>()?, 2.25); // (1.5 + 3) / 2
    /// # Ok::<(), rl_core::Error>(())
    /// ```
    pub fn aggregate(
        &self,
        loss_mat: &Tensor,
        mask: &Tensor,
        group_ids: Option<&[usize]>,
        counts: Option<&GlobalCounts>,
    ) -> Result<Tensor> {
        let (b, t) = rl_core::check::dims2(loss_mat, "loss_mat")?;
        let lens = rl_core::check::mask_lengths(mask, "mask")?;
        let w = self.row_weights(&lens, t, group_ids, counts)?;
        let w = Tensor::from_vec(
            w.iter().map(|x| *x as f32).collect::<Vec<_>>(),
            (b, 1),
            mask.device(),
        )?
        .to_dtype(loss_mat.dtype())?;
        let m = mask.to_dtype(loss_mat.dtype())?;
        let valid = m.ne(0.0)?.where_cond(loss_mat, &loss_mat.zeros_like()?)?;
        Ok(valid.mul(&m)?.broadcast_mul(&w)?.sum_all()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_of_every_mode() -> Result<()> {
        let lens = [2usize, 0, 4];
        let ids = [0usize, 0, 1];
        let w = |a: Aggregation| a.row_weights(&lens, 5, Some(&ids), None).unwrap();
        assert_eq!(w(Aggregation::TokenMean), vec![1.0 / 6.0; 3]);
        assert_eq!(w(Aggregation::SeqMeanTokenSum), vec![0.5, 0.0, 0.5]);
        assert_eq!(w(Aggregation::SeqMeanTokenMean), vec![0.25, 0.0, 0.125]);
        assert_eq!(
            w(Aggregation::SeqMeanTokenSumNorm { max_len: Some(10) }),
            vec![0.05, 0.0, 0.05]
        );
        assert_eq!(w(Aggregation::SeqMeanTokenSumNorm { max_len: None }), vec![0.1, 0.0, 0.1]);
        // L_b / (N_seq·T) with N_seq = 2 non-empty rows and T = 5.
        assert_eq!(w(Aggregation::Luspo), vec![2.0 / 10.0, 0.0, 4.0 / 10.0]);
        let global = GlobalCounts { sequences: Some(6.0), ..GlobalCounts::default() };
        let wg = Aggregation::Luspo.row_weights(&lens, 5, None, Some(&global))?;
        assert_eq!(wg, vec![2.0 / 30.0, 0.0, 4.0 / 30.0]);
        assert_eq!(w(Aggregation::SeqSumTokenSumNorm { scale: None }), vec![0.2; 3]);
        assert_eq!(w(Aggregation::GroupTokenMean), vec![0.25, 0.0, 0.125]);
        Ok(())
    }

    #[test]
    fn fully_masked_batch_has_zero_weights() {
        for a in
            [Aggregation::TokenMean, Aggregation::SeqMeanTokenMean, Aggregation::GroupTokenMean]
        {
            let w = a.row_weights(&[0, 0], 3, Some(&[0, 1]), None).unwrap();
            assert_eq!(w, vec![0.0, 0.0]);
        }
    }

    #[test]
    fn invalid_parameters_are_typed_errors() {
        let bad = Aggregation::SeqMeanTokenSumNorm { max_len: Some(0) };
        assert!(matches!(bad.validate(), Err(Error::Config { .. })));
        let bad = Aggregation::SeqSumTokenSumNorm { scale: Some(-1.0) };
        assert!(matches!(bad.validate(), Err(Error::Config { .. })));
        let r = Aggregation::GroupTokenMean.row_weights(&[1], 2, None, None);
        assert!(matches!(r, Err(Error::Config { .. })));
    }

    #[test]
    fn serde_names() {
        let a: Aggregation =
            serde_json::from_str(r#"{"type":"seq_mean_token_sum_norm","max_len":3000}"#).unwrap();
        assert_eq!(a, Aggregation::SeqMeanTokenSumNorm { max_len: Some(3000) });
        assert!(serde_json::from_str::<Aggregation>(r#"{"type":"token_sum"}"#).is_err());
    }
}
