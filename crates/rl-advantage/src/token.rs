//! Token-level estimators: a reverse scan over each response (GAE, REINFORCE++, ReMax).
//!
//! Rewards may be token-level `(B, T)` or sequence-level `(B,)`; a sequence score is placed on
//! the last valid token of its row (verl's reward managers), so such a row must not be empty.
//! Rows are scanned in parallel on the host in f32, in verl's order of operations.

use rl_core::{AdvantageEstimator, AdvantageInput, Advantages, Error, Result, check};
use serde::{Deserialize, Serialize};

use crate::host::{self, Host, TokenRewards, Whiten, finite_on_mask, scan_rows, unit};

/// Mask, rewards and device of a token-level estimator, checked.
struct Tokens<'a> {
    mask: Host<'a>,
    b: usize,
    t: usize,
}

impl<'a> Tokens<'a> {
    fn new(input: &AdvantageInput<'a>) -> Result<Self> {
        let (b, t) = host::batch_dims(input)?;
        input.groups()?;
        let mask = Host::new(input.response_mask)?;
        host::lengths(mask.as_slice(), b, t)?;
        Ok(Self { mask, b, t })
    }

    /// A `(B, T)` companion input (values), checked finite on valid tokens.
    fn companion(&self, x: &'a rl_core::Tensor, what: &str) -> Result<Host<'a>> {
        check::shape(x, &[self.b, self.t], what)?;
        let h = Host::new(x)?;
        finite_on_mask(h.as_slice(), self.mask.as_slice(), what)?;
        Ok(h)
    }
}

/// Generalised Advantage Estimation (verl `compute_gae_advantage_return`, `CA L215-263`).
///
/// Reverse scan over `t = T−1 … 0` with `nv = g = 0` at the end of each row:
/// `δ_t = r_t + γ·nv − V_t`, `g ← δ_t + γλ·g`, `A_t = g`, `R_t = A_t + V_t`, where masked tokens
/// (padding, or interior tokens such as tool observations) are skipped: `nv` and `g` are carried
/// through them unchanged. So nothing is bootstrapped past EOS (`δ_{L−1} = r_{L−1} − V_{L−1}`),
/// and with `γ = λ = 1` `A_t = Σ_{k≥t} r_k − V_t` (Monte-Carlo return minus value).
/// Advantages are then whitened over the valid tokens of the batch ([`Whiten`]); advantages and
/// returns are exactly 0 on every masked position (verl leaves whitened values and carried
/// returns there).
///
/// Requires [`AdvantageInput::values`] `(B, T)` f32, finite on valid tokens.
///
/// ```
/// use rl_advantage::{Gae, Whiten};
/// use rl_core::{AdvantageEstimator, AdvantageInput, Device, Rewards, Tensor};
///
/// let dev = Device::Cpu;
/// let rewards = Rewards::from_scores(&[1.0], &dev)?;
/// let mask = Tensor::new(&[[1f32, 1.0, 0.0]], &dev)?;
/// let values = Tensor::new(&[[0.5f32, 0.25, 9.0]], &dev)?;
/// let gae = Gae { whiten: Whiten::None, ..Gae::open_reasoner_zero() };
/// let out = gae.estimate(&AdvantageInput::new(&rewards, &mask, &[0]).with_values(&values))?;
/// assert_eq!(out.advantages.to_vec2::<f32>()?, vec![vec![0.5, 0.75, 0.0]]);
/// assert_eq!(out.returns.to_vec2::<f32>()?, vec![vec![1.0, 1.0, 0.0]]);
/// # Ok::<(), rl_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gae {
    /// Discount γ in [0, 1]. Default 1.0 (verl `algorithm.gamma`, YAML L572-575).
    pub gamma: f64,
    /// GAE λ in [0, 1]. Default 1.0 (verl `algorithm.lam`, YAML L572-575).
    pub lambda: f64,
    /// Batch whitening of the advantages. Default [`Whiten::Unbiased`] (verl `masked_whiten`).
    pub whiten: Whiten,
}

impl Default for Gae {
    /// verl: γ = λ = 1, advantages whitened with the unbiased batch variance.
    fn default() -> Self {
        Self { gamma: 1.0, lambda: 1.0, whiten: Whiten::Unbiased }
    }
}

impl Gae {
    /// verl's PPO (`CA L215-263`, defaults YAML L572-575): the default.
    pub fn verl() -> Self {
        Self::default()
    }

    /// Open-Reasoner-Zero (`orz_7b_ppo.py` L179-180, `orz/ppo/utils.py` L219-322): γ = λ = 1,
    /// advantages normalised globally with the population variance ([`Whiten::Population`]).
    pub fn open_reasoner_zero() -> Self {
        Self { gamma: 1.0, lambda: 1.0, whiten: Whiten::Population }
    }

    /// TRL PPOTrainer (`ppo_config.py` L123-272): γ = 1, λ = 0.95, advantages whitened over valid
    /// tokens (unbiased). TRL puts the score one past the last token; here it stays on the last.
    pub fn trl() -> Self {
        Self { gamma: 1.0, lambda: 0.95, whiten: Whiten::Unbiased }
    }

    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        unit("gae.gamma", self.gamma)?;
        unit("gae.lambda", self.lambda)
    }
}

