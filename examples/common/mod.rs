//! Plumbing shared by the training examples (`ppo_gae`, `dr_grpo`): command-line options, loading
//! the policy (the embedded tiny model, a GGUF file, a Hugging Face directory or a Hub id), the
//! two-digit addition task with its held-out split, and training with the library's driver.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rl_zero::core::Prompt;
use rl_zero::policy::LmPolicy;

/// Options common to the training examples.
#[derive(Debug, clap::Parser)]
pub struct Args {
    /// Model to train: a `.gguf` file, a Hugging Face directory, or a Hub repo id. Default: the
    /// embedded tiny arithmetic model `assets/tiny-arith`.
    #[arg(long)]
    pub model: Option<String>,
    /// Hub revision (with a Hub repo id).
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Training steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Prompts (groups) per step.
    #[arg(long)]
    pub prompts: Option<usize>,
    /// Samples per prompt (group size).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Maximum new tokens per response.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Actor learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Sampling temperature of the rollouts (default: the recipe's for the embedded model, 0.7
    /// for any other).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Responses per forward + backward pass (gradient accumulation: memory and speed only, not
    /// the maths). Default 64 for the embedded model, 8 otherwise.
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Critic learning rate (PPO only; default: the recipe's).
    #[arg(long)]
    pub critic_lr: Option<f64>,
    /// Learning-rate warm-up steps of actor and critic, then constant (default: the recipe's
    /// schedule; 0 = constant from the first step).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Held-out prompts evaluated (greedy) before and after training.
    #[arg(long, default_value_t = 200)]
    pub eval_prompts: usize,
    /// Evaluate every this many steps (0: only before and after).
    #[arg(long, default_value_t = 10)]
    pub eval_every: usize,
    /// Seed of data order, sampling and initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (metrics JSONL, final checkpoint).
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Dtype of the matrix products: f32, or bf16 (mixed precision: bf16 operands, f32
    /// accumulation and master weights; fastest with `RLZ_BLAS=<libmkl_rt.so>` on a CPU with AMX).
    #[arg(long, default_value = "f32")]
    pub compute_dtype: rl_zero::policy::ComputeDtype,
    /// Dtype of the sampler's matrix products when it differs from `--compute-dtype` (default:
    /// the same), e.g. `--compute-dtype bf16 --sample-dtype f32`: f32 rollouts, a bf16 update.
    #[arg(long)]
    pub sample_dtype: Option<rl_zero::policy::ComputeDtype>,
    /// Start again when `<out>/<example>` already holds a run: delete its run files
    /// (`metrics.jsonl`, `curves.svg`, `checkpoints/`) first; other files are kept. Without it
    /// a non-empty directory is refused.
    #[arg(long)]
    pub overwrite: bool,
}

pub use rl_zero::run::{Loaded, addition_prompts, policy};

/// Everything an example needs before it builds its trainer: options, model, prompt split,
/// output directory and run sizes.
pub struct Setup {
    /// Parsed command line.
    pub args: Args,
    /// The loaded model and tokenizer, until [`Setup::policy`] takes them.
    loaded: Option<Loaded>,
    /// `true` for the embedded tiny model.
    pub tiny: bool,
    /// Training prompts (never the held-out pairs).
    pub train: Vec<Prompt>,
    /// Held-out evaluation prompts.
    pub test: Vec<Prompt>,
    /// `args.out/<example name>`, created.
    pub out: PathBuf,
    /// Training steps.
    pub steps: usize,
    /// Prompts (groups) per step.
    pub groups: usize,
}

/// Logging, options, thread pinning for the tiny model, model loading, the addition split and the
/// output directory of example `name`.
pub fn setup(name: &str) -> Result<Setup> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = <Args as clap::Parser>::parse();
    // Allocator, threads and `RLZ_BLAS=<libmkl_rt.so>` (MKL matrix products, scripts/setup_mkl.sh).
    rl_zero::run::init_runtime(args.model.as_deref())?;
    // A new run never mixes its metrics, curves and checkpoints with an earlier run's.
    let out = args.out.join(name);
    if !args.overwrite {
        rl_zero::run::check_out_dir(&out, None, false)?;
    }
    let mut loaded = rl_zero::run::load_model(args.model.as_deref(), &args.revision)?;
    loaded.model.set_compute_dtype(args.compute_dtype)?;
    loaded.model.set_sample_compute_dtype(args.sample_dtype)?;
    let (train, test) = addition_prompts(&loaded, args.seed, args.eval_prompts)?;
    if args.overwrite {
        rl_zero::run::clear_run_files(&out, None)?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let tiny = loaded.tiny;
    let loaded = Some(loaded);
    let steps = args.steps.unwrap_or(if tiny { 30 } else { 20 });
    let groups = args.prompts.unwrap_or(if tiny { 32 } else { 8 });
    Ok(Setup { args, loaded, tiny, train, test, out, steps, groups })
}

impl Setup {
    /// Sizes `t` for a 2-core CPU: group size, generation budget, sampling temperature, actor
    /// learning rate (`lr.0` for the embedded model, `lr.1` for any other, unless `--lr`), critic
    /// learning rate and warm-up (`--critic-lr`, `--warmup-steps`), micro-batch (`--micro-batch`),
    /// seed, metrics file.
    ///
    /// A real model (`--model`) gets what the SmolLM2 runs of `docs/results.md` taught
    /// (`recipes/smollm2_addition.toml`): temperature 0.7, because at 1 a 135M model rarely earns
    /// a reward and most groups carry no signal; 64 new tokens, because once the model stops
    /// rambling its answers take ~12 tokens, so a short budget keeps steps cheap; micro-batches of
    /// 8 (4.1 GiB peak for SmolLM2-135M).
    pub fn size(&self, t: &mut rl_zero::trainer::TrainerConfig, lr: (f64, f64)) {
        let (a, tiny) = (&self.args, self.tiny);
        t.sampling.n = a.samples.unwrap_or(8);
        t.sampling.max_new_tokens = a.max_new_tokens.unwrap_or(if tiny { 16 } else { 64 });
        if let Some(temp) = a.temperature.or((!tiny).then_some(0.7)) {
            t.sampling.temperature = temp;
        }
        t.actor.lr = a.lr.unwrap_or(if tiny { lr.0 } else { lr.1 });
        if let Some(lr) = a.critic_lr {
            t.critic.lr = lr;
        }
        if let Some(w) = a.warmup_steps {
            use rl_zero::trainer::LrSchedule;
            let schedule = if w == 0 {
                LrSchedule::Constant
            } else {
                LrSchedule::WarmupConstant { warmup_steps: w }
            };
            t.actor.schedule = schedule.clone();
            t.critic.schedule = schedule;
        }
        t.micro_batch_size = a.micro_batch.unwrap_or(if tiny { 64 } else { 8 });
        t.seed = a.seed;
        t.metrics_path = Some(self.out.join("metrics.jsonl"));
    }

    /// Prints what is about to run.
    pub fn banner(&self, recipe: &str, samples: usize) {
        let what = if self.tiny { "the embedded tiny arithmetic model" } else { "the given model" };
        println!(
            "{recipe} on {what}: {} steps × {} prompts × {samples} samples",
            self.steps, self.groups
        );
    }

    /// The base model (to initialise a critic from), until [`Setup::policy`] takes it.
    #[allow(dead_code)] // used by ppo_gae only; each example compiles this module on its own
    pub fn model(&self) -> Result<&rl_zero::policy::LanguageModel> {
        self.loaded.as_ref().map(|l| &l.model).ok_or_else(|| anyhow::anyhow!("model already taken"))
    }

    /// The policy over the loaded model (takes the model and tokenizer).
    pub fn policy(&mut self) -> Result<LmPolicy> {
        let l = self.loaded.take().ok_or_else(|| anyhow::anyhow!("model already taken"))?;
        Ok(policy(l.model, l.tokenizer))
    }

    /// Trains with the library's driver ([`rl_zero::run::Drive`], the loop `rl-zero train` runs):
    /// a greedy evaluation on the held-out prompts before training, every `--eval-every` steps
    /// and at the end, a checkpoint under `<out>/checkpoints` at the end, the metrics drawn to
    /// `curves.svg`.
    pub fn train<C>(self, trainer: &mut rl_zero::trainer::Trainer<LmPolicy, C>) -> Result<()>
    where
        C: rl_zero::core::Critic + rl_zero::trainer::Checkpointable,
    {
        let run = rl_zero::run::RunSettings {
            steps: self.steps,
            prompts_per_step: self.groups,
            eval_prompts: self.test.len(),
            eval_every: self.args.eval_every,
            out: self.out.clone(),
            ..rl_zero::run::RunSettings::default()
        };
        let mut data = rl_zero::trainer::PromptDataset::new(self.train, self.args.seed, true)?;
        let metrics = trainer.config().metrics_path.clone();
        let drive =
            rl_zero::run::Drive { metrics: metrics.as_deref(), ..rl_zero::run::Drive::new(&run) };
        drive.run(trainer, &mut data, &self.test, &mut |line| println!("{line}"))?;
        Ok(())
    }
}
