//! The run file: `[run]` ([`RunSettings`]), the recipe tables, `[rollout]` / `[weight_sync]`;
//! validation and the changes `--resume` compares.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The `[run]` table: what to train, on what, for how long, and where to write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSettings {
    /// Model: a `.gguf` file, a Hugging Face directory or a Hub id; absent = the embedded tiny
    /// arithmetic model.
    pub model: Option<String>,
    /// Hub revision (with a Hub id).
    pub revision: String,
    /// The prompts ([`Dataset`]; in a run file `"addition"`, `"arithmetic"`, `"arithmetic:N"` or
    /// a JSONL path).
    pub dataset: Dataset,
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
    /// Dtype of the policy's and critic's matrix products: `"f32"` (the default) or `"bf16"`
    /// (mixed precision: bf16 operands, f32 accumulation, f32 master weights and AdamW moments;
    /// `docs/policy.md`, "Mixed precision"). Sampling, training and evaluation all use it
    /// unless `sample_dtype` says otherwise.
    #[serde(skip_serializing_if = "is_f32")]
    pub compute_dtype: ComputeDtype,
    /// Dtype of the sampler's matrix products (rollouts and evaluation responses) when it
    /// differs from `compute_dtype`; absent (the default): the same. E.g. `compute_dtype =
    /// "bf16"` with `sample_dtype = "f32"`: the rollouts of an f32 run, a bf16 update (which mix
    /// is fastest depends on the CPU: `docs/benchmarks.md`). The PPO ratio's old log-probs then
    /// come from the training forward (`trainer.recompute_old_log_probs`, the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_dtype: Option<ComputeDtype>,
    /// The text every question is written into, training and evaluation alike, before the chat
    /// template: `{question}` stands for the dataset's question (once; at most
    /// [`MAX_QUESTION_TEMPLATE_BYTES`] bytes). Absent (the default): the question as it is. Like
    /// the instruction verl's data preprocessing appends to each GSM8K question.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question_template: Option<String>,
}

/// Upper bound on the length of `run.question_template`, checked by [`RunFile::validate`].
pub const MAX_QUESTION_TEMPLATE_BYTES: usize = 4096;

fn is_f32(c: &ComputeDtype) -> bool {
    *c == ComputeDtype::F32
}

