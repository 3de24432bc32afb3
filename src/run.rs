//! Running a recipe end to end: loading a model (the embedded tiny model, a GGUF file, a Hugging
//! Face directory, a Hub id or a checkpoint), building the prompt sets, training with periodic
//! greedy evaluation and checkpoints, and evaluating. The `rl-zero` binary and the examples are
//! thin layers over this module.
//!
//! A run file is a [`Recipe`] (`[trainer]`, `[algorithm]`) plus an optional [`RunSettings`]
//! `[run]` table; every table rejects unknown fields, naming the field and the valid names:
//!
//! ```
//! use rl_zero::run::RunFile;
//! let f = RunFile::from_toml("[run]\nsteps = 3\n[algorithm.advantage]\ntype = \"dr_grpo\"")?;
//! assert_eq!(f.run.steps, 3);
//! let err = RunFile::from_toml("[run]\nstep = 3").unwrap_err().to_string();
//! assert!(err.contains("step") && err.contains("prompts_per_step"));
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use rl_core::{AdvantageEstimator, Prompt, ReferenceModel};
use rl_policy::runtime::{self, RuntimeOptions, RuntimeReport};
use rl_policy::tokenizer::Tokenizer;
use rl_policy::{LanguageModel, LmPolicy, ValueModel};
use rl_reward::BuiltinReward;
use rl_reward::tasks::{JsonlFields, arithmetic, load_jsonl};
use rl_trainer::{
    AlgorithmConfig, EvalReport, PromptDataset, Recipe, TrainStep, TrainerConfig, checkpoint,
};
use serde::{Deserialize, Serialize};

/// The workspace root (holds `assets/tiny-arith`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory of the embedded tiny arithmetic model.
pub fn tiny_model_dir() -> PathBuf {
    workspace_root().join("assets/tiny-arith")
}

/// Sets up the process for a run with [`rl_policy::runtime::init`] (allocator, thread pool with
/// the calling thread as worker 0, BLAS backend from `RLZ_BLAS`), pinning one thread for the
/// embedded model.
///
/// The embedded model is so small that a second thread costs more than it gains (measured: a
/// training step takes 2× longer with 2 threads than with 1 on a 2-core machine). When `model`
/// is `None` (the embedded model) and the user set neither `RAYON_NUM_THREADS` nor
/// `CANDLE_NUM_THREADS`, the pool gets one thread; otherwise the user's count or rayon's default.
///
/// Call it first thing in `main`, before any parallel work. Errors: `RLZ_BLAS` names a library
/// that cannot be loaded.
pub fn init_runtime(model: Option<&str>) -> Result<RuntimeReport> {
    let threads = (model.is_none() && runtime::threads_from_env().is_none()).then_some(1);
    let report = runtime::init(RuntimeOptions { threads, ..Default::default() })?;
    tracing::debug!(?report, "runtime");
    Ok(report)
}

/// A loaded model, and how its prompts must be written.
#[derive(Debug)]
pub struct Loaded {
    /// The base model (f32, CPU; the critic is initialised from it).
    pub model: LanguageModel,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// `true` for the embedded tiny model (plain prompts after `<bos>`, no chat template).
    pub tiny: bool,
}

/// Loads `model` in f32 on the CPU: `None` is the embedded tiny model, then a `.gguf` file, a
/// Hugging Face directory, or a Hub repo id at `revision`.
pub fn load_model(model: Option<&str>, revision: &str) -> Result<Loaded> {
    let dev = Device::Cpu;
    match model {
        None => {
            let dir = tiny_model_dir();
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
                model: LanguageModel::from_gguf(path, DType::F32, &dev)
                    .with_context(|| format!("loading {m}"))?,
                tokenizer: Tokenizer::from_gguf_file(path)?,
                tiny: false,
            })
        }
        Some(m) if Path::new(m).is_dir() => Ok(Loaded {
            model: LanguageModel::from_hf_dir(Path::new(m), DType::F32, &dev)
                .with_context(|| format!("loading {m}"))?,
            tokenizer: Tokenizer::from_hf_dir(m)?,
            tiny: false,
        }),
        Some(m) => {
            let (model, dir) = LanguageModel::from_hub(m, revision, DType::F32, &dev)?;
            Ok(Loaded { model, tokenizer: Tokenizer::from_hf_dir(&dir)?, tiny: false })
        }
    }
}

