//! The error type of rl-policy.

use std::path::PathBuf;

/// Everything that can go wrong while configuring, loading, running or saving a model.
///
/// Converts into [`rl_core::Error`] (so [`rl_core::Policy`] implementations can use `?`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `config.json` (or GGUF metadata) names an architecture this crate does not implement.
    #[error("unsupported model architecture `{name}` (supported: llama, mistral, qwen2, qwen3)")]
    UnknownArchitecture {
        /// The `model_type` / `architectures[0]` / `general.architecture` found.
        name: String,
    },
    /// A configuration value is missing or invalid.
    #[error("invalid model config `{field}`: {reason}")]
    Config {
        /// The field (e.g. `"num_key_value_heads"`).
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A required file does not exist.
    #[error("missing file {path}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A file exists but cannot be parsed.
    #[error("corrupt file {path}: {reason}")]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A weight the architecture needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from {path}")]
    MissingTensor {
        /// The checkpoint file (or directory, for sharded checkpoints).
        path: PathBuf,
        /// Hugging Face name of the tensor.
        name: String,
    },
    /// A weight has the wrong shape for the configuration.
    #[error("tensor `{name}` in {path} has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// The checkpoint file.
        path: PathBuf,
        /// Hugging Face name of the tensor.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape found in the file.
        got: Vec<usize>,
    },
    /// A tensor argument has the wrong shape or dtype.
    #[error("bad input `{what}`: {reason}")]
    Input {
        /// Which argument.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A BLAS library for the CPU matrix products cannot be used ([`crate::ops::blas`]).
    #[error("cannot use BLAS library {path}: {reason}")]
    Blas {
        /// The library file.
        path: PathBuf,
        /// Why (not found, missing symbol, another library already in use).
        reason: String,
    },
    /// The Hugging Face Hub could not be reached or did not have the file.
    #[error("hub: {0}")]
    Hub(String),
    /// A candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A JSON error.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An error from rl-core (input checks, sampling config validation).
    #[error(transparent)]
    Core(#[from] rl_core::Error),
}

impl PolicyError {
    /// Shorthand for [`PolicyError::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }

    /// Shorthand for [`PolicyError::Input`].
    pub fn input(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Input { what: what.into(), reason: reason.into() }
    }
}

impl From<PolicyError> for rl_core::Error {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Core(e) => e,
            PolicyError::Candle(e) => rl_core::Error::Candle(e),
            PolicyError::Io(e) => rl_core::Error::Io(e),
            PolicyError::Config { field, reason } => rl_core::Error::Config { field, reason },
            PolicyError::MissingFile { path } => {
                rl_core::Error::File { path, reason: "missing file".into() }
            }
            PolicyError::CorruptFile { path, reason } => rl_core::Error::File { path, reason },
            other => rl_core::Error::wrap(other),
        }
    }
}

/// `Result` with [`PolicyError`].
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;