impl Default for RunSettings {
    /// The embedded model on `addition`, ORZ reward, 30 steps of 32 prompts, 200 eval prompts
    /// every 10 steps, output in `runs/cli`.
    fn default() -> Self {
        Self {
            model: None,
            revision: "main".into(),
            dataset: Dataset::Addition,
            reward: BuiltinReward::default(),
            steps: 30,
            prompts_per_step: 32,
            eval_prompts: 200,
            eval_split: EvalSplit::Test,
            eval_every: 10,
            save_every: 0,
            keep_last: None,
            out: PathBuf::from("runs/cli"),
            compute_dtype: ComputeDtype::F32,
            sample_dtype: None,
            question_template: None,
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

pub(super) fn is_local(r: &RolloutConfig) -> bool {
    *r == RolloutConfig::Local
}

pub(super) fn is_no_sync(w: &WeightSyncConfig) -> bool {
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
        Self::from_toml_file_with(path, &[] as &[&str])
    }

    /// Parses a run file with `KEY=VALUE` overrides applied to its TOML first (the CLI's
    /// `--set`, as verl's dotted command-line overrides): `KEY` is a dotted path of table keys
    /// (`run.compute_dtype`, `trainer.seed`, `trainer.actor.lr`; missing tables are created),
    /// `VALUE` a TOML value (`4`, `2e-5`, `true`, `"x"`, `{ type = "orz" }`) or, when it does not
    /// parse as one, a string (`bf16`). Later overrides win. The result is validated as a whole,
    /// so an unknown key or a wrong type is the usual error naming the field.
    ///
    /// ```
    /// use rl_zero::run::RunFile;
    /// let f = RunFile::from_toml_with("[run]\nsteps = 3", &["run.steps=5", "trainer.seed=4"])?;
    /// assert_eq!((f.run.steps, f.trainer.seed), (5, 4));
    /// let err = RunFile::from_toml_with("", &["run.stepz=5"]).unwrap_err();
    /// assert!(format!("{err:#}").contains("stepz"));
    /// # anyhow::Ok(())
    /// ```
    ///
    /// # Errors
    /// An override without `=`, with an empty or over-long key, or whose path runs through a
    /// value that is not a table (each names the override); then those of [`Self::from_toml`].
    pub fn from_toml_with(text: &str, overrides: &[impl AsRef<str>]) -> Result<Self> {
        if overrides.is_empty() {
            return Self::from_toml(text);
        }
        let mut table: toml::Table = toml::from_str(text)?;
        for o in overrides {
            set_override(&mut table, o.as_ref())?;
        }
        let list: Vec<&str> = overrides.iter().map(AsRef::as_ref).collect();
        let merged = || -> Result<Self> {
            let f: Self = toml::Value::Table(table).try_into()?;
            f.validate()?;
            Ok(f)
        };
        merged().with_context(|| format!("with --set {}", list.join(" --set ")))
    }

    /// [`Self::from_toml_file`] with [`Self::from_toml_with`]'s overrides.
    pub fn from_toml_file_with(
        path: impl AsRef<Path>,
        overrides: &[impl AsRef<str>],
    ) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_toml_with(&text, overrides)
            .with_context(|| format!("invalid run file {}", path.display()))
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
                 \"disk\", \"tcp\" or \"nccl\"), or it samples from the initial weights at every step"
            ),
            (_, WeightSyncConfig::Nccl(_)) if !rl_rollout::NCCL_BUILT => bail!(
                "weight_sync.type: \"nccl\" needs rl-zero built with its `nccl` feature \
                 (compiled, never run on a GPU); use \"tcp\" or \"disk\""
            ),
            (RolloutConfig::LlamaCpp(_), _) => bail!(
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
        if let Some(t) = &r.question_template {
            if t.len() > MAX_QUESTION_TEMPLATE_BYTES {
                bail!(
                    "run.question_template: {} bytes, at most {MAX_QUESTION_TEMPLATE_BYTES}",
                    t.len()
                );
            }
            if t.matches(QUESTION).count() != 1 {
                bail!("run.question_template: must contain `{QUESTION}` exactly once: {t:?}");
            }
        }
        if r.keep_last == Some(0) {
            bail!("run.keep_last: must be >= 1 (leave it out to keep every checkpoint)");
        }
        Ok(())
    }
}

/// Settings that may change between a run and its resumption: they do not change what a step
/// computes (`run.steps` is the total to reach, `run.out` where the run lives).
pub(super) const RESUMABLE_CHANGES: [&str; 7] = [
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

/// Longest dotted key an override may name (the deepest run-file table is 4 levels down).
const MAX_OVERRIDE_DEPTH: usize = 16;

/// Applies one `KEY=VALUE` override to a parsed run file (see [`RunFile::from_toml_with`]).
fn set_override(table: &mut toml::Table, o: &str) -> Result<()> {
    let Some((key, raw)) = o.split_once('=') else {
        bail!("--set {o:?}: expected KEY=VALUE (e.g. run.compute_dtype=bf16)");
    };
    let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if path.iter().any(|k| k.is_empty()) || path.len() > MAX_OVERRIDE_DEPTH {
        bail!("--set {o:?}: the key must be a dotted path of at most {MAX_OVERRIDE_DEPTH} names");
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) if t.len() == 1 => t.remove("v").unwrap_or_else(|| raw.into()),
        _ => toml::Value::String(raw.to_owned()),
    };
    let (leaf, parents) = path.split_last().expect("at least one name");
    let mut at = table;
    for (i, name) in parents.iter().enumerate() {
        let entry = at.entry(name.to_string()).or_insert_with(|| toml::Table::new().into());
        at = entry.as_table_mut().with_context(|| {
            format!("--set {o:?}: `{}` is a value, not a table", path[..=i].join("."))
        })?;
    }
    at.insert(leaf.to_string(), value);
    Ok(())
}
