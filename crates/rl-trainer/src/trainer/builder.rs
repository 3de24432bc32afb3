//! [`TrainerBuilder`]: the stages of a trainer, named one at a time, checked together once.

use rl_core::{
    AdvantageEstimator, Critic, LossTerm, Policy, PolicyLoss, ReferenceModel, RewardFn, Sampler,
    ValueLoss, WeightSource, WeightSync, dist::ProcessGroup,
};
use rl_loss::{EntropyBonus, KlInReward};

use super::{CriticStage, NoCritic, SyncFn, Trainer, optimizer};
use crate::checkpoint::TrainerState;
use crate::config::TrainerConfig;
use crate::metrics::MetricsLog;
use crate::{Result, TrainerError};

/// Builds a [`Trainer`]: start with [`Trainer::builder`], add the estimator and the policy loss
/// (required), a critic for PPO, a reference model and extra loss terms; [`build`](Self::build)
/// validates everything once.
pub struct TrainerBuilder<P: Policy, C: Critic = NoCritic> {
    policy: P,
    reward: Box<dyn RewardFn>,
    estimator: Option<Box<dyn AdvantageEstimator>>,
    policy_loss: Option<Box<dyn PolicyLoss>>,
    critic: Option<(C, Box<dyn ValueLoss>)>,
    reference: Option<Box<dyn ReferenceModel>>,
    terms: Vec<Box<dyn LossTerm>>,
    kl_in_reward: Option<KlInReward>,
    config: TrainerConfig,
    sampler: Option<Box<dyn Sampler>>,
    sync: Option<(SyncFn<P>, usize)>,
    dist: Option<Box<dyn ProcessGroup>>,
}

impl<P: Policy, C: Critic> std::fmt::Debug for TrainerBuilder<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainerBuilder")
            .field("estimator", &self.estimator.is_some())
            .field("policy_loss", &self.policy_loss.is_some())
            .field("critic", &self.critic.is_some())
            .field("reference", &self.reference.is_some())
            .field("terms", &self.terms.len())
            .field("kl_in_reward", &self.kl_in_reward)
            .field("sampler", &self.sampler.is_some())
            .field("weight_sync", &self.sync.is_some())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<P: Policy> TrainerBuilder<P, NoCritic> {
    pub(super) fn new(policy: P, reward: Box<dyn RewardFn>) -> Self {
        Self {
            policy,
            reward,
            estimator: None,
            policy_loss: None,
            critic: None,
            reference: None,
            terms: Vec::new(),
            kl_in_reward: None,
            config: TrainerConfig::default(),
            sampler: None,
            sync: None,
            dist: None,
        }
    }
}

impl<P: Policy, C: Critic> TrainerBuilder<P, C> {
    /// The advantage estimator (required).
    pub fn estimator(mut self, estimator: impl AdvantageEstimator + 'static) -> Self {
        self.estimator = Some(Box::new(estimator));
        self
    }

    /// The policy loss (required).
    pub fn policy_loss(mut self, loss: impl PolicyLoss + 'static) -> Self {
        self.policy_loss = Some(Box::new(loss));
        self
    }

    /// A learned critic (PPO): its values feed the estimator (GAE), and it is trained with
    /// `value_loss` and its own optimizer (`config.critic`).
    pub fn critic<C2: Critic>(
        self,
        critic: C2,
        value_loss: impl ValueLoss + 'static,
    ) -> TrainerBuilder<P, C2> {
        TrainerBuilder {
            policy: self.policy,
            reward: self.reward,
            estimator: self.estimator,
            policy_loss: self.policy_loss,
            critic: Some((critic, Box::new(value_loss))),
            reference: self.reference,
            terms: self.terms,
            kl_in_reward: self.kl_in_reward,
            config: self.config,
            sampler: self.sampler,
            sync: self.sync,
            dist: self.dist,
        }
    }

    /// A frozen reference model (for KL loss terms and KL in the reward).
    pub fn reference(mut self, reference: impl ReferenceModel + 'static) -> Self {
        self.reference = Some(Box::new(reference));
        self
    }

    /// The same as [`TrainerBuilder::reference`], for a reference that may be absent.
    pub fn maybe_reference(mut self, reference: Option<Box<dyn ReferenceModel>>) -> Self {
        self.reference = reference;
        self
    }

    /// An extra term of the actor loss (KL, entropy bonus, your own).
    pub fn loss_term(mut self, term: impl LossTerm + 'static) -> Self {
        self.terms.push(Box::new(term));
        self
    }

