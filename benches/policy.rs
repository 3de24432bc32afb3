//! rl-policy: forward + backward of response log-probs, and KV-cache sampling, on a tiny random
//! Llama-style model (2 layers, hidden 64, 4/2 heads, vocab 512; batch 4, prompt 16, response 48).
//!
//! ```text
//! cargo bench --bench policy
//! ```
//!
//! With `RLZ_POLICY_BENCH_SMOLLM2=BxT` (e.g. `2x128`) it first times SmolLM2-135M (GGUF → f32):
//! forward+backward of the log-probs of `B` responses of `T` tokens after a 16-token prompt, and
//! greedy KV-cache sampling of 32 tokens for 8 prompts; `scripts/bench/policy_vs_torch.py BxT`
//! measures the same with PyTorch. Results: `docs/policy.md`.

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
    let v: Vec<u32> =
        (0..rows * cols).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 512).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("ids")
}

/// One-off SmolLM2 timings (not a criterion benchmark: one iteration takes seconds).
fn smollm2(shape: &str) {
    let (b, t) = shape.split_once('x').expect("RLZ_POLICY_BENCH_SMOLLM2=BxT");
    let (b, t): (usize, usize) = (b.parse().expect("B"), t.parse().expect("T"));
    let path = rl_policy::testing_assets::smollm2_gguf().expect("SmolLM2 GGUF");
    let clock = std::time::Instant::now();
    let model = LanguageModel::from_gguf(&path, DType::F32, &Device::Cpu).expect("load");
    println!("smollm2 load: {:.2} s", clock.elapsed().as_secs_f64());
    let (prompt_ids, response_ids) = (ids(b, 16, 3), ids(b, t, 4));
    let prompt_mask = Tensor::ones((b, 16), DType::F32, &Device::Cpu).expect("mask");
    let response_mask = Tensor::ones((b, t), DType::F32, &Device::Cpu).expect("mask");
    let view = PromptResponse {
        prompt_ids: &prompt_ids,
        prompt_mask: &prompt_mask,
        response_ids: &response_ids,
        response_mask: &response_mask,
    };
    for iter in 0..2 {
        let clock = std::time::Instant::now();
        let m = model.trainable().expect("model");
        let hidden = view.response_hidden(&m, Mode::Diff).expect("hidden");
        let (lp, _) =
            token_log_probs(&m, &hidden, &response_ids, &response_mask, 0, false).expect("lp");
        let loss = lp.mean_all().expect("mean");
        let fwd = clock.elapsed().as_secs_f64();
        let grads = loss.backward().expect("backward");
        let total = clock.elapsed().as_secs_f64();
        drop(grads);
        println!(
            "smollm2 fwd+bwd {b}x{t} iter {iter}: fwd {fwd:.2} s, fwd+bwd {total:.2} s, {:.1} tok/s",
            (b * (t + 16)) as f64 / total
        );
    }
    let fast = model.detached().expect("model");
    let prompts: Vec<Vec<u32>> =
        (0..8).map(|i| (0..16u32).map(|t| (t * 131 + i * 17 + 5) % 49152).collect()).collect();
    let cfg = SamplingConfig::greedy(32);
    for rows in [1usize, 8] {
        let clock = std::time::Instant::now();
        generate(&fast, &prompts[..rows], &cfg, StopRules { eos_ids: &[], stop: None }, 0)
            .expect("generate");
        let secs = clock.elapsed().as_secs_f64();
        println!("smollm2 greedy {rows}x32: {secs:.2} s, {:.1} tok/s", (rows * 32) as f64 / secs);
    }
}

fn bench(c: &mut Criterion) {
    if let Ok(shape) = std::env::var("RLZ_POLICY_BENCH_SMOLLM2") {
        smollm2(&shape);
    }
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
