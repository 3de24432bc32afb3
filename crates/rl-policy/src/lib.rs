//! # rl-policy
//!
//! Trainable causal language models on candle for RL fine-tuning: Llama-family (Llama 2/3,
//! SmolLM2, Mistral), Qwen2/2.5 and Qwen3 decoders whose log-probs match transformers, loaded from
//! Hugging Face directories, GGUF files or the Hub, with batched KV-cache sampling, chunked
//! differentiable log-probs/entropies, a frozen reference policy, a value-head critic and
//! Hugging Face checkpoints.
//!
//! Every weight is a candle [`Var`](candle_core::Var) named as in Hugging Face checkpoints.
//! Training uses [`Mode::Diff`] (the fused CPU kernels of [`ops`], each with an analytic
//! backward pass, since candle-nn's fused `rms_norm`, `softmax_last_dim` and `rope` silently
//! detach the graph); sampling uses [`Mode::Fused`] on detached weights.
//!
//! ```
//! use candle_core::{DType, Device};
//! use rl_policy::{LanguageModel, ModelConfig, Mode};
//!
//! let cfg = ModelConfig::from_hf_json(serde_json::json!({
//!     "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
//!     "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
//! }))?;
//! let model = LanguageModel::random(cfg, 0, DType::F32, &Device::Cpu)?;
//! let ids = candle_core::Tensor::new(&[[0u32, 5, 7], [3, 4, 9]], &Device::Cpu)?;
//! // Row 0 is left-padded by one token.
//! let valid = vec![vec![false, true, true], vec![true, true, true]];
//! let logits = model.trainable()?.forward(&ids, &valid, Mode::Diff)?; // (B, S, V)
//! assert_eq!(logits.dims(), &[2, 3, 32]);
//! # Ok::<(), rl_policy::PolicyError>(())
//! ```

pub mod alloc;
mod checkpoint;
pub mod config;
mod error;
mod load;
pub mod logprobs;
pub mod model;
pub mod ops;
pub mod policy;
pub mod rollout;
pub mod runtime;
pub mod sampling;
pub mod template;
pub mod testing_assets;
pub mod threads;
pub mod tokenizer;
mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::{PolicyError, Result};
pub use model::{Mode, Transformer};
pub use ops::ComputeDtype;
pub use policy::{LmPolicy, ReferencePolicy, TextCodec, VALUE_HEAD_FILE, ValueModel};
pub use weights::LanguageModel;
