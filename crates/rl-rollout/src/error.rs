//! rl-rollout's error type: every failure names the server, the request and the field.

/// Everything that can go wrong between rl-zero and an inference engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// A configuration value is invalid (`field` is the full dotted path).
    #[error("invalid config `{field}`: {reason}")]
    Config {
        /// Dotted field path, e.g. `rollout.urls[1]`.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The engine answered with an HTTP error status (after any retries).
    #[error("{url}: {request}: HTTP {status}: {body}")]
    Status {
        /// The full URL.
        url: String,
        /// Which request (e.g. `prompt 3`, `preflight /v1/models`).
        request: String,
        /// The status code.
        status: u16,
        /// The start of the response body (at most 512 bytes).
        body: String,
    },
    /// The connection could not be made or broke (after any retries).
    #[error("{url}: {request}: transport error ({kind}): {reason}")]
    Transport {
        /// The full URL.
        url: String,
        /// Which request.
        request: String,
        /// ureq's error kind (`ConnectionFailed`, `Dns`, `Io`, ...).
        kind: String,
        /// The error message.
        reason: String,
    },
    /// The engine did not answer within the configured time.
    #[error("{url}: {request}: timed out after {seconds} s")]
    Timeout {
        /// The full URL.
        url: String,
        /// Which request.
        request: String,
        /// The request timeout.
        seconds: f64,
    },
    /// A response body exceeded `max_response_bytes`.
    #[error("{url}: {request}: response larger than {limit} bytes")]
    TooLarge {
        /// The full URL.
        url: String,
        /// Which request.
        request: String,
        /// The limit.
        limit: u64,
    },
    /// A response is malformed or fails validation (lengths, log-probs, ids, prompt echo, ...).
    #[error("{url}: {request}: `{field}`: {reason}")]
    Response {
        /// The full URL.
        url: String,
        /// Which request (and row, e.g. `prompt 2 choice 1`).
        request: String,
        /// The offending field (JSON path, e.g. `choices[1].logprobs.token_logprobs[7]`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A start-up check against the engine failed.
    #[error("{url}: preflight check `{check}` failed: {reason}")]
    Preflight {
        /// The server.
        url: String,
        /// Which check (`model`, `tokenizer`, `context`, `probe`, ...).
        check: String,
        /// What was found.
        reason: String,
    },
    /// The engine reports another weight version than the one published last.
    #[error("{url}: engine reports weight version {reported:?}, expected {expected:?}")]
    VersionMismatch {
        /// The server.
        url: String,
        /// The version rl-zero published.
        expected: String,
        /// What the engine reports.
        reported: String,
    },
    /// The engine's log-probs on a probe disagree with the trainer's current weights: the engine
    /// is sampling from other (e.g. stale) weights.
    #[error(
        "{url}: engine log-probs differ from the trainer's on the probe (mean |Δ| {mean_abs_diff:.3e} > {tolerance:.1e}): stale or wrong weights"
    )]
    ProbeMismatch {
        /// The server.
        url: String,
        /// Mean absolute difference of the probe's per-token log-probs.
        mean_abs_diff: f64,
        /// The configured tolerance.
        tolerance: f64,
    },
    /// A weight stream to the engine's workers failed (`tcp` / `nccl` weight sync).
    #[error("weight stream to {peer}: {reason}")]
    Stream {
        /// The worker (`ip:port`) or `nccl`.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// The engine cannot do what was asked (e.g. in-place weight reload on llama.cpp).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// An I/O error (exporting weights).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An rl-core error (tokenizer, batch assembly, weight export).
    #[error(transparent)]
    Core(#[from] rl_core::Error),
}

impl RolloutError {
    /// Shorthand for [`RolloutError::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }

    /// Shorthand for [`RolloutError::Response`].
    pub fn response(
        url: &str,
        request: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Response {
            url: url.to_string(),
            request: request.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<RolloutError> for rl_core::Error {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Core(e) => e,
            RolloutError::Config { field, reason } => rl_core::Error::Config { field, reason },
            RolloutError::Unsupported(what) => rl_core::Error::Unsupported(what),
            other => rl_core::Error::wrap(other),
        }
    }
}

/// `Result` with [`RolloutError`].
pub type Result<T, E = RolloutError> = std::result::Result<T, E>;
