//! rl-policy: forward + backward of response log-probs, and KV-cache sampling, on a tiny random
//! Llama-style model (2 layers, hidden 64, 4/2 heads, vocab 512; batch 4, prompt 16, response 48).
//!
//! ```text
//! cargo bench --bench policy
//! ```
//! For the 135M SmolLM2 vs PyTorch comparison see `docs/policy.md`.

// criterion_group!/criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use rl_core::SamplingConfig;
use rl_policy::logprobs::{PromptResponse, token_log_probs};
use rl_policy::model::Mode;
use rl_policy::sampling::{StopRules, generate};
use rl_policy::{LanguageModel, ModelConfig};

const B: usize = 4;
const P: usize = 16;
const T: usize = 48;

fn model() -> LanguageModel {
    let cfg = ModelConfig::from_hf_json(serde_json::json!({
        "model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    }))
    .expect("config");
    LanguageModel::random(cfg, 0, DType::F32, &Device::Cpu).expect("model")
}

fn ids(rows: usize, cols: usize, seed: u32) -> Tensor {
    let v: Vec<u32> = (0..rows * cols).map(|i| (i as u32 * 2_654_435_761 ^ seed) % 512).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("ids")
}

fn bench(c: &mut Criterion) {
    let model = model();
    let (prompt_ids, response_ids) = (ids(B, P, 1), ids(B, T, 2));
    let prompt_mask = Tensor::ones((B, P), DType::F32, &Device::Cpu).expect("mask");
    let response_mask = Tensor::ones((B, T), DType::F32, &Device::Cpu).expect("mask");
    let view = PromptResponse {
        prompt_ids: &prompt_ids,
        prompt_mask: &prompt_mask,
        response_ids: &response_ids,
        response_mask: &response_mask,
    };
    c.bench_function("policy/log_probs_fwd_bwd_4x64", |b| {
        b.iter(|| {
            let m = model.trainable().expect("model");
            let hidden = view.response_hidden(&m, Mode::Diff).expect("hidden");
            let (lp, _) =
                token_log_probs(&m, &hidden, &response_ids, &response_mask, 0, false).expect("lp");
            lp.sum_all().expect("sum").backward().expect("backward")
        })
    });
    let fast = model.detached().expect("model");
    let prompts: Vec<Vec<u32>> =
        (0..B).map(|i| (0..P as u32).map(|t| (t * 7 + i as u32) % 512).collect()).collect();
    let cfg = SamplingConfig { max_new_tokens: 32, seed: 1, ..SamplingConfig::default() };
    c.bench_function("policy/sample_4x32_kv_cache", |b| {
        b.iter(|| {
            generate(&fast, &prompts, &cfg, StopRules { eos_ids: &[], stop: None }, 0)
                .expect("generate")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