/// The policy directory of a checkpoint: `dir` itself when it holds `config.json`, else
/// `dir/policy` (a `step-NNNNNN` directory), else the latest checkpoint under `dir` (a
/// checkpoint root). `None` when `dir` is none of these.
pub fn checkpoint_policy_dir(dir: &Path) -> Result<Option<PathBuf>> {
    if dir.join("config.json").is_file() {
        return Ok(Some(dir.to_path_buf()));
    }
    if dir.join("policy/config.json").is_file() {
        return Ok(Some(dir.join("policy")));
    }
    match checkpoint::latest(dir)? {
        Some(step) if step.join("policy/config.json").is_file() => Ok(Some(step.join("policy"))),
        _ => Ok(None),
    }
}

/// Loads a model for evaluation: `model` may be a checkpoint (see [`checkpoint_policy_dir`])
/// of a run on `base`, whose tokenizer and prompt style are used unless the checkpoint
/// directory holds its own `tokenizer.json`; otherwise as [`load_model`].
pub fn load_for_eval(model: Option<&str>, base: Option<&str>, revision: &str) -> Result<Loaded> {
    let Some(m) = model else { return load_model(base, revision) };
    let Some(dir) = checkpoint_policy_dir(Path::new(m))? else {
        return load_model(Some(m), revision);
    };
    let weights = LanguageModel::from_hf_dir(&dir, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading checkpoint {}", dir.display()))?;
    if dir.join("tokenizer.json").is_file() {
        return Ok(Loaded {
            model: weights,
            tokenizer: Tokenizer::from_hf_dir(&dir)?,
            tiny: false,
        });
    }
    let base = load_model(base, revision)?;
    Ok(Loaded { model: weights, tokenizer: base.tokenizer, tiny: base.tiny })
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

/// Writes questions for a model: after `<bos>` for the embedded model, through the chat template
/// (one user turn, generation prompt) for the others.
#[derive(Debug)]
pub struct PromptWriter {
    bos: String,
    chat: Option<rl_policy::template::ChatTemplate>,
}

impl PromptWriter {
    /// The writer for `loaded` (fails when a non-embedded model has no chat template).
    pub fn new(loaded: &Loaded) -> Result<Self> {
        let chat = if loaded.tiny { None } else { Some(loaded.tokenizer.chat()?) };
        let bos = loaded.tokenizer.bos_token().unwrap_or_default().to_string();
        Ok(Self { bos, chat })
    }

    /// The prompt text of `question`.
    pub fn write(&self, question: &str) -> Result<String> {
        match &self.chat {
            None => Ok(format!("{}{question}", self.bos)),
            Some(t) => {
                let turn = rl_policy::template::ChatMessage::user(question.to_string());
                Ok(t.render(&[turn], true)?)
            }
        }
    }
}

/// Two-digit addition prompts `(train, held-out eval)`: `eval` held-out pairs, a fixed seeded
/// subset spread over the whole range.
pub fn addition_prompts(
    loaded: &Loaded,
    seed: u64,
    eval: usize,
) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    let writer = PromptWriter::new(loaded)?;
    let write = |a: u32, b: u32| -> Result<Prompt> {
        let q = format!("What is {a} + {b}? Put the final answer in \\boxed{{}}.");
        Ok(Prompt::new(writer.write(&q)?, (a + b).to_string()))
    };
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for a in 10..100 {
        for b in 10..100 {
            if held_out(a, b) { test.push(write(a, b)?) } else { train.push(write(a, b)?) }
        }
    }
    let stride = (test.len() / eval.max(1)).max(1);
    let offset = (seed as usize) % stride;
    let test: Vec<Prompt> = test.into_iter().skip(offset).step_by(stride).take(eval).collect();
    if train.is_empty() || test.is_empty() {
        bail!("empty prompt split");
    }
    Ok((train, test))
}

/// The `[run]` table: what to train, on what, for how long, and where to write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSettings {
    /// Model: a `.gguf` file, a Hugging Face directory or a Hub id; absent = the embedded tiny
    /// arithmetic model.
    pub model: Option<String>,
    /// Hub revision (with a Hub id).
    pub revision: String,
    /// `"addition"` (two-digit addition with the embedded model's held-out split),
    /// `"arithmetic"` (`rl_reward::tasks::arithmetic` level 1, seeded) or a JSONL file with
    /// `prompt` and `answer` fields (the last `eval_prompts` lines are held out).
    pub dataset: String,
    /// Outcome reward (a `BuiltinReward` table, e.g. `{ type = "orz" }`).
    pub reward: BuiltinReward,
    /// Total training steps (a resumed run continues up to this step).
    pub steps: usize,
    /// Prompts (groups) per step; each is sampled `trainer.sampling.n` times.
    pub prompts_per_step: usize,
    /// Held-out prompts evaluated greedily.
    pub eval_prompts: usize,
    /// Evaluate every this many steps (0: only before and after training).
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub save_every: usize,
    /// Output directory: `metrics.jsonl`, `run.toml`, `checkpoints/step-NNNNNN`.
    pub out: PathBuf,
}

