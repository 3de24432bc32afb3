//! Trainer configuration: plain serde structs with `Default`, `deny_unknown_fields` (a typo fails
//! at parse time naming the field) and named presets whose values cite their source
//! (`docs/sources.md` holds the citations to the frameworks' files and lines).

use std::path::{Path, PathBuf};

use rl_core::SamplingConfig;
use serde::{Deserialize, Serialize};

use crate::optim::AdamWConfig;
use crate::{LrSchedule, Result, TrainerError};

/// One optimizer (actor or critic): AdamW, base learning rate, schedule and gradient clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Base learning rate.
    pub lr: f64,
    /// AdamW hyper-parameters.
    pub adam: AdamWConfig,
    /// Global gradient-norm clip (`None` disables clipping; the norm is still reported).
    pub max_grad_norm: Option<f64>,
    /// Learning-rate schedule over optimizer steps.
    pub schedule: LrSchedule,
}

impl Default for OptimizerConfig {
    /// verl actor: lr 1e-6, AdamW (0.9, 0.999) wd 0.01, `grad_clip 1.0`, constant schedule.
    fn default() -> Self {
        Self {
            lr: 1e-6,
            adam: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            schedule: LrSchedule::Constant,
        }
    }
}

impl OptimizerConfig {
    fn validate(&self, prefix: &str) -> Result<()> {
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return Err(TrainerError::config(format!("{prefix}.lr"), "must be finite and >= 0"));
        }
        if let Some(n) = self.max_grad_norm
            && !(n > 0.0 && n.is_finite())
        {
            return Err(TrainerError::config(
                format!("{prefix}.max_grad_norm"),
                "must be > 0 (or absent)",
            ));
        }
        self.adam.validate(&format!("{prefix}.adam"))?;
        self.schedule.validate(&format!("{prefix}.schedule"))
    }
}

/// What to do when DAPO dynamic sampling cannot fill the batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortfall {
    /// Fail the step with [`TrainerError::DynamicSamplingShortfall`] (verl's DAPO recipe raises).
    #[default]
    Error,
    /// Log a warning and train on the groups that were kept (`dynamic/kept_groups` shows it);
    /// when none was kept, the step skips its update (`dynamic/empty_step`) and the run goes on.
    Train,
}

/// DAPO dynamic sampling (verl `recipe/dapo/dapo_ray_trainer.py` L229-290): groups whose rewards
/// are all equal carry no signal under group-relative advantages and are dropped; generation
/// continues with further prompts until the batch holds as many groups as requested.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicSampling {
    /// Maximum generation rounds per step (verl `max_num_gen_batches`, recipe 10).
    pub max_rounds: usize,
    /// Behaviour when `max_rounds` rounds are not enough.
    pub on_shortfall: Shortfall,
    /// Prompts drawn and sampled per generation round (verl DAPO `data.gen_batch_size`; its
    /// recipe draws 3× the training prompts): one larger round fills the batch more often than
    /// several small ones, and a batched sampler is faster per response on a larger batch. Groups
    /// beyond the batch are dropped (their rewards still count in the rollout metrics). Absent,
    /// or fewer than the step's prompts: the step's prompts. At most
    /// [`MAX_RESPONSES_PER_ROUND`] responses per round with `sampling.n`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompts_per_round: Option<usize>,
}

/// Upper bound on `dynamic_sampling.prompts_per_round × sampling.n`, so that a typo cannot ask
/// for an unbounded generation round.
pub const MAX_RESPONSES_PER_ROUND: usize = 1 << 20;

impl Default for DynamicSampling {
    /// 10 rounds, fail on shortfall (DAPO recipe `max_num_gen_batches=10`), the step's prompts
    /// per round.
    fn default() -> Self {
        Self { max_rounds: 10, on_shortfall: Shortfall::Error, prompts_per_round: None }
    }
}

/// How the trainer corrects the mismatch between an external sampler's log-probs and its own
/// (inference engines run other kernels, precisions and batching). Applied only when the
/// rollouts come from a sampler whose [`rl_core::Sampler::is_external`] is `true` and that
/// returned its log-probs (`RolloutBatch::rollout_log_probs`); a local sampler is unaffected.
///
/// ```
/// use rl_trainer::{RolloutCorrection, TrainerConfig};
/// let c: TrainerConfig = toml::from_str("[rollout_correction]\ntype = \"off\"").unwrap();
/// assert_eq!(c.rollout_correction, RolloutCorrection::Off);
/// let c: TrainerConfig =
///     toml::from_str("[rollout_correction]\ntype = \"tis\"\nthreshold = 5.0").unwrap();
/// assert!(matches!(c.rollout_correction, RolloutCorrection::Tis(t) if t.threshold == 5.0));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RolloutCorrection {
    /// No correction: the PPO ratio alone (old log-probs are still recomputed by the trainer).
    Off,
    /// Truncated importance sampling ([`rl_loss::TruncatedIs`]): every policy loss gets
    /// `min(π_old / π_rollout, threshold)` as `rollout_is_weights` (verl rollout correction,
    /// oat `tis_c`); metrics `rollout_is/weight_mean`, `rollout_is/truncated_frac`.
    Tis(rl_loss::TruncatedIs),
}

