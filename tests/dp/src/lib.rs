//! Multi-process checks of data-parallel training. The `rl-dp-worker` binary runs a few trainer
//! steps on the tiny decoder as one rank of a group (`rl_dist::init()`: torchrun / launcher
//! environment, or one process without it) and prints its parameters and metrics; the tests
//! launch 1, 2 and 3 ranks and compare. This library holds what the worker and the tests share:
//! the model, its letter codec and the mock engine's model.

#![allow(missing_docs, missing_debug_implementations)]

use std::path::Path;

use rl_core::{DType, Device, Result, SampledSequence, SamplingConfig, TokenCodec};
use rl_policy::{LanguageModel, LmPolicy, ModelConfig};
use serde_json::json;

#[path = "../../../crates/rl-rollout/tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

pub use rl_policy::testing_assets::Letters;

/// The tiny decoder: a random 1-layer Llama (seed 0, f32), the same on every rank.
pub fn model() -> Result<LanguageModel> {
    let cfg = ModelConfig::from_hf_json(json!({
        "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
    }))?;
    Ok(LanguageModel::random(cfg, 0, DType::F32, &Device::Cpu)?)
}

/// A policy over `model` with the letter codec and EOS 1.
pub fn policy(model: LanguageModel) -> LmPolicy {
    LmPolicy::new(model).with_codec(std::sync::Arc::new(Letters)).with_eos_ids(vec![1])
}

/// The mock engine's own copy of the tiny decoder (`rl_rollout::testing::MockServer`): only a
/// reload changes its weights.
pub struct EngineModel(pub LmPolicy);

impl rl_rollout::testing::MockModel for EngineModel {
    fn generate(
        &mut self,
        prompt: &[u32],
        n: usize,
        config: &SamplingConfig,
    ) -> Result<Vec<SampledSequence>> {
        let cfg = SamplingConfig { n, ..config.clone() };
        Ok(common::rows(&self.0.generate_ids(&[prompt.to_vec()], None, &cfg)?))
    }

    fn reload(&mut self, dir: &Path) -> Result<()> {
        self.0 = policy(LanguageModel::from_hf_dir(dir, DType::F32, &Device::Cpu)?);
        Ok(())
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        TokenCodec::encode(&Letters, text)
    }
}
