//! # rl-rollout
//!
//! Rollouts from the inference engines users run — vLLM, SGLang and llama.cpp — over their HTTP
//! APIs, with weight synchronisation, for rl-zero's trainer.
//!
//! * [`RemoteSampler`] implements [`rl_core::Sampler`]: prompts are encoded with the trainer's
//!   [`rl_core::TokenCodec`] and sent as **token ids**; the engine returns sampled ids, the
//!   sampled tokens' log-probs and finish reasons, which are validated strictly and assembled
//!   with [`rl_core::RolloutBatch::from_sequences`] (the same constructor the local sampler
//!   uses). The engine's log-probs land in `rollout_log_probs` for the trainer's importance
//!   sampling correction. Requests go round-robin over several servers with bounded concurrency,
//!   retries (connection errors, 5xx, 429 only) and timeouts.
//! * [`DiskSync`] implements [`rl_core::WeightSync`]: a Hugging Face directory plus the engine's
//!   reload route, a version check, and a greedy log-prob probe that catches an engine that kept
//!   stale weights.
//! * [`StreamSync`] implements it without a file system: the tensors go straight into vLLM's
//!   workers over TCP (or NCCL broadcast behind the `nccl` feature: compiled, never run),
//!   through rl-zero's worker extension and vLLM's own in-place reload, with the same checks.
//! * [`RolloutConfig`] / [`WeightSyncConfig`]: the serde configs of `[rollout]` and
//!   `[weight_sync]`.
//! * With the `testing` feature, `testing::MockServer`: an engine on 127.0.0.1 speaking the three
//!   protocols, backed by any model, with injectable faults.
//!
//! The exact server command lines, pitfalls and checks are in `docs/rollout.md`.
//!
//! ```
//! use rl_rollout::{Engine, GenRequest, build_request};
//! let cfg = rl_core::SamplingConfig { max_new_tokens: 16, n: 4, ..Default::default() };
//! let req = GenRequest { model: "policy", prompt: &[1, 2, 3], n: 4, config: &cfg, seed: 7, eos_ids: &[2] };
//! let body = build_request(Engine::Vllm, &req);
//! assert_eq!(body["prompt"], serde_json::json!([1, 2, 3]));
//! assert_eq!(body["logprobs"], 0);
//! assert_eq!(body["top_k"], -1); // every sampling field is sent, neutral when unused
//! ```

mod config;
mod error;
mod http;
pub mod protocol;
mod sampler;
mod stream;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{
    DiskSyncConfig, EngineConfig, MAX_CONCURRENCY, MAX_CONNECT_TIMEOUT_S, MAX_PROBE_TOKENS,
    MAX_RESPONSE_BYTES, MAX_URLS, RolloutConfig, StreamSyncConfig, WeightSyncConfig, export_dtype,
};
pub use error::{Result, RolloutError};
pub use http::Http;
pub use protocol::{Engine, GenRequest, build_request};
pub use sampler::{PreflightReport, RemoteSampler, request_seed};
pub use stream::{STREAM_HELLO, StreamSync, StreamTransport, tensor_bytes};
pub use sync::DiskSync;

/// Whether this build has the NCCL weight sync (the `nccl` feature); without it
/// `[weight_sync] type = "nccl"` is refused with [`RolloutError::Unsupported`].
pub const NCCL_BUILT: bool = cfg!(feature = "nccl");
