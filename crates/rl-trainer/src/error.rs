//! The trainer's error type.

use std::path::PathBuf;

/// Every failure of a training run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainerError {
    // === Stage failures ===
    /// A stage (policy, reward, estimator, loss) or a core check failed.
    #[error(transparent)]
    Core(#[from] rl_core::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    // === Training dynamics ===
    /// Too many updates were skipped because the loss or the gradient norm was NaN/inf.
    #[error(
        "{skipped} updates skipped for a non-finite loss or gradient norm (limit {limit}); last: {last}"
    )]
    NonFiniteUpdates {
        /// Updates skipped so far.
        skipped: usize,
        /// The configured limit (`max_skipped_updates`).
        limit: usize,
        /// What was non-finite the last time (e.g. `"actor loss"`, `"actor grad norm"`).
        last: String,
    },
    /// DAPO dynamic sampling could not fill the batch within `max_rounds` generation rounds.
    #[error("dynamic sampling kept {kept} of {needed} groups after {rounds} generation rounds")]
    DynamicSamplingShortfall {
        /// Groups with a non-constant reward that were kept.
        kept: usize,
        /// Groups the batch needs.
        needed: usize,
        /// Generation rounds used.
        rounds: usize,
    },
    // === Configuration and files ===
    /// A configuration value is invalid.
    #[error("invalid trainer config `{field}`: {reason}")]
    Config {
        /// Dotted field path (e.g. `"actor.lr"`).
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A TOML configuration could not be parsed (the message names the offending field).
    #[error("config parse error: {0}")]
    ConfigParse(#[from] toml::de::Error),
    /// A configuration could not be written as TOML.
    #[error("config write error: {0}")]
    ConfigWrite(#[from] toml::ser::Error),
    /// A checkpoint is missing, incomplete or does not match the trainer.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A metrics JSONL file could not be read back (see [`crate::plot`]): it is missing, empty,
    /// holds no plottable metric, or a line is not a JSON object with a non-negative integer
    /// `step`.
    #[error("metrics file {}{}: {reason}", .path.display(), line_suffix(*.line))]
    Metrics {
        /// The metrics file.
        path: PathBuf,
        /// The offending line (1-based), or `None` when the problem is the whole file.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// The curves could not be drawn or written (see [`crate::plot`]).
    #[error("plot {}: {reason}", .path.display())]
    Plot {
        /// The SVG file being written (or the metrics file being drawn).
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A JSON error (metrics log, checkpoint metadata).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl TrainerError {
    /// Shorthand for [`TrainerError::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }

    /// Any other error value, kept whole ([`rl_core::Error::Wrapped`]).
    pub fn wrap(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Core(rl_core::Error::wrap(err))
    }

    /// Shorthand for [`TrainerError::Checkpoint`].
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Checkpoint { path: path.into(), reason: reason.into() }
    }
}

fn line_suffix(line: Option<usize>) -> String {
    line.map_or_else(String::new, |l| format!(" line {l}"))
}

/// `Result` with [`TrainerError`].
pub type Result<T, E = TrainerError> = std::result::Result<T, E>;