    /// KL in the reward (needs a reference model).
    pub fn kl_in_reward(mut self, kl: KlInReward) -> Self {
        self.kl_in_reward = Some(kl);
        self
    }

    /// Rollouts from `sampler` instead of the policy's own [`Policy::generate`]: an inference
    /// engine (`rl_rollout::RemoteSampler` for vLLM, SGLang, llama.cpp) or any [`Sampler`]. The
    /// trainer still recomputes the old log-probs with its own forward; with an external sampler
    /// the mismatch is corrected by [`TrainerConfig::rollout_correction`] (truncated IS by
    /// default) and reported as `rollout/log_prob_abs_diff`.
    pub fn sampler(mut self, sampler: impl Sampler + 'static) -> Self {
        self.sampler = Some(Box::new(sampler));
        self
    }

    /// Trains data-parallel over `group`'s ranks (`rl_dist::init()` reads the torchrun / Slurm
    /// environment): every rank draws the same global prompt batch and keeps a contiguous share
    /// of whole groups; batch counts are summed over the ranks before the loss normalisation
    /// and the gradients before clipping and the optimizer step, so every rank takes the
    /// single-process step on the whole batch (up to summation order); a non-finite loss or
    /// norm on one rank skips the step on all; metrics are merged over the ranks; only rank 0
    /// writes the metrics log (save checkpoints from [`Trainer::rank`] 0).
    ///
    /// Refused at build time under more than one rank: estimators with batch-wide statistics
    /// ([`AdvantageEstimator::batch_statistics`], e.g. whitened GAE), dynamic sampling, KL in
    /// the reward (its adaptive controller reads the batch KL), and a weight sync.
    /// Local generation uses a seed mixed with the rank's first group, so the responses are
    /// statistically but not bit-for-bit those of one process.
    pub fn process_group(mut self, group: Box<dyn ProcessGroup>) -> Self {
        self.dist = Some(group);
        self
    }

