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
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use rl_core::{AdvantageEstimator, Prompt, ReferenceModel};
use rl_policy::runtime::{self, RuntimeOptions, RuntimeReport};
use rl_policy::tokenizer::Tokenizer;
use rl_policy::{LanguageModel, LmPolicy, ValueModel};
use rl_reward::BuiltinReward;
use rl_reward::tasks::{JsonlFields, arithmetic, load_jsonl};
use rl_rollout::{RemoteSampler, RolloutConfig, WeightSyncConfig};
use rl_trainer::{
    AlgorithmConfig, EvalReport, PromptDataset, Recipe, TrainStep, TrainerConfig, checkpoint,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The workspace root (holds `assets/tiny-arith`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory of the embedded tiny arithmetic model: `assets/tiny-arith` of the source tree the
/// binary was built from when it is still there, else a copy of the files compiled into the
/// binary, written once under the system temp directory (an installed `rl-zero` or a moved
/// checkout keeps working; see [`embedded_tiny_model_dir`]).
pub fn tiny_model_dir() -> PathBuf {
    let source = workspace_root().join("assets/tiny-arith");
    if source.join("config.json").is_file() {
        return source;
    }
    // On failure the source path is returned: loading it then names the missing file.
    embedded_tiny_model_dir(&std::env::temp_dir()).unwrap_or(source)
}

/// The files of `assets/tiny-arith`, compiled into the binary (520 kB).
const TINY_FILES: [(&str, &[u8]); 5] = [
    ("config.json", include_bytes!("../assets/tiny-arith/config.json")),
    ("generation_config.json", include_bytes!("../assets/tiny-arith/generation_config.json")),
    ("model.safetensors", include_bytes!("../assets/tiny-arith/model.safetensors")),
    ("tokenizer.json", include_bytes!("../assets/tiny-arith/tokenizer.json")),
    ("tokenizer_config.json", include_bytes!("../assets/tiny-arith/tokenizer_config.json")),
];

/// Writes the embedded tiny model's files to `parent/rl-zero-tiny-arith-<content hash>/` (once:
/// an existing complete copy is reused; a new one is written to a temporary sibling and renamed
/// into place, so concurrent processes never see half a model) and returns that directory.
pub fn embedded_tiny_model_dir(parent: &Path) -> Result<PathBuf> {
    // FNV-1a over every file: the directory name changes whenever the model does.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in TINY_FILES {
        for b in name.as_bytes().iter().chain(bytes.iter()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let dir = parent.join(format!("rl-zero-tiny-arith-{h:016x}"));
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let tmp = tempfile::Builder::new()
        .prefix("rl-zero-tiny-arith-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory under {}", parent.display()))?;
    for (name, bytes) in TINY_FILES {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match std::fs::rename(tmp.path(), &dir) {
        Ok(()) => {
            let _ = tmp.keep();
            Ok(dir)
        }
        // Another process renamed its copy first: use it.
        Err(_) if dir.join("config.json").is_file() => Ok(dir),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
}

/// The run driver's refusals, typed so that callers can match on them (other failures are
/// [`anyhow::Error`]s carrying their cause and the file they concern).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A fresh run into an output directory that already holds files: another run's metrics,
    /// checkpoints and curves would be mixed with this one's.
    #[error(
        "output directory {} is not empty (holds {}): {}",
        dir.display(),
        entries.join(", "),
        if *resumable {
            "pass --resume to continue its run, or --overwrite to delete its run files \
             (run.toml, metrics.jsonl, curves.svg, checkpoints/) and start again"
        } else {
            "pass --overwrite to delete its run files (metrics.jsonl, curves.svg, checkpoints/) \
             and start again, or choose another --out"
        }
    )]
    OutDirNotEmpty {
        /// The output directory.
        dir: PathBuf,
        /// What it holds (names of its entries, at most 8).
        entries: Vec<String>,
        /// Whether the caller can resume (the `rl-zero train` CLI) or only overwrite.
        resumable: bool,
    },
    /// A resume with a run file that differs from the run's saved `run.toml`.
    #[error(
        "--resume with a run file that differs from {}: {}; resume with the saved run file, or \
         pass --allow-config-change to continue with the new settings",
        saved.display(),
        changes.join("; ")
    )]
    ConfigChanged {
        /// The run's saved `run.toml`.
        saved: PathBuf,
        /// One `field.path: old -> new` entry per differing setting.
        changes: Vec<String>,
    },
    /// A model named by a local path that does not exist (and that is not shaped like a
    /// Hugging Face Hub id `owner/name`).
    #[error(
        "model {}: no such file or directory (a Hugging Face Hub id has the form `owner/name`)",
        path.display()
    )]
    ModelNotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// A checkpoint that this run file cannot continue.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
}