impl Default for RolloutCorrection {
    /// Token-level TIS with threshold 2 (verl `rollout_is_threshold`, oat `tis_c`).
    fn default() -> Self {
        Self::Tis(rl_loss::TruncatedIs::default())
    }
}

/// Everything a [`crate::Trainer`] needs besides its stages.
///
/// ```
/// use rl_trainer::TrainerConfig;
/// let c: TrainerConfig = toml::from_str("ppo_epochs = 2\n[actor]\nlr = 3e-6").unwrap();
/// assert_eq!((c.ppo_epochs, c.actor.lr), (2, 3e-6));
/// // A typo names the field:
/// let err = toml::from_str::<TrainerConfig>("ppo_epoch = 2").unwrap_err().to_string();
/// assert!(err.contains("ppo_epoch"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Rollout sampling; `sampling.n` is the group size. `sampling.seed` is replaced by a seed
    /// derived from [`TrainerConfig::seed`], the step and the generation round.
    pub sampling: SamplingConfig,
    /// Passes over each rollout batch (verl `ppo_epochs` 1, TRL `num_iterations` 1).
    pub ppo_epochs: usize,
    /// Groups (prompts) per mini-batch, i.e. per optimizer step; `None` = the whole batch
    /// (one optimizer step per epoch, as ORZ `policy_update_steps 1`).
    pub mini_batch_groups: Option<usize>,
    /// Responses per forward/backward pass (gradient accumulation inside a mini-batch).
    pub micro_batch_size: usize,
    /// Shuffle the groups before splitting them into mini-batches (seeded per step and epoch).
    pub shuffle: bool,
    /// Seed of generation and shuffling (every random draw derives from it, the step, the
    /// round and the epoch, so a resumed run repeats the original exactly).
    pub seed: u64,
    /// Actor (policy) optimizer.
    pub actor: OptimizerConfig,
    /// Critic optimizer (PPO only).
    pub critic: OptimizerConfig,
    /// Steps during which only the critic is trained (verl `critic_warmup` 0, OpenRLHF
    /// `freezing_actor_steps`).
    pub critic_warmup_steps: usize,
    /// Recompute `old_log_probs` with the training forward (`Policy::log_probs`, detached) after
    /// generation instead of using the sampler's log-probs, as verl and Open-Reasoner-Zero do:
    /// it removes the sampler/trainer numerical mismatch from the PPO ratio (one extra forward
    /// pass per step). The mismatch is reported as `rollout/log_prob_abs_diff`. When the batch
    /// gets exactly one actor update (`ppo_epochs` 1, one mini-batch), the policy that pass would
    /// run is the one the update itself runs: the update's own detached log-probs are then the
    /// old log-probs (ratio exactly 1, as TRL when generation and optimizer steps align) and the
    /// extra pass is skipped; the mismatch is then measured in the update's forward.
    pub recompute_old_log_probs: bool,
    /// Entropy bonus: `loss −= entropy_coef · token-mean(H)` (verl `entropy_coeff` 0).
    pub entropy_coef: f64,
    /// DAPO dynamic sampling (off when absent).
    pub dynamic_sampling: Option<DynamicSampling>,
    /// Skipped updates (non-finite loss or gradient norm) tolerated before the run stops.
    pub max_skipped_updates: usize,
    /// A response counts as correct for `reward/accuracy` when its reward is above this.
    pub accuracy_threshold: f64,
    /// Append one JSON object per step to this file (JSONL).
    pub metrics_path: Option<PathBuf>,
    /// Rollout/trainer mismatch correction for an external sampler (default: token-level TIS,
    /// threshold 2; a local sampler never uses it).
    pub rollout_correction: RolloutCorrection,
    /// Leave the responses whose advantages are all exactly zero out of the actor's forward and
    /// backward passes when that cannot change the update: the policy loss says such rows are
    /// inert ([`rl_core::PolicyLoss::zero_advantage_rows_inert`]: every built-in loss but
    /// Clip-Cov and KL-Cov), there is no critic and no extra loss term (KL, entropy bonus) reads
    /// them. The mini-batch counts that normalise the loss still include them, so the gradient
    /// is the one of the full mini-batch (up to float summation order); when every row of a
    /// mini-batch is zero, its first micro-batch still runs so the optimizer steps on exact zero
    /// gradients as PyTorch would. Under data parallelism each rank leaves out its own zero
    /// rows; whether a whole mini-batch is zero is decided over every rank (one all-reduce), and
    /// then each rank runs its share of that first micro-batch, so the rows that run, and the
    /// per-row metrics, are those of one process. With group-relative advantages (GRPO,
    /// Dr. GRPO) these are the groups whose samples all got the same reward: most groups early
    /// in a run (nothing solved) and late (everything solved). Default on; `train/zero_adv_rows_skipped` counts
    /// them, and the `actor/*` ratio and clip metrics then cover the rows that ran. verl and TRL
    /// run these rows (their gradient is zero).
    pub skip_zero_advantage_rows: bool,
}

