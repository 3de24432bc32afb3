//! Picking the algorithm by name: the serde enums of `rl-advantage` ([`Advantage`]) and
//! `rl-loss` ([`PolicyLossConfig`], [`ClippedValueLoss`], [`KlLoss`], [`EntropyBonus`]) next to
//! the [`TrainerConfig`], in one TOML file:
//!
//! ```toml
//! [trainer]
//! ppo_epochs = 1
//! [trainer.actor]
//! lr = 1e-6
//! [algorithm.advantage]
//! type = "dr_grpo"
//! [algorithm.policy_loss]
//! type = "ppo"
//! clip_high = 0.28
//! ```

use std::path::Path;

use rl_advantage::Advantage;
use rl_core::{AdvantageEstimator, Critic, Policy, ReferenceModel, RewardFn};
use rl_loss::{ClippedValueLoss, EntropyBonus, KlInReward, KlLoss, PolicyLossConfig};
use serde::{Deserialize, Serialize};

use crate::trainer::TrainerBuilder;
use crate::{GrpoTrainer, PpoTrainer, Result, Trainer, TrainerConfig, TrainerError};

/// The stages of an algorithm, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlgorithmConfig {
    /// Advantage estimator (`type = "gae" | "grpo" | "dr_grpo" | "rloo" | ...`).
    pub advantage: Advantage,
    /// Policy loss (`type = "ppo" | "gspo" | "cispo" | ...`).
    pub policy_loss: PolicyLossConfig,
    /// Critic loss (PPO with a critic only).
    pub value_loss: ClippedValueLoss,
    /// KL-to-reference term of the actor loss (verl `use_kl_loss`, TRL `beta`): the trainer
    /// needs a reference model (`rl-zero train` builds a frozen copy of the initial policy).
    pub kl_loss: Option<KlLoss>,
    /// KL in the reward (verl `use_kl_in_reward`): also needs a reference model.
    pub kl_in_reward: Option<KlInReward>,
    /// Entropy bonus with its own aggregation (`trainer.entropy_coef` is the token-mean
    /// shorthand for the same term).
    pub entropy_bonus: Option<EntropyBonus>,
}

impl AlgorithmConfig {
    /// Open-Reasoner-Zero PPO: GAE γ = λ = 1 with global whitening, PPO clip 0.2 token-mean,
    /// value clip 0.2, no KL.
    pub fn open_reasoner_zero() -> Self {
        Self {
            advantage: Advantage::open_reasoner_zero(),
            policy_loss: PolicyLossConfig::open_reasoner_zero(),
            value_loss: ClippedValueLoss::open_reasoner_zero(),
            ..Self::default()
        }
    }

    /// Dr. GRPO (oat / understand-r1-zero): mean-centred advantages, PPO clip with per-sequence
    /// token sums divided by the constant `max_len` (the generation budget).
    pub fn dr_grpo(max_len: usize) -> Self {
        Self {
            advantage: Advantage::dr_grpo(),
            policy_loss: PolicyLossConfig::dr_grpo(max_len),
            ..Self::default()
        }
    }

    /// GRPO as verl: group-normalised advantages, PPO clip, token-mean.
    pub fn grpo() -> Self {
        Self {
            advantage: Advantage::grpo(),
            policy_loss: PolicyLossConfig::grpo(),
            ..Self::default()
        }
    }

    /// DAPO: group-normalised advantages, clip-higher (0.2, 0.28), dual clip 10, token-mean.
    pub fn dapo() -> Self {
        Self {
            advantage: Advantage::dapo(),
            policy_loss: PolicyLossConfig::dapo(),
            ..Self::default()
        }
    }

    /// `true` when the recipe needs a reference model (a KL loss or KL in the reward).
    pub fn needs_reference(&self) -> bool {
        self.kl_loss.is_some() || self.kl_in_reward.is_some()
    }

    /// Fills the values derived from the trainer settings: a Dr. GRPO normaliser left unset
    /// becomes the generation budget `max_new_tokens` ([`rl_loss::Aggregation::resolve_budget`]).
    pub fn resolve(&mut self, trainer: &TrainerConfig) {
        let budget = trainer.sampling.max_new_tokens;
        if let Some(a) = self.policy_loss.aggregation_mut() {
            a.resolve_budget(budget);
        }
        self.value_loss.aggregation.resolve_budget(budget);
        if let Some(k) = &mut self.kl_loss {
            k.aggregation.resolve_budget(budget);
        }
        if let Some(e) = &mut self.entropy_bonus {
            e.aggregation.resolve_budget(budget);
        }
    }

