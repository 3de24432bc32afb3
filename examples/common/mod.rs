//! Plumbing shared by the training examples (`ppo_gae`, `dr_grpo`): command-line options, loading
//! the policy (the embedded tiny model, a GGUF file, a Hugging Face directory or a Hub id), the
//! two-digit addition task with its held-out split, and the before/after report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use rl_zero::core::Prompt;
use rl_zero::policy::tokenizer::Tokenizer;
use rl_zero::policy::{LanguageModel, LmPolicy};

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

/// The embedded model is so small that candle's spinning thread pool costs more than it gains
/// (measured: a training step takes 2× longer with 2 threads than with 1 on a 2-core machine).
/// Unless the user set `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS`, run it on one thread.
pub fn pin_threads_for_tiny_model(args: &Args) {
    let unset = |k| std::env::var_os(k).is_none();
    if args.model.is_none() && unset("RAYON_NUM_THREADS") && unset("CANDLE_NUM_THREADS") {
        // SAFETY: called first thing in `main`, before any other thread exists, so no other
        // thread can be reading the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", "1");
        }
    }
}

/// Which model the run uses, and how its prompts must be written.
pub struct Loaded {
    /// The base model (the critic is initialised from it).
    pub model: LanguageModel,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// `true` for the embedded tiny model (plain prompts, short answers).
    pub tiny: bool,
}

/// The workspace root (examples run from anywhere).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads the model named by `--model` (or the embedded default) in f32 on the CPU.
pub fn load(args: &Args) -> Result<Loaded> {
    let dev = Device::Cpu;
    match args.model.as_deref() {
        None => {
            let dir = workspace_root().join("assets/tiny-arith");
            Ok(Loaded {
                model: LanguageModel::from_hf_dir(&dir, DType::F32, &dev)
                    .with_context(|| format!("loading {}", dir.display()))?,
                tokenizer: Tokenizer::from_hf_dir(&dir)?,
                tiny: true,
            })
        }
        Some(m) if m.ends_with(".gguf") => {
            let path = Path::new(m);
            Ok(Loaded {
                model: LanguageModel::from_gguf(path, DType::F32, &dev)?,
                tokenizer: Tokenizer::from_gguf_file(path)?,
                tiny: false,
            })
        }
        Some(m) if Path::new(m).is_dir() => Ok(Loaded {
            model: LanguageModel::from_hf_dir(Path::new(m), DType::F32, &dev)?,
            tokenizer: Tokenizer::from_hf_dir(m)?,
            tiny: false,
        }),
        Some(m) => {
            let (model, dir) = LanguageModel::from_hub(m, &args.revision, DType::F32, &dev)?;
            Ok(Loaded { model, tokenizer: Tokenizer::from_hf_dir(&dir)?, tiny: false })
        }
    }
}

/// A policy over `model` that decodes with `tokenizer` and stops on its EOS ids.
pub fn policy(model: LanguageModel, tokenizer: Tokenizer) -> LmPolicy {
    let eos = tokenizer.eos_ids().to_vec();
    let mut p = LmPolicy::new(model).with_tokenizer(tokenizer);
    if !eos.is_empty() {
        p = p.with_eos_ids(eos);
    }
    p
}

/// `true` for the pairs held out of pretraining (and of RL training): the evaluation set of the
/// embedded model (`docs/tiny-model.md`).
pub fn held_out(a: u32, b: u32) -> bool {
    (a * 31 + b * 17) % 97 < 10
}

/// Two-digit addition prompts `(train, held-out eval)`, written for the model: the embedded model
/// takes the raw question after `<bos>`; other models get it through their chat template.
pub fn addition_prompts(
    loaded: &Loaded,
    seed: u64,
    eval: usize,
) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    let chat = if loaded.tiny { None } else { Some(loaded.tokenizer.chat()?) };
    let bos = loaded.tokenizer.bos_token().unwrap_or_default().to_string();
    let write = |a: u32, b: u32| -> Result<Prompt> {
        let q = format!("What is {a} + {b}? Put the final answer in \\boxed{{}}.");
        let text = match &chat {
            None => format!("{bos}{q}"),
            Some(t) => t.render(&[rl_zero::policy::template::ChatMessage::user(q)], true)?,
        };
        Ok(Prompt::new(text, (a + b).to_string()))
    };
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for a in 10..100 {
        for b in 10..100 {
            if held_out(a, b) { test.push(write(a, b)?) } else { train.push(write(a, b)?) }
        }
    }
    // A fixed, seeded subset of the held-out pairs, spread over the whole range.
    let stride = (test.len() / eval.max(1)).max(1);
    let offset = (seed as usize) % stride;
    let test: Vec<Prompt> = test.into_iter().skip(offset).step_by(stride).take(eval).collect();
    if train.is_empty() || test.is_empty() {
        bail!("empty prompt split");
    }
    Ok((train, test))
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
