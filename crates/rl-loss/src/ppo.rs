//! The PPO clipped surrogate: symmetric clip, DAPO's asymmetric clip-higher and dual clip.

use rl_core::{LossOutput, PolicyLoss, PolicyLossInput, Result};
use serde::{Deserialize, Serialize};

use crate::Aggregation;
use crate::dual::Dual;
use crate::host::{CLIP_DUAL, CLIP_HIGH, CLIP_LOW, Tok, check_clip, ratio_dual, token_loss};

/// PPO clipped surrogate, verl `compute_policy_loss_vanilla` (`core_algos.py` L1160-1250):
///
/// ```text
/// log ρ = clamp(logπθ − logπold, −20, 20);  ρ = exp(log ρ)
/// L1 = −A·ρ;  L2 = −A·clamp(ρ, 1 − ε_low, 1 + ε_high);  Lc = max(L1, L2)
/// ℓ  = min(−A·c, Lc) where A < 0 (dual clip, when `dual_clip = Some(c)`), else Lc
/// loss = aggregation(ℓ · rollout_is_weights)
/// ```
///
/// Inputs: [`PolicyLossInput`] tensors, all `(B, T)` f32. The loss is a scalar f32
/// differentiable w.r.t. `log_probs`. Metrics: `clipfrac` (verl `pg_clipfrac`), `clipfrac_low`,
/// `clipfrac_high`, `clipfrac_dual` (verl `pg_clipfrac_lower`), `approx_kl`,
/// `ratio_{mean,min,max}`, `loss`.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use rl_core::{PolicyLoss, PolicyLossInput};
/// use rl_loss::PpoLoss;
///
/// let d = Device::Cpu;
/// let lp = Var::new(&[[-1.0f32, -0.5, -2.0]], &d)?;
/// let old = lp.as_tensor().detach(); // on-policy: ratio 1
/// let adv = Tensor::new(&[[1.0f32, 1.0, 0.0]], &d)?;
/// let mask = Tensor::new(&[[1.0f32, 1.0, 0.0]], &d)?;
/// let out = PpoLoss::dapo().compute(&PolicyLossInput::new(&lp, &old, &adv, &mask))?;
/// assert_eq!(out.loss.to_scalar::<f32>()?, -1.0); // minus the token-mean advantage
/// assert_eq!(out.metrics.get("clipfrac"), Some(0.0));
/// # Ok::<(), rl_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoLoss {
    /// `ε_low`: the ratio is clipped below at `1 − ε_low` (> 0, <= `clip_high`).
    pub clip_low: f64,
    /// `ε_high`: the ratio is clipped above at `1 + ε_high` (> 0).
    pub clip_high: f64,
    /// Dual-clip constant `c > 1` (Ye et al. 2019, arXiv 1912.09729) bounding the loss of
    /// negative-advantage tokens by `−A·c`; `None` disables it.
    pub dual_clip: Option<f64>,
    /// How token losses are reduced.
    pub aggregation: Aggregation,
}

impl Default for PpoLoss {
    /// Plain PPO-clip (Schulman et al. 2017): `ε = 0.2` both sides, no dual clip, token mean.
    /// (A missing `dual_clip` in a recipe means "off", so that configs round-trip.)
    fn default() -> Self {
        Self { clip_low: 0.2, clip_high: 0.2, dual_clip: None, aggregation: Aggregation::TokenMean }
    }
}

impl PpoLoss {
    /// verl's actor defaults: `clip_ratio 0.2` both sides, `clip_ratio_c 3.0` (verl always
    /// applies the dual clip), `token-mean` (`_generated_ppo_trainer.yaml` L55-71).
    pub fn verl() -> Self {
        Self { dual_clip: Some(3.0), ..Self::default() }
    }

    /// Open-Reasoner-Zero (`orz/ppo/actors.py` L81-130, `ppo_base_exp.py` L94-95): clip 0.2,
    /// no dual clip, no KL, token mean over the micro-batch.
    pub fn open_reasoner_zero() -> Self {
        Self::default()
    }

    /// Dr. GRPO (arXiv 2503.20783; oat `ppo.py` L216-224): clip 0.2, no dual clip, per-sequence
    /// token sums divided by the constant `max_len` (oat `generate_max_length`, 3000 in
    /// understand-r1-zero's scripts), mean over sequences.
    pub fn dr_grpo(max_len: usize) -> Self {
        Self {
            aggregation: Aggregation::SeqMeanTokenSumNorm { max_len: Some(max_len) },
            ..Self::default()
        }
    }

    /// DAPO (arXiv 2503.14476; verl `recipe/dapo/run_dapo_qwen2.5_32b.sh`): clip-higher
    /// `ε_low 0.2, ε_high 0.28`, `clip_ratio_c 10`, token-level loss.
    pub fn dapo() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.28,
            dual_clip: Some(10.0),
            aggregation: Aggregation::TokenMean,
        }
    }

    /// GRPO as TRL `loss_type = "grpo"` (`grpo_trainer.py` L3054-3148, `epsilon 0.2`, no dual
    /// clip): per-sequence token mean, then mean over sequences.
    pub fn grpo() -> Self {
        Self { aggregation: Aggregation::SeqMeanTokenMean, ..Self::default() }
    }

    /// Checks `0 < ε_low <= ε_high`, `ε_low < 1` and `c > 1`.
    pub fn validate(&self) -> Result<()> {
        check_clip(self.clip_low, self.clip_high, "ppo")?;
        if self.clip_low >= 1.0 {
            return Err(rl_core::Error::config("ppo.clip_low", "must be < 1"));
        }
        if let Some(c) = self.dual_clip
            && !(c > 1.0 && c.is_finite())
        {
            return Err(rl_core::Error::config("ppo.dual_clip", "must be a finite number > 1"));
        }
        self.aggregation.validate()
    }

    /// One token of the surrogate.
    #[cfg(test)]
    fn token(&self, lp: f32, old: f32, adv: f32) -> Tok {
        let r = crate::expf::exp_small((lp - old).clamp(-20.0, 20.0));
        let (lo, hi) = self.bounds();
        match self.dual_clip {
            Some(c) => token_dual(lo, hi, c as f32, lp, old, adv, r),
            None => token_plain(lo, hi, lp, old, adv, r),
        }
    }

    /// `(1 − ε_low, 1 + ε_high)` in f32.
    fn bounds(&self) -> (f32, f32) {
        ((1.0 - self.clip_low) as f32, (1.0 + self.clip_high) as f32)
    }
}