/// `true` when `s` has the shape of a Hugging Face Hub repo id `owner/name`: two non-empty
/// parts of ASCII letters, digits, `-`, `_` and `.`, neither starting with `.` or `-`, and not
/// a `.gguf` file name.
///
/// ```
/// use rl_zero::run::is_hub_id;
/// assert!(is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
/// assert!(!is_hub_id("./x") && !is_hub_id("/nonexistent/dir") && !is_hub_id("../a/b"));
/// assert!(!is_hub_id("gpt2") && !is_hub_id("owner/model.gguf"));
/// ```
pub fn is_hub_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match s.split_once('/') {
        Some((owner, name)) => part(owner) && part(name) && !s.ends_with(".gguf"),
        None => false,
    }
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

/// Loads `model` in f32 on the CPU: `None` is the embedded tiny model, then an existing `.gguf`
/// file or Hugging Face directory, or (only when no such path exists and the string is shaped
/// `owner/name`, [`is_hub_id`]) a Hub repo id at `revision`.
///
/// Errors: [`RunError::ModelNotFound`] naming the path for any other string that is not an
/// existing path (`/nonexistent/dir`, `./x`, `x.gguf`): a local path never becomes a Hub
/// request; an existing file that is not `.gguf`; the loaders' errors.
pub fn load_model(model: Option<&str>, revision: &str) -> Result<Loaded> {
    let dev = Device::Cpu;
    let Some(m) = model else {
        let dir = tiny_model_dir();
        return Ok(Loaded {
            model: LanguageModel::from_hf_dir(&dir, DType::F32, &dev)
                .with_context(|| format!("loading {}", dir.display()))?,
            tokenizer: Tokenizer::from_hf_dir(&dir)?,
            tiny: true,
        });
    };
    let path = Path::new(m);
    if path.is_dir() {
        return Ok(Loaded {
            model: LanguageModel::from_hf_dir(path, DType::F32, &dev)
                .with_context(|| format!("loading {m}"))?,
            tokenizer: Tokenizer::from_hf_dir(m)?,
            tiny: false,
        });
    }
    if path.is_file() {
        if !m.ends_with(".gguf") {
            bail!(
                "model {m}: a file that is not `.gguf` (give a .gguf file, a Hugging Face directory or a Hub id)"
            );
        }
        return Ok(Loaded {
            model: LanguageModel::from_gguf(path, DType::F32, &dev)
                .with_context(|| format!("loading {m}"))?,
            tokenizer: Tokenizer::from_gguf_file(path)?,
            tiny: false,
        });
    }
    if !is_hub_id(m) {
        return Err(RunError::ModelNotFound { path: path.to_path_buf() }.into());
    }
    let (model, dir) =
        LanguageModel::from_hub(m, revision, DType::F32, &dev).with_context(|| {
            format!("model {m}: not a local path; loading it as a Hugging Face Hub id")
        })?;
    Ok(Loaded { model, tokenizer: Tokenizer::from_hf_dir(&dir)?, tiny: false })
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

/// Writes questions for a model: after `<bos>` for the embedded model and for a model without a
/// chat template (a base model), through the chat template (one user turn, generation prompt)
/// for the others.
#[derive(Debug)]
pub struct PromptWriter {
    bos: String,
    chat: Option<rl_policy::template::ChatTemplate>,
}

impl PromptWriter {
    /// The writer for `loaded` (fails when the model's chat template does not compile).
    pub fn new(loaded: &Loaded) -> Result<Self> {
        // The embedded model, and any model whose tokenizer has no chat template (a base
        // model), reads `<bos>` + the question; a template that exists must compile.
        let chat = match (loaded.tiny, loaded.tokenizer.chat_template()) {
            (false, Some(_)) => Some(loaded.tokenizer.chat()?),
            _ => None,
        };
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

/// The prompts a run evaluates on (`run.eval_split`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalSplit {
    /// The dataset's held-out prompts (never trained on).
    #[default]
    Test,
    /// `run.eval_prompts` prompts removed from the training split (spread over it by a seeded
    /// stride): tune on these, report on `Test`.
    Validation,
}

impl EvalSplit {
    /// `true` for [`EvalSplit::Test`] (the default, left out of a saved `run.toml`).
    pub fn is_test(&self) -> bool {
        *self == EvalSplit::Test
    }
}

/// Removes `n` prompts from `train`, spread over it by a stride with a seeded offset, and returns
/// them in order (the validation split of [`EvalSplit::Validation`]).
fn take_spread(train: &mut Vec<Prompt>, n: usize, seed: u64) -> Result<Vec<Prompt>> {
    if n == 0 || n >= train.len() {
        bail!(
            "run.eval_split = \"validation\": run.eval_prompts = {n} must be between 1 and the \
             {} training prompts minus one",
            train.len()
        );
    }
    let stride = train.len() / n;
    let offset = (seed as usize) % stride;
    let mut picked = Vec::with_capacity(n);
    let mut rest = Vec::with_capacity(train.len() - n);
    for (i, p) in std::mem::take(train).into_iter().enumerate() {
        if i >= offset && (i - offset).is_multiple_of(stride) && picked.len() < n {
            picked.push(p);
        } else {
            rest.push(p);
        }
    }
    *train = rest;
    Ok(picked)
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
    /// Which prompts the evaluations use: `"test"` (the held-out split, the default) or
    /// `"validation"` (`eval_prompts` prompts taken out of the training split, for tuning a
    /// recipe without looking at the held-out prompts).
    #[serde(skip_serializing_if = "EvalSplit::is_test")]
    pub eval_split: EvalSplit,
    /// Evaluate every this many steps (0: only before and after training).
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub save_every: usize,
    /// Keep only the newest this many `checkpoints/step-NNNNNN` directories: older ones are
    /// deleted after each successful save (never the one `checkpoints/latest` names). Absent
    /// (the default): keep every checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
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
            eval_split: EvalSplit::Test,
            eval_every: 10,
            save_every: 0,
            keep_last: None,
            out: PathBuf::from("runs/cli"),
        }
    }
}