impl AdvantageEstimator for Gae {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        self.validate()?;
        let tok = Tokens::new(input)?;
        let values = input.values.ok_or_else(|| Error::Empty {
            what: "AdvantageInput::values (GAE needs critic values)".into(),
        })?;
        let values = tok.companion(values, "values")?;
        let mask = tok.mask.as_slice();
        let rewards = TokenRewards::new(input.rewards, mask, tok.b, tok.t)?;
        let (r, v) = (rewards.view()?, values.as_slice());
        let (gamma, gl) = (self.gamma as f32, (self.gamma * self.lambda) as f32);
        let t = tok.t;
        scan_rows(input, mask, tok.b, t, self.whiten, |i, m, adv, ret| {
            let (r, v) = (r.row(i, t), &v[i * t..(i + 1) * t]);
            let (mut next_value, mut last) = (0f32, 0f32);
            for j in (0..m.len()).rev() {
                if m[j] == 0.0 {
                    continue;
                }
                let delta = r.at(j) + gamma * next_value - v[j];
                last = delta + gl * last;
                next_value = v[j];
                adv[j] = last;
                ret[j] = last + v[j];
            }
            Ok(())
        })
    }

    fn requires_values(&self) -> bool {
        true
    }

    /// Whitened over the batch (unless `whiten` is `None`).
    fn batch_statistics(&self) -> bool {
        self.whiten != Whiten::None
    }

    /// The whitening moments go through [`AdvantageInput::reduce_moments`].
    fn reduces_batch_statistics(&self) -> bool {
        true
    }
}

/// REINFORCE++ (arXiv 2501.03262; verl `compute_reinforce_plus_plus_outcome_advantage`,
/// `CA L583-618`): discounted return `G_t = r_t + γ·G_{t+1}`, reset to 0 at every masked token,
/// whitened over the valid tokens of the batch. Returns are `G` (0 on masked positions).
///
/// Outcome rewards sit on the last valid token, so with `γ = 1` every valid token of response `i`
/// gets `r_i` before whitening. Needs two valid tokens in the batch ([`Whiten::Unbiased`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReinforcePlusPlus {
    /// Discount γ in [0, 1]. Default 1.0 (verl `algorithm.gamma`).
    pub gamma: f64,
    /// Batch whitening. Default [`Whiten::Unbiased`] (verl `masked_whiten`); OpenRLHF's
    /// `reinforce` uses [`Whiten::Population`].
    pub whiten: Whiten,
}

impl Default for ReinforcePlusPlus {
    /// verl: γ = 1, unbiased whitening.
    fn default() -> Self {
        Self { gamma: 1.0, whiten: Whiten::Unbiased }
    }
}

impl AdvantageEstimator for ReinforcePlusPlus {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        unit("reinforce_plus_plus.gamma", self.gamma)?;
        let tok = Tokens::new(input)?;
        let mask = tok.mask.as_slice();
        let rewards = TokenRewards::new(input.rewards, mask, tok.b, tok.t)?;
        let r = rewards.view()?;
        let (gamma, t) = (self.gamma as f32, tok.t);
        scan_rows(input, mask, tok.b, t, self.whiten, |i, m, adv, ret| {
            let r = r.row(i, t);
            let mut g = 0f32;
            for j in (0..m.len()).rev() {
                if m[j] == 0.0 {
                    g = 0.0;
                    continue;
                }
                g = r.at(j) + gamma * g;
                adv[j] = g;
                ret[j] = g;
            }
            Ok(())
        })
    }

    /// Whitened over the batch (unless `whiten` is `None`).
    fn batch_statistics(&self) -> bool {
        self.whiten != Whiten::None
    }

    /// The whitening moments go through [`AdvantageInput::reduce_moments`].
    fn reduces_batch_statistics(&self) -> bool {
        true
    }
}

/// ReMax (arXiv 2310.10505; verl `compute_remax_outcome_advantage`, `CA L622-654`): reward-to-go
/// `R_t = Σ_{k≥t} r_k M_k` minus a per-response baseline `b_i`, the score of a greedy rollout of
/// the same prompt, supplied by the caller in [`AdvantageInput::baseline`] `(B,)` f32.
/// Returns are `R`. No whitening. Advantages and returns are 0 on masked positions.
///
/// Groups play no role (a singleton or zero-variance group changes nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReMax {}

impl AdvantageEstimator for ReMax {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        let tok = Tokens::new(input)?;
        let baseline = input.baseline.ok_or_else(|| Error::Empty {
            what: "AdvantageInput::baseline (ReMax needs the greedy rollout's score per response)"
                .into(),
        })?;
        check::shape(baseline, &[tok.b], "baseline")?;
        let baseline = Host::new(baseline)?;
        let baseline = baseline.as_slice();
        check::finite_slice(baseline, "baseline")?;
        let mask = tok.mask.as_slice();
        let rewards = TokenRewards::new(input.rewards, mask, tok.b, tok.t)?;
        let r = rewards.view()?;
        let t = tok.t;
        scan_rows(input, mask, tok.b, t, Whiten::None, |i, m, adv, ret| {
            let r = r.row(i, t);
            let mut g = 0f32;
            for j in (0..m.len()).rev() {
                if m[j] == 0.0 {
                    continue;
                }
                g += r.at(j);
                adv[j] = g - baseline[i];
                ret[j] = g;
            }
            Ok(())
        })
    }
}