    /// Checks every stage's parameters, and the stages against the trainer settings; errors
    /// name the full field path (`algorithm.policy_loss.aggregation.max_len`, ...).
    pub fn validate(&self, trainer: &TrainerConfig) -> Result<()> {
        let at = |prefix: &str, r: rl_core::Result<()>| r.map_err(|e| prefixed(prefix, e.into()));
        if let Some(a) = self.policy_loss.clone().aggregation_mut() {
            at("algorithm.policy_loss.", a.validate())?;
        }
        at("algorithm.value_loss.", self.value_loss.aggregation.validate())?;
        if let Some(k) = &self.kl_loss {
            at("algorithm.kl_loss.", k.aggregation.validate())?;
            if !(k.coef >= 0.0 && k.coef.is_finite()) {
                return Err(TrainerError::config(
                    "algorithm.kl_loss.coef",
                    "must be finite and >= 0",
                ));
            }
        }
        if let Some(k) = &self.kl_in_reward {
            at("algorithm.kl_in_reward.", k.controller.validate())?;
        }
        if let Some(e) = &self.entropy_bonus {
            if trainer.entropy_coef != 0.0 {
                return Err(TrainerError::config(
                    "algorithm.entropy_bonus",
                    "set either algorithm.entropy_bonus or trainer.entropy_coef (its token-mean \
                     shorthand), not both: the bonus would be added twice",
                ));
            }
            at("algorithm.entropy_bonus.", e.aggregation.validate())?;
            if !(e.coef >= 0.0 && e.coef.is_finite()) {
                return Err(TrainerError::config(
                    "algorithm.entropy_bonus.coef",
                    "must be finite and >= 0",
                ));
            }
        }
        if group_relative(&self.advantage) && trainer.sampling.n < 2 {
            return Err(TrainerError::config(
                "trainer.sampling.n",
                format!(
                    "the group-relative estimator `{}` needs >= 2 responses per prompt (with 1 its \
                     baseline is the response itself: no learning signal, or REINFORCE without a \
                     baseline)",
                    advantage_name(&self.advantage)
                ),
            ));
        }
        Ok(())
    }
}

/// Estimators whose baseline is computed from the other responses to the same prompt.
fn group_relative(a: &Advantage) -> bool {
    matches!(
        a,
        Advantage::Grpo(_)
            | Advantage::DrGrpo(_)
            | Advantage::Rloo(_)
            | Advantage::ReinforcePlusPlusBaseline(_)
            | Advantage::Opo(_)
            | Advantage::Gpg(_)
            | Advantage::GrpoPassK(_)
    )
}

/// The recipe name of an estimator (its serde tag).
fn advantage_name(a: &Advantage) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// `e` with `prefix` prepended to its config field path.
pub(crate) fn prefixed(prefix: &str, e: TrainerError) -> TrainerError {
    match e {
        TrainerError::Config { field, reason } => {
            TrainerError::Config { field: format!("{prefix}{field}"), reason }
        }
        TrainerError::Core(rl_core::Error::Config { field, reason }) => {
            TrainerError::Config { field: format!("{prefix}{field}"), reason }
        }
        e => e,
    }
}

/// A whole recipe: trainer settings and algorithm stages.
///
/// ```
/// use rl_trainer::recipe::Recipe;
/// let r = Recipe::from_toml("[algorithm.advantage]\ntype = \"rloo\"")?;
/// assert_eq!(r.algorithm.advantage, rl_advantage::Advantage::rloo());
/// let err = Recipe::from_toml("[algorithm.advantage]\ntype = \"rlooo\"").unwrap_err();
/// assert!(err.to_string().contains("rlooo"));
/// # Ok::<(), rl_trainer::TrainerError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// Loop settings.
    pub trainer: TrainerConfig,
    /// Stages.
    pub algorithm: AlgorithmConfig,
}

impl Recipe {
    /// Open-Reasoner-Zero PPO ([`TrainerConfig::open_reasoner_zero`],
    /// [`AlgorithmConfig::open_reasoner_zero`]).
    pub fn open_reasoner_zero() -> Self {
        Self {
            trainer: TrainerConfig::open_reasoner_zero(),
            algorithm: AlgorithmConfig::open_reasoner_zero(),
        }
    }

    /// Dr. GRPO as understand-r1-zero. The loss normaliser is left unset: it is the generation
    /// budget `trainer.sampling.max_new_tokens`, filled in when the trainer is built (so changing
    /// the budget changes the normaliser with it, as TRL derives it).
    pub fn dr_grpo() -> Self {
        let trainer = TrainerConfig::dr_grpo();
        let mut algorithm = AlgorithmConfig::dr_grpo(trainer.sampling.max_new_tokens);
        if let Some(a) = algorithm.policy_loss.aggregation_mut() {
            *a = rl_loss::Aggregation::SeqMeanTokenSumNorm { max_len: None };
        }
        Self { trainer, algorithm }
    }

    /// DAPO ([`TrainerConfig::dapo`], [`AlgorithmConfig::dapo`]).
    pub fn dapo() -> Self {
        Self { trainer: TrainerConfig::dapo(), algorithm: AlgorithmConfig::dapo() }
    }

    /// Parses and validates a TOML recipe ([`Recipe::validate`]). Derived values left unset
    /// stay unset (they follow later changes of the trainer settings) and are filled when the
    /// trainer is built.
    pub fn from_toml(text: &str) -> Result<Self> {
        let r: Self = toml::from_str(text)?;
        r.validate()?;
        Ok(r)
    }

