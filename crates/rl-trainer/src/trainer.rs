//! The training loop: the one place that knows the order of the stages.
//!
//! One [`Trainer::step`]:
//! 1. **generate** `sampling.n` responses per prompt (`Policy::generate`), seeded by
//!    `(seed, step, round)`;
//! 2. **score** them (`RewardFn::score_batch`); with DAPO dynamic sampling, drop groups whose
//!    rewards are all equal and generate again until the batch holds as many groups as prompts
//!    were asked for;
//! 3. **prepare**: old log-probs recomputed by the training forward (unless
//!    `recompute_old_log_probs = false`, or the batch gets exactly one actor update, whose own
//!    forward then supplies them), reference log-probs (if a reference policy is set),
//!    critic values (PPO), advantages (`AdvantageEstimator::estimate`);
//! 4. **update**, `ppo_epochs` times: shuffle the groups (seeded by `(seed, step, epoch)`), split
//!    them into mini-batches of `mini_batch_groups` groups; for each mini-batch compute its
//!    [`GlobalCounts`], run micro-batches of `micro_batch_size` responses (log-probs → policy loss
//!    with the mini-batch counts, − entropy bonus, + extra [`LossTerm`]s → backward), sum their
//!    gradients, clip, and take one optimizer step. The critic gets the same treatment with its
//!    own optimizer. Because every micro-batch loss is normalised by the mini-batch's counts,
//!    the summed gradient equals the gradient of the whole mini-batch's loss (no `1/accum`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rl_core::{
    AdvantageEstimator, AdvantageInput, Critic, GlobalCounts, Groups, LossOutput, Metrics, Policy,
    PolicyLoss, PolicyLossInput, Prompt, RewardFn, Rewards, RolloutBatch, SamplingConfig,
    ValueLoss, ValueLossInput,
};
use rl_policy::ops::GradSink;

use crate::checkpoint::{self, Checkpointable, TrainerState};
use crate::config::{Shortfall, TrainerConfig};
use crate::data::{FixedPrompts, PromptSource};
use crate::metrics::{MetricsLog, rollout_metrics};
use crate::optim::{AdamW, accumulate, clip_grad_norm};
use crate::{OptimizerConfig, Result, TrainerError};

/// Mixes a seed with a path of integers into a new seed (SplitMix64 finaliser per part), so each
/// random draw of the run has its own independent, reproducible stream.
pub(crate) fn mix(seed: u64, parts: &[u64]) -> u64 {
    let fin = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    parts.iter().fold(fin(seed.wrapping_add(0x9E37_79B9_7F4A_7C15)), |h, p| {
        fin(h ^ p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xD6E8_FEB8_6659_FD93))
    })
}

const SEED_GENERATE: u64 = 1;
const SEED_SHUFFLE: u64 = 2;

/// What an extra loss term (KL to a reference, auxiliary losses) gets for one micro-batch.
/// Tensors are `(B, T)` f32.
#[derive(Clone, Copy, Debug)]
pub struct TermInput<'a> {
    /// Current log-probs (carry the autograd graph).
    pub log_probs: &'a Tensor,
    /// Entropies, when the trainer computed them (`entropy_coef != 0` or a term needs them).
    pub entropy: Option<&'a Tensor>,
    /// Rollout log-probs.
    pub old_log_probs: &'a Tensor,
    /// Reference-policy log-probs, when a reference policy is set.
    pub ref_log_probs: Option<&'a Tensor>,
    /// Response mask.
    pub response_mask: &'a Tensor,
    /// Group id per response (length `B`).
    pub group_ids: &'a [usize],
    /// Counts of the whole mini-batch: normalise by them so micro-batch terms add up.
    pub counts: &'a GlobalCounts,
}

