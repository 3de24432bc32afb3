//! Golden tests against transformers 5.23 (fixtures written by `scripts/reference/policy_golden.py`):
//! log-probs of single sequences and of a left-padded batch, and 32 greedy tokens, for
//! SmolLM2-135M-Instruct (GGUF, dequantized to f32) and tiny random llama / qwen2 / qwen3 models.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use rl_core::{FinishReason, Policy, Prompt, SamplingConfig};
use rl_policy::logprobs::{PromptResponse, token_log_probs};
use rl_policy::model::{Mode, Transformer};
use rl_policy::sampling::{StopRules, generate};
use rl_policy::{LanguageModel, LmPolicy, TextCodec, testing_assets};
use serde_json::Value;

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_golden(path: &Path) -> R<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("int") as u32).collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("float") as f32).collect()
}

/// `(B, S-1)` log p(ids[t+1] | ids[..=t]) from all-position logits.
fn next_token_log_probs(
    model: &Transformer,
    ids: &[Vec<u32>],
    valid: &[Vec<bool>],
    mode: Mode,
) -> R<Vec<Vec<f32>>> {
    let (b, s) = (ids.len(), ids[0].len());
    let t = Tensor::from_vec(ids.concat(), (b, s), &Device::Cpu)?;
    let logits = model.forward(&t, valid, mode)?.narrow(1, 0, s - 1)?;
    let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let next = t.narrow(1, 1, s - 1)?.unsqueeze(2)?.contiguous()?;
    Ok(lsm.gather(&next, 2)?.squeeze(2)?.to_dtype(DType::F32)?.to_vec2()?)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Checks every case (diff and fused mode, and the prompt/response path), the batch and greedy.
fn check_against_golden(model: &LanguageModel, golden: &Value, tol: f32) -> R {
    let train = model.trainable()?;
    let fast = model.detached()?;
    let mut compared = 0;
    let mut worst = 0f32;
    let clock = std::time::Instant::now();
    for case in golden["cases"].as_array().expect("cases") {
        let ids = u32s(&case["input_ids"]);
        let want = f32s(&case["token_logprobs"]);
        let valid = vec![vec![true; ids.len()]];
        for (mode, m) in [(Mode::Diff, &train), (Mode::Fused, &fast)] {
            let got = &next_token_log_probs(m, std::slice::from_ref(&ids), &valid, mode)?[0];
            let d = max_diff(got, &want);
            worst = worst.max(d);
            assert!(d <= tol, "{} {mode:?}: max |Δ log-prob| = {d}", case["name"]);
        }
        // The training path: prompt = first token, response = the rest.
        let dev = Device::Cpu;
        let p = Tensor::new(&ids[..1], &dev)?.unsqueeze(0)?;
        let r = Tensor::new(&ids[1..], &dev)?.unsqueeze(0)?;
        let (pm, rm) = (p.ones_like()?.to_dtype(DType::F32)?, r.ones_like()?.to_dtype(DType::F32)?);
        let view = PromptResponse {
            prompt_ids: &p,
            prompt_mask: &pm,
            response_ids: &r,
            response_mask: &rm,
        };
        let hidden = view.response_hidden(&train, Mode::Diff)?;
        let (lp, ent) = token_log_probs(&train, &hidden, &r, &rm, 3, true)?;
        let d = max_diff(&lp.squeeze(0)?.to_vec1::<f32>()?, &want);
        assert!(d <= tol, "{} prompt/response path: {d}", case["name"]);
        let ent = ent.expect("entropy").flatten_all()?.to_vec1::<f32>()?;
        assert!(ent.iter().all(|e| e.is_finite() && *e >= 0.0));
        eprintln!("{}: log-probs checked ({:?})", case["name"], clock.elapsed());
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
            // Sampling log-probs are the model's own log-probs of the chosen tokens.
            let full: Vec<u32> = ids.iter().chain(&want).copied().collect();
            let lp = &next_token_log_probs(
                &fast,
                std::slice::from_ref(&full),
                &[vec![true; full.len()]],
                Mode::Fused,
            )?[0];
            let d = max_diff(&out.log_probs[0], &lp[ids.len() - 1..]);
            assert!(d <= 1e-4, "{} sampling log-probs vs forward: {d}", case["name"]);
        }
        compared += 1;
    }
    assert!(compared >= 2);
    // Left-padded batch.
    let batch = &golden["batch"];
    let ids: Vec<Vec<u32>> = batch["input_ids"].as_array().expect("ids").iter().map(u32s).collect();
    let mask: Vec<Vec<u32>> =
        batch["attention_mask"].as_array().expect("mask").iter().map(u32s).collect();
    let want: Vec<Vec<f32>> =
        batch["token_logprobs"].as_array().expect("lp").iter().map(f32s).collect();
    let valid: Vec<Vec<bool>> = mask.iter().map(|r| r.iter().map(|&m| m == 1).collect()).collect();
    for (mode, m) in [(Mode::Diff, &train), (Mode::Fused, &fast)] {
        let got = next_token_log_probs(m, &ids, &valid, mode)?;
        for (row, (g, w)) in got.iter().zip(&want).enumerate() {
            let g: Vec<f32> = g
                .iter()
                .enumerate()
                .map(|(t, &x)| if valid[row][t] && valid[row][t + 1] { x } else { 0.0 })
                .collect();
            assert!(g.iter().all(|x| x.is_finite()));
            let d = max_diff(&g, w);
            worst = worst.max(d);
            assert!(d <= tol, "batch row {row} {mode:?}: {d}");
        }
    }
    eprintln!("max |Δ log-prob| vs transformers: {worst:.2e} ({:?})", clock.elapsed());
    Ok(())
}

