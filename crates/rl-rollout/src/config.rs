//! Serde configs: `[rollout]` ([`RolloutConfig`]) and `[weight_sync]`
//! ([`WeightSyncConfig`]), each validated with full field paths.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Result, RolloutError};

/// Where rollouts come from (`type = "local" | "vllm" | "sglang" | "llama_cpp"`).
///
/// ```
/// let cfg: rl_rollout::RolloutConfig = serde_json::from_value(serde_json::json!({
///     "type": "vllm", "urls": ["http://127.0.0.1:8000"], "model": "policy"
/// }))?;
/// cfg.validate("rollout")?;
/// assert!(matches!(cfg, rl_rollout::RolloutConfig::Vllm(ref e) if e.max_concurrency == 8));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RolloutConfig {
    /// Sample with the trained policy in the training process (the default).
    #[default]
    Local,
    /// vLLM's OpenAI-compatible server (`POST /v1/completions` with token-id prompts).
    Vllm(EngineConfig),
    /// SGLang's native server (`POST /generate` with `input_ids`).
    Sglang(EngineConfig),
    /// llama.cpp's `llama-server` (`POST /completion` with token-id prompts).
    LlamaCpp(EngineConfig),
}

impl RolloutConfig {
    /// The engine and its settings, `None` for [`RolloutConfig::Local`].
    pub fn engine(&self) -> Option<(crate::Engine, &EngineConfig)> {
        match self {
            RolloutConfig::Local => None,
            RolloutConfig::Vllm(c) => Some((crate::Engine::Vllm, c)),
            RolloutConfig::Sglang(c) => Some((crate::Engine::Sglang, c)),
            RolloutConfig::LlamaCpp(c) => Some((crate::Engine::LlamaCpp, c)),
        }
    }

    /// Checks every field; `path` is the config's own path (e.g. `rollout`).
    ///
    /// # Errors
    /// [`RolloutError::Config`] naming the full field path.
    pub fn validate(&self, path: &str) -> Result<()> {
        match self.engine() {
            None => Ok(()),
            Some((_, c)) => c.validate(path),
        }
    }
}

/// Settings of an HTTP inference engine (one or more replicas).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Base URLs of the engine replicas (`http://host:port`); requests go round-robin
    /// (rollout data parallelism).
    pub urls: Vec<String>,
    /// The served model name (`--served-model-name`; vLLM requires it in every request). `None`:
    /// taken from the engine at preflight when it serves exactly one model.
    pub model: Option<String>,
    /// Requests in flight over all URLs (the engines batch them).
    pub max_concurrency: usize,
    /// TCP connect timeout, seconds.
    pub connect_timeout_s: f64,
    /// Whole-request timeout (a generation request included), seconds. Timeouts are reported,
    /// not retried (the engine may still be working on the request).
    pub request_timeout_s: f64,
    /// Retries after a connection error, HTTP 5xx or 429.
    pub retries: u32,
    /// First retry delay, milliseconds (doubled each retry, capped at 30 s).
    pub backoff_ms: u64,
    /// Largest response body accepted, bytes.
    pub max_response_bytes: u64,
    /// Run the start-up checks (model, tokenizer, context length, greedy log-prob probe).
    pub preflight: bool,
    /// Text of the tokenizer and log-prob probes.
    pub probe_text: String,
    /// Tokens generated greedily by the log-prob probe.
    pub probe_tokens: usize,
    /// Largest accepted mean `|engine − trainer|` log-prob on the probe (an f32 engine on the same
    /// weights is ~1e-5; bf16 ~1e-2; a quantized GGUF more).
    pub probe_tolerance: f64,
    /// Before each rollout, check that every engine reports the last published weight version.
    pub check_version: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            model: None,
            max_concurrency: 8,
            connect_timeout_s: 5.0,
            request_timeout_s: 600.0,
            retries: 3,
            backoff_ms: 200,
            max_response_bytes: 64 << 20,
            preflight: true,
            probe_text: "The capital of France is".into(),
            probe_tokens: 8,
            probe_tolerance: 0.05,
            check_version: true,
        }
    }
}

