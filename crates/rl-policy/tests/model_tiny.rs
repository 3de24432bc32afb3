//! Properties of the decoder on tiny random models: gradients reach every parameter, finite
//! differences agree with autograd, padding and KV cache do not change results, the fused and
//! differentiable paths agree, checkpoints round-trip, loaders report typed errors, sampling is
//! reproducible and consistent with the training log-probs.

use candle_core::{DType, Device, Tensor, Var};
use rl_core::{Critic, Policy, SamplingConfig};
use rl_policy::logprobs::{PromptResponse, Trimmed, token_log_probs};
use rl_policy::model::{AttentionLayout, KvCache, Mode};
use rl_policy::{ComputeDtype, LanguageModel, LmPolicy, ModelConfig, PolicyError, ValueModel};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn config(model_type: &str, tied: bool) -> ModelConfig {
    ModelConfig::from_hf_json(serde_json::json!({
        "model_type": model_type, "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "tie_word_embeddings": tied, "eos_token_id": 3, "rms_norm_eps": 1e-6,
        "attention_bias": model_type == "llama", "rope_theta": 10000.0,
    }))
    .expect("valid config")
}

fn tiny(model_type: &str, tied: bool, dtype: DType) -> LanguageModel {
    LanguageModel::random(config(model_type, tied), 42, dtype, &Device::Cpu).expect("random model")
}

/// A left-padded prompt batch and a right-padded response batch (B = 3, P = 4, T = 5).
struct Batch {
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
}

fn batch() -> Batch {
    let d = Device::Cpu;
    let t = |v: &[[u32; 4]; 3]| Tensor::new(v, &d).expect("tensor");
    let r = |v: &[[u32; 5]; 3]| Tensor::new(v, &d).expect("tensor");
    let f = |v: &[[f32; 4]; 3]| Tensor::new(v, &d).expect("tensor");
    let g = |v: &[[f32; 5]; 3]| Tensor::new(v, &d).expect("tensor");
    Batch {
        prompt_ids: t(&[[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 11]]),
        prompt_mask: f(&[[0., 0., 1., 1.], [1., 1., 1., 1.], [0., 0., 0., 1.]]),
        response_ids: r(&[[12, 13, 14, 0, 0], [15, 16, 17, 18, 19], [20, 0, 0, 0, 0]]),
        response_mask: g(&[[1., 1., 1., 0., 0.], [1., 1., 1., 1., 1.], [1., 0., 0., 0., 0.]]),
    }
}

impl Batch {
    fn view(&self) -> PromptResponse<'_> {
        PromptResponse {
            prompt_ids: &self.prompt_ids,
            prompt_mask: &self.prompt_mask,
            response_ids: &self.response_ids,
            response_mask: &self.response_mask,
        }
    }
}

/// Weighted sum of response log-probs and entropies (weights make every position matter).
fn loss(model: &LanguageModel, b: &Batch, chunk: usize) -> R<Tensor> {
    let m = model.trainable()?;
    let hidden = b.view().response_hidden(&m, Mode::Diff)?;
    let (lp, ent) = token_log_probs(&m, &hidden, &b.response_ids, &b.response_mask, chunk, true)?;
    let w = Tensor::arange(1.0, 16.0, &Device::Cpu)?.reshape((3, 5))?.to_dtype(lp.dtype())?;
    Ok(((lp * &w)?.sum_all()? + (ent.expect("entropy") * 0.1)?.sum_all()?)?)
}

#[test]
fn every_parameter_gets_a_gradient() -> R {
    blas_from_env();
    for (arch, tied) in [("llama", false), ("qwen2", true), ("qwen3", false)] {
        let model = tiny(arch, tied, DType::F32);
        let grads = loss(&model, &batch(), 2)?.backward()?;
        let named = model.named_vars();
        let expected = model.config().tensor_shapes().len();
        assert_eq!(named.len(), expected);
        let with_grad = named
            .iter()
            .filter(|(_, v)| {
                grads.get(v.as_tensor()).is_some_and(|g| {
                    g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0
                })
            })
            .count();
        let missing: Vec<_> = named
            .iter()
            .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
            .map(|(n, _)| n)
            .collect();
        assert_eq!(with_grad, expected, "{arch}: params without gradient: {missing:?}");
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> R {
    blas_from_env();
    for arch in ["llama", "qwen3"] {
        let model = tiny(arch, arch == "qwen3", DType::F64);
        let b = batch();
        let grads = loss(&model, &b, 0)?.backward()?;
        let named = model.named_vars();
        let mut checked = 0;
        for (name, var) in named.iter().filter(|(n, _)| {
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
                    var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu)?)?;
                    Ok(loss(&model, &b, 0)?.to_scalar::<f64>()?)
                };
                let h = 1e-5;
                let numeric = (eval(h)? - eval(-h)?) / (2.0 * h);
                var.set(&orig)?;
                let rel = (numeric - g[k]).abs() / g[k].abs().max(numeric.abs()).max(1e-6);
                assert!(
                    rel < 1e-4,
                    "{arch} {name}[{k}]: autograd {} vs numeric {numeric} (rel {rel})",
                    g[k]
                );
                checked += 1;
            }
        }
        assert!(checked >= 15, "{arch}: only {checked} coordinates checked");
    }
    Ok(())
}

