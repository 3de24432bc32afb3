//! The model tests that run on the build's accelerator: the first CUDA GPU when rl-policy is
//! built with the `cuda` feature, else the CPU (so the default build runs the same code and keeps
//! it honest). With `cuda` this is what the GPU bundle (`scripts/gpu_bundle.sh`, `docs/gpu.md`)
//! ships: the committed transformers goldens of the tiny models on the GPU, finite-difference
//! gradients in f64, KV-cache steps against the full forward, the GPU against the CPU (values and
//! gradients, f32 and bf16 products) and, when `RLZ_SMOLLM2_GGUF` names the model file (ignored
//! test), SmolLM2-135M against its transformers golden.
//!
//! `RLZ_POLICY_FIXTURES` overrides the fixtures directory (`tests/fixtures` of this crate), for
//! test binaries run away from the source tree.

use std::path::PathBuf;

use candle_core::{D, DType, Device, Tensor};
use rl_core::SamplingConfig;
use rl_policy::logprobs::{PromptResponse, token_log_probs};
use rl_policy::model::{AttentionLayout, KvCache, Mode, Transformer};
use rl_policy::sampling::{StopRules, generate};
use rl_policy::{ComputeDtype, LanguageModel, ModelConfig, testing_assets};
use serde_json::Value;

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn device() -> Device {
    rl_policy::testing_assets::test_device()
}