    /// Fills the derived values ([`AlgorithmConfig::resolve`]).
    pub fn resolve(&mut self) {
        self.algorithm.resolve(&self.trainer);
    }

    /// Checks the trainer settings and the stages (with derived values filled in); errors name
    /// the full field path (`trainer.sampling.max_new_tokens`,
    /// `algorithm.policy_loss.aggregation.max_len`).
    pub fn validate(&self) -> Result<()> {
        self.trainer.validate().map_err(|e| prefixed("trainer.", e))?;
        let mut algorithm = self.algorithm.clone();
        algorithm.resolve(&self.trainer);
        algorithm.validate(&self.trainer)
    }

    /// Reads a TOML recipe file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_toml(&std::fs::read_to_string(path)?)
    }

    /// The recipe as TOML.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// A builder with the recipe's estimator, policy loss, extra terms (KL loss, entropy bonus),
    /// KL in the reward and trainer settings, derived values filled in. Add a critic (PPO) and a
    /// reference model (when [`AlgorithmConfig::needs_reference`]) and build.
    ///
    /// # Errors
    /// [`TrainerError::Config`] with the full field path for an invalid recipe.
    pub fn builder<P: Policy>(
        &self,
        policy: P,
        reward: impl RewardFn + 'static,
    ) -> Result<TrainerBuilder<P>> {
        let mut r = self.clone();
        r.resolve();
        r.validate()?;
        let a = r.algorithm;
        let mut b = Trainer::builder(policy, reward)
            .estimator(a.advantage)
            .policy_loss(a.policy_loss)
            .config(r.trainer);
        if let Some(kl) = a.kl_loss {
            b = b.loss_term(kl);
        }
        if let Some(e) = a.entropy_bonus {
            b = b.loss_term(e);
        }
        if let Some(k) = a.kl_in_reward {
            b = b.kl_in_reward(k);
        }
        Ok(b)
    }

    /// A critic-free trainer with the recipe's stages; `reference` is required when the recipe
    /// has a KL term ([`AlgorithmConfig::needs_reference`]).
    ///
    /// # Errors
    /// [`TrainerError::Config`] when the estimator needs a critic (use [`Recipe::ppo`]) or a KL
    /// term has no reference.
    pub fn grpo<P: Policy>(
        &self,
        policy: P,
        reward: impl RewardFn + 'static,
    ) -> Result<GrpoTrainer<P>> {
        self.builder(policy, reward)?.build()
    }

    /// [`Recipe::grpo`] with a reference model (needed by KL terms; ignored otherwise).
    ///
    /// # Errors
    /// As [`Recipe::grpo`].
    pub fn grpo_with_reference<P: Policy>(
        &self,
        policy: P,
        reward: impl RewardFn + 'static,
        reference: Option<Box<dyn ReferenceModel>>,
    ) -> Result<GrpoTrainer<P>> {
        self.builder(policy, reward)?.maybe_reference(reference).build()
    }

    /// A PPO trainer with `critic`, the recipe's estimator, policy and value losses.
    ///
    /// # Errors
    /// [`TrainerError::Config`] when the estimator does not use critic values (a critic would
    /// be trained for nothing; use [`Recipe::grpo`]).
    pub fn ppo<P: Policy, C: Critic>(
        &self,
        policy: P,
        critic: C,
        reward: impl RewardFn + 'static,
    ) -> Result<PpoTrainer<P, C>> {
        self.ppo_with_reference(policy, critic, reward, None)
    }

    /// [`Recipe::ppo`] with a reference model (needed by KL terms; ignored otherwise).
    ///
    /// # Errors
    /// As [`Recipe::ppo`].
    pub fn ppo_with_reference<P: Policy, C: Critic>(
        &self,
        policy: P,
        critic: C,
        reward: impl RewardFn + 'static,
        reference: Option<Box<dyn ReferenceModel>>,
    ) -> Result<PpoTrainer<P, C>> {
        if !self.algorithm.advantage.requires_values() {
            return Err(TrainerError::config(
                "algorithm.advantage",
                "does not use a critic: use Recipe::grpo",
            ));
        }
        let value_loss = {
            let mut a = self.algorithm.clone();
            a.resolve(&self.trainer);
            a.value_loss
        };
        self.builder(policy, reward)?.critic(critic, value_loss).maybe_reference(reference).build()
    }
}

/// [`KlLoss`] as an actor-loss term: `KlLoss` is a [`rl_core::LossTerm`] itself now, pass it
/// directly.
#[deprecated(note = "KlLoss implements LossTerm: pass it to Trainer::with_loss_term directly")]
pub type KlTerm = KlLoss;

/// [`EntropyBonus`] as an actor-loss term: `EntropyBonus` is a [`rl_core::LossTerm`] itself now.
#[deprecated(
    note = "EntropyBonus implements LossTerm: pass it to Trainer::with_loss_term directly"
)]
pub type EntropyTerm = EntropyBonus;