impl Default for TrainerConfig {
    /// verl defaults (`_generated_ppo_trainer.yaml`): one PPO epoch, actor lr 1e-6, critic lr
    /// 1e-5, grad clip 1.0, no critic warm-up, no entropy bonus, old log-probs recomputed by the
    /// trainer; 8 samples per prompt (GRPO
    /// papers; verl's `rollout.n` is 1), micro-batches of 8 responses, shuffled mini-batches.
    fn default() -> Self {
        Self {
            sampling: SamplingConfig { n: 8, ..SamplingConfig::default() },
            ppo_epochs: 1,
            mini_batch_groups: None,
            micro_batch_size: 8,
            shuffle: true,
            seed: 0,
            actor: OptimizerConfig::default(),
            critic: OptimizerConfig { lr: 1e-5, ..OptimizerConfig::default() },
            critic_warmup_steps: 0,
            recompute_old_log_probs: true,
            entropy_coef: 0.0,
            dynamic_sampling: None,
            max_skipped_updates: 10,
            accuracy_threshold: 0.0,
            metrics_path: None,
            rollout_correction: RolloutCorrection::default(),
            skip_zero_advantage_rows: true,
        }
    }
}

impl TrainerConfig {
    /// Open-Reasoner-Zero PPO (`orz_7b_ppo.py`, `ppo_base_exp.py`): 64 samples per prompt,
    /// temperature 1, actor lr 1e-6 and critic lr 5e-6 with 50 warm-up steps, Adam betas
    /// (0.9, 0.95), max norm 1.0, one actor update per rollout batch.
    pub fn open_reasoner_zero() -> Self {
        let opt = |lr| OptimizerConfig {
            lr,
            adam: AdamWConfig::openrlhf(),
            max_grad_norm: Some(1.0),
            schedule: LrSchedule::WarmupConstant { warmup_steps: 50 },
        };
        Self {
            sampling: SamplingConfig { n: 64, max_new_tokens: 8000, ..SamplingConfig::default() },
            actor: opt(1e-6),
            critic: opt(5e-6),
            ..Self::default()
        }
    }

    /// Dr. GRPO as in understand-r1-zero (`examples/qwen2.5-math-1.5b.sh`): 8 samples per
    /// prompt, temperature 1, lr 1e-6 constant, one epoch, Adam betas (0.9, 0.95), max norm 1.0,
    /// 3000 new tokens.
    pub fn dr_grpo() -> Self {
        Self {
            sampling: SamplingConfig { n: 8, max_new_tokens: 3000, ..SamplingConfig::default() },
            actor: OptimizerConfig { adam: AdamWConfig::openrlhf(), ..OptimizerConfig::default() },
            ..Self::default()
        }
    }

    /// DAPO (verl `recipe/dapo`): 16 samples per prompt, lr 1e-6 with 10 warm-up steps, dynamic
    /// sampling with up to 10 generation rounds, 20480 new tokens.
    pub fn dapo() -> Self {
        Self {
            sampling: SamplingConfig { n: 16, max_new_tokens: 20480, ..SamplingConfig::default() },
            actor: OptimizerConfig {
                schedule: LrSchedule::WarmupConstant { warmup_steps: 10 },
                ..OptimizerConfig::default()
            },
            dynamic_sampling: Some(DynamicSampling::default()),
            ..Self::default()
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        let positive = [
            ("ppo_epochs", self.ppo_epochs),
            ("micro_batch_size", self.micro_batch_size),
            ("mini_batch_groups", self.mini_batch_groups.unwrap_or(1)),
            (
                "dynamic_sampling.max_rounds",
                self.dynamic_sampling.as_ref().map_or(1, |d| d.max_rounds),
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(TrainerError::config(*name, "must be >= 1"));
        }
        if let Some(p) = self.dynamic_sampling.as_ref().and_then(|d| d.prompts_per_round) {
            let responses = p.saturating_mul(self.sampling.n);
            if p == 0 || responses > MAX_RESPONSES_PER_ROUND {
                return Err(TrainerError::config(
                    "dynamic_sampling.prompts_per_round",
                    format!(
                        "{p} prompts × sampling.n = {} is {responses} responses per round: must \
                         be between 1 and {MAX_RESPONSES_PER_ROUND}",
                        self.sampling.n
                    ),
                ));
            }
        }
        if !self.entropy_coef.is_finite() {
            return Err(TrainerError::config("entropy_coef", "must be finite"));
        }
        if !self.accuracy_threshold.is_finite() {
            return Err(TrainerError::config("accuracy_threshold", "must be finite"));
        }
        if let RolloutCorrection::Tis(t) = &self.rollout_correction
            && !(t.threshold > 0.0 && t.threshold.is_finite())
        {
            return Err(TrainerError::config(
                "rollout_correction.threshold",
                "must be a finite number > 0",
            ));
        }
        self.actor.validate("actor")?;
        self.critic.validate("critic")
    }

    /// Parses a TOML configuration and validates it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_toml(&std::fs::read_to_string(path)?)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }
}
