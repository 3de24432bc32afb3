//! Dr. GRPO on a tiny random language model on the build's accelerator against the same run on
//! the CPU: the first CUDA GPU with the `cuda` feature (shipped in the GPU bundle,
//! `scripts/gpu_bundle.sh`, `docs/gpu.md`), else the CPU (where it checks the test itself).
//! `RLZ_TEST_DEVICE=cpu` forces the CPU in a `cuda` build.
//!
//! Tolerance: sampling draws from host-side probabilities with the same seeded RNG on both
//! devices, so the same weights give the same tokens unless a probability sits within ~1e-6 of a
//! draw's threshold; the rewards of the first step must be equal, later steps may differ by at
//! most one sample of the batch (1/8 of the mean reward). The first update's loss and gradient norm
//! agree to 1e-3 relative (the update is computed from the same tokens; f32 on both sides).

use std::sync::Arc;

use rl_zero::core::{DType, Device, Prompt, Sample, SamplingConfig};
use rl_zero::policy::testing_assets::Letters;
use rl_zero::policy::{LanguageModel, LmPolicy, ModelConfig};
use rl_zero::trainer::{GrpoTrainer, Recipe};

type R<T = ()> = rl_zero::trainer::Result<T>;

fn device() -> Device {
    rl_policy::testing_assets::test_device()
}

fn trainer(dev: &Device) -> R<GrpoTrainer<LmPolicy>> {
    let cfg = ModelConfig::from_hf_json(serde_json::json!({
        "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
    }))
    .map_err(rl_core::Error::from)?;
    let model = LanguageModel::random(cfg, 0, DType::F32, dev).map_err(rl_core::Error::from)?;
    let policy = LmPolicy::new(model).with_codec(Arc::new(Letters)).with_eos_ids(vec![1]);
    let mut r = Recipe::dr_grpo();
    r.trainer.sampling =
        SamplingConfig { n: 4, max_new_tokens: 6, seed: 11, ..SamplingConfig::default() };
    r.trainer.micro_batch_size = 4;
    r.trainer.actor.lr = 1e-2;
    let vowel = |s: &Sample| -> rl_core::Result<f32> {
        Ok(s.response.contains(['a', 'e', 'i', 'o', 'u']) as u8 as f32)
    };
    r.builder(policy, vowel)?.build()
}

#[test]
fn dr_grpo_steps_on_the_device_match_the_cpu() -> R {
    let dev = device();
    let (mut on_dev, mut on_cpu) = (trainer(&dev)?, trainer(&Device::Cpu)?);
    let prompts = [Prompt::new("ab", "x"), Prompt::new("cd", "y")];
    for step in 1..=3 {
        let (d, c) = (on_dev.step(&prompts)?.metrics, on_cpu.step(&prompts)?.metrics);
        let get = |m: &rl_zero::core::Metrics, k: &str| m.get(k).unwrap_or(f64::NAN);
        let (rd, rc) = (get(&d, "reward/mean"), get(&c, "reward/mean"));
        eprintln!("step {step} on {dev:?}: reward {rd} (CPU {rc})");
        assert!(rd.is_finite() && rc.is_finite(), "step {step}: {d:?}");
        let tol = if step == 1 { 0.0 } else { 1.0 / 8.0 + 1e-9 };
        assert!((rd - rc).abs() <= tol, "step {step}: reward {rd} on the device, {rc} on the CPU");
        if step == 1 {
            for k in ["actor/loss", "actor/grad_norm"] {
                let (a, b) = (get(&d, k), get(&c, k));
                assert!((a - b).abs() <= 1e-3 * b.abs().max(1e-6), "{k}: {a} vs {b}");
            }
        }
    }
    Ok(())
}