/// An extra term added to the actor loss of each micro-batch (e.g. `β·KL(π‖π_ref)` with the
/// estimators of `rl-loss`). It applies its own coefficient.
pub trait LossTerm {
    /// The term (scalar f32, added to the loss) and its metrics.
    fn compute(&self, input: &TermInput<'_>) -> rl_core::Result<LossOutput>;

    /// Metric prefix (`actor/<name>/...`).
    fn name(&self) -> &str {
        "term"
    }

    /// `true` when the term reads [`TermInput::entropy`] (the trainer then asks the policy for
    /// entropies).
    fn needs_entropy(&self) -> bool {
        false
    }
}

impl<F> LossTerm for F
where
    F: Fn(&TermInput<'_>) -> rl_core::Result<LossOutput>,
{
    fn compute(&self, input: &TermInput<'_>) -> rl_core::Result<LossOutput> {
        self(input)
    }
}

/// The critic of a trainer without one (GRPO family): never called.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCritic;

impl Critic for NoCritic {
    fn values(&self, _batch: &RolloutBatch) -> rl_core::Result<Tensor> {
        Err(rl_core::Error::Unsupported("this trainer has no critic".into()))
    }

    fn trainable_vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl Checkpointable for NoCritic {
    fn save_checkpoint(&self, _dir: &Path) -> rl_core::Result<()> {
        Ok(())
    }

    fn load_checkpoint(&mut self, _dir: &Path) -> rl_core::Result<()> {
        Ok(())
    }
}

struct CriticStage<C> {
    critic: C,
    loss: Box<dyn ValueLoss>,
    optim: AdamW,
}

/// The metrics and number of one training step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// The step number (1 for the first step).
    pub step: u64,
    /// Every metric of the step (names in `docs/trainer.md`).
    pub metrics: Metrics,
}

/// The result of [`Trainer::evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Fraction of responses whose reward is above `accuracy_threshold`.
    pub accuracy: f64,
    /// Mean reward.
    pub mean_reward: f64,
    /// Number of responses scored.
    pub responses: usize,
}

/// A GRPO-family trainer (no critic).
pub type GrpoTrainer<P> = Trainer<P, NoCritic>;
/// A PPO trainer with a learned critic.
pub type PpoTrainer<P, C> = Trainer<P, C>;

/// Generic RL trainer over the rl-core stage traits. Build it with [`Trainer::grpo`] or
/// [`Trainer::ppo`]; call [`Trainer::step`] per batch of prompts.
pub struct Trainer<P: Policy, C: Critic = NoCritic> {
    policy: P,
    critic: Option<CriticStage<C>>,
    reference: Option<Box<dyn Policy>>,
    reward: Box<dyn RewardFn>,
    estimator: Box<dyn AdvantageEstimator>,
    policy_loss: Box<dyn PolicyLoss>,
    terms: Vec<Box<dyn LossTerm>>,
    actor_optim: AdamW,
    config: TrainerConfig,
    state: TrainerState,
    log: Option<MetricsLog>,
    /// This step's batch gets exactly one actor update, whose own forward pass supplies the old
    /// log-probs (see [`TrainerConfig::recompute_old_log_probs`]).
    on_policy: bool,
}

impl<P: Policy, C: Critic> std::fmt::Debug for Trainer<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("critic", &self.critic.is_some())
            .field("reference", &self.reference.is_some())
            .field("reward", &self.reward.name())
            .field("terms", &self.terms.iter().map(|t| t.name().to_string()).collect::<Vec<_>>())
            .field("state", &self.state)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<P: Policy> Trainer<P, NoCritic> {
    /// A trainer without a critic (GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++ ...).
    ///
    /// # Errors
    /// [`TrainerError::Config`] for an invalid config or an estimator that needs critic values.
    pub fn grpo(
        policy: P,
        reward: impl RewardFn + 'static,
        estimator: impl AdvantageEstimator + 'static,
        policy_loss: impl PolicyLoss + 'static,
        config: TrainerConfig,
    ) -> Result<Self> {
        Self::build(
            policy,
            None,
            Box::new(reward),
            Box::new(estimator),
            Box::new(policy_loss),
            config,
        )
    }
}

impl<P: Policy, C: Critic> Trainer<P, C> {
    /// A PPO trainer: the critic's values feed the estimator (GAE) and the critic is trained
    /// with `value_loss` and its own optimizer (`config.critic`).
    #[allow(clippy::too_many_arguments)]
    pub fn ppo(
        policy: P,
        critic: C,
        reward: impl RewardFn + 'static,
        estimator: impl AdvantageEstimator + 'static,
        policy_loss: impl PolicyLoss + 'static,
        value_loss: impl ValueLoss + 'static,
        config: TrainerConfig,
    ) -> Result<Self> {
        let optim = optimizer(critic.trainable_vars(), &config.critic, "critic")?;
        let stage = CriticStage { critic, loss: Box::new(value_loss), optim };
        Self::build(
            policy,
            Some(stage),
            Box::new(reward),
            Box::new(estimator),
            Box::new(policy_loss),
            config,
        )
    }

    fn build(
        policy: P,
        critic: Option<CriticStage<C>>,
        reward: Box<dyn RewardFn>,
        estimator: Box<dyn AdvantageEstimator>,
        policy_loss: Box<dyn PolicyLoss>,
        config: TrainerConfig,
    ) -> Result<Self> {
        config.validate()?;
        if estimator.requires_values() && critic.is_none() {
            return Err(TrainerError::config("estimator", "needs critic values: use Trainer::ppo"));
        }
        let actor_optim = optimizer(policy.trainable_vars(), &config.actor, "actor")?;
        let log = config.metrics_path.as_ref().map(MetricsLog::append).transpose()?;
        Ok(Self {
            policy,
            critic,
            reference: None,
            reward,
            estimator,
            policy_loss,
            terms: Vec::new(),
            actor_optim,
            config,
            state: TrainerState::default(),
            log,
            on_policy: false,
        })
    }

    /// Sets a frozen reference policy: its log-probs fill `RolloutBatch::ref_log_probs` after
    /// generation (for KL [`LossTerm`]s).
    pub fn with_reference(mut self, reference: impl Policy + 'static) -> Self {
        self.reference = Some(Box::new(reference));
        self
    }

