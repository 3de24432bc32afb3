//! The training loop: the one place that knows the order of the stages.
//!
//! One [`Trainer::step`] walks one rollout batch through four phases, one module each:
//! 1. **rollout** ([`rollout`](self) module, `Trainer::rollout`): generate `sampling.n` responses
//!    per prompt (`Policy::generate`), seeded by `(seed, step, round)`, and score them
//!    (`RewardFn::score_batch`); with DAPO dynamic sampling, drop groups whose rewards are all
//!    equal and generate again until the batch holds as many groups as prompts were asked for;
//! 2. **prepare** (`Trainer::prepare`): old log-probs recomputed by the training forward (unless
//!    `recompute_old_log_probs = false`, or the batch gets exactly one actor update, whose own
//!    forward then supplies them), reference log-probs (with a [`ReferenceModel`]), critic
//!    values (PPO), KL in the reward (with [`KlInReward`]), advantages
//!    (`AdvantageEstimator::estimate`);
//! 3. **update** (`Trainer::update`), `ppo_epochs` times: shuffle the groups (seeded by
//!    `(seed, step, epoch)`), split them into mini-batches of `mini_batch_groups` groups; for
//!    each mini-batch compute its [`GlobalCounts`](rl_core::GlobalCounts), run micro-batches of `micro_batch_size`
//!    responses (log-probs → policy loss with the mini-batch counts + extra [`LossTerm`]s →
//!    backward), sum their gradients, clip, and take one optimizer step. The critic gets the same
//!    treatment with its own optimizer;
//! 4. **accumulate** ([`accum`](self) module): because every micro-batch loss is normalised by the
//!    mini-batch's counts, the summed gradient equals the gradient of the whole mini-batch's loss
//!    (no `1/accum`); metrics combine by the [`Reduce`](rl_core::metrics::Reduce) each carries.

mod accum;
mod builder;
mod dist;
mod prepare;
mod rollout;
mod update;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use rl_core::dist::ProcessGroup;
use rl_core::{
    AdvantageEstimator, Critic, Metrics, Policy, PolicyLoss, Prompt, ReferenceModel, RewardFn,
    RolloutBatch, Sampler, SyncReport, ValueLoss,
};
use rl_loss::KlInReward;

pub use self::builder::TrainerBuilder;
use crate::checkpoint::{self, Checkpointable, TrainerState};
use crate::config::TrainerConfig;
use crate::data::{FixedPrompts, PromptSource};
use crate::eval::{EvalReport, evaluate};
use crate::metrics::MetricsLog;
use crate::optim::AdamW;
use crate::{OptimizerConfig, Result, TrainerError};
pub use rl_core::{LossTerm, TermInput};

/// Seed stream of generation rounds (`mix_seed(seed, [SEED_GENERATE, step, round])`).
const SEED_GENERATE: u64 = 1;
/// Seed stream of mini-batch shuffles (`mix_seed(seed, [SEED_SHUFFLE, step, epoch])`).
const SEED_SHUFFLE: u64 = 2;

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

/// A critic with its loss and optimizer.
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

/// A GRPO-family trainer (no critic).
pub type GrpoTrainer<P> = Trainer<P, NoCritic>;
/// A PPO trainer with a learned critic.
pub type PpoTrainer<P, C> = Trainer<P, C>;

/// Generic RL trainer over the rl-core stage traits. Build it with [`Trainer::builder`] (or the
/// shorthand [`Trainer::grpo`]); call [`Trainer::step`] per batch of prompts.
pub struct Trainer<P: Policy, C: Critic = NoCritic> {
    policy: P,
    critic: Option<CriticStage<C>>,
    reference: Option<Box<dyn ReferenceModel>>,
    reward: Box<dyn RewardFn>,
    estimator: Box<dyn AdvantageEstimator>,
    policy_loss: Box<dyn PolicyLoss>,
    terms: Vec<Box<dyn LossTerm>>,
    kl_in_reward: Option<KlInReward>,
    actor_optim: AdamW,
    config: TrainerConfig,
    state: TrainerState,
    log: Option<MetricsLog>,
    /// This step's batch gets exactly one actor update, whose own forward pass supplies the old
    /// log-probs (see [`TrainerConfig::recompute_old_log_probs`]).
    on_policy: bool,
    /// Where rollouts come from when not from `policy` (an inference engine).
    sampler: Option<Box<dyn Sampler>>,
    /// Publishes the policy's weights to the sampler every `.1` steps
    /// (`TrainerBuilder::weight_sync`).
    sync: Option<(SyncFn<P>, u64)>,
    /// The engine holds the policy's current weights as far as the trainer knows: `false`
    /// before the first rollout and after a resume, when the next step first publishes the
    /// current weights (version = the step count) so the engine never samples from weights the
    /// trainer does not have.
    engine_current: bool,
    /// The policy's weights changed since the last publish: a due publish with nothing new (after
    /// steps that took no optimizer step) is skipped.
    unpublished: bool,
    /// The data-parallel group (`TrainerBuilder::process_group`); `None`: one process.
    dist: Option<Box<dyn ProcessGroup>>,
}

