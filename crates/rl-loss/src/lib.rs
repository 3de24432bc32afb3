//! # rl-loss
//!
//! The losses of R1-Zero-style RL, each matching its source (verl, TRL, oat, Open-Reasoner-Zero)
//! in value **and gradient**, checked against PyTorch transcriptions
//! (`scripts/reference/loss_reference.py`, fixtures in `tests/fixtures/`).
//!
//! | loss | type | source |
//! |---|---|---|
//! | PPO clip, clip-higher, dual clip | [`PpoLoss`] | verl `compute_policy_loss_vanilla` |
//! | GSPO | [`GspoLoss`] | verl `compute_policy_loss_gspo`, arXiv 2507.18071 |
//! | CISPO | [`CispoLoss`] | verl / TRL, arXiv 2506.13585 |
//! | SAPO | [`SapoLoss`] | verl / TRL, arXiv 2511.20347 |
//! | GMPO | [`GmpoLoss`] | verl `geo_mean`, arXiv 2507.20673 |
//! | Clip-Cov, KL-Cov | [`ClipCovLoss`], [`KlCovLoss`] | verl (PRIME-RL Entropy-Mechanism) |
//! | GPG / REINFORCE | [`ReinforceLoss`] | verl `gpg`, bypass `reinforce` |
//! | value loss | [`ClippedValueLoss`] | verl `compute_value_loss`, ORZ |
//! | KL k1/abs/k2/k3 (+ straight-through) | [`Kl`], [`KlLoss`], [`kl_in_reward`] | verl `kl_penalty` |
//! | entropy | [`entropy_from_logits`], [`EntropyBonus`] | verl `entropy_from_logits` |
//! | rollout IS correction | [`TruncatedIs`] | verl rollout correction, oat `tis_c` |
//!
//! Every policy loss implements [`rl_core::PolicyLoss`] on `(B, T)` f32 tensors and returns a
//! scalar f32 loss differentiable w.r.t. `log_probs`, with its metrics. Aggregation is the
//! typed [`Aggregation`]; pass [`rl_core::GlobalCounts`] in `PolicyLossInput::counts` and the
//! micro-batch losses of a mini-batch add up exactly to the full-batch loss and gradient.
//! [`PolicyLossConfig`] is the closed, serde-tagged enum of all policy losses.
//!
//! How it runs: the inputs are read on the host in place (contiguous f32 CPU tensors; others
//! are copied once); one parallel pass computes each token's loss and its exact derivative
//! (forward-mode dual numbers following torch's conventions for `detach`, `clamp`, `maximum`)
//! and checks the inputs on the way; a custom op attaches that gradient to `log_probs`' graph.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use rl_core::{PolicyLoss, PolicyLossInput};
//! use rl_loss::PolicyLossConfig;
//!
//! let loss: PolicyLossConfig = toml::from_str("type = \"ppo\"\nclip_high = 0.28")?;
//! let d = Device::Cpu;
//! let lp = Var::new(&[[-1.0f32, -2.0], [-0.5, -0.1]], &d)?;
//! let old = Tensor::new(&[[-1.1f32, -2.0], [-0.5, -0.3]], &d)?;
//! let adv = Tensor::new(&[[1.0f32, 1.0], [-1.0, -1.0]], &d)?;
//! let mask = Tensor::new(&[[1.0f32, 1.0], [1.0, 0.0]], &d)?;
//! let out = loss.compute(&PolicyLossInput::new(&lp, &old, &adv, &mask))?;
//! let grads = out.loss.backward()?;
//! assert_eq!(grads.get(&lp).unwrap().dims(), &[2, 2]);
//! assert!(out.metrics.get("clipfrac").is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod agg;
mod cov;
mod dual;
mod entropy;
mod expf;
mod host;
mod is;
mod kl;
mod ppo;
mod value;
mod variants;

pub use agg::Aggregation;
pub use cov::{ClipCovLoss, KlCovLoss};
pub use entropy::{EntropyBonus, entropy_from_logits, entropy_from_logits_chunked};
pub use is::{IsLevel, TruncatedIs};
pub use kl::{Kl, KlController, KlEstimator, KlInReward, KlLoss, kl_in_reward};
pub use ppo::PpoLoss;
pub use value::ClippedValueLoss;
pub use variants::{CispoLoss, GmpoLoss, GspoLoss, ReinforceLoss, SapoLoss};

use rl_core::{LossOutput, PolicyLoss, PolicyLossInput, Result};
use serde::{Deserialize, Serialize};