    /// Adds a term to the actor loss of every micro-batch.
    pub fn with_loss_term(mut self, term: impl LossTerm + 'static) -> Self {
        self.terms.push(Box::new(term));
        self
    }

    /// The policy being trained.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Mutable access to the policy (e.g. to save it in a custom format).
    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    /// The critic, for PPO trainers.
    pub fn critic(&self) -> Option<&C> {
        self.critic.as_ref().map(|c| &c.critic)
    }

    /// The configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// Progress so far (step, optimizer updates, skipped updates, data position).
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// One training step on `prompts` (one group of `sampling.n` responses each). With dynamic
    /// sampling, further rounds re-sample the same prompts with new seeds.
    pub fn step(&mut self, prompts: &[Prompt]) -> Result<StepReport> {
        self.step_from(&mut FixedPrompts(prompts), prompts.len())
    }

    /// One training step on `groups` prompts drawn from `source` (more are drawn when dynamic
    /// sampling drops groups). The source's position is recorded for checkpoints.
    pub fn step_from(
        &mut self,
        source: &mut dyn PromptSource,
        groups: usize,
    ) -> Result<StepReport> {
        if groups == 0 {
            return Err(rl_core::Error::Empty { what: "prompts".into() }.into());
        }
        let started = Instant::now();
        let mut metrics = Metrics::new();
        let (mut batch, scores) = self.rollout(source, groups, &mut metrics)?;

        let t = Instant::now();
        let micro = self.config.micro_batch_size;
        // One actor update per batch: the policy a recompute would run is the one the update's
        // own forward runs, so its detached log-probs are the old ones (ratio exactly 1) and the
        // extra forward pass is skipped, as TRL does when generation and optimizer steps align.
        let groups = Groups::new(&batch.group_ids)?.len();
        self.on_policy = self.config.recompute_old_log_probs
            && self.config.ppo_epochs == 1
            && self.config.mini_batch_groups.is_none_or(|g| g >= groups);
        if self.config.recompute_old_log_probs && !self.on_policy {
            let policy = &self.policy;
            let lp =
                by_micro_batch(&batch, micro, |mb| Ok(policy.log_probs(mb, false)?.log_probs))?;
            let diff = rl_core::masked::masked_mean(
                &lp.sub(&batch.old_log_probs)?.abs()?,
                &batch.response_mask,
                None,
            )?;
            metrics.insert("rollout/log_prob_abs_diff", scalar(&diff)?);
            batch.old_log_probs = lp;
        }
        if let Some(reference) = &self.reference {
            let lp =
                by_micro_batch(&batch, micro, |mb| Ok(reference.log_probs(mb, false)?.log_probs))?;
            batch.ref_log_probs = Some(lp);
        }
        if let Some(c) = &self.critic {
            batch.values = Some(by_micro_batch(&batch, micro, |mb| Ok(c.critic.values(mb)?))?);
        }
        let rewards = Rewards::from_scores(&scores, batch.response_mask.device())?;
        let mut input = AdvantageInput::new(&rewards, &batch.response_mask, &batch.group_ids);
        if let Some(v) = &batch.values {
            input = input.with_values(v);
        }
        let adv = self.estimator.estimate(&input)?;
        metrics.insert("time/prepare_s", t.elapsed().as_secs_f64());

        self.update(&batch, &adv.advantages, &adv.returns, &mut metrics)?;
        if let (true, Some(diff)) = (self.on_policy, metrics.get("actor/log_prob_abs_diff")) {
            metrics.insert("rollout/log_prob_abs_diff", diff);
        }

        self.state.step += 1;
        self.state.data = source.position();
        metrics.insert("time/step_s", started.elapsed().as_secs_f64());
        if let Some(log) = &mut self.log {
            log.write(self.state.step, &metrics)?;
        }
        tracing::info!(
            step = self.state.step,
            reward = metrics.get("reward/mean"),
            accuracy = metrics.get("reward/accuracy"),
            grad_norm = metrics.get("actor/grad_norm"),
            "train step"
        );
        Ok(StepReport { step: self.state.step, metrics })
    }

    /// Runs `steps` steps of `groups` prompts from `source` with a progress bar; returns the
    /// metrics of each step.
    pub fn run(
        &mut self,
        source: &mut dyn PromptSource,
        groups: usize,
        steps: usize,
    ) -> Result<Vec<Metrics>> {
        let bar = indicatif::ProgressBar::new(steps as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}",
        ) {
            bar.set_style(style);
        }
        let mut all = Vec::with_capacity(steps);
        for _ in 0..steps {
            let report = self.step_from(source, groups)?;
            let m = &report.metrics;
            bar.set_message(format!(
                "reward {:.3} acc {:.3} len {:.0}",
                m.get("reward/mean").unwrap_or(f64::NAN),
                m.get("reward/accuracy").unwrap_or(f64::NAN),
                m.get("response/length_mean").unwrap_or(f64::NAN),
            ));
            bar.inc(1);
            all.push(report.metrics);
        }
        bar.finish();
        Ok(all)
    }