/// Upper bound on `run.prompts_per_step × trainer.sampling.n` (responses sampled per step),
/// checked by [`RunFile::validate`] so that a typo cannot ask for an unbounded batch.
pub const MAX_RESPONSES_PER_STEP: usize = 1 << 20;

/// A run file: a [`Recipe`] plus the `[run]` table and, to sample with an inference engine,
/// the `[rollout]` and `[weight_sync]` tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunFile {
    /// Run settings.
    pub run: RunSettings,
    /// Loop settings (as [`Recipe::trainer`]).
    pub trainer: TrainerConfig,
    /// Stages (as [`Recipe::algorithm`]).
    pub algorithm: AlgorithmConfig,
    /// Where rollouts come from (`[rollout]`, `type = "local"` by default: the trained policy
    /// in this process; `"vllm"`, `"sglang"`, `"llama_cpp"`: a running engine over HTTP,
    /// `docs/rollout.md`). Not part of the recipe: it changes where samples come from, not
    /// what a step computes.
    #[serde(skip_serializing_if = "is_local")]
    pub rollout: RolloutConfig,
    /// How the trained weights reach the engine (`[weight_sync]`; required with an engine:
    /// `type = "disk"`).
    #[serde(skip_serializing_if = "is_no_sync")]
    pub weight_sync: WeightSyncConfig,
}

fn is_local(r: &RolloutConfig) -> bool {
    *r == RolloutConfig::Local
}