impl Default for RunSettings {
    /// The embedded model on `addition`, ORZ reward, 30 steps of 32 prompts, 200 eval prompts
    /// every 10 steps, output in `runs/cli`.
    fn default() -> Self {
        Self {
            model: None,
            revision: "main".into(),
            dataset: "addition".into(),
            reward: BuiltinReward::default(),
            steps: 30,
            prompts_per_step: 32,
            eval_prompts: 200,
            eval_every: 10,
            save_every: 0,
            out: PathBuf::from("runs/cli"),
        }
    }
}

/// A run file: a [`Recipe`] plus the `[run]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunFile {
    /// Run settings.
    pub run: RunSettings,
    /// Loop settings (as [`Recipe::trainer`]).
    pub trainer: TrainerConfig,
    /// Stages (as [`Recipe::algorithm`]).
    pub algorithm: AlgorithmConfig,
}

impl RunFile {
    /// Parses and validates a run file (the trainer settings and the reward).
    pub fn from_toml(text: &str) -> Result<Self> {
        let f: Self = toml::from_str(text)?;
        f.validate()?;
        Ok(f)
    }

    /// Reads a run file (a recipe file is one, with default `[run]` settings).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid run file {}", path.display()))
    }

    /// The run file as TOML.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// A run of `recipe` with default settings.
    pub fn new(recipe: Recipe) -> Self {
        Self { run: RunSettings::default(), trainer: recipe.trainer, algorithm: recipe.algorithm }
    }

    /// The recipe part.
    pub fn recipe(&self) -> Recipe {
        Recipe { trainer: self.trainer.clone(), algorithm: self.algorithm.clone() }
    }

    /// Checks the whole file before anything is written or loaded: the recipe (trainer settings
    /// and stages, with full field paths), the reward and the run sizes.
    pub fn validate(&self) -> Result<()> {
        self.recipe().validate()?;
        self.run.reward.validate()?;
        let r = &self.run;
        for (name, v) in
            [("run.prompts_per_step", r.prompts_per_step), ("run.eval_prompts", r.eval_prompts)]
        {
            if v == 0 {
                bail!("{name}: must be > 0");
            }
        }
        Ok(())
    }
}