    /// Samples one response per prompt (greedy when `greedy`, else with the training sampling
    /// settings) and scores it. Does not change the trainer's state or RNG streams.
    ///
    /// With a `metrics_path`, appends one line for the current step (0 before the first step):
    /// `{"step": n, "eval/accuracy": .., "eval/mean_reward": .., "eval/responses": ..,
    /// "eval/greedy": 1 or 0}`, next to that step's training line (see [`crate::plot`]).
    pub fn evaluate(&mut self, prompts: &[Prompt], greedy: bool) -> Result<EvalReport> {
        let base = &self.config.sampling;
        let cfg = SamplingConfig {
            temperature: if greedy { 0.0 } else { base.temperature },
            n: 1,
            seed: mix(self.config.seed, &[u64::MAX, self.state.step]),
            ..base.clone()
        };
        let batch = self.policy.generate(prompts, &cfg)?;
        let scores = self.score(&batch)?;
        let m = rollout_metrics(&batch.samples, &scores, self.config.accuracy_threshold);
        let report = EvalReport {
            accuracy: m.get("reward/accuracy").unwrap_or(0.0),
            mean_reward: m.get("reward/mean").unwrap_or(0.0),
            responses: scores.len(),
        };
        if let Some(log) = &mut self.log {
            let line = Metrics::new()
                .with("eval/accuracy", report.accuracy)
                .with("eval/mean_reward", report.mean_reward)
                .with("eval/responses", report.responses as f64)
                .with("eval/greedy", f64::from(u8::from(greedy)));
            log.write(self.state.step, &line)?;
        }
        Ok(report)
    }

    fn score(&self, batch: &RolloutBatch) -> Result<Vec<f32>> {
        let scores = self.reward.score_batch(&batch.samples)?;
        if scores.len() != batch.len() {
            return Err(
                rl_core::Error::shape("reward scores", &[batch.len()], &[scores.len()]).into()
            );
        }
        rl_core::check::finite_slice(&scores, "reward scores")?;
        Ok(scores)
    }

    /// Generation + scoring (+ dynamic sampling). Group ids are made unique across rounds.
    fn rollout(
        &mut self,
        source: &mut dyn PromptSource,
        groups: usize,
        metrics: &mut Metrics,
    ) -> Result<(RolloutBatch, Vec<f32>)> {
        let dynamic = self.config.dynamic_sampling.clone();
        let rounds = dynamic.as_ref().map_or(1, |d| d.max_rounds);
        let (mut kept, mut kept_scores, mut kept_groups) = (Vec::new(), Vec::new(), 0usize);
        let (mut all_samples, mut all_scores) = (Vec::new(), Vec::new());
        let (mut gen_s, mut score_s, mut next_id, mut used_rounds) = (0.0, 0.0, 0usize, 0usize);
        for round in 0..rounds {
            used_rounds = round + 1;
            let prompts = source.next_prompts(groups)?;
            let cfg = SamplingConfig {
                seed: mix(self.config.seed, &[SEED_GENERATE, self.state.step, round as u64]),
                ..self.config.sampling.clone()
            };
            let t = Instant::now();
            let mut batch = self.policy.generate(&prompts, &cfg)?;
            gen_s += t.elapsed().as_secs_f64();
            batch.validate()?;
            let offset = next_id;
            for (id, s) in batch.group_ids.iter_mut().zip(batch.samples.iter_mut()) {
                *id += offset;
                s.group_id = *id;
                next_id = next_id.max(*id + 1);
            }
            let t = Instant::now();
            let scores = self.score(&batch)?;
            score_s += t.elapsed().as_secs_f64();
            all_samples.extend(batch.samples.iter().cloned());
            all_scores.extend(scores.iter().copied());
            if dynamic.is_none() {
                kept_groups = Groups::new(&batch.group_ids)?.len();
                kept.push(batch);
                kept_scores = scores;
                break;
            }
            let g = Groups::new(&batch.group_ids)?;
            let mut rows = Vec::new();
            for members in g.iter() {
                if kept_groups == groups {
                    break;
                }
                let first = scores[members[0]];
                if members.len() == 1 || members.iter().any(|&r| scores[r] != first) {
                    rows.extend_from_slice(members);
                    kept_groups += 1;
                }
            }
            if !rows.is_empty() {
                kept_scores.extend(rows.iter().map(|&r| scores[r]));
                kept.push(batch.select(&rows)?);
            }
            if kept_groups == groups {
                break;
            }
        }
        metrics.extend_prefixed(
            "",
            &rollout_metrics(&all_samples, &all_scores, self.config.accuracy_threshold),
        );
        let gen_tokens: usize = all_samples.iter().map(|s| s.response_tokens).sum();
        metrics.insert("time/generate_s", gen_s);
        metrics.insert("time/score_s", score_s);
        metrics.insert("perf/generate_tokens_per_s", gen_tokens as f64 / gen_s.max(1e-9));
        if let Some(d) = &dynamic {
            metrics.insert("dynamic/rounds", used_rounds as f64);
            metrics.insert("dynamic/kept_groups", kept_groups as f64);
            if kept_groups < groups {
                let err = TrainerError::DynamicSamplingShortfall {
                    kept: kept_groups,
                    needed: groups,
                    rounds,
                };
                if d.on_shortfall == Shortfall::Error || kept_groups == 0 {
                    return Err(err);
                }
                tracing::warn!("{err}; training on the groups kept");
            }
        }
        Ok((RolloutBatch::concat(&kept)?, kept_scores))
    }