/// Upper bounds on sizes taken from a config (so a typo cannot ask for an absurd allocation).
pub const MAX_URLS: usize = 1024;
/// Largest `max_concurrency`.
pub const MAX_CONCURRENCY: usize = 4096;
/// Largest `max_response_bytes` (1 GiB).
pub const MAX_RESPONSE_BYTES: u64 = 1 << 30;
/// Largest `probe_tokens`.
pub const MAX_PROBE_TOKENS: usize = 256;

impl EngineConfig {
    /// Settings for `urls` with every default.
    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { urls: urls.into_iter().map(Into::into).collect(), ..Self::default() }
    }

    /// Checks every field; `path` is the config's own path.
    ///
    /// # Errors
    /// [`RolloutError::Config`] naming the full field path (e.g. `rollout.urls[1]`).
    pub fn validate(&self, path: &str) -> Result<()> {
        let err = |field: &str, reason: &str| {
            Err(RolloutError::config(format!("{path}.{field}"), reason))
        };
        if self.urls.is_empty() {
            return err("urls", "needs at least one server URL");
        }
        if self.urls.len() > MAX_URLS {
            return err("urls", &format!("at most {MAX_URLS} servers"));
        }
        for (i, u) in self.urls.iter().enumerate() {
            let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => {}
                _ => {
                    return err(
                        &format!("urls[{i}]"),
                        "must be http://host:port or https://host:port",
                    );
                }
            }
        }
        if let Some(m) = &self.model
            && m.trim().is_empty()
        {
            return err("model", "must not be empty (omit it to use the engine's only model)");
        }
        if self.max_concurrency == 0 || self.max_concurrency > MAX_CONCURRENCY {
            return err("max_concurrency", &format!("must be in 1..={MAX_CONCURRENCY}"));
        }
        for (name, v) in [
            ("connect_timeout_s", self.connect_timeout_s),
            ("request_timeout_s", self.request_timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return err(name, "must be in (0, 86400] seconds");
            }
        }
        if self.retries > 100 {
            return err("retries", "must be <= 100");
        }
        if self.backoff_ms > 60_000 {
            return err("backoff_ms", "must be <= 60000");
        }
        if self.max_response_bytes < 1024 || self.max_response_bytes > MAX_RESPONSE_BYTES {
            return err("max_response_bytes", &format!("must be in 1024..={MAX_RESPONSE_BYTES}"));
        }
        if self.probe_text.is_empty() {
            return err("probe_text", "must not be empty");
        }
        if self.probe_tokens == 0 || self.probe_tokens > MAX_PROBE_TOKENS {
            return err("probe_tokens", &format!("must be in 1..={MAX_PROBE_TOKENS}"));
        }
        if !(self.probe_tolerance.is_finite() && self.probe_tolerance > 0.0) {
            return err("probe_tolerance", "must be a finite number > 0");
        }
        Ok(())
    }
}