/// A weight sync bound to the policy type: `Some(policy)` publishes its weights as `version`
/// (and returns the report), `None` records a `version` another rank published.
pub(super) type SyncFn<P> = Box<dyn FnMut(Option<&P>, u64) -> rl_core::Result<Option<SyncReport>>>;

impl<P: Policy, C: Critic> std::fmt::Debug for Trainer<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("critic", &self.critic.is_some())
            .field("reference", &self.reference.is_some())
            .field("reward", &self.reward.name())
            .field("terms", &self.terms.iter().map(|t| t.name().to_string()).collect::<Vec<_>>())
            .field("kl_in_reward", &self.kl_in_reward)
            .field("sampler", &self.sampler.is_some())
            .field("weight_sync", &self.sync.is_some())
            .field("dist", &self.dist)
            .field("state", &self.state)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<P: Policy> Trainer<P, NoCritic> {
    /// A builder over `policy` and `reward`; add the estimator, the policy loss and (for PPO) a
    /// critic, then [`TrainerBuilder::build`].
    ///
    /// ```
    /// use rl_core::testing::MockPolicy;
    /// use rl_core::{Device, Sample};
    /// use rl_trainer::{Trainer, TrainerConfig};
    /// let policy = MockPolicy::new(&[0.0, 0.0, 0.0], &Device::Cpu)?;
    /// let reward = |s: &Sample| Ok(f32::from(s.response.contains('a')));
    /// let trainer = Trainer::builder(policy, reward)
    ///     .estimator(rl_advantage::DrGrpo::default())
    ///     .policy_loss(rl_loss::PpoLoss::dr_grpo(4))
    ///     .config(TrainerConfig { micro_batch_size: 4, ..TrainerConfig::default() })
    ///     .build()?;
    /// assert_eq!(trainer.state().step, 0);
    /// # Ok::<(), rl_trainer::TrainerError>(())
    /// ```
    pub fn builder(policy: P, reward: impl RewardFn + 'static) -> TrainerBuilder<P, NoCritic> {
        TrainerBuilder::new(policy, Box::new(reward))
    }

    /// A trainer without a critic (GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++ ...): shorthand for
    /// the [`Trainer::builder`] with an estimator and a policy loss.
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
        Self::builder(policy, reward)
            .estimator(estimator)
            .policy_loss(policy_loss)
            .config(config)
            .build()
    }
}