fn fixtures() -> PathBuf {
    std::env::var_os("RLZ_POLICY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("int") as u32).collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("float") as f32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `(B, S-1)` log p(ids[t+1] | ids[..=t]) from all-position logits, computed on the model's device.
fn next_token_log_probs(
    m: &Transformer,
    ids: &[Vec<u32>],
    valid: &[Vec<bool>],
    mode: Mode,
    dev: &Device,
) -> R<Vec<Vec<f32>>> {
    let (b, s) = (ids.len(), ids[0].len());
    let t = Tensor::from_vec(ids.concat(), (b, s), dev)?;
    let logits = m.forward(&t, valid, mode)?.narrow(1, 0, s - 1)?;
    let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let next = t.narrow(1, 1, s - 1)?.unsqueeze(2)?.contiguous()?;
    Ok(lsm.gather(&next, 2)?.squeeze(2)?.to_dtype(DType::F32)?.to_vec2()?)
}

/// Every golden case's log-probs (diff and fused paths), the left-padded batch and the greedy
/// tokens, on `dev`.
fn check_golden(model: &LanguageModel, golden: &Value, tol: f32, dev: &Device) -> R<f32> {
    let (train, fast) = (model.trainable()?, model.detached()?);
    let mut worst = 0f32;
    for case in golden["cases"].as_array().expect("cases") {
        let ids = u32s(&case["input_ids"]);
        let want = f32s(&case["token_logprobs"]);
        let valid = vec![vec![true; ids.len()]];
        for (mode, m) in [(Mode::Diff, &train), (Mode::Fused, &fast)] {
            let got = &next_token_log_probs(m, std::slice::from_ref(&ids), &valid, mode, dev)?[0];
            let d = max_diff(got, &want);
            worst = worst.max(d);
            assert!(d <= tol, "{} {mode:?}: max |Δ log-prob| = {d}", case["name"]);
        }
        if let Some(greedy) = case.get("greedy_new_ids") {
            let want = u32s(greedy);
            let out = generate(
                &fast,
                std::slice::from_ref(&ids),
                &SamplingConfig::greedy(want.len()),
                StopRules { eos_ids: &[], stop: None },
                0,
            )?;
            assert_eq!(out.tokens[0], want, "{} greedy", case["name"]);
        }
    }
    let batch = &golden["batch"];
    let ids: Vec<Vec<u32>> = batch["input_ids"].as_array().expect("ids").iter().map(u32s).collect();
    let valid: Vec<Vec<bool>> = batch["attention_mask"]
        .as_array()
        .expect("mask")
        .iter()
        .map(|r| u32s(r).iter().map(|&m| m == 1).collect())
        .collect();
    let want: Vec<Vec<f32>> =
        batch["token_logprobs"].as_array().expect("lp").iter().map(f32s).collect();
    for (mode, m) in [(Mode::Diff, &train), (Mode::Fused, &fast)] {
        let got = next_token_log_probs(m, &ids, &valid, mode, dev)?;
        for (row, (g, w)) in got.iter().zip(&want).enumerate() {
            let g: Vec<f32> = g
                .iter()
                .enumerate()
                .map(|(t, &x)| if valid[row][t] && valid[row][t + 1] { x } else { 0.0 })
                .collect();
            let d = max_diff(&g, w);
            worst = worst.max(d);
            assert!(d <= tol, "batch row {row} {mode:?}: {d}");
        }
    }
    Ok(worst)
}

#[test]
fn tiny_models_match_transformers_goldens() -> R {
    let dev = device();
    for name in ["tiny-llama", "tiny-qwen2", "tiny-qwen3"] {
        let dir = fixtures().join(name);
        let model = LanguageModel::from_hf_dir(&dir, DType::F32, &dev)?;
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json"))?)?;
        let worst =
            check_golden(&model, &golden, 1e-4, &dev).map_err(|e| format!("{name}: {e}"))?;
        eprintln!("{name} on {dev:?}: max |Δ log-prob| vs transformers {worst:.2e}");
    }
    Ok(())
}

/// Needs the model file: `RLZ_SMOLLM2_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf`
/// (`scripts/fetch_smollm2.sh`), run with `--ignored`.
#[test]
#[ignore = "needs RLZ_SMOLLM2_GGUF (SmolLM2-135M-Instruct.Q4_1.gguf)"]
fn smollm2_matches_transformers_golden() -> R {
    let dev = device();
    let model = LanguageModel::from_gguf(&testing_assets::smollm2_gguf()?, DType::F32, &dev)?;
    let path = fixtures().join("smollm2_golden.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let worst = check_golden(&model, &golden, 1e-4, &dev)?;
    eprintln!("smollm2 on {dev:?}: max |Δ log-prob| vs transformers {worst:.2e}");
    Ok(())
}

fn tiny_config(model_type: &str) -> ModelConfig {
    ModelConfig::from_hf_json(serde_json::json!({
        "model_type": model_type, "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "tie_word_embeddings": model_type == "qwen3", "eos_token_id": 3, "rms_norm_eps": 1e-6,
        "attention_bias": model_type == "llama", "rope_theta": 10000.0,
    }))
    .expect("valid config")
}

/// A left-padded prompt batch and a right-padded response batch (B = 3, P = 4, T = 5) on `dev`.
struct Batch {
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
}

fn batch(dev: &Device) -> R<Batch> {
    Ok(Batch {
        prompt_ids: Tensor::new(&[[0u32, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 11]], dev)?,
        prompt_mask: Tensor::new(&[[0f32, 0., 1., 1.], [1., 1., 1., 1.], [0., 0., 0., 1.]], dev)?,
        response_ids: Tensor::new(
            &[[12u32, 13, 14, 0, 0], [15, 16, 17, 18, 19], [20, 0, 0, 0, 0]],
            dev,
        )?,
        response_mask: Tensor::new(
            &[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.], [1., 0., 0., 0., 0.]],
            dev,
        )?,
    })
}

/// Weighted sum of response log-probs and entropies (weights make every position matter).
fn loss(model: &LanguageModel, b: &Batch, chunk: usize) -> R<Tensor> {
    let m = model.trainable()?;
    let view = PromptResponse {
        prompt_ids: &b.prompt_ids,
        prompt_mask: &b.prompt_mask,
        response_ids: &b.response_ids,
        response_mask: &b.response_mask,
    };
    let hidden = view.response_hidden(&m, Mode::Diff)?;
    let (lp, ent) = token_log_probs(&m, &hidden, &b.response_ids, &b.response_mask, chunk, true)?;
    let w = Tensor::arange(1f32, 16.0, lp.device())?.reshape((3, 5))?.to_dtype(lp.dtype())?;
    Ok(((lp * &w)?.sum_all()? + (ent.expect("entropy") * 0.1)?.sum_all()?)?)
}

/// A copy of `model` (same weights) on `dev`.
fn moved(model: &LanguageModel, dev: &Device) -> R<LanguageModel> {
    let tensors = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().to_device(dev)?)))
        .collect::<R<_>>()?;
    let path = std::path::Path::new("<moved>");
    Ok(LanguageModel::from_tensors(model.config().clone(), tensors, path, model.dtype(), dev)?)
}

#[test]
fn gradients_match_finite_differences_in_f64() -> R {
    let dev = device();
    for arch in ["llama", "qwen3"] {
        let model = LanguageModel::random(tiny_config(arch), 42, DType::F64, &dev)?;
        let b = batch(&dev)?;
        let grads = loss(&model, &b, 0)?.backward()?;
        let mut checked = 0;
        for (name, var) in model.named_vars().iter().filter(|(n, _)| {
            n.contains("layers.0.self_attn.q_proj.weight")
                || n.contains("layers.1.mlp.down_proj")
                || n.contains("layers.0.input_layernorm")
                || n.contains("q_norm")
                || n.contains("embed_tokens")
                || n.contains("k_proj.bias")
                || *n == "model.norm.weight"
        }) {
            let g = grads.get(var.as_tensor()).ok_or("no grad")?.flatten_all()?.to_vec1::<f64>()?;
            let orig = var.as_tensor().copy()?;
            let n = orig.elem_count();
            for k in [0, n / 3, n - 1] {
                let eval = |delta: f64| -> R<f64> {
                    let mut v = orig.flatten_all()?.to_vec1::<f64>()?;
                    v[k] += delta;
                    var.set(&Tensor::from_vec(v, orig.shape(), &dev)?)?;
                    Ok(loss(&model, &b, 0)?.to_scalar::<f64>()?)
                };
                let h = 1e-5;
                let numeric = (eval(h)? - eval(-h)?) / (2.0 * h);
                var.set(&orig)?;
                let rel = (numeric - g[k]).abs() / g[k].abs().max(numeric.abs()).max(1e-6);
                assert!(rel < 1e-4, "{arch} {name}[{k}]: autograd {} vs numeric {numeric}", g[k]);
                checked += 1;
            }
        }
        assert!(checked >= 15, "{arch}: only {checked} coordinates checked");
    }
    Ok(())
}