    /// `ppo_epochs` passes of shuffled mini-batches with gradient accumulation.
    fn update(
        &mut self,
        batch: &RolloutBatch,
        adv: &Tensor,
        returns: &Tensor,
        metrics: &mut Metrics,
    ) -> Result<()> {
        let groups = Groups::new(&batch.group_ids)?;
        let per_mini = self.config.mini_batch_groups.unwrap_or(groups.len()).min(groups.len());
        let actor_frozen =
            self.critic.is_some() && self.state.step < self.config.critic_warmup_steps as u64;
        let mut acc = UpdateStats::default();
        for epoch in 0..self.config.ppo_epochs {
            let mut order: Vec<usize> = (0..groups.len()).collect();
            if self.config.shuffle {
                let seed = mix(self.config.seed, &[SEED_SHUFFLE, self.state.step, epoch as u64]);
                order.shuffle(&mut StdRng::seed_from_u64(seed));
            }
            for chunk in order.chunks(per_mini) {
                let rows: Vec<usize> =
                    chunk.iter().flat_map(|&g| groups.rows(g).iter().copied()).collect();
                let mini = batch.select(&rows)?;
                let mini_adv = select_rows(adv, &rows)?;
                let mini_ret = select_rows(returns, &rows)?;
                self.update_mini_batch(&mini, &mini_adv, &mini_ret, actor_frozen, &mut acc)?;
            }
        }
        acc.write(metrics, actor_frozen, self.critic.is_some());
        metrics.insert("train/skipped_total", self.state.skipped_updates as f64);
        Ok(())
    }