/// How trained weights reach the sampler (`type = "none" | "disk" | "tcp" | "nccl"`).
///
/// ```
/// let cfg: rl_rollout::WeightSyncConfig = serde_json::from_value(serde_json::json!({
///     "type": "disk", "dir": "/dev/shm/rlz-weights", "verify_every": 2
/// }))?;
/// cfg.validate("weight_sync")?;
/// assert_eq!(cfg.sync_every(), Some(1));
/// let bad: rl_rollout::WeightSyncConfig =
///     serde_json::from_value(serde_json::json!({"type": "disk", "dir": "w", "sync_every": 0}))?;
/// assert!(bad.validate("weight_sync").unwrap_err().to_string()
///     .contains("weight_sync.sync_every"));
/// let tcp: rl_rollout::WeightSyncConfig =
///     serde_json::from_value(serde_json::json!({"type": "tcp", "listen": "localhost"}))?;
/// assert!(tcp.validate("weight_sync").unwrap_err().to_string().contains("weight_sync.listen"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WeightSyncConfig {
    /// No synchronisation (the local sampler shares the trained weights).
    #[default]
    None,
    /// Write a Hugging Face directory and call the engine's reload route ([`crate::DiskSync`]).
    Disk(DiskSyncConfig),
    /// Stream the tensors over TCP into vLLM's workers ([`crate::StreamSync`]).
    Tcp(StreamSyncConfig),
    /// Broadcast the tensors over NCCL into vLLM's workers ([`crate::StreamSync`]; the trainer
    /// must be built with rl-rollout's `nccl` feature and train on CUDA). Compiled, never run.
    Nccl(StreamSyncConfig),
}

impl WeightSyncConfig {
    /// Checks every field; `path` is the config's own path (e.g. `weight_sync`).
    ///
    /// # Errors
    /// [`RolloutError::Config`] naming the full field path.
    pub fn validate(&self, path: &str) -> Result<()> {
        match self {
            WeightSyncConfig::None => Ok(()),
            WeightSyncConfig::Disk(d) => d.validate(path),
            WeightSyncConfig::Tcp(t) => t.validate(path, true),
            WeightSyncConfig::Nccl(t) => t.validate(path, false),
        }
    }

    /// Publish every this many trainer steps (`None` for `type = "none"`).
    pub fn sync_every(&self) -> Option<usize> {
        match self {
            WeightSyncConfig::None => None,
            WeightSyncConfig::Disk(d) => Some(d.sync_every),
            WeightSyncConfig::Tcp(t) | WeightSyncConfig::Nccl(t) => Some(t.sync_every),
        }
    }
}

/// The longest wait for engine workers to connect or join, seconds.
pub const MAX_CONNECT_TIMEOUT_S: f64 = 3600.0;

/// Settings of [`crate::StreamSync`] (`type = "tcp"` and `type = "nccl"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSyncConfig {
    /// `tcp`: the socket address the trainer listens on for the engine workers (`ip:port`;
    /// port 0 picks a free one). Binds to loopback by default: the stream is unauthenticated
    /// beyond a per-publication nonce, like vLLM's dev routes.
    pub listen: String,
    /// `tcp`: the `host:port` the workers connect to, when it differs from the listening
    /// address (listening on `0.0.0.0`, NAT); default: the listener's own address.
    pub advertise: Option<String>,
    /// Dtype the tensors are sent in: `float32`, `bfloat16` or `float16` (the engine casts to
    /// its own dtype while loading).
    pub dtype: String,
    /// Publish every `sync_every` trainer steps.
    pub sync_every: usize,
    /// Run the log-prob probe after every `verify_every`-th publication (0 = never).
    pub verify_every: usize,
    /// How long to wait for every worker to connect (`tcp`) or join the communicator (`nccl`),
    /// seconds.
    pub connect_timeout_s: f64,
}

impl Default for StreamSyncConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            advertise: None,
            dtype: "float32".into(),
            sync_every: 1,
            verify_every: 1,
            connect_timeout_s: 120.0,
        }
    }
}

impl StreamSyncConfig {
    /// The dtype the tensors are sent in.
    ///
    /// # Errors
    /// [`RolloutError::Config`] for an unknown name.
    pub fn dtype(&self, path: &str) -> Result<rl_core::DType> {
        export_dtype(&self.dtype, &format!("{path}.dtype"))
    }

