//! Plumbing shared by the training examples (`ppo_gae`, `dr_grpo`): command-line options, loading
//! the policy (the embedded tiny model, a GGUF file, a Hugging Face directory or a Hub id), the
//! two-digit addition task with its held-out split, and the before/after report.

use std::path::{Path, PathBuf};

use anyhow::Result;
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
}

pub use rl_zero::run::{Loaded, addition_prompts, policy};

/// Pins candle to one thread for the embedded tiny model ([`rl_zero::run::pin_threads_for_tiny_model`]).
pub fn pin_threads_for_tiny_model(args: &Args) {
    rl_zero::run::pin_threads_for_tiny_model(args.model.as_deref());
}

/// Loads the model named by `--model` (or the embedded default) in f32 on the CPU.
pub fn load(args: &Args) -> Result<Loaded> {
    rl_zero::run::load_model(args.model.as_deref(), &args.revision)
}

/// Prints one line of the accuracy curve.
pub fn report_eval(step: u64, accuracy: f64, mean_reward: f64, n: usize) {
    println!(
        "eval step {step:>4}: greedy accuracy {accuracy:.3} (mean reward {mean_reward:.3}, {n} held-out prompts)"
    );
}

/// Evaluates (greedy, held-out), trains `steps` steps of `groups` prompts with evaluations every
/// `args.eval_every` steps, evaluates again and saves a checkpoint under `out/checkpoints`.
pub fn train_and_report<C>(
    trainer: &mut rl_zero::trainer::Trainer<LmPolicy, C>,
    data: &mut rl_zero::trainer::PromptDataset,
    test: &[Prompt],
    args: &Args,
    groups: usize,
    steps: usize,
    out: &Path,
) -> Result<()>
where
    C: rl_zero::core::Critic + rl_zero::trainer::Checkpointable,
{
    let started = std::time::Instant::now();
    let before = trainer.evaluate(test, true)?;
    report_eval(0, before.accuracy, before.mean_reward, before.responses);
    let mut after = before.clone();
    let mut done = 0;
    while done < steps {
        let chunk =
            if args.eval_every == 0 { steps - done } else { args.eval_every.min(steps - done) };
        let metrics = trainer.run(data, groups, chunk)?;
        done += chunk;
        if let Some(m) = metrics.last() {
            println!(
                "train step {done:>4}: reward {:.3}, response length {:.1}, {:.1} s/step",
                m.get("reward/mean").unwrap_or(f64::NAN),
                m.get("response/length_mean").unwrap_or(f64::NAN),
                m.get("time/step_s").unwrap_or(f64::NAN),
            );
        }
        after = trainer.evaluate(test, true)?;
        report_eval(done as u64, after.accuracy, after.mean_reward, after.responses);
    }
    let ckpt = trainer.save_checkpoint(&out.join("checkpoints"))?;
    println!(
        "held-out greedy accuracy {:.3} -> {:.3} after {steps} steps in {:.0} s; checkpoint {}",
        before.accuracy,
        after.accuracy,
        started.elapsed().as_secs_f64(),
        ckpt.display()
    );
    Ok(())
}