/// Training and held-out prompts of `run.dataset`, written for `loaded`.
pub fn prompts(
    loaded: &Loaded,
    run: &RunSettings,
    seed: u64,
) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    let writer = PromptWriter::new(loaded)?;
    let rewrite = |ps: Vec<Prompt>| -> Result<Vec<Prompt>> {
        ps.into_iter().map(|p| Ok(Prompt { text: writer.write(&p.text)?, ..p })).collect()
    };
    match run.dataset.as_str() {
        "addition" => addition_prompts(loaded, seed, run.eval_prompts),
        "arithmetic" => Ok((
            rewrite(arithmetic(4096, 1, seed)?)?,
            rewrite(arithmetic(run.eval_prompts, 1, seed ^ 0x5EED_E7A1)?)?,
        )),
        path => {
            let mut all = rewrite(load_jsonl(Path::new(path), &JsonlFields::default())?)?;
            if all.len() <= run.eval_prompts {
                bail!(
                    "run.dataset: {path} has {} prompts, need more than run.eval_prompts = {}",
                    all.len(),
                    run.eval_prompts
                );
            }
            let test = all.split_off(all.len() - run.eval_prompts);
            Ok((all, test))
        }
    }
}

/// One point of the held-out accuracy curve.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalPoint {
    /// Training steps completed.
    pub step: u64,
    /// Greedy evaluation at that step.
    pub report: EvalReport,
}

/// What [`train`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// Held-out greedy accuracy over training (first point: before training or at resume).
    pub curve: Vec<EvalPoint>,
    /// Step the run started from (non-zero when resumed).
    pub resumed_from: u64,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// `curves.svg` next to the metrics file (reward, accuracy, held-out accuracy and response
    /// length against the step, [`rl_trainer::plot`]); `None` when it could not be drawn (the
    /// reason is logged).
    pub curves: Option<PathBuf>,
}