impl<P: Policy, C: Critic> Trainer<P, C> {
    /// A PPO trainer: the critic's values feed the estimator (GAE) and the critic is trained
    /// with `value_loss` and its own optimizer (`config.critic`).
    #[deprecated(note = "use Trainer::builder(policy, reward).critic(critic, value_loss)...")]
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
        Trainer::builder(policy, reward)
            .critic(critic, value_loss)
            .estimator(estimator)
            .policy_loss(policy_loss)
            .config(config)
            .build()
    }

    /// Sets a frozen reference model: its log-probs fill `RolloutBatch::ref_log_probs` in the
    /// prepare phase (for KL [`LossTerm`]s and KL in the reward).
    ///
    /// # Errors
    /// [`TrainerError::Config`] when the reference shares a variable with the trained policy (a
    /// clone of the policy handle: its KL would stay 0); use a frozen copy
    /// (`LmPolicy::reference()`).
    pub fn with_reference(mut self, reference: impl ReferenceModel + 'static) -> Result<Self> {
        builder::check_reference(&reference, &self.policy)?;
        self.reference = Some(Box::new(reference));
        Ok(self)
    }

    /// Adds a term to the actor loss of every micro-batch.
    ///
    /// # Errors
    /// [`TrainerError::Config`] when the term needs reference log-probs and the trainer has no
    /// reference model (set it first with [`Trainer::with_reference`]).
    pub fn with_loss_term(mut self, term: impl LossTerm + 'static) -> Result<Self> {
        builder::check_term(&term, self.reference.is_some())?;
        self.terms.push(Box::new(term));
        Ok(self)
    }

    /// This process's data-parallel rank (0 without a process group). Rank 0 writes the
    /// metrics log; callers save checkpoints and evaluate on rank 0 only.
    pub fn rank(&self) -> usize {
        self.dist.as_ref().map_or(0, |pg| pg.rank())
    }

    /// Number of data-parallel ranks (1 without a process group).
    pub fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, |pg| pg.world_size())
    }

    /// The process group when training data-parallel over more than one rank.
    fn dp(&mut self) -> Option<&mut dyn ProcessGroup> {
        dist::dp_of(&mut self.dist)
    }

    /// Publishes the policy's weights as version = the step count. Under data parallelism rank 0
    /// publishes and the other ranks record the version; then every rank learns whether the
    /// publish failed (so none samples before the engine has the weights, and a failure stops
    /// every rank). The report on the publishing rank, `None` on the others.
    fn publish(&mut self) -> Result<Option<SyncReport>> {
        let version = self.state.step;
        let Some((sync, _)) = &mut self.sync else { return Ok(None) };
        let publisher = self.dist.as_ref().is_none_or(|g| g.rank() == 0);
        let outcome = sync(publisher.then_some(&self.policy), version);
        if let Some(pg) = dist::dp_of(&mut self.dist) {
            let failed = rl_core::dist::any_rank(pg, outcome.is_err())?;
            if failed && outcome.is_ok() {
                return Err(rl_core::Error::from(rl_core::dist::DistError::PeerFailed {
                    rank: 0,
                    op: "weight publish".into(),
                    reason: format!("publishing version {version} failed there"),
                })
                .into());
            }
        }
        let report = outcome?;
        self.unpublished = false;
        Ok(report)
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
        if self.sync.is_some() && !self.engine_current {
            let report = self.publish()?;
            let seconds = report.map_or(0.0, |r| r.seconds);
            tracing::info!(version = self.state.step, seconds, "initial publish");
            metrics.insert("time/sync_initial_s", seconds);
            self.engine_current = true;
        }
        // A step whose dynamic sampling kept no group (with `on_shortfall = "train"`) counts as a
        // step, with its rollout metrics, but takes no optimizer step (`dynamic/empty_step`).
        if let Some((mut batch, scores)) = self.rollout(source, groups, &mut metrics)? {
            let adv = self.prepare(&mut batch, &scores, &mut metrics)?;
            self.update(&batch, &adv.advantages, &adv.returns, &mut metrics)?;
            self.unpublished = true;
            if let (true, Some(diff)) = (self.on_policy, metrics.get("actor/log_prob_abs_diff")) {
                metrics.insert("rollout/log_prob_abs_diff", diff);
            }
        } else {
            metrics.insert("dynamic/empty_step", 1.0);
        }

        self.state.step += 1;
        self.state.data = source.position();
        for (from, to) in [
            ("actor/is_weight_mean", "rollout_is/weight_mean"),
            ("actor/is_truncated_frac", "rollout_is/truncated_frac"),
        ] {
            if let Some(v) = metrics.get(from) {
                metrics.insert(to, v);
            }
        }
        if let Some((_, every)) = &self.sync
            && self.state.step.is_multiple_of(*every)
            && self.unpublished
            && let Some(report) = self.publish()?
        {
            metrics.extend_prefixed("", &report.metrics());
        }
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
    /// settings) and scores it ([`crate::evaluate`]). Does not change the trainer's state or RNG
    /// streams.
    ///
    /// With a `metrics_path`, appends one line for the current step (0 before the first step):
    /// `{"step": n, "eval/accuracy": .., "eval/mean_reward": .., "eval/responses": ..,
    /// "eval/greedy": 1 or 0}`, next to that step's training line (see [`crate::plot`]).
    pub fn evaluate(&mut self, prompts: &[Prompt], greedy: bool) -> Result<EvalReport> {
        let cfg = crate::eval::eval_sampling(&self.config, self.state.step, greedy);
        let report = evaluate(
            &mut self.policy,
            self.reward.as_ref(),
            prompts,
            &cfg,
            self.config.accuracy_threshold,
        )?;
        if let Some(log) = &mut self.log {
            log.write(self.state.step, &report.metrics_line(greedy))?;
        }
        Ok(report)
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
        let mut state = self.state.clone();
        state.kl_controller = self.kl_in_reward.as_ref().map(|k| k.controller.clone());
        checkpoint::write_atomic(root, &checkpoint::step_dir_name(self.state.step), |dir| {
            std::fs::write(dir.join("trainer.json"), serde_json::to_string_pretty(&state)?)?;
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
        if let (Some(k), Some(ctrl)) = (&mut self.kl_in_reward, &state.kl_controller) {
            k.controller = ctrl.clone();
        }
        self.state = state.clone();
        // The engine still serves the weights from before the resume: republish first.
        self.engine_current = false;
        Ok(state)
    }

    /// Loads the latest checkpoint under `root`, if there is one.
    pub fn resume(&mut self, root: &Path) -> Result<Option<TrainerState>> {
        checkpoint::latest(root)?.map(|dir| self.load_checkpoint(&dir)).transpose()
    }
}

/// What a CLI or a recipe runner needs from any trainer, object-safe so GRPO and PPO trainers
/// (different types) can sit behind one `Box<dyn TrainStep>`. The methods carry the names of
/// [`Trainer`]'s inherent methods.
pub trait TrainStep {
    /// One step on `groups` prompts from `source` ([`Trainer::step_from`]).
    fn step_from(&mut self, source: &mut dyn PromptSource, groups: usize) -> Result<StepReport>;

    /// Accuracy and mean reward on `prompts` ([`Trainer::evaluate`]).
    fn evaluate(&mut self, prompts: &[Prompt], greedy: bool) -> Result<EvalReport>;

    /// Progress so far ([`Trainer::state`]).
    fn state(&self) -> &TrainerState;

    /// Writes a checkpoint under `root` ([`Trainer::save_checkpoint`]).
    fn save_checkpoint(&self, root: &Path) -> Result<PathBuf>;

    /// Loads the latest checkpoint under `root`, if any ([`Trainer::resume`]).
    fn resume(&mut self, root: &Path) -> Result<Option<TrainerState>>;

    /// Former name of [`TrainStep::step_from`].
    #[deprecated(note = "renamed to step_from")]
    fn train_step(&mut self, source: &mut dyn PromptSource, groups: usize) -> Result<StepReport> {
        self.step_from(source, groups)
    }

    /// Former name of [`TrainStep::evaluate`].
    #[deprecated(note = "renamed to evaluate")]
    fn eval(&mut self, prompts: &[Prompt], greedy: bool) -> Result<EvalReport> {
        self.evaluate(prompts, greedy)
    }

    /// Former name of [`TrainStep::state`].
    #[deprecated(note = "renamed to state")]
    fn progress(&self) -> &TrainerState {
        self.state()
    }

    /// Former name of [`TrainStep::save_checkpoint`].
    #[deprecated(note = "renamed to save_checkpoint")]
    fn checkpoint(&self, root: &Path) -> Result<PathBuf> {
        self.save_checkpoint(root)
    }

    /// Former name of [`TrainStep::resume`].
    #[deprecated(note = "renamed to resume")]
    fn restore(&mut self, root: &Path) -> Result<Option<TrainerState>> {
        self.resume(root)
    }
}

impl<P: Policy + Checkpointable, C: Critic + Checkpointable> TrainStep for Trainer<P, C> {
    fn step_from(&mut self, source: &mut dyn PromptSource, groups: usize) -> Result<StepReport> {
        Trainer::step_from(self, source, groups)
    }

    fn evaluate(&mut self, prompts: &[Prompt], greedy: bool) -> Result<EvalReport> {
        Trainer::evaluate(self, prompts, greedy)
    }

    fn state(&self) -> &TrainerState {
        Trainer::state(self)
    }

    fn save_checkpoint(&self, root: &Path) -> Result<PathBuf> {
        Trainer::save_checkpoint(self, root)
    }

    fn resume(&mut self, root: &Path) -> Result<Option<TrainerState>> {
        Trainer::resume(self, root)
    }
}

fn optimizer(vars: Vec<Var>, cfg: &OptimizerConfig, prefix: &str) -> Result<AdamW> {
    cfg.adam.validate(&format!("{prefix}.adam"))?;
    AdamW::new(vars, cfg.adam.clone())
}

/// The value of a scalar tensor (a loss) as f64.
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

/// Rows `rows` of a `(B, ...)` tensor.
fn select_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

/// Mean of `|a − b|` over the mask's valid tokens (the sampler/trainer log-prob mismatch).
fn masked_abs_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<f64> {
    scalar(&rl_core::masked::masked_mean(&a.sub(b)?.abs()?, mask, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_cover_every_row_in_order() -> Result<()> {
        let batch = rl_core::testing::BatchBuilder::new(4).row(0, 2).row(0, 1).row(1, 3).build()?;
        let out = by_micro_batch(&batch, 2, |mb| Ok(mb.response_mask.sum_keepdim(1)?))?;
        assert_eq!(out.flatten_all()?.to_vec1::<f32>()?, vec![2.0, 1.0, 3.0]);
        Ok(())
    }
}