/// Rows 0, 1, 3 share prompt A (left-padded), rows 2 and 4 share prompt B; responses of
/// lengths 3, 5, 1, 2, 4 (right-padded).
fn shared_batch() -> R<Batch> {
    let d = Device::Cpu;
    let (a, am) = ([0u32, 5, 6, 7], [0f32, 1., 1., 1.]);
    let (b, bm) = ([8u32, 9, 10, 11], [1f32, 1., 1., 1.]);
    let prompt_ids = Tensor::new(&[a, a, b, a, b], &d)?;
    let prompt_mask = Tensor::new(&[am, am, bm, am, bm], &d)?;
    let response_ids = Tensor::new(
        &[
            [12u32, 13, 14, 0, 0],
            [15, 16, 17, 18, 19],
            [20, 0, 0, 0, 0],
            [21, 22, 0, 0, 0],
            [23, 24, 25, 26, 0],
        ],
        &d,
    )?;
    let lens = [3usize, 5, 1, 2, 4];
    let mask: Vec<f32> =
        lens.iter().flat_map(|&n| (0..5).map(move |j| f32::from(u8::from(j < n)))).collect();
    let response_mask = Tensor::from_vec(mask, (5, 5), &d)?;
    Ok(Batch { prompt_ids, prompt_mask, response_ids, response_mask })
}

/// Every parameter's gradient, by name, flattened.
type NamedGrads = Vec<(String, Vec<f32>)>;