#[test]
fn kv_cache_steps_equal_full_forward() -> R {
    let dev = device();
    let ids = [[0u32, 4, 8, 15, 16, 23, 30], [1, 2, 3, 5, 7, 11, 13]];
    let valid = vec![vec![false, true, true, true, true, true, true], vec![true; 7]];
    let mut worst = 0f32;
    for (arch, mode) in [("qwen3", Mode::Fused), ("llama", Mode::Fused), ("llama", Mode::Diff)] {
        let model = LanguageModel::random(tiny_config(arch), 42, DType::F32, &dev)?;
        let m = model.detached()?;
        let full = m.forward(&Tensor::new(&ids, &dev)?, &valid, mode)?;
        for mut cache in [KvCache::new(2), KvCache::with_capacity(2, 7)] {
            let prefix = 4;
            let first = Tensor::new(&ids, &dev)?.narrow(1, 0, prefix)?;
            let vp: Vec<Vec<bool>> = valid.iter().map(|r| r[..prefix].to_vec()).collect();
            let layout = AttentionLayout::new(&vp, prefix, m.dtype(), &dev)?;
            let mut outs =
                vec![m.logits(&m.hidden_states(&first, &layout, Some(&mut cache), mode)?)?];
            for s in prefix..7 {
                let step = Tensor::new(&ids, &dev)?.narrow(1, s, 1)?;
                let vs: Vec<Vec<bool>> = valid.iter().map(|r| r[..=s].to_vec()).collect();
                let layout = AttentionLayout::new(&vs, 1, m.dtype(), &dev)?;
                outs.push(m.logits(&m.hidden_states(&step, &layout, Some(&mut cache), mode)?)?);
            }
            // Pad queries (row 0, position 0) attend to nothing real: their output is arbitrary.
            let inc = Tensor::cat(&outs, 1)?.narrow(1, 1, 6)?;
            let delta = (inc - full.narrow(1, 1, 6)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            worst = worst.max(delta);
        }
    }
    assert!(worst < 1e-5, "{worst}");
    Ok(())
}

/// The same weights on the device and on the CPU: the loss and every parameter's gradient agree
/// (f32 products: 1e-4 relative; bf16 products with f32 accumulation: 2e-2, as bf16 rounding of
/// the operands differs only in summation order between cuBLAS and the CPU path).
#[test]
fn device_loss_and_gradients_match_the_cpu() -> R {
    let dev = device();
    for (arch, compute, tol) in [
        ("llama", ComputeDtype::F32, 1e-4),
        ("qwen2", ComputeDtype::F32, 1e-4),
        ("qwen3", ComputeDtype::Bf16, 2e-2),
    ] {
        let cpu_model = LanguageModel::random(tiny_config(arch), 7, DType::F32, &Device::Cpu)?
            .with_compute_dtype(compute)?;
        let dev_model = moved(&cpu_model, &dev)?.with_compute_dtype(compute)?;
        let (lc, ld) =
            (loss(&cpu_model, &batch(&Device::Cpu)?, 2)?, loss(&dev_model, &batch(&dev)?, 2)?);
        let (vc, vd) = (lc.to_scalar::<f32>()?, ld.to_scalar::<f32>()?);
        assert!(
            (vc - vd).abs() <= tol * vc.abs().max(1.0),
            "{arch} {compute:?}: loss {vc} vs {vd}"
        );
        let (gc, gd) = (lc.backward()?, ld.backward()?);
        for ((name, c), (_, d)) in cpu_model.named_vars().iter().zip(dev_model.named_vars().iter())
        {
            let c = gc.get(c.as_tensor()).ok_or(format!("{name}: no CPU gradient"))?;
            let d = gd.get(d.as_tensor()).ok_or(format!("{name}: no device gradient"))?;
            let scale = c.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
            let diff = (c - d.to_device(&Device::Cpu)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff <= tol * scale,
                "{arch} {compute:?} {name}: max |Δ grad| {diff} (scale {scale})"
            );
        }
    }
    Ok(())
}