    fn update_mini_batch(
        &mut self,
        mini: &RolloutBatch,
        adv: &Tensor,
        returns: &Tensor,
        actor_frozen: bool,
        acc: &mut UpdateStats,
    ) -> Result<()> {
        let counts = GlobalCounts::from_batch(&mini.response_mask, &mini.group_ids)?;
        let actor_vars = self.actor_optim.vars().to_vec();
        let critic_vars = self.critic.as_ref().map(|c| c.optim.vars().to_vec()).unwrap_or_default();
        // In-place accumulation needs each weight's gradients to belong to one optimizer.
        let ids: std::collections::HashSet<_> = actor_vars.iter().map(|v| v.id()).collect();
        let disjoint = critic_vars.iter().all(|v| !ids.contains(&v.id()));
        let mut actor = Accum::new(!actor_frozen, disjoint.then_some(&actor_vars[..]))?;
        let mut critic = Accum::new(self.critic.is_some(), disjoint.then_some(&critic_vars[..]))?;
        let t = Instant::now();
        let n = mini.len();
        for start in (0..n).step_by(self.config.micro_batch_size) {
            let idx: Vec<usize> = (start..(start + self.config.micro_batch_size).min(n)).collect();
            let micro = mini.select(&idx)?;
            let micro_adv = select_rows(adv, &idx)?;
            let tokens = micro.response_lengths()?.iter().sum::<usize>();
            acc.train_tokens += tokens;
            if actor.active() {
                let out = self.actor_loss(&micro, &micro_adv, &counts)?;
                actor.add(out, tokens as f64, &actor_vars, "actor loss")?;
            }
            if let (true, Some(c)) = (critic.active(), &self.critic) {
                let old_values = micro
                    .values
                    .as_ref()
                    .ok_or_else(|| TrainerError::config("critic", "no rollout values"))?;
                let values = c.critic.values(&micro)?;
                let input = ValueLossInput {
                    values: &values,
                    old_values,
                    returns: &select_rows(returns, &idx)?,
                    response_mask: &micro.response_mask,
                    counts: Some(&counts),
                };
                let out = c.loss.compute(&input)?;
                critic.add(out, tokens as f64, &c.critic.trainable_vars(), "critic loss")?;
            }
        }
        acc.train_s += t.elapsed().as_secs_f64();

        let t = Instant::now();
        if actor.enabled {
            let cfg = self.config.actor.clone();
            if let Some(update) =
                apply(&mut actor, &mut self.actor_optim, &cfg, self.state.actor_updates)?
            {
                self.state.actor_updates += 1;
                acc.actor.push(update);
            } else {
                self.skip(actor.failure.unwrap_or("actor grad norm"))?;
            }
        }
        if let (true, Some(c)) = (critic.enabled, self.critic.as_mut()) {
            let cfg = self.config.critic.clone();
            if let Some(update) = apply(&mut critic, &mut c.optim, &cfg, self.state.critic_updates)?
            {
                self.state.critic_updates += 1;
                acc.critic.push(update);
            } else {
                self.skip(critic.failure.unwrap_or("critic grad norm"))?;
            }
        }
        acc.optimizer_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Policy loss − entropy bonus + extra terms for one micro-batch.
    fn actor_loss(
        &self,
        micro: &RolloutBatch,
        adv: &Tensor,
        counts: &GlobalCounts,
    ) -> Result<LossOutput> {
        let with_entropy =
            self.config.entropy_coef != 0.0 || self.terms.iter().any(|t| t.needs_entropy());
        let lp = self.policy.log_probs(micro, with_entropy)?;
        let current = lp.log_probs.detach();
        let old = if self.on_policy { &current } else { &micro.old_log_probs };
        let mut input = PolicyLossInput::new(&lp.log_probs, old, adv, &micro.response_mask);
        input.group_ids = Some(&micro.group_ids);
        input.counts = Some(counts);
        let LossOutput { mut loss, mut metrics } = self.policy_loss.compute(&input)?;
        metrics.insert("pg_loss", scalar(&loss)?);
        if self.on_policy {
            // The sampler/trainer mismatch a recompute would have reported.
            let diff = current.sub(&micro.old_log_probs)?.abs()?;
            let diff = rl_core::masked::masked_mean(&diff, &micro.response_mask, None)?;
            metrics.insert("log_prob_abs_diff", scalar(&diff)?);
        }
        if let (Some(h), true) = (&lp.entropy, self.config.entropy_coef != 0.0) {
            let tokens = counts.tokens.unwrap_or(1.0).max(1.0);
            let sum = rl_core::masked::masked_sum(h, &micro.response_mask, None)?;
            metrics.insert(
                "entropy",
                scalar(&rl_core::masked::masked_mean(h, &micro.response_mask, None)?)?,
            );
            loss = (loss - sum.affine(self.config.entropy_coef / tokens, 0.0)?)?;
        }
        for term in &self.terms {
            let out = term.compute(&TermInput {
                log_probs: &lp.log_probs,
                entropy: lp.entropy.as_ref(),
                old_log_probs: old,
                ref_log_probs: micro.ref_log_probs.as_ref(),
                response_mask: &micro.response_mask,
                group_ids: &micro.group_ids,
                counts,
            })?;
            let prefix = format!("{}/", term.name());
            metrics.extend_prefixed(&prefix, &out.metrics);
            metrics.insert(format!("{prefix}loss"), scalar(&out.loss)?);
            loss = (loss + out.loss)?;
        }
        Ok(LossOutput { loss, metrics })
    }

    fn skip(&mut self, what: &str) -> Result<()> {
        self.state.skipped_updates += 1;
        tracing::warn!(step = self.state.step, "skipping update: non-finite {what}");
        if self.state.skipped_updates > self.config.max_skipped_updates {
            return Err(TrainerError::NonFiniteUpdates {
                skipped: self.state.skipped_updates,
                limit: self.config.max_skipped_updates,
                last: what.to_string(),
            });
        }
        Ok(())
    }
}

impl<P: Policy + Checkpointable, C: Critic + Checkpointable> Trainer<P, C> {
    /// Saves trainer state, optimizer moments, config and policy/critic weights under
    /// `root/step-NNNNNN` (atomically, see [`crate::checkpoint`]). Returns the directory.
    pub fn save_checkpoint(&self, root: &Path) -> Result<PathBuf> {
        checkpoint::write_atomic(root, &checkpoint::step_dir_name(self.state.step), |dir| {
            std::fs::write(dir.join("trainer.json"), serde_json::to_string_pretty(&self.state)?)?;
            std::fs::write(dir.join("config.toml"), self.config.to_toml()?)?;
            // `&self` keeps the moments unchanged while they are written: no copies needed.
            let (steps, t) = self.actor_optim.state_shared();
            checkpoint::save_optimizer(&dir.join("actor_optim.safetensors"), steps, &t)?;
            std::fs::create_dir(dir.join("policy"))?;
            self.policy.save_checkpoint(&dir.join("policy"))?;
            if let Some(c) = &self.critic {
                let (steps, t) = c.optim.state_shared();
                checkpoint::save_optimizer(&dir.join("critic_optim.safetensors"), steps, &t)?;
                std::fs::create_dir(dir.join("critic"))?;
                c.critic.save_checkpoint(&dir.join("critic"))?;
            }
            Ok(())
        })
    }

