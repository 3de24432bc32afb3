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
use rl_core::{AdvantageEstimator, Critic, LossOutput, Policy, RewardFn};
use rl_loss::{ClippedValueLoss, EntropyBonus, KlLoss, PolicyLossConfig};
use serde::{Deserialize, Serialize};

use crate::trainer::{LossTerm, TermInput};
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
    /// KL-to-reference term of the actor loss (needs a reference policy:
    /// [`Trainer::with_reference`]).
    pub kl_loss: Option<KlLoss>,
    /// Entropy bonus with its own aggregation (alternative to `trainer.entropy_coef`).
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

    fn terms<P: Policy, C: Critic>(&self, mut t: Trainer<P, C>) -> Trainer<P, C> {
        if let Some(kl) = &self.kl_loss {
            t = t.with_loss_term(KlTerm(kl.clone()));
        }
        if let Some(e) = &self.entropy_bonus {
            t = t.with_loss_term(EntropyTerm(e.clone()));
        }
        t
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

    /// Dr. GRPO as understand-r1-zero (the loss normaliser is the generation budget).
    pub fn dr_grpo() -> Self {
        let trainer = TrainerConfig::dr_grpo();
        let algorithm = AlgorithmConfig::dr_grpo(trainer.sampling.max_new_tokens);
        Self { trainer, algorithm }
    }

    /// DAPO ([`TrainerConfig::dapo`], [`AlgorithmConfig::dapo`]).
    pub fn dapo() -> Self {
        Self { trainer: TrainerConfig::dapo(), algorithm: AlgorithmConfig::dapo() }
    }

    /// Parses and validates a TOML recipe.
    pub fn from_toml(text: &str) -> Result<Self> {
        let r: Self = toml::from_str(text)?;
        r.trainer.validate()?;
        Ok(r)
    }

    /// Reads a TOML recipe file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_toml(&std::fs::read_to_string(path)?)
    }

    /// The recipe as TOML.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// A critic-free trainer with the recipe's estimator, policy loss and extra terms.
    ///
    /// # Errors
    /// [`TrainerError::Config`] when the estimator needs a critic (use [`Recipe::ppo`]).
    pub fn grpo<P: Policy>(
        &self,
        policy: P,
        reward: impl RewardFn + 'static,
    ) -> Result<GrpoTrainer<P>> {
        let a = &self.algorithm;
        let t = Trainer::grpo(
            policy,
            reward,
            a.advantage.clone(),
            a.policy_loss.clone(),
            self.trainer.clone(),
        )?;
        Ok(a.terms(t))
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
        let a = &self.algorithm;
        if !a.advantage.requires_values() {
            return Err(TrainerError::config(
                "algorithm.advantage",
                "does not use a critic: use Recipe::grpo",
            ));
        }
        let t = Trainer::ppo(
            policy,
            critic,
            reward,
            a.advantage.clone(),
            a.policy_loss.clone(),
            a.value_loss.clone(),
            self.trainer.clone(),
        )?;
        Ok(a.terms(t))
    }
}

/// [`KlLoss`] as an actor-loss term (uses the rollout's reference log-probs).
#[derive(Clone, Debug)]
pub struct KlTerm(pub KlLoss);

impl LossTerm for KlTerm {
    fn compute(&self, i: &TermInput<'_>) -> rl_core::Result<LossOutput> {
        let r = i.ref_log_probs.ok_or_else(|| {
            rl_core::Error::config(
                "algorithm.kl_loss",
                "needs reference log-probs: set Trainer::with_reference",
            )
        })?;
        self.0.compute(i.log_probs, r, i.response_mask, Some(i.group_ids), Some(i.counts))
    }

    fn name(&self) -> &str {
        "kl"
    }
}

/// [`EntropyBonus`] as an actor-loss term.
#[derive(Clone, Debug)]
pub struct EntropyTerm(pub EntropyBonus);

impl LossTerm for EntropyTerm {
    fn compute(&self, i: &TermInput<'_>) -> rl_core::Result<LossOutput> {
        let h = i
            .entropy
            .ok_or_else(|| rl_core::Error::msg("entropy bonus: the policy returned no entropy"))?;
        self.0.compute(h, i.response_mask, Some(i.group_ids), Some(i.counts))
    }

    fn name(&self) -> &str {
        "entropy_bonus"
    }

    fn needs_entropy(&self) -> bool {
        true
    }
}