/// Every built-in policy loss, tagged by `type` so recipes round-trip through TOML/JSON; an
/// unknown `type` or field fails at parse time.
///
/// ```
/// use rl_loss::{PolicyLossConfig, PpoLoss};
/// let c: PolicyLossConfig = serde_json::from_str(r#"{"type":"gspo"}"#)?;
/// assert_eq!(c, PolicyLossConfig::gspo());
/// assert!(serde_json::from_str::<PolicyLossConfig>(r#"{"type":"ppo2"}"#).is_err());
/// let dapo = PolicyLossConfig::Ppo(PpoLoss::dapo());
/// let back: PolicyLossConfig = toml::from_str(&toml::to_string(&dapo)?)?;
/// assert_eq!(back, dapo);
/// // Every built-in loss converts into the enum.
/// assert_eq!(PolicyLossConfig::from(PpoLoss::dapo()), dapo);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PolicyLossConfig {
    /// [`PpoLoss`].
    Ppo(PpoLoss),
    /// [`GspoLoss`].
    Gspo(GspoLoss),
    /// [`CispoLoss`].
    Cispo(CispoLoss),
    /// [`SapoLoss`].
    Sapo(SapoLoss),
    /// [`GmpoLoss`].
    Gmpo(GmpoLoss),
    /// [`ClipCovLoss`].
    ClipCov(ClipCovLoss),
    /// [`KlCovLoss`].
    KlCov(KlCovLoss),
    /// [`ReinforceLoss`].
    Reinforce(ReinforceLoss),
}

impl Default for PolicyLossConfig {
    /// [`PpoLoss::default`] (plain PPO-clip).
    fn default() -> Self {
        Self::Ppo(PpoLoss::default())
    }
}

impl PolicyLossConfig {
    /// [`PpoLoss::open_reasoner_zero`].
    pub fn open_reasoner_zero() -> Self {
        Self::Ppo(PpoLoss::open_reasoner_zero())
    }

    /// [`PpoLoss::dr_grpo`].
    pub fn dr_grpo(max_len: usize) -> Self {
        Self::Ppo(PpoLoss::dr_grpo(max_len))
    }

    /// [`PpoLoss::dapo`].
    pub fn dapo() -> Self {
        Self::Ppo(PpoLoss::dapo())
    }

    /// [`PpoLoss::grpo`].
    pub fn grpo() -> Self {
        Self::Ppo(PpoLoss::grpo())
    }

    /// [`GspoLoss::default`] (the GSPO paper's settings).
    pub fn gspo() -> Self {
        Self::Gspo(GspoLoss::default())
    }

    /// The loss's token aggregation (`None` for GMPO, whose geometric mean has its own).
    pub fn aggregation_mut(&mut self) -> Option<&mut Aggregation> {
        match self {
            Self::Ppo(l) => Some(&mut l.aggregation),
            Self::Gspo(l) => Some(&mut l.aggregation),
            Self::Cispo(l) => Some(&mut l.aggregation),
            Self::Sapo(l) => Some(&mut l.aggregation),
            Self::Gmpo(_) => None,
            Self::ClipCov(l) => Some(&mut l.aggregation),
            Self::KlCov(l) => Some(&mut l.aggregation),
            Self::Reinforce(l) => Some(&mut l.aggregation),
        }
    }

    fn inner(&self) -> &dyn PolicyLoss {
        match self {
            Self::Ppo(l) => l,
            Self::Gspo(l) => l,
            Self::Cispo(l) => l,
            Self::Sapo(l) => l,
            Self::Gmpo(l) => l,
            Self::ClipCov(l) => l,
            Self::KlCov(l) => l,
            Self::Reinforce(l) => l,
        }
    }
}

/// `From<X> for PolicyLossConfig` for every built-in loss `X` (as tokenizers' `impl_enum_from!`):
/// `PolicyLossConfig::from(PpoLoss::dapo())`, or `.into()` where a config is expected.
macro_rules! impl_from_loss {
    ($($ty:ident => $variant:ident),* $(,)?) => {
        $(
            impl From<$ty> for PolicyLossConfig {
                fn from(l: $ty) -> Self {
                    Self::$variant(l)
                }
            }
        )*
    };
}

impl_from_loss!(
    PpoLoss => Ppo,
    GspoLoss => Gspo,
    CispoLoss => Cispo,
    SapoLoss => Sapo,
    GmpoLoss => Gmpo,
    ClipCovLoss => ClipCov,
    KlCovLoss => KlCov,
    ReinforceLoss => Reinforce,
);

impl PolicyLoss for PolicyLossConfig {
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput> {
        self.inner().compute(input)
    }

    fn zero_advantage_rows_inert(&self) -> bool {
        self.inner().zero_advantage_rows_inert()
    }
}