    /// Restores everything [`Trainer::save_checkpoint`] wrote into `dir` (a `step-NNNNNN`
    /// directory) and returns the restored state (seek your [`crate::PromptDataset`] to
    /// `state.data`).
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<TrainerState> {
        let err = |e: TrainerError| match e {
            TrainerError::Checkpoint { path, reason } if path.as_os_str().is_empty() => {
                TrainerError::checkpoint(dir, reason)
            }
            e => e,
        };
        let state: TrainerState =
            serde_json::from_str(&std::fs::read_to_string(dir.join("trainer.json"))?)?;
        let (steps, t) = checkpoint::load_optimizer(&dir.join("actor_optim.safetensors"))?;
        self.actor_optim.load_state(steps, &t).map_err(err)?;
        self.policy.load_checkpoint(&dir.join("policy"))?;
        if let Some(c) = &mut self.critic {
            let (steps, t) = checkpoint::load_optimizer(&dir.join("critic_optim.safetensors"))?;
            c.optim.load_state(steps, &t).map_err(err)?;
            c.critic.load_checkpoint(&dir.join("critic"))?;
        }
        self.state = state.clone();
        Ok(state)
    }

    /// Loads the latest checkpoint under `root`, if there is one.
    pub fn resume(&mut self, root: &Path) -> Result<Option<TrainerState>> {
        checkpoint::latest(root)?.map(|dir| self.load_checkpoint(&dir)).transpose()
    }
}

/// What a CLI or a recipe runner needs from any trainer, object-safe so GRPO and PPO trainers
/// (different types) can sit behind one `Box<dyn TrainStep>`.
pub trait TrainStep {
    /// One step on `groups` prompts from `source` ([`Trainer::step_from`]).
    fn train_step(&mut self, source: &mut dyn PromptSource, groups: usize) -> Result<StepReport>;

    /// Accuracy and mean reward on `prompts` ([`Trainer::evaluate`]).
    fn eval(&mut self, prompts: &[Prompt], greedy: bool) -> Result<EvalReport>;

    /// Progress so far.
    fn progress(&self) -> &TrainerState;

    /// Writes a checkpoint under `root` ([`Trainer::save_checkpoint`]).
    fn checkpoint(&self, root: &Path) -> Result<PathBuf>;

    /// Loads the latest checkpoint under `root`, if any ([`Trainer::resume`]).
    fn restore(&mut self, root: &Path) -> Result<Option<TrainerState>>;
}

impl<P: Policy + Checkpointable, C: Critic + Checkpointable> TrainStep for Trainer<P, C> {
    fn train_step(&mut self, source: &mut dyn PromptSource, groups: usize) -> Result<StepReport> {
        self.step_from(source, groups)
    }

    fn eval(&mut self, prompts: &[Prompt], greedy: bool) -> Result<EvalReport> {
        self.evaluate(prompts, greedy)
    }

    fn progress(&self) -> &TrainerState {
        self.state()
    }

    fn checkpoint(&self, root: &Path) -> Result<PathBuf> {
        self.save_checkpoint(root)
    }

