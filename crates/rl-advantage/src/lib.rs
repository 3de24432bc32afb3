//! # rl-advantage
//!
//! Advantage estimators for LLM reinforcement learning, each a type implementing
//! [`rl_core::AdvantageEstimator`], with the exact semantics of the framework it comes from
//! (verl `verl/trainer/ppo/core_algos.py`, TRL, oat, OpenRLHF, Open-Reasoner-Zero), and the closed
//! serde enum [`Advantage`] to pick one by name from a config file.
//!
//! | estimator | formula (per response `i` of group `g`) | source |
//! |---|---|---|
//! | [`Gae`] | reverse scan `δ_t = r_t + γV_{t+1} − V_t`, `A_t = δ_t + γλA_{t+1}`; whitened | verl `CA L215-263` |
//! | [`Grpo`] | `(r_i − mean_g) / (std_g + ε)` | verl `CA L267-330`; TRL; oat |
//! | [`DrGrpo`] | `r_i − mean_g` | verl (`norm_adv_by_std_in_grpo=False`); oat |
//! | [`BatchStd`] | `(r_i − mean_g) / (std_batch + ε)` | TRL `scale_rewards="batch"` |
//! | [`Rloo`] | `r_i − mean_{j≠i} r_j` | verl `CA L477-525` |
//! | [`ReinforcePlusPlus`] | discounted return, batch-whitened | verl `CA L583-618` |
//! | [`ReinforcePlusPlusBaseline`] | `r_i − mean_g`, batch-whitened | verl `CA L425-473` |
//! | [`ReMax`] | reward-to-go − greedy baseline | verl `CA L622-654` |
//! | [`Opo`] | `r_i − Σ L r / Σ L` | verl `CA L529-579` |
//! | [`Gpg`] | `α (r_i − mean_g)`, `α = B / #nonzero` | verl `CA L658-717` |
//! | [`GrpoPassK`] | best of group gets `r_max − r_2nd` | verl `CA L361-419` |
//! | [`OptimalTokenBaseline`] | `G_t − Σ_g G_t W_t / Σ_g W_t`, `W_t` cumulative `1 − 2π + Σπ²` | verl `CA L758-873` |
//!
//! All estimators take an [`AdvantageInput`]: rewards `(B,)` or `(B, T)` f32, the `(B, T)` f32
//! response mask, one group id per response (groups are formed by id, never by row order), and
//! for GAE the `(B, T)` critic values, for ReMax the `(B,)` greedy baseline, for the optimal
//! token baseline the sampling policy's per-token statistics ([`rl_core::PolicyStats`]). They return
//! `(B, T)` f32 advantages and returns, exactly 0.0 on masked positions. Bad input is a typed
//! [`rl_core::Error`], never NaN.
//!
//! ```
//! use rl_advantage::Advantage;
//! use rl_core::{AdvantageEstimator, AdvantageInput, Device, Rewards, Tensor};
//!
//! let est: Advantage = toml::from_str(r#"type = "dr_grpo""#).unwrap();
//! assert_eq!(est, Advantage::dr_grpo());
//!
//! let dev = Device::Cpu;
//! let rewards = Rewards::from_scores(&[1.0, 0.0, 0.5], &dev)?;
//! let mask = Tensor::ones((3, 4), rl_core::DType::F32, &dev)?;
//! let out = est.estimate(&AdvantageInput::new(&rewards, &mask, &[7, 7, 7]))?;
//! assert_eq!(out.advantages.to_vec2::<f32>()?[0], vec![0.5; 4]);
//! # Ok::<(), rl_core::Error>(())
//! ```
//!
//! [`AdvantageInput`]: rl_core::AdvantageInput

mod group;
mod host;
mod otb;
mod token;

use rl_core::{AdvantageEstimator, AdvantageInput, Advantages, Result};
use serde::{Deserialize, Serialize};

pub use group::{BatchStd, DrGrpo, Gpg, Grpo, GrpoPassK, Opo, ReinforcePlusPlusBaseline, Rloo};
pub use host::{Singleton, StdKind, Whiten};
pub use otb::OptimalTokenBaseline;
pub use token::{Gae, ReMax, ReinforcePlusPlus};