    /// Checks every field (`tcp`: also the addresses).
    ///
    /// # Errors
    /// [`RolloutError::Config`] naming the full field path.
    pub fn validate(&self, path: &str, tcp: bool) -> Result<()> {
        let err = |field: &str, reason: String| {
            Err(RolloutError::config(format!("{path}.{field}"), reason))
        };
        if tcp && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return err("listen", format!("`{}` is not an ip:port socket address", self.listen));
        }
        if tcp
            && let Some(a) = &self.advertise
            && !a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return err("advertise", format!("`{a}` is not host:port"));
        }
        self.dtype(path)?;
        if self.sync_every == 0 {
            return err("sync_every", "must be >= 1".into());
        }
        if !(self.connect_timeout_s > 0.0 && self.connect_timeout_s <= MAX_CONNECT_TIMEOUT_S) {
            return err(
                "connect_timeout_s",
                format!("must be in (0, {MAX_CONNECT_TIMEOUT_S}] seconds"),
            );
        }
        Ok(())
    }
}

/// Settings of [`crate::DiskSync`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskSyncConfig {
    /// Directory under which each version is written as `v{version}/` (use `/dev/shm` on one
    /// host, a shared file system across hosts). The engine must see the same path.
    pub dir: PathBuf,
    /// Dtype of the exported tensors: `float32`, `bfloat16` or `float16`.
    pub dtype: String,
    /// Publish every `sync_every` trainer steps (pass it to `rl_trainer::TrainerBuilder::weight_sync`).
    pub sync_every: usize,
    /// Run the log-prob probe after every `verify_every`-th publication (0 = never).
    pub verify_every: usize,
    /// Version directories kept on disk (older ones are deleted after a successful publish).
    pub keep_last: usize,
    /// vLLM only: the worker method `/collective_rpc` calls. `reload_weights_tied` comes from
    /// rl-zero's worker extension (`scripts/vllm/rlz_vllm_ext.py`) and is required for models with
    /// tied embeddings; `reload_weights` is vLLM's own.
    pub vllm_reload_method: String,
}

impl Default for DiskSyncConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            dtype: "float32".into(),
            sync_every: 1,
            verify_every: 1,
            keep_last: 2,
            vllm_reload_method: "reload_weights_tied".into(),
        }
    }
}

impl DiskSyncConfig {
    /// Settings writing under `dir` with every default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), ..Self::default() }
    }

    /// The export dtype.
    ///
    /// # Errors
    /// [`RolloutError::Config`] for an unknown name.
    pub fn dtype(&self, path: &str) -> Result<rl_core::DType> {
        export_dtype(&self.dtype, &format!("{path}.dtype"))
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`RolloutError::Config`] naming the full field path.
    pub fn validate(&self, path: &str) -> Result<()> {
        let err = |field: &str, reason: &str| {
            Err(RolloutError::config(format!("{path}.{field}"), reason))
        };
        if self.dir.as_os_str().is_empty() {
            return err("dir", "must be set");
        }
        self.dtype(path)?;
        if self.sync_every == 0 {
            return err("sync_every", "must be >= 1");
        }
        if self.keep_last == 0 {
            return err("keep_last", "must be >= 1 (the engine reads the newest directory)");
        }
        if !matches!(self.vllm_reload_method.as_str(), "reload_weights" | "reload_weights_tied") {
            return err("vllm_reload_method", "must be `reload_weights_tied` or `reload_weights`");
        }
        Ok(())
    }
}

/// The dtype of exported weights named `name` (`float32` / `f32`, `bfloat16` / `bf16`,
/// `float16` / `f16`); `field` names the setting in the error.
///
/// # Errors
/// [`RolloutError::Config`] for an unknown name.
pub fn export_dtype(name: &str, field: &str) -> Result<rl_core::DType> {
    match name {
        "float32" | "f32" => Ok(rl_core::DType::F32),
        "bfloat16" | "bf16" => Ok(rl_core::DType::BF16),
        "float16" | "f16" => Ok(rl_core::DType::F16),
        other => Err(RolloutError::config(
            field,
            format!("`{other}` is not one of float32, bfloat16, float16"),
        )),
    }
}