    fn restore(&mut self, root: &Path) -> Result<Option<TrainerState>> {
        self.resume(root)
    }
}

fn optimizer(vars: Vec<Var>, cfg: &OptimizerConfig, prefix: &str) -> Result<AdamW> {
    cfg.adam.validate(&format!("{prefix}.adam"))?;
    AdamW::new(vars, cfg.adam.clone())
}

fn scalar(t: &Tensor) -> Result<f64> {
    if !t.dims().is_empty() {
        return Err(rl_core::Error::shape("loss (must be a scalar)", &[], t.dims()).into());
    }
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// `f` over consecutive micro-batches of `micro` rows, outputs detached and concatenated along
/// `B` (reference log-probs and rollout values never need the whole batch's graph at once).
fn by_micro_batch(
    batch: &RolloutBatch,
    micro: usize,
    f: impl Fn(&RolloutBatch) -> Result<Tensor>,
) -> Result<Tensor> {
    let n = batch.len();
    let parts = (0..n)
        .step_by(micro.max(1))
        .map(|s| {
            let rows: Vec<usize> = (s..(s + micro).min(n)).collect();
            Ok(f(&batch.select(&rows)?)?.detach())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

fn select_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

/// Gradient accumulation of one optimizer over the micro-batches of a mini-batch.
struct Accum {
    enabled: bool,
    grads: GradStore,
    /// Running sums of the matrix weights' gradients, accumulated in place by the backward
    /// passes (so a micro-batch's backward never holds a second full set of them); drained into
    /// `grads` before clipping.
    sink: Option<GradSink>,
    loss: f64,
    /// Each micro-batch's metrics with its number of valid tokens.
    metrics: Vec<(Metrics, f64)>,
    failure: Option<&'static str>,
}

impl Accum {
    /// `sink`: the vars whose gradients accumulate in place (`None`: all through `grads`).
    fn new(enabled: bool, sink: Option<&[Var]>) -> Result<Self> {
        let sink = match sink {
            Some(vars) if enabled => Some(
                GradSink::new(vars)
                    .map_err(|e| TrainerError::config("grad sink", e.to_string()))?,
            ),
            _ => None,
        };
        Ok(Self {
            enabled,
            grads: GradStore::default(),
            sink,
            loss: 0.0,
            metrics: Vec::new(),
            failure: None,
        })
    }

    fn active(&self) -> bool {
        self.enabled && self.failure.is_none()
    }

    /// Adds one micro-batch: a non-finite loss marks the whole mini-batch update as failed.
    fn add(
        &mut self,
        out: LossOutput,
        tokens: f64,
        vars: &[Var],
        what: &'static str,
    ) -> Result<()> {
        let value = scalar(&out.loss)?;
        if !value.is_finite() {
            self.failure = Some(what);
            return Ok(());
        }
        self.loss += value;
        self.metrics.push((out.metrics, tokens));
        accumulate(&mut self.grads, out.loss.backward()?, vars)
    }
}

/// The mini-batch value of each metric from its micro-batches: losses and extra-term values
/// (`loss`, `*_loss`, `<term>/...`) are normalised by the mini-batch counts and therefore
/// **summed**; `*_min` / `*_max` take the min / max; every other statistic (clip fractions,
/// approx KL, ratio mean, entropy) is a per-micro-batch token mean and is **averaged weighted by
/// valid tokens**. The result equals what one pass over the whole mini-batch would report.
fn merge_micro_metrics(parts: &[(Metrics, f64)]) -> Metrics {
    let mut acc: std::collections::BTreeMap<&str, (f64, f64)> = Default::default();
    for (m, tokens) in parts {
        for (k, v) in m.iter() {
            let e = acc.entry(k).or_insert(if k.ends_with("_min") {
                (f64::INFINITY, 0.0)
            } else if k.ends_with("_max") {
                (f64::NEG_INFINITY, 0.0)
            } else {
                (0.0, 0.0)
            });
            if k.ends_with("_min") {
                e.0 = e.0.min(v);
            } else if k.ends_with("_max") {
                e.0 = e.0.max(v);
            } else if k == "loss" || k.ends_with("_loss") || k.contains('/') {
                e.0 += v;
            } else {
                e.0 += v * tokens;
                e.1 += tokens;
            }
        }
    }
    acc.into_iter().map(|(k, (v, w))| (k.to_string(), if w > 0.0 { v / w } else { v })).collect()
}

/// What one optimizer update reports.
struct Update {
    loss: f64,
    grad_norm: f64,
    lr: f64,
    metrics: Metrics,
}

/// Clips and steps; `None` when the update must be skipped (non-finite loss or norm).
fn apply(
    acc: &mut Accum,
    optim: &mut AdamW,
    cfg: &OptimizerConfig,
    updates: u64,
) -> Result<Option<Update>> {
    if acc.failure.is_some() {
        return Ok(None);
    }
    if let Some(sink) = &acc.sink {
        sink.drain_into(&mut acc.grads)
            .map_err(|e| TrainerError::config("grad sink", e.to_string()))?;
    }
    let vars = optim.vars().to_vec();
    let report = clip_grad_norm(&mut acc.grads, &vars, cfg.max_grad_norm)?;
    if !report.finite {
        return Ok(None);
    }
    let lr = cfg.schedule.lr(cfg.lr, updates as usize);
    optim.step_releasing(&mut acc.grads, lr)?;
    Ok(Some(Update {
        loss: acc.loss,
        grad_norm: report.norm,
        lr,
        metrics: merge_micro_metrics(&acc.metrics),
    }))
}

#[derive(Default)]
struct UpdateStats {
    actor: Vec<Update>,
    critic: Vec<Update>,
    train_tokens: usize,
    train_s: f64,
    optimizer_s: f64,
}

impl UpdateStats {
    fn write(&self, m: &mut Metrics, actor_frozen: bool, has_critic: bool) {
        let mut part = |prefix: &str, ups: &[Update]| {
            let n = ups.len().max(1) as f64;
            let inner = Metrics::mean(&ups.iter().map(|u| u.metrics.clone()).collect::<Vec<_>>());
            m.extend_prefixed(prefix, &inner);
            if let Some(last) = ups.last() {
                m.insert(format!("{prefix}lr"), last.lr);
            }
            m.insert(format!("{prefix}loss"), ups.iter().map(|u| u.loss).sum::<f64>() / n);
            m.insert(
                format!("{prefix}grad_norm"),
                ups.iter().map(|u| u.grad_norm).sum::<f64>() / n,
            );
            m.insert(format!("{prefix}updates"), ups.len() as f64);
        };
        if !actor_frozen {
            part("actor/", &self.actor);
        }
        if has_critic {
            part("critic/", &self.critic);
        }
        m.insert("time/train_s", self.train_s);
        m.insert("time/optimizer_s", self.optimizer_s);
        m.insert("perf/train_tokens_per_s", self.train_tokens as f64 / self.train_s.max(1e-9));
    }
}