fn is_no_sync(w: &WeightSyncConfig) -> bool {
    *w == WeightSyncConfig::None
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
        Self { trainer: recipe.trainer, algorithm: recipe.algorithm, ..Self::default() }
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
        self.rollout.validate("rollout")?;
        self.weight_sync.validate("weight_sync")?;
        match (&self.rollout, &self.weight_sync) {
            (RolloutConfig::Local, WeightSyncConfig::None) => {}
            (RolloutConfig::Local, _) => bail!(
                "weight_sync: only used with an inference engine ([rollout] type = \"vllm\", \
                 \"sglang\" or \"llama_cpp\"); the local sampler shares the trained weights"
            ),
            (_, WeightSyncConfig::None) => bail!(
                "weight_sync: an inference engine needs a weight sync ([weight_sync] type = \
                 \"disk\"), or it samples from the initial weights at every step"
            ),
            (_, WeightSyncConfig::Nccl) => {
                bail!("weight_sync.type: \"nccl\" is not built yet (use \"disk\")")
            }
            (RolloutConfig::LlamaCpp(_), WeightSyncConfig::Disk(_)) => bail!(
                "weight_sync: llama.cpp cannot reload weights in place; train with vllm or \
                 sglang (llama.cpp serves evaluation and frozen-policy sampling)"
            ),
            _ => {}
        }
        let r = &self.run;
        for (name, v) in
            [("run.prompts_per_step", r.prompts_per_step), ("run.eval_prompts", r.eval_prompts)]
        {
            if v == 0 {
                bail!("{name}: must be > 0");
            }
        }
        let responses = r.prompts_per_step.saturating_mul(self.trainer.sampling.n);
        if responses > MAX_RESPONSES_PER_STEP {
            bail!(
                "run.prompts_per_step × trainer.sampling.n = {} × {} = {responses} responses per \
                 step: at most {MAX_RESPONSES_PER_STEP}",
                r.prompts_per_step,
                self.trainer.sampling.n
            );
        }
        if r.keep_last == Some(0) {
            bail!("run.keep_last: must be >= 1 (leave it out to keep every checkpoint)");
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
    let (mut train, test) = match run.dataset.as_str() {
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
    }?;
    match run.eval_split {
        EvalSplit::Test => Ok((train, test)),
        EvalSplit::Validation => {
            let validation = take_spread(&mut train, run.eval_prompts, seed)?;
            Ok((train, validation))
        }
    }
}

/// The engine sampler and weight sync of `file.rollout` / `file.weight_sync` (`None` for local
/// rollouts). The preflight checks the server, model name, tokenizer and context; the log-prob
/// probe runs after the trainer's first publish (the engine may have been started from other
/// weights of the same architecture: the trainer publishes its own before the first rollout).
fn connect_engine(
    file: &RunFile,
    codec: Arc<dyn rl_core::TokenCodec>,
    pad_id: u32,
    messages: &mut Vec<String>,
) -> Result<Option<(RemoteSampler, rl_rollout::DiskSync, usize)>> {
    let Some((engine, cfg)) = file.rollout.engine() else { return Ok(None) };
    let WeightSyncConfig::Disk(disk) = &file.weight_sync else {
        bail!("weight_sync: an inference engine needs [weight_sync] type = \"disk\"");
    };
    let sampler = RemoteSampler::connect(engine, cfg.clone(), codec, None)
        .with_context(|| format!("rollout: connecting to {} at {:?}", engine.name(), cfg.urls))?
        .with_pad_id(pad_id);
    messages.push(format!(
        "rollout: {} at {:?} (preflight: {:?})",
        engine.name(),
        cfg.urls,
        sampler.preflight_report()
    ));
    let sync = sampler.disk_sync(disk.clone())?;
    Ok(Some((sampler, sync, disk.sync_every)))
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

/// How [`train_with`] treats an output directory that already holds a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainOptions {
    /// Continue from the latest checkpoint under `run.out/checkpoints` (the run file must equal
    /// the saved `run.toml`, up to the fields [`config_changes`] ignores).
    pub resume: bool,
    /// Delete the run files in `run.out` ([`clear_run_files`]) and start again; other files in
    /// the directory are kept.
    pub overwrite: bool,
    /// With `resume`: accept a run file that differs from the saved `run.toml` (each change
    /// is logged, and `run.toml` is rewritten).
    pub allow_config_change: bool,
}

/// Settings that may change between a run and its resumption: they do not change what a step
/// computes (`run.steps` is the total to reach, `run.out` where the run lives).
const RESUMABLE_CHANGES: [&str; 7] = [
    "run.steps",
    "run.out",
    "run.eval_every",
    "run.save_every",
    "run.keep_last",
    "rollout",
    "weight_sync",
];

/// The settings in which `new` differs from `old`, one `field.path: old -> new` entry per
/// differing value (values as JSON, `absent` for an unset one), comparing the parsed files, not
/// their text. `run.steps`, `run.out`, `run.eval_every`, `run.save_every` and `run.keep_last`
/// are not compared.
///
/// ```
/// use rl_zero::run::{RunFile, config_changes};
/// let old = RunFile::from_toml("[trainer.actor]\nlr = 1e-4")?;
/// let new = RunFile::from_toml("[run]\nsteps = 99\n[trainer.actor]\nlr = 1e-2")?;
/// assert_eq!(config_changes(&old, &new)?, ["trainer.actor.lr: 0.0001 -> 0.01"]);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn config_changes(old: &RunFile, new: &RunFile) -> Result<Vec<String>> {
    fn walk(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
        if RESUMABLE_CHANGES.contains(&path) || old == new {
            return;
        }
        if let (Some(Value::Object(o)), Some(Value::Object(n))) = (old, new) {
            let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for k in keys {
                let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(&sub, o.get(k), n.get(k), out);
            }
            return;
        }
        let show = |v: Option<&Value>| match v {
            None | Some(Value::Null) => "absent".to_string(),
            Some(v) => v.to_string(),
        };
        if show(old) != show(new) {
            out.push(format!("{path}: {} -> {}", show(old), show(new)));
        }
    }
    let mut out = Vec::new();
    walk("", Some(&serde_json::to_value(old)?), Some(&serde_json::to_value(new)?), &mut out);
    Ok(out)
}