/// One token without dual clip, given its ratio `r = exp(clamp(lp − old, ±20))`: `Lc`.
#[inline(always)]
fn token_plain(lo: f32, hi: f32, lp: f32, old: f32, adv: f32, r: f32) -> Tok {
    // = Dual::var(lp).sub(Dual::c(old)).clamp(-20.0, 20.0).exp()
    let ratio = ratio_dual(lp, old, r);
    let (l1, l2) = clip_pair(adv, ratio, lo, hi);
    Tok { l: l1.max(l2), flags: clip_flags(adv, l1, l2) }
}

/// One token with dual clip `c`: `min(−A·c, Lc)` where `A < 0`, else `Lc`.
#[inline(always)]
fn token_dual(lo: f32, hi: f32, c: f32, lp: f32, old: f32, adv: f32, r: f32) -> Tok {
    let Tok { l: lc, flags } = token_plain(lo, hi, lp, old, adv, r);
    // Computed for every token and selected, so that the sign of A is not a branch.
    let l3 = Dual::c(-adv * c);
    let neg = adv < 0.0;
    let dual = CLIP_DUAL * u8::from(neg & (lc.v > l3.v));
    Tok { l: if neg { l3.min(lc) } else { lc }, flags: flags | dual }
}

/// `(L1, L2) = (−A·ρ, −A·clamp(ρ, lo, hi))`.
pub(crate) fn clip_pair(adv: f32, ratio: Dual, lo: f32, hi: f32) -> (Dual, Dual) {
    let a = Dual::c(-adv);
    (a.mul(ratio), a.mul(ratio.clamp(lo, hi)))
}

/// verl's `L2 > L1` split by the sign of the advantage: low clip for `A < 0`, high for `A > 0`.
pub(crate) fn clip_flags(adv: f32, l1: Dual, l2: Dual) -> u8 {
    let (clipped, neg) = (u8::from(l2.v > l1.v), u8::from(adv < 0.0));
    clipped * (neg * CLIP_LOW + (1 - neg) * CLIP_HIGH)
}

impl PolicyLoss for PpoLoss {
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput> {
        self.validate()?;
        // One closure per case, capturing plain numbers: no branch on the config per token.
        let (lo, hi) = self.bounds();
        match self.dual_clip {
            Some(c) => {
                let c = c as f32;
                token_loss(input, &self.aggregation, move |_, _, lp, old, a, r| {
                    token_dual(lo, hi, c, lp, old, a, r)
                })
            }
            None => token_loss(input, &self.aggregation, move |_, _, lp, old, a, r| {
                token_plain(lo, hi, lp, old, a, r)
            }),
        }
    }

    /// A zero advantage gives a zero token loss and gradient; the aggregation's row weights
    /// depend only on the row, the counts and `T`.
    fn zero_advantage_rows_inert(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_cite_their_numbers() {
        for p in [
            PpoLoss::verl(),
            PpoLoss::default(),
            PpoLoss::open_reasoner_zero(),
            PpoLoss::dr_grpo(3000),
            PpoLoss::dapo(),
            PpoLoss::grpo(),
        ] {
            p.validate().unwrap();
        }
        assert_eq!(PpoLoss::dapo().clip_high, 0.28);
        assert_eq!(PpoLoss::open_reasoner_zero().dual_clip, None);
    }

    #[test]
    fn invalid_configs_are_typed_errors() {
        let bad = [
            PpoLoss { clip_low: 0.0, ..PpoLoss::default() },
            PpoLoss { clip_low: -0.1, ..PpoLoss::default() },
            PpoLoss { clip_low: 0.3, clip_high: 0.2, ..PpoLoss::default() },
            PpoLoss { dual_clip: Some(1.0), ..PpoLoss::verl() },
            PpoLoss { dual_clip: Some(0.5), ..PpoLoss::verl() },
        ];
        for b in bad {
            assert!(matches!(b.validate(), Err(rl_core::Error::Config { .. })), "{b:?}");
        }
    }

    #[test]
    fn token_flags() {
        let p = PpoLoss::verl();
        // A > 0, ratio e^0.5 > 1.2: high clip, zero gradient.
        let t = p.token(0.5, 0.0, 1.0);
        assert_eq!((t.flags, t.l.d), (CLIP_HIGH, 0.0));
        // A < 0, ratio e^-0.5 < 0.8: low clip.
        assert_eq!(p.token(-0.5, 0.0, -1.0).flags, CLIP_LOW);
        // A < 0, ratio e^2 > 3: dual clip, constant loss 3·|A|.
        let t = p.token(2.0, 0.0, -1.0);
        assert_eq!((t.flags, t.l.v, t.l.d), (CLIP_DUAL, 3.0, 0.0));
    }
}