/// Every built-in estimator, selectable by name: `{ type = "grpo", eps = 1e-4 }` in TOML or
/// `{"type": "grpo", "eps": 1e-4}` in JSON. Omitted fields take the estimator's defaults;
/// unknown names and fields fail at parse time (the error lists the valid names).
///
/// Names: `gae`, `grpo`, `dr_grpo`, `batch_std`, `rloo`, `reinforce_plus_plus`,
/// `reinforce_plus_plus_baseline`, `remax`, `opo`, `gpg`, `grpo_passk`, `optimal_token_baseline`
/// (verl's registry names where verl has the estimator).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Advantage {
    /// [`Gae`].
    Gae(Gae),
    /// [`Grpo`].
    Grpo(Grpo),
    /// [`DrGrpo`].
    DrGrpo(DrGrpo),
    /// [`BatchStd`].
    BatchStd(BatchStd),
    /// [`Rloo`].
    Rloo(Rloo),
    /// [`ReinforcePlusPlus`].
    ReinforcePlusPlus(ReinforcePlusPlus),
    /// [`ReinforcePlusPlusBaseline`].
    ReinforcePlusPlusBaseline(ReinforcePlusPlusBaseline),
    /// [`ReMax`].
    Remax(ReMax),
    /// [`Opo`].
    Opo(Opo),
    /// [`Gpg`].
    Gpg(Gpg),
    /// [`GrpoPassK`].
    #[serde(rename = "grpo_passk")]
    GrpoPassK(GrpoPassK),
    /// [`OptimalTokenBaseline`].
    OptimalTokenBaseline(OptimalTokenBaseline),
}

impl Default for Advantage {
    /// verl's default estimator: GAE (`algorithm.adv_estimator: gae`, YAML L572).
    fn default() -> Self {
        Self::ppo()
    }
}

impl Advantage {
    /// verl PPO: [`Gae::verl`] (γ = λ = 1, unbiased whitening).
    pub fn ppo() -> Self {
        Self::Gae(Gae::verl())
    }

    /// Open-Reasoner-Zero PPO: [`Gae::open_reasoner_zero`].
    pub fn open_reasoner_zero() -> Self {
        Self::Gae(Gae::open_reasoner_zero())
    }

    /// verl GRPO: [`Grpo::verl`] (eps 1e-6, unbiased std).
    pub fn grpo() -> Self {
        Self::Grpo(Grpo::verl())
    }

    /// TRL GRPO (`scale_rewards="group"`): [`Grpo::trl`] (eps 1e-4).
    pub fn trl_grpo() -> Self {
        Self::Grpo(Grpo::trl())
    }

    /// oat / understand-r1-zero `critic_type=grpo`: [`Grpo::oat`] (eps 1e-8).
    pub fn oat_grpo() -> Self {
        Self::Grpo(Grpo::oat())
    }

    /// OpenRLHF `group_norm`: [`Grpo::openrlhf`] (eps 1e-9).
    pub fn openrlhf_group_norm() -> Self {
        Self::Grpo(Grpo::openrlhf())
    }

    /// DAPO (verl `recipe/dapo`): the GRPO advantage of verl ([`Grpo::verl`]); DAPO's changes are
    /// in sampling, clipping and loss aggregation.
    pub fn dapo() -> Self {
        Self::grpo()
    }

    /// Dr. GRPO (arXiv 2503.20783): [`DrGrpo`] with verl's singleton handling.
    pub fn dr_grpo() -> Self {
        Self::DrGrpo(DrGrpo::default())
    }

    /// TRL `scale_rewards="batch"`: [`BatchStd`].
    pub fn trl_batch_std() -> Self {
        Self::BatchStd(BatchStd::default())
    }

    /// verl RLOO: [`Rloo`].
    pub fn rloo() -> Self {
        Self::Rloo(Rloo::default())
    }

    /// verl REINFORCE++: [`ReinforcePlusPlus`] (γ = 1).
    pub fn reinforce_plus_plus() -> Self {
        Self::ReinforcePlusPlus(ReinforcePlusPlus::default())
    }