/// The run files a training run writes into its output directory `dir`: `run.toml`, the metrics
/// file (`metrics`, default `dir/metrics.jsonl`), `curves.svg` next to it and `checkpoints/`.
pub fn run_files(dir: &Path, metrics: Option<&Path>) -> Vec<PathBuf> {
    let metrics = metrics.map_or_else(|| dir.join("metrics.jsonl"), Path::to_path_buf);
    let curves = rl_trainer::plot::curves_path(&metrics);
    vec![dir.join("run.toml"), metrics, curves, dir.join("checkpoints")]
}

/// Refuses a fresh run into `dir` when it is a non-empty directory, or when the metrics file
/// `metrics` (which would be appended to) already holds data: [`RunError::OutDirNotEmpty`]
/// (`resumable` picks the advice: `--resume` or `--overwrite`). A missing or empty `dir` is fine.
pub fn check_out_dir(dir: &Path, metrics: Option<&Path>, resumable: bool) -> Result<()> {
    let mut entries = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
                entries.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    }
    if let Some(m) = metrics.filter(|m| !m.starts_with(dir))
        && std::fs::metadata(m).is_ok_and(|md| md.len() > 0)
    {
        entries.push(m.display().to_string());
    }
    if entries.is_empty() {
        return Ok(());
    }
    entries.sort();
    entries.truncate(8);
    Err(RunError::OutDirNotEmpty { dir: dir.to_path_buf(), entries, resumable }.into())
}

/// Deletes the run files of `dir` ([`run_files`]) that exist; everything else in `dir` is kept.
/// Returns what was deleted.
pub fn clear_run_files(dir: &Path, metrics: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for p in run_files(dir, metrics) {
        let r = match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) => continue,
        };
        r.with_context(|| format!("--overwrite: cannot delete {}", p.display()))?;
        removed.push(p);
    }
    Ok(removed)
}

/// Before a resume: the run file must equal the saved `run.toml` (unless `allow`, which logs the
/// changes), and the latest checkpoint must fit the recipe (a critic for a value-based
/// estimator). Reads only.
fn check_resume(file: &RunFile, root: &Path, allow: bool, log: &mut dyn FnMut(&str)) -> Result<()> {
    let saved_path = file.run.out.join("run.toml");
    if saved_path.is_file() {
        match RunFile::from_toml_file(&saved_path) {
            Ok(saved) => {
                let changes = config_changes(&saved, file)?;
                if !changes.is_empty() && !allow {
                    return Err(RunError::ConfigChanged { saved: saved_path, changes }.into());
                }
                for c in changes {
                    log(&format!("resuming with a changed setting: {c}"));
                }
            }
            Err(e) if allow => log(&format!(
                "cannot compare with the saved run file ({e:#}): resuming with the given one"
            )),
            Err(e) => {
                return Err(e.context(format!(
                    "cannot compare the run file with the saved {} (pass --allow-config-change \
                     to resume anyway)",
                    saved_path.display()
                )));
            }
        }
    } else if checkpoint::latest(root)?.is_some() {
        log(&format!(
            "no {} to compare the run file with: resuming with the given one",
            saved_path.display()
        ));
    }
    if let Some(dir) = checkpoint::latest(root)? {
        let has_critic = dir.join("critic_optim.safetensors").is_file();
        if file.algorithm.advantage.requires_values() && !has_critic {
            return Err(RunError::Checkpoint {
                path: dir,
                reason: "has no critic (the run trained without one), but the recipe's \
                         estimator needs critic values"
                    .into(),
            }
            .into());
        }
    }
    Ok(())
}