/// Log-probs `(B, T)` and every parameter's gradient of a weighted log-prob sum, through
/// `PromptResponse::response_hidden` (`shared`) or `response_hidden_joint`.
fn log_probs_and_grads(
    model: &LanguageModel,
    view: PromptResponse<'_>,
    shared: bool,
) -> R<(Vec<Vec<f32>>, NamedGrads)> {
    let m = model.trainable()?;
    let hidden = if shared {
        view.response_hidden(&m, Mode::Diff)?
    } else {
        view.response_hidden_joint(&m, Mode::Diff)?
    };
    let (lp, _) = token_log_probs(&m, &hidden, view.response_ids, view.response_mask, 0, false)?;
    let (b, t) = lp.dims2()?;
    let w = Tensor::arange(1.0, (b * t + 1) as f64, &Device::Cpu)?.reshape((b, t))?;
    let grads = (lp.clone() * w.to_dtype(lp.dtype())?)?.sum_all()?.backward()?;
    let mut named: Vec<(String, Vec<f32>)> = model
        .named_vars()
        .into_iter()
        .map(|(name, v)| {
            let g = grads.get(v.as_tensor()).expect("gradient").flatten_all().unwrap();
            (name, g.to_vec1::<f32>().unwrap())
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((lp.to_vec2::<f32>()?, named))
}

#[test]
fn shared_prompts_give_the_joint_pass_values_and_gradients() -> R {
    let Batch { prompt_ids, prompt_mask, response_ids, response_mask } = shared_batch()?;
    for t in [5, 1] {
        let (ids, m) = (response_ids.narrow(1, 0, t)?, response_mask.narrow(1, 0, t)?);
        let view = PromptResponse {
            prompt_ids: &prompt_ids,
            prompt_mask: &prompt_mask,
            response_ids: &ids,
            response_mask: &m,
        };
        for (arch, tied) in [("llama", false), ("qwen2", true), ("qwen3", false)] {
            let model = tiny(arch, tied, DType::F32);
            let (lp_s, g_s) = log_probs_and_grads(&model, view, true)?;
            let (lp_j, g_j) = log_probs_and_grads(&model, view, false)?;
            for (rs, rj) in lp_s.iter().zip(&lp_j) {
                for (x, y) in rs.iter().zip(rj) {
                    assert!((x - y).abs() < 1e-5, "{arch} T={t}: log-prob {x} vs {y}");
                }
            }
            assert!(lp_s.iter().flatten().any(|&x| x != 0.0));
            for ((name, gs), (_, gj)) in g_s.iter().zip(&g_j) {
                let scale = gj.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
                for (x, y) in gs.iter().zip(gj) {
                    assert!(
                        (x - y).abs() <= 1e-4 * scale,
                        "{arch} T={t} {name}: gradient {x} vs {y} (scale {scale})"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn chunking_does_not_change_log_probs() -> R {
    let model = tiny("qwen2", false, DType::F32);
    let m = model.trainable()?;
    let b = batch();
    let hidden = b.view().response_hidden(&m, Mode::Diff)?;
    let (a, _) = token_log_probs(&m, &hidden, &b.response_ids, &b.response_mask, 1, false)?;
    let (c, _) = token_log_probs(&m, &hidden, &b.response_ids, &b.response_mask, 0, false)?;
    assert_eq!(a.to_vec2::<f32>()?, c.to_vec2::<f32>()?);
    // Padding is exactly zero.
    assert_eq!(a.to_vec2::<f32>()?[2][1..], [0.0; 4]);
    // Log-probs and entropies equal a host computation from the full-sequence logits
    // (row 1 has no padding: joint positions 3..8 predict its 5 response tokens).
    let (_, ent) = token_log_probs(&m, &hidden, &b.response_ids, &b.response_mask, 2, true)?;
    let ent = ent.expect("entropy").to_vec2::<f32>()?;
    let ids: Vec<u32> = [7u32, 8, 9, 10, 15, 16, 17, 18, 19].to_vec();
    let logits = m.forward(
        &Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?,
        &[vec![true; 9]],
        Mode::Diff,
    )?;
    let logits = logits.squeeze(0)?.to_vec2::<f32>()?;
    for t in 0..5 {
        let row: Vec<f64> = logits[3 + t].iter().map(|&x| x as f64).collect();
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        let lp: Vec<f64> = row.iter().map(|x| x - lse).collect();
        let h: f64 = -lp.iter().map(|l| l.exp() * l).sum::<f64>();
        assert!((lp[ids[4 + t] as usize] - a.to_vec2::<f32>()?[1][t] as f64).abs() < 1e-5);
        assert!((h - ent[1][t] as f64).abs() < 1e-5, "entropy {h} vs {}", ent[1][t]);
    }
    Ok(())
}

#[test]
fn left_padding_and_fused_path_do_not_change_logits() -> R {
    blas_from_env();
    for arch in ["llama", "qwen2", "qwen3"] {
        let model = tiny(arch, false, DType::F32);
        let (diff, fused) = (model.trainable()?, model.detached()?);
        let d = Device::Cpu;
        let tokens = [5u32, 9, 2, 33, 7];
        let plain = diff.forward(&Tensor::new(&[tokens], &d)?, &[vec![true; 5]], Mode::Diff)?;
        let padded_ids = Tensor::new(&[[0u32, 0, 5, 9, 2, 33, 7], [1, 2, 3, 4, 5, 6, 7]], &d)?;
        let valid = vec![vec![false, false, true, true, true, true, true], vec![true; 7]];
        for (m, mode) in [(&diff, Mode::Diff), (&fused, Mode::Fused)] {
            let padded = m.forward(&padded_ids, &valid, mode)?;
            let all = padded.flatten_all()?.to_vec1::<f32>()?;
            assert!(
                all.iter().all(|x| x.is_finite()),
                "{arch} {mode:?}: non-finite logits on pad rows"
            );
            let row = padded.get(0)?.narrow(0, 2, 5)?;
            let delta = (row - plain.get(0)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(delta < 1e-5, "{arch} {mode:?}: padded vs plain {delta}");
        }
    }
    Ok(())
}

#[test]
fn kv_cache_steps_equal_full_forward() -> R {
    blas_from_env();
    let d = Device::Cpu;
    let ids = [[0u32, 4, 8, 15, 16, 23, 30], [1, 2, 3, 5, 7, 11, 13]];
    let valid = vec![vec![false, true, true, true, true, true, true], vec![true; 7]];
    let (mut worst, mut worst_bf16) = (0f32, 0f32);
    for (arch, mode, compute) in [
        ("qwen3", Mode::Fused, ComputeDtype::F32),
        ("qwen3", Mode::Diff, ComputeDtype::F32),
        ("llama", Mode::Fused, ComputeDtype::F32),
        ("llama", Mode::Diff, ComputeDtype::F32),
        ("qwen3", Mode::Fused, ComputeDtype::Bf16),
        ("llama", Mode::Diff, ComputeDtype::Bf16),
    ] {
        let mut model = tiny(arch, true, DType::F32);
        model.set_compute_dtype(compute)?;
        let m = model.detached()?;
        let full = m.forward(&Tensor::new(&ids, &d)?, &valid, mode)?;
        let mut incremental = Vec::new();
        // No capacity (every append grows the buffers), an exact one (in-place appends) and
        // the trainable weights (keys with a graph are concatenated).
        for (mut cache, trainable) in [
            (KvCache::new(2), false),
            (KvCache::with_capacity(2, 7), false),
            (KvCache::new(2), true),
        ] {
            let m = if trainable { model.trainable()? } else { model.detached()? };
            let prefix = 4;
            let first = Tensor::new(&ids, &d)?.narrow(1, 0, prefix)?;
            let vp: Vec<Vec<bool>> = valid.iter().map(|r| r[..prefix].to_vec()).collect();
            let layout = AttentionLayout::new(&vp, prefix, m.dtype(), &d)?;
            let mut outs =
                vec![m.logits(&m.hidden_states(&first, &layout, Some(&mut cache), mode)?)?];
            for s in prefix..7 {
                let step = Tensor::new(&ids, &d)?.narrow(1, s, 1)?;
                let vs: Vec<Vec<bool>> = valid.iter().map(|r| r[..=s].to_vec()).collect();
                let layout = AttentionLayout::new(&vs, 1, m.dtype(), &d)?;
                outs.push(m.logits(&m.hidden_states(&step, &layout, Some(&mut cache), mode)?)?);
            }
            assert_eq!(cache.len(), 7);
            // Untracked keys and values of bf16 products are kept in bf16 (rounded once).
            let bf16_cache = compute == ComputeDtype::Bf16 && !trainable;
            let want = if bf16_cache { DType::BF16 } else { DType::F32 };
            assert_eq!(cache.dtype(), Some(want), "{arch} {mode:?} {compute:?} {trainable}");
            // Pad queries (row 0, position 0) attend to nothing real: their output is arbitrary.
            let inc = Tensor::cat(&outs, 1)?.narrow(1, 1, 6)?;
            let delta = (&inc - full.narrow(1, 1, 6)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            match compute {
                ComputeDtype::F32 => worst = worst.max(delta),
                ComputeDtype::Bf16 => worst_bf16 = worst_bf16.max(delta),
            }
            incremental.push(inc);
        }
        // In bf16, the f32 cache of the trainable weights (rounded at every product) and the
        // bf16 cache (rounded once) give the product the same operands.
        if compute == ComputeDtype::Bf16 {
            let d = (&incremental[0] - &incremental[2])?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "{arch} {mode:?}: bf16 cache vs f32 cache {d}");
        }
    }
    assert!(worst < 1e-5, "{worst}");
    // bf16 products round intermediate results; the full pass and the steps round alike.
    assert!(worst_bf16 < 0.05, "{worst_bf16}");
    Ok(())
}

#[test]
fn checkpoints_round_trip_and_loaders_report_typed_errors() -> R {
    let dir = tempfile::tempdir()?;
    let model = tiny("qwen2", false, DType::F32);
    model.save(dir.path())?;
    let back = LanguageModel::from_hf_dir(dir.path(), DType::F32, &Device::Cpu)?;
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu)?;
    let a = model.detached()?.forward(&ids, &[vec![true; 3]], Mode::Fused)?;
    let b = back.detached()?.forward(&ids, &[vec![true; 3]], Mode::Fused)?;
    assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
    assert!(
        !dir.path()
            .read_dir()?
            .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().contains(".tmp")))
    );

    let weights = dir.path().join("model.safetensors");
    // Missing tensor: save a model without lm_head under an untied config.
    let tied = tiny("qwen2", true, DType::F32);
    let other = tempfile::tempdir()?;
    tied.save(other.path())?;
    std::fs::copy(other.path().join("model.safetensors"), &weights)?;
    let err = LanguageModel::from_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, PolicyError::MissingTensor { name, path } if name == "lm_head.weight" && path == &weights),
        "{err}"
    );
    // Wrong shape: a config with a bigger vocabulary.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json"))?)?;
    cfg["vocab_size"] = 41.into();
    cfg["tie_word_embeddings"] = true.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string())?;
    let err = LanguageModel::from_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, PolicyError::TensorShape { name, expected, got, .. } if name == "model.embed_tokens.weight" && expected == &[41, 16] && got == &[40, 16]),
        "{err}"
    );
    // Corrupt weights, missing weights, unknown architecture, GGUF garbage.
    std::fs::write(&weights, b"not a safetensors file")?;
    let err = LanguageModel::from_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(&err, PolicyError::CorruptFile { path, .. } if path == &weights), "{err}");
    std::fs::remove_file(&weights)?;
    let err = LanguageModel::from_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(&err, PolicyError::MissingFile { path } if path == &weights), "{err}");
    cfg["model_type"] = "gpt2".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string())?;
    let err = LanguageModel::from_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(&err, PolicyError::UnknownArchitecture { name } if name == "gpt2"), "{err}");
    let missing = dir.path().join("nope.gguf");
    let err = rl_policy::LmPolicy::load(missing.to_str().ok_or("utf8")?, DType::F32, &Device::Cpu)
        .unwrap_err();
    assert!(matches!(&err, PolicyError::MissingFile { path } if path == &missing), "{err}");
    let gguf = dir.path().join("x.gguf");
    std::fs::write(&gguf, b"GGUF garbage")?;
    assert!(matches!(
        LanguageModel::from_gguf(&gguf, DType::F32, &Device::Cpu),
        Err(PolicyError::CorruptFile { .. })
    ));
    Ok(())
}

