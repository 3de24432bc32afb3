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

mod data;
mod file;
mod model;
mod out_dir;
mod train;

pub use data::*;
pub use file::*;
pub use model::*;
pub use out_dir::*;
pub use train::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use rl_core::{AdvantageEstimator, Prompt, ReferenceModel};
use rl_data::{JsonlFields, arithmetic, load_jsonl};
use rl_policy::runtime::{self, RuntimeOptions, RuntimeReport};
use rl_policy::tokenizer::Tokenizer;
use rl_policy::{ComputeDtype, LanguageModel, LmPolicy, ValueModel};
use rl_reward::BuiltinReward;
use rl_rollout::{RemoteSampler, RolloutConfig, WeightSyncConfig};
use rl_trainer::{
    AlgorithmConfig, EvalReport, PromptDataset, Recipe, TrainStep, TrainerConfig, checkpoint,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
             (run.toml, metrics.jsonl, curves.svg, checkpoints/, eval/) and start again"
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