    /// verl REINFORCE++-baseline: [`ReinforcePlusPlusBaseline`].
    pub fn reinforce_plus_plus_baseline() -> Self {
        Self::ReinforcePlusPlusBaseline(ReinforcePlusPlusBaseline::default())
    }

    /// ReMax: [`ReMax`] (needs [`AdvantageInput::baseline`]).
    pub fn remax() -> Self {
        Self::Remax(ReMax::default())
    }

    /// OPO: [`Opo`].
    pub fn opo() -> Self {
        Self::Opo(Opo::default())
    }

    /// GPG: [`Gpg`].
    pub fn gpg() -> Self {
        Self::Gpg(Gpg::default())
    }

    /// GRPO pass@k: [`GrpoPassK`].
    pub fn grpo_passk() -> Self {
        Self::GrpoPassK(GrpoPassK::default())
    }

    /// verl's optimal token baseline: [`OptimalTokenBaseline`] (needs
    /// [`AdvantageInput::policy_stats`]).
    pub fn optimal_token_baseline() -> Self {
        Self::OptimalTokenBaseline(OptimalTokenBaseline::default())
    }

    /// Every built-in estimator, each with its default parameters, in the enum's order (for
    /// tests and tools that must cover them all).
    ///
    /// ```
    /// let all = rl_advantage::Advantage::builtins();
    /// assert_eq!(all.len(), 12);
    /// assert!(all.contains(&rl_advantage::Advantage::dr_grpo()));
    /// ```
    pub fn builtins() -> Vec<Self> {
        vec![
            Self::Gae(Gae::default()),
            Self::Grpo(Grpo::default()),
            Self::DrGrpo(DrGrpo::default()),
            Self::BatchStd(BatchStd::default()),
            Self::Rloo(Rloo::default()),
            Self::ReinforcePlusPlus(ReinforcePlusPlus::default()),
            Self::ReinforcePlusPlusBaseline(ReinforcePlusPlusBaseline::default()),
            Self::Remax(ReMax::default()),
            Self::Opo(Opo::default()),
            Self::Gpg(Gpg::default()),
            Self::GrpoPassK(GrpoPassK::default()),
            Self::OptimalTokenBaseline(OptimalTokenBaseline::default()),
        ]
    }

    /// The estimator behind the enum.
    pub fn as_estimator(&self) -> &dyn AdvantageEstimator {
        match self {
            Self::Gae(e) => e,
            Self::Grpo(e) => e,
            Self::DrGrpo(e) => e,
            Self::BatchStd(e) => e,
            Self::Rloo(e) => e,
            Self::ReinforcePlusPlus(e) => e,
            Self::ReinforcePlusPlusBaseline(e) => e,
            Self::Remax(e) => e,
            Self::Opo(e) => e,
            Self::Gpg(e) => e,
            Self::GrpoPassK(e) => e,
            Self::OptimalTokenBaseline(e) => e,
        }
    }
}

/// `From<X> for Advantage` for every built-in estimator `X` (as tokenizers' `impl_enum_from!`).
macro_rules! impl_from_estimator {
    ($($ty:ident => $variant:ident),* $(,)?) => {
        $(
            impl From<$ty> for Advantage {
                fn from(e: $ty) -> Self {
                    Self::$variant(e)
                }
            }
        )*
    };
}

impl_from_estimator!(
    Gae => Gae,
    Grpo => Grpo,
    DrGrpo => DrGrpo,
    BatchStd => BatchStd,
    Rloo => Rloo,
    ReinforcePlusPlus => ReinforcePlusPlus,
    ReinforcePlusPlusBaseline => ReinforcePlusPlusBaseline,
    ReMax => Remax,
    Opo => Opo,
    Gpg => Gpg,
    GrpoPassK => GrpoPassK,
    OptimalTokenBaseline => OptimalTokenBaseline,
);

impl AdvantageEstimator for Advantage {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        self.as_estimator().estimate(input)
    }

    fn requires_values(&self) -> bool {
        self.as_estimator().requires_values()
    }

    fn batch_statistics(&self) -> bool {
        self.as_estimator().batch_statistics()
    }

    fn reduces_batch_statistics(&self) -> bool {
        self.as_estimator().reduces_batch_statistics()
    }
}