fn policy() -> LmPolicy {
    LmPolicy::new(tiny("llama", true, DType::F32)).with_pad_id(0)
}

/// `sample_dtype` apart from `compute_dtype`: with bf16 training products and f32 sampling,
/// the rollouts (tokens and sampling log-probs) are bit for bit those of an all-f32 model and the
/// training log-probs those of an all-bf16 one.
#[test]
fn sample_dtype_sets_the_sampler_apart_from_the_training_products() -> R {
    let with = |compute: ComputeDtype, sample: Option<ComputeDtype>| -> R<LmPolicy> {
        let mut model = tiny("llama", true, DType::F32);
        model.set_compute_dtype(compute)?;
        model.set_sample_compute_dtype(sample)?;
        Ok(LmPolicy::new(model).with_pad_id(0))
    };
    let f32_only = with(ComputeDtype::F32, None)?;
    let bf16_only = with(ComputeDtype::Bf16, None)?;
    let mixed = with(ComputeDtype::Bf16, Some(ComputeDtype::F32))?;
    let prompts = vec![vec![5u32, 6, 7], vec![9u32]];
    let cfg = SamplingConfig { max_new_tokens: 6, n: 3, seed: 11, ..SamplingConfig::default() };
    // (response ids, sampling log-probs) of the same prompts and seed.
    type Rollouts = (Vec<Vec<u32>>, Vec<Vec<f32>>);
    let rollouts = |p: &LmPolicy| -> R<Rollouts> {
        let b = p.generate_ids(&prompts, None, &cfg)?;
        Ok((b.response_ids.to_vec2()?, b.old_log_probs.to_vec2()?))
    };
    let (f32_ids, f32_lp) = rollouts(&f32_only)?;
    let (mixed_ids, mixed_lp) = rollouts(&mixed)?;
    assert_eq!((&mixed_ids, &mixed_lp), (&f32_ids, &f32_lp));
    // bf16 sampling gives other log-probs (the test could fail if the setting were ignored).
    let (_, bf16_lp) = rollouts(&bf16_only)?;
    assert_ne!(bf16_lp, f32_lp);
    // Training log-probs of the same batch follow compute_dtype.
    let batch = f32_only.generate_ids(&prompts, None, &cfg)?;
    let lp =
        |p: &LmPolicy| -> R<Vec<Vec<f32>>> { Ok(p.log_probs(&batch, false)?.log_probs.to_vec2()?) };
    assert_eq!(lp(&mixed)?, lp(&bf16_only)?);
    assert_ne!(lp(&mixed)?, lp(&f32_only)?);
    assert_eq!(mixed.model().sample_compute_dtype(), ComputeDtype::F32);
    assert_eq!(mixed.model().compute_dtype(), ComputeDtype::Bf16);
    Ok(())
}