/// Trains `file`'s recipe: PPO with a critic initialised from the model when the estimator uses
/// values, else the GRPO family. Evaluates greedily on the held-out prompts before training and
/// every `run.eval_every` steps, saves checkpoints under `run.out/checkpoints` every
/// `run.save_every` steps and at the end, writes `run.out/run.toml` and, unless the recipe sets
/// one, `run.out/metrics.jsonl` (training steps and evaluations), and at the end draws it to
/// `curves.svg` next to it. With `resume`, continues from the latest checkpoint (model,
/// optimizers, data order) up to `run.steps`. `log` receives one line per step and evaluation.
pub fn train(file: &RunFile, resume: bool, log: &mut dyn FnMut(&str)) -> Result<TrainOutcome> {
    file.validate()?;
    let run = &file.run;
    let mut recipe = file.recipe();
    std::fs::create_dir_all(&run.out)
        .with_context(|| format!("cannot create {}", run.out.display()))?;
    std::fs::write(run.out.join("run.toml"), file.to_toml()?)?;
    if recipe.trainer.metrics_path.is_none() {
        recipe.trainer.metrics_path = Some(run.out.join("metrics.jsonl"));
    }
    let metrics = recipe.trainer.metrics_path.clone();
    let seed = recipe.trainer.seed;
    let loaded = load_model(run.model.as_deref(), &run.revision)?;
    let (train_set, test) = prompts(&loaded, run, seed)?;
    let critic = if recipe.algorithm.advantage.requires_values() {
        Some(ValueModel::from_model(&loaded.model, seed)?)
    } else {
        None
    };
    let policy = policy(loaded.model, loaded.tokenizer);
    // A KL term or KL in the reward anchors to a frozen copy of the initial policy.
    let reference: Option<Box<dyn ReferenceModel>> =
        if recipe.algorithm.needs_reference() { Some(Box::new(policy.reference()?)) } else { None };
    let reward = run.reward.clone();
    let mut trainer: Box<dyn TrainStep> = match critic {
        Some(critic) => Box::new(recipe.ppo_with_reference(policy, critic, reward, reference)?),
        None => Box::new(recipe.grpo_with_reference(policy, reward, reference)?),
    };
    let mut data = PromptDataset::new(train_set, seed, true)?;
    let root = run.out.join("checkpoints");
    let mut resumed_from = 0;
    if resume {
        match trainer.resume(&root)? {
            Some(state) => {
                if let Some(pos) = state.data {
                    data.seek(pos);
                }
                resumed_from = state.step;
                log(&format!("resumed from step {} ({})", state.step, root.display()));
            }
            None => log(&format!("no checkpoint under {}: starting afresh", root.display())),
        }
    }
    let mut curve = Vec::new();
    let mut evaluate = |t: &mut dyn TrainStep, log: &mut dyn FnMut(&str)| -> Result<()> {
        let step = t.state().step;
        let report = t.evaluate(&test, true)?;
        log(&format!(
            "eval step {step:>4}: greedy accuracy {:.3} (mean reward {:.3}, {} held-out prompts)",
            report.accuracy, report.mean_reward, report.responses
        ));
        curve.push(EvalPoint { step, report });
        Ok(())
    };
    evaluate(trainer.as_mut(), log)?;
    let mut checkpoint = None;
    while (trainer.state().step as usize) < run.steps {
        let report = trainer.step_from(&mut data, run.prompts_per_step)?;
        let m = &report.metrics;
        log(&format!(
            "train step {:>4}: reward {:.3}, response length {:.1}, {:.2} s",
            report.step,
            m.get("reward/mean").unwrap_or(f64::NAN),
            m.get("response/length_mean").unwrap_or(f64::NAN),
            m.get("time/step_s").unwrap_or(f64::NAN),
        ));
        let step = report.step as usize;
        let last = step >= run.steps;
        if last || (run.eval_every > 0 && step.is_multiple_of(run.eval_every)) {
            evaluate(trainer.as_mut(), log)?;
        }
        if last || (run.save_every > 0 && step.is_multiple_of(run.save_every)) {
            checkpoint = Some(trainer.save_checkpoint(&root)?);
        }
    }
    let checkpoint = match checkpoint {
        Some(c) => c,
        // Nothing left to train (resumed at or past `steps`): the latest checkpoint, or a new one.
        None => match checkpoint::latest(&root)? {
            Some(c) => c,
            None => trainer.save_checkpoint(&root)?,
        },
    };
    log(&format!("checkpoint {}", checkpoint.display()));
    // The run itself succeeded: a plot that cannot be drawn is logged, not an error.
    let curves = metrics.and_then(|m| match rl_trainer::plot::plot_run(&m) {
        Ok(svg) => {
            log(&format!("curves {}", svg.display()));
            Some(svg)
        }
        Err(e) => {
            log(&format!("no curves: {e}"));
            None
        }
    });
    Ok(TrainOutcome { curve, resumed_from, checkpoint, curves })
}

/// Greedy accuracy of `model` (see [`load_for_eval`]: a model or a checkpoint of a run on
/// `file.run.model`) on `file.run.eval_prompts` held-out prompts of `file.run.dataset`, scored
/// with `file.run.reward` and sampled with `file.trainer.sampling` (temperature 0).
pub fn eval(file: &RunFile, model: Option<&str>) -> Result<EvalReport> {
    file.validate()?;
    let run = &file.run;
    let loaded = load_for_eval(model, run.model.as_deref(), &run.revision)?;
    let seed = file.trainer.seed;
    let (_, test) = prompts(&loaded, run, seed)?;
    let mut policy = policy(loaded.model, loaded.tokenizer);
    let sampling = rl_trainer::eval::eval_sampling(&file.trainer, 0, true);
    Ok(rl_trainer::evaluate(
        &mut policy,
        &file.run.reward,
        &test,
        &sampling,
        file.trainer.accuracy_threshold,
    )?)
}
