//! The one error type of rl-zero's core, shared by every stage crate that does not need more.

use std::path::PathBuf;

/// Every failure the core and the stage traits can report.
///
/// Variants carry structured fields so callers can react to them (and tests can match on them)
/// instead of parsing messages. Stage crates may wrap this type in their own enum.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === Shape and batch-layout errors ===
    /// A tensor has the wrong shape.
    #[error("shape mismatch for `{what}`: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// Which input (e.g. `"response_mask"`).
        what: String,
        /// The expected dimensions.
        expected: Vec<usize>,
        /// The dimensions that were given.
        got: Vec<usize>,
    },
    /// The number of group ids does not match the batch size.
    #[error("group ids: expected one id per response ({expected}), got {got}")]
    GroupMismatch {
        /// Batch size `B`.
        expected: usize,
        /// Number of group ids given.
        got: usize,
    },
    /// A batch, group or row that must not be empty is empty.
    #[error("`{what}` is empty")]
    Empty {
        /// What was empty (e.g. `"batch"`, `"response row 3"`).
        what: String,
    },
    /// A statistic needs more valid elements than it got (e.g. an unbiased variance of one token).
    #[error("`{what}` needs at least {needed} valid elements, got {got}")]
    InsufficientData {
        /// The statistic or input.
        what: String,
        /// Minimum number of valid elements.
        needed: usize,
        /// Number of valid elements found.
        got: usize,
    },
    /// An input contains NaN or infinity where only finite values make sense.
    #[error("non-finite value in `{what}` at flat index {index}: {value}")]
    NonFinite {
        /// Which input.
        what: String,
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A mask that must hold only 0.0 and 1.0 holds another value.
    #[error("invalid mask `{what}` at row {row}, column {col}: {value} (must be 0 or 1)")]
    InvalidMask {
        /// Which mask (e.g. `"response_mask"`).
        what: String,
        /// Row of the first offending element.
        row: usize,
        /// Column of the first offending element.
        col: usize,
        /// The offending value.
        value: f64,
    },
    // === Configuration ===
    /// A configuration value is invalid.
    #[error("invalid config `{field}`: {reason}")]
    Config {
        /// The field (dotted path, e.g. `"loss.clip_low"`).
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A stage was asked for something it does not implement (yet): never a silent stub.
    #[error("not supported: {0}")]
    Unsupported(String),
    // === Stage failures ===
    /// A reward function failed, panicked or timed out for one sample.
    #[error("reward `{reward}` failed on sample {index}: {reason}")]
    Reward {
        /// Name of the reward function.
        reward: String,
        /// Index of the sample in the batch.
        index: usize,
        /// What went wrong.
        reason: String,
    },
    /// A model, tokenizer or checkpoint file could not be used.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    // === Data parallelism ===
    /// A collective, rendezvous or launch failed ([`crate::dist::DistError`] names the rank).
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    // === Foreign errors ===
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A candle tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A JSON (de)serialisation error.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An error from another crate (a stage crate, a plugin, an engine client), kept whole:
    /// its type, fields and `source()` chain survive the trip through [`Error`] (as candle's
    /// `Error::Wrapped`). Build it with [`Error::wrap`]; recover the original with
    /// [`Error::downcast_ref`].
    #[error(transparent)]
    Wrapped(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A message with no structured cause (prefer [`Error::Wrapped`] when there is an error value).
    #[error("{0}")]
    Msg(String),
}

impl Error {
    /// Shorthand for [`Error::ShapeMismatch`].
    pub fn shape(what: impl Into<String>, expected: &[usize], got: &[usize]) -> Self {
        Self::ShapeMismatch { what: what.into(), expected: expected.to_vec(), got: got.to_vec() }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }

    /// Wraps any error value, keeping its type and source chain ([`Error::Wrapped`]).
    ///
    /// ```
    /// let io = std::io::Error::other("disk on fire");
    /// let e = rl_core::Error::wrap(io);
    /// assert!(e.downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn wrap(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Wrapped(Box::new(err))
    }

    /// The wrapped error as `E`, when this is an [`Error::Wrapped`] holding an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Wrapped(b) => b.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Shorthand for [`Error::Msg`].
    pub fn msg(msg: impl std::fmt::Display) -> Self {
        Self::Msg(msg.to_string())
    }
}

/// `Result` with rl-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns early with an [`Error`] built from a format string ([`Error::Msg`]) or from an
/// expression that converts into [`Error`].
#[macro_export]
macro_rules! bail {
    ($msg:literal $(,)?) => { return Err($crate::Error::Msg(format!($msg))) };
    ($err:expr $(,)?) => { return Err($crate::Error::from($err)) };
    ($fmt:expr, $($arg:tt)*) => { return Err($crate::Error::Msg(format!($fmt, $($arg)*))) };
}