    /// The loop settings (default [`TrainerConfig::default`]).
    pub fn config(mut self, config: TrainerConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the configuration and the stages together and builds the trainer.
    ///
    /// With an external [`Sampler`], `recompute_old_log_probs` must be on (the engine's
    /// log-probs come from other numerics; the PPO ratio needs the trainer's own).
    ///
    /// # Errors
    /// [`TrainerError::Config`] naming the field: an invalid config, a missing estimator or
    /// policy loss, an estimator that needs critic values without a critic (or a critic whose
    /// values no estimator uses), a KL term or KL in the reward without a reference model, a
    /// reference that shares weights with the policy.
    pub fn build(self) -> Result<Trainer<P, C>> {
        let Self {
            policy,
            reward,
            estimator,
            policy_loss,
            critic,
            reference,
            mut terms,
            kl_in_reward,
            config,
            sampler,
            sync,
            dist,
        } = self;
        config.validate()?;
        if let Some(pg) = dist.as_ref().filter(|pg| pg.world_size() > 1) {
            let refuse = |field: &str, why: &str| {
                Err(TrainerError::config(
                    field,
                    format!(
                        "{why}: not supported under data parallelism ({} ranks)",
                        pg.world_size()
                    ),
                ))
            };
            if estimator
                .as_ref()
                .is_some_and(|e| e.batch_statistics() && !e.reduces_batch_statistics())
            {
                return refuse(
                    "algorithm.advantage",
                    "the estimator normalises with batch-wide statistics that are not all-reduced \
                     (a batch std or batch-wide counts)",
                );
            }
            if config.dynamic_sampling.is_some() {
                return refuse("trainer.dynamic_sampling", "groups are kept per rank");
            }
            if kl_in_reward.is_some() {
                return refuse("algorithm.kl_in_reward", "its controller reads the batch KL");
            }
        }
        if sync.as_ref().is_some_and(|(_, every)| *every == 0) {
            return Err(TrainerError::config("weight_sync.sync_every", "must be >= 1"));
        }
        let sync = sync.map(|(f, every)| (f, every as u64));
        if sampler.as_ref().is_some_and(|s| s.is_external()) && !config.recompute_old_log_probs {
            return Err(TrainerError::config(
                "trainer.recompute_old_log_probs",
                "must be true with an external sampler: the PPO ratio needs the trainer's own \
                 old log-probs (the engine's are corrected by trainer.rollout_correction)",
            ));
        }
        let estimator =
            estimator.ok_or_else(|| TrainerError::config("algorithm.advantage", "not set"))?;
        let policy_loss =
            policy_loss.ok_or_else(|| TrainerError::config("algorithm.policy_loss", "not set"))?;
        if estimator.requires_values() && critic.is_none() {
            return Err(TrainerError::config(
                "algorithm.advantage",
                "needs critic values: add a critic (TrainerBuilder::critic)",
            ));
        }
        if let Some(r) = &reference {
            check_reference(r.as_ref(), &policy)?;
        }
        if config.entropy_coef != 0.0 {
            // `trainer.entropy_coef` is shorthand for a token-mean entropy bonus term.
            terms.push(Box::new(EntropyBonus {
                coef: config.entropy_coef,
                aggregation: rl_loss::Aggregation::TokenMean,
            }));
        }
        for term in &terms {
            check_term(term.as_ref(), reference.is_some())?;
        }
        if kl_in_reward.is_some() && reference.is_none() {
            return Err(TrainerError::config(
                "algorithm.kl_in_reward",
                "needs a reference model (TrainerBuilder::reference)",
            ));
        }
        if let Some(k) = &kl_in_reward {
            k.controller.validate()?;
        }
        let critic = critic
            .map(|(critic, loss)| -> Result<CriticStage<C>> {
                let optim = optimizer(critic.trainable_vars(), &config.critic, "trainer.critic")?;
                Ok(CriticStage { critic, loss, optim })
            })
            .transpose()?;
        let actor_optim = optimizer(policy.trainable_vars(), &config.actor, "trainer.actor")?;
        let rank0 = dist.as_ref().is_none_or(|pg| pg.rank() == 0);
        let log =
            config.metrics_path.as_ref().filter(|_| rank0).map(MetricsLog::append).transpose()?;
        Ok(Trainer {
            policy,
            critic,
            reference,
            reward,
            estimator,
            policy_loss,
            terms,
            kl_in_reward,
            actor_optim,
            config,
            state: TrainerState::default(),
            log,
            on_policy: false,
            sampler,
            sync,
            engine_current: false,
            unpublished: false,
            dist,
        })
    }
}

impl<P: Policy + WeightSource + 'static, C: Critic> TrainerBuilder<P, C> {
    /// Publishes the policy's weights through `sync` every `every` steps (verl and OpenRLHF
    /// publish after every step: 1; `rl_rollout::WeightSyncConfig::sync_every` in a recipe),
    /// after the step's update, as version = the step number (so the engine behind the
    /// [`Sampler`] samples the next rollout from the new weights). Metrics of a publishing step:
    /// `time/sync_s`, `time/sync_export_s`, `sync/bytes`, `sync/version` and, when the sync
    /// probes the engine, `sync/probe_log_prob_abs_diff`. A due publish is skipped when no step
    /// since the last one changed the weights (empty dynamic-sampling steps). A failed publish
    /// (including an engine that keeps stale weights) fails the step.
    pub fn weight_sync(mut self, mut sync: impl WeightSync + 'static, every: usize) -> Self {
        let publish: SyncFn<P> = Box::new(move |policy: Option<&P>, version| match policy {
            Some(p) => sync.publish(p, version).map(Some),
            None => sync.observe(version).map(|()| None),
        });
        self.sync = Some((publish, every));
        self
    }
}

/// A reference must not share a variable with the policy being trained.
pub(super) fn check_reference<R: ReferenceModel + ?Sized, P: Policy>(
    reference: &R,
    policy: &P,
) -> Result<()> {
    let trained: std::collections::HashSet<_> =
        policy.trainable_vars().iter().map(|v| v.id()).collect();
    if reference.weights().iter().any(|v| trained.contains(&v.id())) {
        return Err(TrainerError::config(
            "reference",
            "shares weights with the trained policy (its KL would stay 0): pass a frozen copy, \
             e.g. LmPolicy::reference()",
        ));
    }
    Ok(())
}

/// A term that reads reference log-probs needs a reference model.
pub(super) fn check_term<T: LossTerm + ?Sized>(term: &T, has_reference: bool) -> Result<()> {
    if term.needs_reference() && !has_reference {
        return Err(TrainerError::config(
            format!("algorithm.{}_loss", term.name()),
            "needs reference log-probs: give the trainer a reference model \
             (TrainerBuilder::reference, or LmPolicy::reference() for a frozen copy)",
        ));
    }
    Ok(())
}