/// [`train_with`] without `--overwrite`: a fresh run (`resume = false`) refuses a non-empty
/// output directory ([`RunError::OutDirNotEmpty`]).
pub fn train(file: &RunFile, resume: bool, log: &mut dyn FnMut(&str)) -> Result<TrainOutcome> {
    train_with(file, TrainOptions { resume, ..TrainOptions::default() }, log)
}

/// Trains `file`'s recipe: PPO with a critic initialised from the model when the estimator uses
/// values, else the GRPO family. Evaluates greedily on the held-out prompts before training and
/// every `run.eval_every` steps, saves checkpoints under `run.out/checkpoints` every
/// `run.save_every` steps and at the end (keeping the newest `run.keep_last`), writes
/// `run.out/run.toml` and, unless the recipe sets one, `run.out/metrics.jsonl` (training steps
/// and evaluations), and at the end draws it to `curves.svg` next to it. With `opts.resume`,
/// continues from the latest checkpoint (model, optimizers, data order) up to `run.steps`.
/// `log` receives one line per step and evaluation.
///
/// Everything is checked before anything is written: the run file, the output directory (a
/// fresh run needs it empty unless `opts.overwrite`, [`check_out_dir`]; a resumed run needs the
/// saved `run.toml` to match, [`config_changes`]), the model, the dataset and the checkpoint. A
/// run that fails there leaves the disk as it was.
pub fn train_with(
    file: &RunFile,
    opts: TrainOptions,
    log: &mut dyn FnMut(&str),
) -> Result<TrainOutcome> {
    file.validate()?;
    if opts.resume && opts.overwrite {
        bail!("resume and overwrite exclude each other");
    }
    let run = &file.run;
    let mut recipe = file.recipe();
    if recipe.trainer.metrics_path.is_none() {
        recipe.trainer.metrics_path = Some(run.out.join("metrics.jsonl"));
    }
    let metrics = recipe.trainer.metrics_path.clone();
    let root = run.out.join("checkpoints");
    // Data parallel: `RANK` / `WORLD_SIZE` (torchrun, Slurm, `rl-zero launch`) make this process
    // one rank of a group. Rank 0 owns the output directory (checks, run.toml, metrics,
    // evaluations, checkpoints, curves); every rank trains and resumes.
    let group = rl_dist::init()?;
    let (rank, world) = (group.rank(), group.world_size());
    let main_rank = rank == 0;
    // 1. Read-only checks: the output directory, the model, the dataset.
    if !main_rank {
    } else if opts.resume {
        check_resume(file, &root, opts.allow_config_change, log)?;
    } else if !opts.overwrite {
        check_out_dir(&run.out, metrics.as_deref(), true)?;
    }
    let seed = recipe.trainer.seed;
    let loaded = load_model(run.model.as_deref(), &run.revision)?;
    let (train_set, test) = prompts(&loaded, run, seed)?;
    let mut data = PromptDataset::new(train_set, seed, true)?;
    // 2. The trainer (it opens the metrics file) and the checkpoint; undone on failure.
    if opts.overwrite && main_rank {
        for p in clear_run_files(&run.out, metrics.as_deref())? {
            log(&format!("--overwrite: deleted {}", p.display()));
        }
    }
    let existed = (run.out.exists(), metrics.as_ref().is_some_and(|m| m.exists()));
    let mut messages = Vec::new();
    let built = (|| -> Result<(Box<dyn TrainStep>, u64)> {
        let critic = if recipe.algorithm.advantage.requires_values() {
            Some(ValueModel::from_model(&loaded.model, seed)?)
        } else {
            None
        };
        let codec: Arc<dyn rl_core::TokenCodec> = Arc::new(loaded.tokenizer.clone());
        let policy = policy(loaded.model, loaded.tokenizer);
        let engine = connect_engine(file, codec, policy.pad_id(), &mut messages)?;
        // A KL term or KL in the reward anchors to a frozen copy of the initial policy.
        let reference: Option<Box<dyn ReferenceModel>> = if recipe.algorithm.needs_reference() {
            Some(Box::new(policy.reference()?))
        } else {
            None
        };
        let reward = run.reward.clone();
        let mut builder = recipe.builder(policy, reward)?.maybe_reference(reference);
        if world > 1 {
            builder = builder.process_group(group);
        }
        if let Some((sampler, sync, every)) = engine {
            builder = builder.sampler(sampler).weight_sync(sync, every);
        }
        let mut trainer: Box<dyn TrainStep> = match critic {
            Some(critic) => {
                let mut algorithm = recipe.algorithm.clone();
                algorithm.resolve(&recipe.trainer);
                Box::new(builder.critic(critic, algorithm.value_loss).build()?)
            }
            None => Box::new(builder.build()?),
        };
        let mut resumed_from = 0;
        if opts.resume {
            match trainer.resume(&root)? {
                Some(state) => {
                    if let Some(pos) = state.data {
                        data.seek(pos);
                    }
                    resumed_from = state.step;
                    messages.push(format!("resumed from step {} ({})", state.step, root.display()));
                }
                None => messages
                    .push(format!("no checkpoint under {}: starting afresh", root.display())),
            }
        }
        Ok((trainer, resumed_from))
    })();
    let (mut trainer, resumed_from) = match built {
        Ok(b) => b,
        Err(e) => {
            // Remove what opening the metrics file created (only if still empty).
            if let Some(m) = metrics.as_ref().filter(|_| !existed.1)
                && std::fs::metadata(m).is_ok_and(|md| md.len() == 0)
            {
                let _ = std::fs::remove_file(m);
            }
            if !existed.0 {
                let _ = std::fs::remove_dir(&run.out);
            }
            return Err(e);
        }
    };
    for m in &messages {
        log(m);
    }
    // 3. Writes (rank 0): the effective run file, then training.
    if main_rank {
        std::fs::create_dir_all(&run.out)
            .with_context(|| format!("cannot create {}", run.out.display()))?;
        let run_toml = run.out.join("run.toml");
        std::fs::write(&run_toml, file.to_toml()?)
            .with_context(|| format!("cannot write {}", run_toml.display()))?;
    }
    let mut curve = Vec::new();
    let split = match run.eval_split {
        EvalSplit::Test => "held-out",
        EvalSplit::Validation => "validation",
    };
    let mut evaluate = |t: &mut dyn TrainStep, log: &mut dyn FnMut(&str)| -> Result<()> {
        let step = t.state().step;
        let report = t.evaluate(&test, true)?;
        log(&format!(
            "eval step {step:>4}: greedy accuracy {:.3} (mean reward {:.3}, {} {split} prompts)",
            report.accuracy, report.mean_reward, report.responses
        ));
        curve.push(EvalPoint { step, report });
        Ok(())
    };
    let save = |t: &dyn TrainStep, log: &mut dyn FnMut(&str)| -> Result<PathBuf> {
        let dir = t
            .save_checkpoint(&root)
            .with_context(|| format!("saving a checkpoint under {}", root.display()))?;
        if let Some(keep) = run.keep_last {
            for old in checkpoint::prune(&root, keep)? {
                log(&format!("keep_last = {keep}: deleted {}", old.display()));
            }
        }
        Ok(dir)
    };
    if main_rank {
        evaluate(trainer.as_mut(), log)?;
    }
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
        if !main_rank {
            continue;
        }
        if last || (run.eval_every > 0 && step.is_multiple_of(run.eval_every)) {
            evaluate(trainer.as_mut(), log)?;
        }
        if last || (run.save_every > 0 && step.is_multiple_of(run.save_every)) {
            checkpoint = Some(save(trainer.as_ref(), log)?);
        }
    }
    if !main_rank {
        // Rank 0 saves the checkpoints and draws the curves.
        return Ok(TrainOutcome { curve, resumed_from, checkpoint: root, curves: None });
    }
    let checkpoint = match checkpoint {
        Some(c) => c,
        // Nothing left to train (resumed at or past `steps`): the latest checkpoint, or a new one.
        None => match checkpoint::latest(&root)? {
            Some(c) => c,
            None => save(trainer.as_ref(), log)?,
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