#[test]
fn tiny_models_match_transformers() -> R {
    blas_from_env();
    for name in ["tiny-llama", "tiny-qwen2", "tiny-qwen3"] {
        let dir = fixtures().join(name);
        let model = LanguageModel::from_hf_dir(&dir, DType::F32, &Device::Cpu)?;
        check_against_golden(&model, &read_golden(&dir.join("golden.json"))?, 1e-4)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

#[test]
fn smollm2_gguf_matches_transformers() -> R {
    blas_from_env();
    let path = testing_assets::smollm2_gguf()?;
    let model = LanguageModel::from_gguf(&path, DType::F32, &Device::Cpu)?;
    assert_eq!(model.num_params(), 134_515_008);
    let golden = read_golden(&fixtures().join("smollm2_golden.json"))?;
    check_against_golden(&model, &golden, 1e-4)?;

    // End to end through `Policy::generate`: text → tokenizer → greedy → RolloutBatch.
    let tokenizer = rl_policy::tokenizer::Tokenizer::from_gguf_file(&path)?;
    let mut policy = LmPolicy::new(model).with_tokenizer(tokenizer.clone());
    let case = &golden["cases"][0];
    let (ids, greedy) = (u32s(&case["input_ids"]), u32s(&case["greedy_new_ids"]));
    let prompt = Prompt::new(case["text"].as_str().expect("text"), "46");
    let batch = policy.generate(std::slice::from_ref(&prompt), &SamplingConfig::greedy(10))?;
    batch.validate()?;
    assert_eq!(batch.prompt_ids.to_vec2::<u32>()?[0], ids);
    let tokens = batch.response_ids.to_vec2::<u32>()?[0].clone();
    assert_eq!(tokens, greedy[..tokens.len()]);
    assert_eq!(batch.samples[0].response, TextCodec::decode(&tokenizer, &tokens)?);
    assert_eq!(batch.samples[0].answer.as_deref(), Some("46"));
    // A stop string taken from the middle of that response ends generation right after it.
    let text = TextCodec::decode(&tokenizer, &greedy[..6])?;
    let stop = text.trim_end()[text.trim_end().len() - 2..].to_string();
    let cfg = SamplingConfig { stop: vec![stop.clone()], ..SamplingConfig::greedy(10) };
    let stopped = policy.generate(&[prompt], &cfg)?;
    let s = &stopped.samples[0];
    assert_eq!(s.finish, FinishReason::StopString, "{s:?}");
    assert!(s.response.contains(&stop) && s.response_tokens <= 6, "{s:?}");
    Ok(())
}

/// With `RLZ_BLAS=<libmkl_rt.so>` (CI sets it after scripts/setup_mkl.sh) the products run in
/// MKL, so the same assertions check that backend too.
fn blas_from_env() {
    rl_policy::ops::blas::use_blas_from_env().expect("RLZ_BLAS names a usable MKL library");
}