#[test]
fn sampling_is_reproducible_and_consistent_with_training_log_probs() -> R {
    let policy = policy();
    let prompts = vec![vec![5u32, 6, 7], vec![9u32]];
    let cfg = SamplingConfig {
        max_new_tokens: 6,
        n: 3,
        seed: 11,
        top_p: 0.95,
        top_k: Some(30),
        ..SamplingConfig::default()
    };
    let a = policy.generate_ids(&prompts, None, &cfg)?;
    let b = policy.generate_ids(&prompts, None, &cfg)?;
    a.validate()?;
    assert_eq!(a.len(), 6);
    assert_eq!(a.group_ids, vec![0, 0, 0, 1, 1, 1]);
    assert_eq!(a.response_ids.to_vec2::<u32>()?, b.response_ids.to_vec2::<u32>()?);
    let other = policy.generate_ids(&prompts, None, &SamplingConfig { seed: 12, ..cfg.clone() })?;
    assert_ne!(a.response_ids.to_vec2::<u32>()?, other.response_ids.to_vec2::<u32>()?);
    // EOS (id 3) ends a response and is inside the mask; lengths match the samples.
    let ids = a.response_ids.to_vec2::<u32>()?;
    let mask = a.response_mask.to_vec2::<f32>()?;
    for (r, s) in a.samples.iter().enumerate() {
        let len = mask[r].iter().filter(|m| **m == 1.0).count();
        assert_eq!(len, s.response_tokens);
        assert_eq!(ids[r][..len].contains(&3), s.finish == rl_core::FinishReason::Eos);
    }
    // Sampling log-probs (fused path, T = 1) equal the training log-probs of the same tokens.
    let train = policy.log_probs(&a, true)?;
    // Columns that are padding in every row change nothing: they are trimmed before the pass
    // and the outputs padded back with zeros.
    let mut wide = a.clone();
    wide.prompt_ids = a.prompt_ids.pad_with_zeros(1, 2, 0)?;
    wide.prompt_mask = a.prompt_mask.pad_with_zeros(1, 2, 0)?;
    wide.response_ids = a.response_ids.pad_with_zeros(1, 0, 3)?;
    wide.response_mask = a.response_mask.pad_with_zeros(1, 0, 3)?;
    wide.old_log_probs = a.old_log_probs.pad_with_zeros(1, 0, 3)?;
    let t = a.response_ids.dim(1)?;
    let w = policy.log_probs(&wide, true)?;
    assert_eq!(w.log_probs.dims(), [6, t + 3]);
    assert_eq!(w.log_probs.narrow(1, 0, t)?.to_vec2::<f32>()?, train.log_probs.to_vec2::<f32>()?);
    assert_eq!(w.log_probs.narrow(1, t, 3)?.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    let (we, te) = (w.entropy.ok_or("entropy")?, train.entropy.clone().ok_or("entropy")?);
    assert_eq!(we.narrow(1, 0, t)?.to_vec2::<f32>()?, te.to_vec2::<f32>()?);
    let delta = (train.log_probs - &a.old_log_probs)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(delta < 1e-5, "{delta}");
    // The reference is a frozen copy: same numbers.
    let reference = policy.reference()?;
    let r = reference.log_probs(&a)?;
    let exact = policy.log_probs_detached(&a, false, Mode::Diff)?.log_probs;
    assert_eq!(r.to_vec2::<f32>()?, exact.to_vec2::<f32>()?);
    Ok(())
}

#[test]
fn greedy_generation_is_argmax_and_stops_on_eos() -> R {
    let policy = policy().with_eos_ids(vec![]);
    let batch = policy.generate_ids(&[vec![1, 2, 3]], None, &SamplingConfig::greedy(4))?;
    let toks = batch.response_ids.to_vec2::<u32>()?[0].clone();
    assert_eq!(batch.samples[0].finish, rl_core::FinishReason::Length);
    // The first greedy token is the argmax of the full forward.
    let m = policy.model().detached()?;
    let logits =
        m.forward(&Tensor::new(&[[1u32, 2, 3]], &Device::Cpu)?, &[vec![true; 3]], Mode::Fused)?;
    let first = logits.get(0)?.get(2)?.argmax(0)?.to_scalar::<u32>()?;
    assert_eq!(toks[0], first);
    // Make that token an EOS: generation stops after one token.
    let stop = policy.clone().with_eos_ids(vec![first]);
    let batch = stop.generate_ids(&[vec![1, 2, 3]], None, &SamplingConfig::greedy(4))?;
    assert_eq!(batch.response_len(), 1);
    assert_eq!(batch.samples[0].finish, rl_core::FinishReason::Eos);
    // In a batch, a row that stops early is dropped from the cache without disturbing the others.
    let other = vec![9u32, 30, 31, 2, 5];
    let solo =
        policy.generate_ids(std::slice::from_ref(&other), None, &SamplingConfig::greedy(6))?;
    let mixed = stop.generate_ids(
        &[vec![1, 2, 3], other.clone(), vec![1, 2, 3]],
        None,
        &SamplingConfig::greedy(6),
    )?;
    let solo_ids = solo.response_ids.to_vec2::<u32>()?[0].clone();
    let mixed_ids = mixed.response_ids.to_vec2::<u32>()?;
    let n = solo_ids.iter().position(|&t| t == first).map_or(6, |p| p + 1);
    assert_eq!(mixed_ids[1][..n], solo_ids[..n]);
    assert_eq!(mixed.samples[0].response_tokens, 1);
    assert_eq!(mixed.samples[2].response_tokens, 1);
    let train = stop.log_probs_detached(&mixed, false, Mode::Diff)?.log_probs;
    let delta = (train - &mixed.old_log_probs)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(delta < 1e-5, "{delta}");
    assert!(policy.generate_ids(&[vec![]], None, &SamplingConfig::greedy(4)).is_err());
    assert!(policy.generate_ids(&[vec![99]], None, &SamplingConfig::greedy(4)).is_err());
    Ok(())
}

#[test]
fn critic_values_are_aligned_and_trainable() -> R {
    let model = tiny("qwen2", false, DType::F32);
    let critic = ValueModel::from_model(&model, 1)?;
    let policy = LmPolicy::new(model).with_pad_id(0);
    let batch = policy.generate_ids(
        &[vec![5, 6], vec![7, 8, 9]],
        None,
        &SamplingConfig { max_new_tokens: 4, ..SamplingConfig::default() },
    )?;
    let v = critic.values(&batch)?;
    assert_eq!(v.dims(), &[2, batch.response_len()]);
    let detached = critic.values_detached(&batch)?;
    assert_eq!(v.to_vec2::<f32>()?, detached.to_vec2::<f32>()?);
    let grads = v.sqr()?.sum_all()?.backward()?;
    let vars: Vec<Var> = critic.trainable_vars();
    assert_eq!(vars.len(), policy.trainable_vars().len() - 1 + 2);
    let missing = vars.iter().filter(|v| grads.get(v.as_tensor()).is_none()).count();
    assert_eq!(missing, 0);
    // Training the critic does not touch the policy (deep copy).
    let before =
        policy.log_probs_detached(&batch, false, Mode::Diff)?.log_probs.to_vec2::<f32>()?;
    for var in &vars {
        var.set(&var.as_tensor().affine(0.5, 0.0)?)?;
    }
    assert_eq!(
        before,
        policy.log_probs_detached(&batch, false, Mode::Diff)?.log_probs.to_vec2::<f32>()?
    );
    // Save / load round trip.
    let dir = tempfile::tempdir()?;
    critic.save(dir.path())?;
    let back = ValueModel::load(dir.path(), DType::F32, &Device::Cpu)?;
    assert_eq!(back.values(&batch)?.to_vec2::<f32>()?, critic.values(&batch)?.to_vec2::<f32>()?);
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Any amount of left padding (with any pad id) leaves the logits of real tokens unchanged.
    #[test]
    fn left_padding_never_changes_logits(
        tokens in proptest::collection::vec(0u32..40, 2..8),
        pad in 0usize..5,
        pad_id in 0u32..40,
    ) {
        let model = tiny("qwen2", false, DType::F32);
        let m = model.detached().unwrap();
        let d = Device::Cpu;
        let n = tokens.len();
        let row = |ids: &[u32]| Tensor::new(ids, &d).unwrap().unsqueeze(0).unwrap();
        let plain = m.forward(&row(&tokens), &[vec![true; n]], Mode::Fused).unwrap();
        let padded: Vec<u32> = std::iter::repeat_n(pad_id, pad).chain(tokens.iter().copied()).collect();
        let valid: Vec<bool> = (0..n + pad).map(|i| i >= pad).collect();
        let out = m.forward(&row(&padded), &[valid], Mode::Fused).unwrap();
        let delta = (out.narrow(1, pad, n).unwrap() - plain).unwrap().abs().unwrap();
        let delta = delta.max_all().unwrap().to_scalar::<f32>().unwrap();
        proptest::prop_assert!(delta < 1e-5, "{}", delta);
    }
}

#[test]
fn bad_batches_are_typed_errors() -> R {
    let model = tiny("llama", true, DType::F32);
    let m = model.trainable()?;
    let b = batch();
    let too_big = Tensor::new(&[[1u32, 2, 3, 40, 0], [0; 5], [0; 5]], &Device::Cpu)?;
    let empty_prompt = Tensor::zeros((3, 0), DType::U32, &Device::Cpu)?;
    let empty_mask = Tensor::zeros((3, 0), DType::F32, &Device::Cpu)?;
    let short_mask = Tensor::ones((3, 4), DType::F32, &Device::Cpu)?;
    let cases = [
        PromptResponse { response_ids: &too_big, ..b.view() },
        PromptResponse { prompt_ids: &empty_prompt, prompt_mask: &empty_mask, ..b.view() },
        PromptResponse { response_mask: &short_mask, ..b.view() },
    ];
    for (i, view) in cases.iter().enumerate() {
        let err = view.response_hidden(&m, Mode::Diff).unwrap_err();
        assert!(matches!(err, PolicyError::Input { .. }), "case {i}: {err}");
        // The policies' path trims padding first: the same typed error, nothing trimmed away.
        let err =
            Trimmed::new(view).and_then(|t| t.view().response_hidden(&m, Mode::Diff)).unwrap_err();
        assert!(matches!(err, PolicyError::Input { .. }), "trimmed case {i}: {err}");
    }
    let err = Trimmed::new(&cases[2]).unwrap_err().to_string();
    assert!(err.contains("response_mask") && err.contains("expected [3, 5]"), "{err}");
    // An empty response gives empty log-probs, not an error.
    let (no_ids, no_mask) = (Tensor::zeros((3, 0), DType::U32, &Device::Cpu)?, empty_mask.clone());
    let view = PromptResponse { response_ids: &no_ids, response_mask: &no_mask, ..b.view() };
    let hidden = view.response_hidden(&m, Mode::Diff)?;
    let (lp, _) = token_log_probs(&m, &hidden, &no_ids, &no_mask, 0, false)?;
    assert_eq!(lp.dims(), &[3, 0]);
    // A diverged (NaN) model is a typed error in sampling, not NaN log-probs.
    let broken = LmPolicy::new(tiny("llama", true, DType::F32));
    let (_, norm) = broken
        .model()
        .named_vars()
        .into_iter()
        .find(|(n, _)| n == "model.norm.weight")
        .ok_or("norm")?;
    norm.set(&(norm.as_tensor() * f64::NAN)?)?;
    let err = broken.generate_ids(&[vec![1, 2]], None, &SamplingConfig::greedy(2)).unwrap_err();
    assert!(matches!(err, PolicyError::Input { .. }), "{err}");
    let bad_layout =
        AttentionLayout::new(&[vec![true; 3], vec![true; 2]], 1, DType::F32, &Device::Cpu);
    assert!(matches!(bad_layout, Err(PolicyError::Input { .. })));
    Ok(())
}

#[test]
fn bf16_forward_is_close_to_f32() -> R {
    let f32_model = tiny("qwen3", false, DType::F32);
    let bf16_model = tiny("qwen3", false, DType::BF16);
    let ids = Tensor::new(&[[0u32, 3, 9, 27, 1], [4, 5, 6, 7, 8]], &Device::Cpu)?;
    let valid = vec![vec![false, true, true, true, true], vec![true; 5]];
    let a = f32_model.detached()?.forward(&ids, &valid, Mode::Diff)?;
    for mode in [Mode::Diff, Mode::Fused] {
        let b = bf16_model.detached()?.forward(&ids, &valid, mode)?.to_dtype(DType::F32)?;
        let all = b.flatten_all()?.to_vec1::<f32>()?;
        assert!(all.iter().all(|x| x.is_finite()), "{mode:?}");
        let delta =
            (b.narrow(1, 1, 4)? - a.narrow(1, 1, 4)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(delta < 0.05, "{mode:?}: bf16 vs f32 {delta}");
    }
    Ok(())
}

/// With `RLZ_BLAS=<libmkl_rt.so>` (CI sets it after scripts/setup_mkl.sh) the products run in
/// MKL, so the same assertions check that backend too.
fn blas_from_env() {
    rl_policy::ops::blas::use_blas_from_env().expect("RLZ_BLAS names a usable MKL library");
}

/// The tiny llama with a context of `ctx` positions.
fn tiny_with_context(ctx: usize) -> LmPolicy {
    let mut json = config("llama", true).to_hf_json();
    json["max_position_embeddings"] = ctx.into();
    let cfg = ModelConfig::from_hf_json(json).expect("valid config");
    LmPolicy::new(LanguageModel::random(cfg, 42, DType::F32, &Device::Cpu).expect("model"))
        .with_pad_id(0)
}

/// Prompts longer than the context (with the generation budget) are typed errors naming the
/// prompt and both lengths, checked before anything sized by them is allocated: a 10 M-token
/// prompt fails at once instead of asking for petabytes. Batches scored past the context too.
#[test]
fn prompts_past_the_context_are_typed_errors() -> R {
    let policy = tiny_with_context(16);
    let cfg = SamplingConfig { max_new_tokens: 6, ..SamplingConfig::greedy(6) };
    // 10 + 6 = 16 positions fit exactly.
    policy.generate_ids(&[vec![5; 10]], None, &cfg)?;
    let err = policy.generate_ids(&[vec![5; 10], vec![5; 11]], None, &cfg).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::Input { .. }), "{msg}");
    assert!(msg.contains("prompts[1]") && msg.contains("11 prompt tokens"), "{msg}");
    assert!(msg.contains("17 positions") && msg.contains("context of 16"), "{msg}");
    let started = std::time::Instant::now();
    let huge = vec![5u32; 10_000_000];
    let err = policy.generate_ids(&[huge], None, &cfg).unwrap_err();
    assert!(err.to_string().contains("10000000 prompt tokens"), "{err}");
    assert!(started.elapsed().as_secs() < 5, "checked before any work");

    // A batch sampled with a longer context (no EOS: 3 + 6 = 9 tokens per row), scored by a
    // model with a context of 8.
    let long =
        tiny_with_context(64).with_eos_ids(vec![]).generate_ids(&[vec![5, 6, 7]], None, &cfg)?;
    assert_eq!(long.response_mask.sum_all()?.to_scalar::<f32>()?, 6.0);
    let err =
        tiny_with_context(8).log_probs(&long, false).err().ok_or("scored past the context")?;
    assert!(err.to_string().contains("batch row 0"), "{err}");
    tiny_with_context(9).log_probs(&long, false)?;
    Ok(())
}

/// The tiny llama without biases (SmolLM2's shape of layer).
fn tiny_plain(dtype: DType) -> LanguageModel {
    let mut json = config("llama", false).to_hf_json();
    json["attention_bias"] = false.into();
    let cfg = ModelConfig::from_hf_json(json).expect("valid config");
    LanguageModel::random(cfg, 7, dtype, &Device::Cpu).expect("model")
}

/// Every parameter's gradient, by name, flattened, as f64.
type NamedGrads64 = Vec<(String, Vec<f64>)>;

/// Every parameter's gradient of a weighted log-prob + entropy sum, by name, as f64, through
/// the joint pass (`shared = false`: no cache) or the shared-prompt pass (a prompt pass whose
/// cached keys and values the response pass reads); with `sink`,
/// through a [`GradSink`] holding every weight (as the trainer accumulates gradients), which
/// runs each decoder layer as one graph node with its own backward pass. Also returns whether
/// the sink held input-norm gradients (only the fused layer sinks them).
fn grads_by_name(
    model: &LanguageModel,
    bf16: bool,
    sink: bool,
    shared: bool,
) -> R<(NamedGrads64, bool)> {
    let mut m = model.trainable()?;
    if bf16 {
        m = m.with_compute_dtype(ComputeDtype::Bf16)?;
    }
    let b = if shared { shared_batch()? } else { batch() };
    let vars = model.vars();
    let held = if sink { Some(rl_core::grad::GradSink::new(&vars)?) } else { None };
    let hidden = match shared {
        true => b.view().response_hidden(&m, Mode::Diff)?,
        false => b.view().response_hidden_joint(&m, Mode::Diff)?,
    };
    let (lp, ent) = token_log_probs(&m, &hidden, &b.response_ids, &b.response_mask, 2, true)?;
    let (rows, cols) = lp.dims2()?;
    let w = Tensor::arange(1.0, (rows * cols + 1) as f64, &Device::Cpu)?;
    let w = w.reshape((rows, cols))?.to_dtype(lp.dtype())?;
    let loss = ((lp * &w)?.sum_all()? + (ent.expect("entropy") * 0.1)?.sum_all()?)?;
    let mut grads = loss.backward()?;
    // The input norms' gradients before and after draining the sink: only the fused layer
    // sinks them, so they change only when it ran.
    let norms = |g: &candle_core::backprop::GradStore| -> Vec<Option<Vec<f64>>> {
        let named = model.named_vars();
        let norms = named.iter().filter(|(n, _)| n.contains("input_layernorm"));
        norms
            .map(|(_, v)| {
                let g = g.get(v.as_tensor())?.to_dtype(DType::F64).ok()?;
                g.to_vec1::<f64>().ok()
            })
            .collect()
    };
    let before = norms(&grads);
    if let Some(s) = &held {
        s.drain_into(&mut grads)?;
    }
    let norm_sunk = before != norms(&grads);
    let mut named = Vec::new();
    for (name, v) in model.named_vars() {
        let g = grads.get(v.as_tensor()).ok_or(format!("no gradient for {name}"))?;
        named.push((name, g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((named, norm_sunk))
}

/// A decoder layer as one graph node (under a gradient sink, in a joint pass and in the response
/// pass of a shared-prompt batch) gives the per-op graph's gradients for every weight, biases
/// (Llama `attention_bias`, Qwen2) and per-head norms (Qwen3) included: to 1e-10 relative in
/// f64, and within f32 summation order with bf16 products (both round the same operands); a sink
/// dropped before the backward pass is an error, not lost gradients.
#[test]
fn fused_decoder_layers_give_the_per_op_gradients() -> R {
    blas_from_env();
    let cases = [(DType::F64, false, 1e-10), (DType::F32, false, 1e-5), (DType::F32, true, 1e-3)];
    let archs = [("plain llama", false), ("llama", false), ("qwen2", true), ("qwen3", false)];
    let runs = cases.into_iter().flat_map(|c| [(c, false), (c, true)]);
    for (((dtype, bf16, tol), shared), (arch, tied)) in runs.flat_map(|r| archs.map(|a| (r, a))) {
        let what = format!("{arch} {dtype:?} bf16={bf16} shared={shared}");
        let model = match arch {
            "plain llama" => tiny_plain(dtype),
            _ => tiny(arch, tied, dtype),
        };
        let (want, per_op_sunk) = grads_by_name(&model, bf16, false, shared)?;
        let (got, fused_sunk) = grads_by_name(&model, bf16, true, shared)?;
        assert!(!per_op_sunk && fused_sunk, "{what}: the fused layer did not run");
        assert_eq!(want.len(), got.len());
        for ((name, a), (_, b)) in want.iter().zip(&got) {
            let scale = a.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
            let d = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(d <= tol * scale, "{what} {name}: max |Δ| {d} vs max |g| {scale}");
        }
    }
    // The sink dropped between the passes: the fused backward refuses instead of losing them.
    let model = tiny_plain(DType::F32);
    let m = model.trainable()?;
    let b = batch();
    let sink = rl_core::grad::GradSink::new(&model.vars())?;
    let hidden = b.view().response_hidden_joint(&m, Mode::Diff)?;
    let (lp, _) = token_log_probs(&m, &hidden, &b.response_ids, &b.response_mask, 0, false)?;
    drop(sink);
    let err = lp.sum_all()?.backward().expect_err("dropped sink").to_string();
    assert!(err.contains("GradSink"), "{err}");
    Ok(())
}

/// A training cache read by a fused layer pass cannot take more positions: its keys and values
/// no longer carry a graph, so a further tracked pass would lose their gradients. Typed error.
#[test]
fn a_cache_spent_by_a_fused_pass_refuses_more_positions() -> R {
    let model = tiny_plain(DType::F32);
    let m = model.trainable()?;
    let _sink = rl_core::grad::GradSink::new(&model.vars())?;
    let d = Device::Cpu;
    let layout = |k: usize, s: usize| AttentionLayout::new(&[vec![true; k]], s, DType::F32, &d);
    let mut cache = KvCache::new(m.config().num_layers);
    let ids = |v: &[u32]| Tensor::new(v, &d).and_then(|t| t.unsqueeze(0));
    m.hidden_states(&ids(&[5, 6, 7])?, &layout(3, 3)?, Some(&mut cache), Mode::Diff)?;
    m.hidden_states(&ids(&[8, 9])?, &layout(5, 2)?, Some(&mut cache), Mode::Diff)?;
    assert_eq!(cache.len(), 5);
    let more = m.hidden_states(&ids(&[10])?, &layout(6, 1)?, Some(&mut cache), Mode::Diff);
    match more {
        Err(PolicyError::Input { .. }) => Ok(()),
        other => Err(format!("expected a typed error, got {other:?}").into()),
    }
}
