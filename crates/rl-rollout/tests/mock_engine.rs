//! End to end over HTTP against the mock engine (`rl_rollout::testing::MockServer`) backed by the
//! real tiny-arith model: sampling equals local sampling, weights publish and reload, stale
//! weights are caught, faults are retried or reported.

mod common;

use std::time::{Duration, Instant};

use common::{PolicyModel, codec, perturb, rows, tiny_policy};
use rl_core::{FinishReason, Prompt, Sampler, SamplingConfig, TokenScorer, WeightSync};
use rl_rollout::testing::{Fault, MockServer};
use rl_rollout::{
    DiskSyncConfig, Engine, EngineConfig, RemoteSampler, RolloutError, StreamSyncConfig,
    StreamTransport, request_seed,
};

const SERVED: &str = "tiny";

fn prompts() -> Vec<Prompt> {
    [(12, 30), (7, 58), (41, 41)]
        .iter()
        .map(|(a, b)| {
            Prompt::new(
                format!("What is {a} + {b}? Put the final answer in \\boxed{{}}."),
                (a + b).to_string(),
            )
        })
        .collect()
}

fn cfg_for(server: &MockServer) -> EngineConfig {
    EngineConfig {
        model: Some(SERVED.into()),
        probe_text: "What is 1 + 2?".into(),
        probe_tolerance: 1e-3,
        backoff_ms: 10,
        ..EngineConfig::new([server.url()])
    }
}

fn rollout_err(e: &rl_core::Error) -> &RolloutError {
    e.downcast_ref::<RolloutError>().unwrap_or_else(|| panic!("not a RolloutError: {e}"))
}

fn sampling() -> SamplingConfig {
    SamplingConfig { max_new_tokens: 16, n: 3, seed: 11, ..Default::default() }
}

/// The remote batch equals, row for row, what the local sampler produces with the same
/// per-request seeds, and the engine log-probs match the trainer's recomputation.
fn http_equals_local(engine: Engine) {
    let (policy, tok) = tiny_policy();
    let server =
        MockServer::start(engine, PolicyModel::copy_of(&policy, &tok), SERVED, 128).unwrap();
    let mut sampler = RemoteSampler::connect(engine, cfg_for(&server), codec(&tok), Some(&policy))
        .unwrap()
        .with_pad_id(policy.pad_id());
    let report = sampler.preflight_report().clone();
    assert_eq!(report.probe_mean_abs_diff.len(), 1);
    assert!(report.probe_mean_abs_diff[0].unwrap() < 1e-5, "{report:?}");
    let cfg = sampling();
    let batch = sampler.sample(&prompts(), &cfg).unwrap();
    batch.validate().unwrap();
    assert_eq!(batch.len(), 9);
    assert_eq!(batch.group_ids, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);
    assert_eq!(batch.samples[4].answer.as_deref(), Some("65"));
    let remote = rows(&batch);
    let ids: Vec<Vec<u32>> =
        prompts().iter().map(|p| rl_core::TokenCodec::encode(&tok, &p.text).unwrap()).collect();
    for (i, prompt) in ids.iter().enumerate() {
        let local: Vec<_> = if engine == Engine::LlamaCpp {
            (0..cfg.n)
                .flat_map(|k| {
                    let seed = engine.wire_seed(request_seed(cfg.seed, i, k));
                    let c = SamplingConfig { n: 1, seed, ..cfg.clone() };
                    rows(&policy.generate_ids(std::slice::from_ref(prompt), None, &c).unwrap())
                })
                .collect()
        } else {
            let c = SamplingConfig {
                seed: engine.wire_seed(request_seed(cfg.seed, i, 0)),
                ..cfg.clone()
            };
            rows(&policy.generate_ids(std::slice::from_ref(prompt), None, &c).unwrap())
        };
        for (k, l) in local.iter().enumerate() {
            let r = &remote[i * cfg.n + k];
            assert_eq!(r.token_ids, l.token_ids, "{engine:?} prompt {i} sample {k}");
            assert_eq!(r.finish, l.finish);
            for (a, b) in r.log_probs.iter().zip(&l.log_probs) {
                assert!((a - b).abs() < 1e-5, "{engine:?} prompt {i} sample {k}: {a} vs {b}");
            }
        }
    }
    // Trainer-side recomputation (the TIS denominator) on the same ids.
    let pairs: Vec<_> =
        remote.iter().map(|s| (ids[s.prompt_index].clone(), s.token_ids.clone())).collect();
    let scored = policy.score(&pairs).unwrap();
    let max = remote
        .iter()
        .zip(&scored)
        .flat_map(|(s, l)| s.log_probs.iter().zip(l).map(|(a, b)| (a - b).abs()))
        .fold(0f32, f32::max);
    assert!(max < 1e-4, "{engine:?}: engine vs trainer log-probs differ by {max}");
    // Identical batch layout to the local constructor.
    let parts = rl_core::RolloutParts::new(&ids, &remote, policy.pad_id());
    let local = rl_core::RolloutBatch::from_sequences(
        &parts,
        &|_| Ok(String::new()),
        &rl_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        local.response_ids.to_vec2::<u32>().unwrap(),
        batch.response_ids.to_vec2::<u32>().unwrap()
    );
    assert_eq!(
        local.prompt_ids.to_vec2::<u32>().unwrap(),
        batch.prompt_ids.to_vec2::<u32>().unwrap()
    );
    let gen_calls = server.calls().iter().filter(|c| c.contains(engine.generate_path())).count();
    let expected = if engine == Engine::LlamaCpp { 3 * cfg.n } else { 3 } + 1; // + the probe
    assert_eq!(gen_calls, expected, "{:?}", server.calls());
}

#[test]
fn vllm_sampling_over_http_equals_local_sampling() {
    http_equals_local(Engine::Vllm);
}

#[test]
fn sglang_sampling_over_http_equals_local_sampling() {
    http_equals_local(Engine::Sglang);
}

#[test]
fn llama_cpp_sampling_over_http_equals_local_sampling() {
    http_equals_local(Engine::LlamaCpp);
}

#[test]
fn vllm_publish_reloads_checks_versions_and_catches_stale_weights() {
    let (policy, tok) = tiny_policy();
    let server =
        MockServer::start(Engine::Vllm, PolicyModel::copy_of(&policy, &tok), SERVED, 128).unwrap();
    let mut sampler =
        RemoteSampler::connect(Engine::Vllm, cfg_for(&server), codec(&tok), Some(&policy)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sync = sampler.disk_sync(DiskSyncConfig::new(dir.path())).unwrap();

    // The trainer moves on; without a publish the engine samples from stale weights: caught.
    perturb(&policy, "model.norm.weight", 1.5);
    let e = sampler.probe(&policy).unwrap_err();
    assert!(matches!(e, RolloutError::ProbeMismatch { .. }), "{e}");

    let before = server.calls().len();
    let report = sync.publish(&policy, 1).unwrap();
    assert!(report.bytes > 400_000, "{report:?}"); // 129,600 f32 parameters
    let diff = report.probe_mean_abs_diff.unwrap();
    assert!(diff < 1e-5, "{diff}");
    let m = report.metrics();
    assert!(m.get("time/sync_s").unwrap() > 0.0);
    assert_eq!(m.get("sync/bytes"), Some(report.bytes as f64));
    assert_eq!(server.weight_version(), "1");
    assert_eq!(sync.published_version(), Some(1));
    assert_eq!(sampler.policy_version(), 1);
    let calls: Vec<String> = server.calls()[before..].to_vec();
    let order = [
        "POST /pause?mode=wait",
        "POST /collective_rpc",
        "POST /reset_prefix_cache",
        "POST /update_weight_version",
        "POST /resume",
        "GET /weight_info",
    ];
    assert_eq!(&calls[..order.len()], &order, "{calls:?}");
    let batch = sampler.sample(&prompts()[..1], &sampling()).unwrap();
    assert_eq!(batch.policy_version, Some(vec![1, 1, 1]));

    // An engine that acknowledges a reload but keeps its weights: the probe catches it.
    perturb(&policy, "embed_tokens", 1.2);
    server.push_fault("/collective_rpc", Fault::IgnoreReload);
    let e = sync.publish(&policy, 2).unwrap_err();
    assert!(matches!(rollout_err(&e), RolloutError::ProbeMismatch { .. }), "{e}");
    // A worker reporting another path than the one published: refused before the engine takes
    // the version (no prefix-cache reset, no version update; straight to the resume).
    let before = server.calls().len();
    server.push_fault("/collective_rpc", Fault::Misreport);
    let e = sync.publish(&policy, 3).unwrap_err();
    assert!(
        matches!(rollout_err(&e), RolloutError::Response { field, .. }
            if field == "results[0].weights_path"),
        "{e}"
    );
    assert_eq!(server.weight_version(), "2");
    let calls: Vec<String> = server.calls()[before..].to_vec();
    assert_eq!(calls, ["POST /pause?mode=wait", "POST /collective_rpc", "POST /resume"]);
    // A version the engine does not report is a typed error.
    server.push_fault("/update_weight_version", Fault::KeepVersion);
    let e = sync.publish(&policy, 3).unwrap_err();
    assert!(matches!(rollout_err(&e), RolloutError::VersionMismatch { .. }), "{e}");
    // ... and the next rollout refuses to sample from the wrong version.
    // (The engine now reports "2" while rl-zero published 2 last and failed on 3.)
    server.push_fault("/update_weight_version", Fault::KeepVersion);
    assert!(sync.publish(&policy, 4).is_err());
    // Versions must increase.
    let e = sync.publish(&policy, 1).unwrap_err();
    assert!(matches!(e, rl_core::Error::Config { .. }), "{e}");
    sync.publish(&policy, 5).unwrap();
    assert_eq!(server.weight_version(), "5");
    sampler.probe(&policy).unwrap();
    let kept = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(kept <= 2, "keep_last = 2, found {kept} entries");
    // Every pause was followed by a resume, also after failures.
    let calls = server.calls();
    let pauses = calls.iter().filter(|c| c.starts_with("POST /pause")).count();
    let resumes = calls.iter().filter(|c| c.as_str() == "POST /resume").count();
    assert_eq!(pauses, resumes);
}

/// The TCP weight stream: the worker (the mock, as rl-zero's vLLM extension does it) connects,
/// reads every tensor and loads it; the choreography, the counts, the version and the probe are
/// checked; a worker dying mid-stream and an engine that ignores the weights are reported, and
/// the engine is resumed after every failure.
#[test]
fn vllm_tcp_stream_publishes_and_catches_faults() {
    let (policy, tok) = tiny_policy();
    let server =
        MockServer::start(Engine::Vllm, PolicyModel::copy_of(&policy, &tok), SERVED, 128).unwrap();
    let sampler =
        RemoteSampler::connect(Engine::Vllm, cfg_for(&server), codec(&tok), Some(&policy)).unwrap();
    let cfg = StreamSyncConfig { connect_timeout_s: 20.0, ..StreamSyncConfig::default() };
    let mut sync = sampler.stream_sync(cfg, StreamTransport::Tcp).unwrap();
    assert!(sync.address().unwrap().starts_with("127.0.0.1:"));

    perturb(&policy, "model.norm.weight", 1.5);
    perturb(&policy, "embed_tokens", 0.9);
    assert!(matches!(sampler.probe(&policy), Err(RolloutError::ProbeMismatch { .. })));
    let before = server.calls().len();
    let report = sync.publish(&policy, 1).unwrap();
    assert_eq!(report.bytes, 4 * 129_600, "{report:?}"); // every f32 parameter, once
    assert!(report.probe_mean_abs_diff.unwrap() < 1e-5, "{report:?}");
    assert_eq!(server.weight_version(), "1");
    let calls: Vec<String> = server.calls()[before..].to_vec();
    let order = [
        "POST /collective_rpc", // rlz_worker_info, first publication only
        "POST /pause?mode=wait",
        "POST /collective_rpc", // rlz_receive_weights while the trainer streams
        "POST /reset_prefix_cache",
        "POST /update_weight_version",
        "POST /resume",
        "GET /weight_info",
    ];
    assert_eq!(&calls[..order.len()], &order, "{calls:?}");

    // bf16 on the wire: half the bytes, the engine's weights within bf16 rounding.
    perturb(&policy, "mlp.down_proj", 1.3);
    let cfg = StreamSyncConfig { dtype: "bfloat16".into(), verify_every: 0, ..cfg_default() };
    let mut bf16 = sampler.stream_sync(cfg, StreamTransport::Tcp).unwrap();
    let report = bf16.publish(&policy, 2).unwrap();
    assert_eq!(report.bytes, 2 * 129_600);
    let diff = sampler.probe(&policy).unwrap()[0];
    assert!(diff > 0.0 && diff < 1e-3, "bf16 weights: probe |Δ| {diff}");

    // A worker that dies mid-stream: an error, and the engine is resumed.
    perturb(&policy, "embed_tokens", 1.1);
    server.push_fault("/collective_rpc", Fault::DropStream);
    let e = sync.publish(&policy, 3).unwrap_err();
    assert!(matches!(rollout_err(&e), RolloutError::Status { status: 500, .. }), "{e}");
    assert!(e.to_string().contains("dropped the stream"), "{e}");
    // An engine that takes the bytes but keeps its weights: the probe catches it.
    server.push_fault("/collective_rpc", Fault::IgnoreReload);
    let e = sync.publish(&policy, 4).unwrap_err();
    assert!(matches!(rollout_err(&e), RolloutError::ProbeMismatch { .. }), "{e}");
    // A worker reporting another tensor count: refused before the engine takes the version
    // (no prefix-cache reset, no version update; straight to the resume).
    let before = server.calls().len();
    server.push_fault("/collective_rpc", Fault::Misreport);
    let e = sync.publish(&policy, 5).unwrap_err();
    assert!(
        matches!(rollout_err(&e), RolloutError::Response { field, .. } if field == "results[0].tensors"),
        "{e}"
    );
    assert_eq!(server.weight_version(), "4");
    let calls: Vec<String> = server.calls()[before..].to_vec();
    assert_eq!(calls, ["POST /pause?mode=wait", "POST /collective_rpc", "POST /resume"]);
    sync.publish(&policy, 6).unwrap();
    assert_eq!(sync.published_version(), Some(6));
    let calls = server.calls();
    let pauses = calls.iter().filter(|c| c.starts_with("POST /pause")).count();
    let resumes = calls.iter().filter(|c| c.as_str() == "POST /resume").count();
    assert_eq!(pauses, resumes);
    // Without the `nccl` feature the NCCL transport is a typed refusal, not a silent fallback.
    if !cfg!(feature = "nccl") {
        let e = sampler.stream_sync(cfg_default(), StreamTransport::Nccl).unwrap_err();
        assert!(matches!(e, RolloutError::Unsupported(ref m) if m.contains("nccl")), "{e}");
    }
}

fn cfg_default() -> StreamSyncConfig {
    StreamSyncConfig { connect_timeout_s: 20.0, ..StreamSyncConfig::default() }
}

#[test]
fn sampler_refuses_an_engine_on_another_version() {
    let (policy, tok) = tiny_policy();
    let server =
        MockServer::start(Engine::Vllm, PolicyModel::copy_of(&policy, &tok), SERVED, 128).unwrap();
    let mut sampler =
        RemoteSampler::connect(Engine::Vllm, cfg_for(&server), codec(&tok), Some(&policy)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskSyncConfig { verify_every: 0, ..DiskSyncConfig::new(dir.path()) };
    let mut sync = sampler.disk_sync(cfg).unwrap();
    sync.publish(&policy, 7).unwrap();
    // Someone (another trainer, a restart) changes the engine's version behind rl-zero's back.
    let url = format!("{}/update_weight_version", server.url());
    ureq::post(&url).send_string(r#"{"new_version": "6"}"#).unwrap();
    let e = sampler.sample(&prompts(), &sampling()).unwrap_err();
    assert!(matches!(rollout_err(&e), RolloutError::VersionMismatch { .. }), "{e}");
}

#[test]
fn sglang_publish_and_llama_cpp_nccl_are_typed() {
    let (policy, tok) = tiny_policy();
    let server =
        MockServer::start(Engine::Sglang, PolicyModel::copy_of(&policy, &tok), SERVED, 128)
            .unwrap();
    let sampler =
        RemoteSampler::connect(Engine::Sglang, cfg_for(&server), codec(&tok), Some(&policy))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sync = sampler.disk_sync(DiskSyncConfig::new(dir.path())).unwrap();
    perturb(&policy, "mlp.down_proj", 1.3);
    sync.publish(&policy, 1).unwrap();
    assert_eq!(server.weight_version(), "1");
    assert!(server.calls().iter().any(|c| c == "POST /update_weights_from_disk"));
    // The streamed syncs go into vLLM's workers only.
    let tcp = rl_rollout::WeightSyncConfig::Tcp(StreamSyncConfig::default());
    let e = sampler.weight_sync(&tcp).err().unwrap();
    assert!(matches!(e, RolloutError::Unsupported(ref m) if m.contains("disk")), "{e}");
    // SGLang's log-probs follow the sampling temperature: refused rather than mixed up.
    let mut s = sampler;
    let hot = SamplingConfig { temperature: 0.7, ..sampling() };
    let e = s.sample(&prompts(), &hot).unwrap_err();
    assert!(matches!(e, rl_core::Error::Unsupported(_)), "{e}");

    let llama =
        MockServer::start(Engine::LlamaCpp, PolicyModel::copy_of(&policy, &tok), SERVED, 128)
            .unwrap();
    let sampler =
        RemoteSampler::connect(Engine::LlamaCpp, cfg_for(&llama), codec(&tok), Some(&policy))
            .unwrap();
    let e = sampler.disk_sync(DiskSyncConfig::new(dir.path())).unwrap_err();
    assert!(matches!(e, RolloutError::Unsupported(ref m) if m.contains("llama.cpp")), "{e}");
}

#[test]
fn faults_are_retried_or_reported() {
    let (policy, tok) = tiny_policy();
    let server =
        MockServer::start(Engine::Vllm, PolicyModel::copy_of(&policy, &tok), SERVED, 128).unwrap();
    let cfg = EngineConfig { request_timeout_s: 1.0, retries: 2, ..cfg_for(&server) };
    let mut sampler =
        RemoteSampler::connect(Engine::Vllm, cfg, codec(&tok), Some(&policy)).unwrap();
    let one = &prompts()[..1];
    let count = |s: &MockServer| s.calls().iter().filter(|c| c.contains("/v1/completions")).count();

    // 503 and 429 are retried (with backoff) and succeed.
    for code in [503, 429] {
        let before = count(&server);
        server.push_fault("/v1/completions", Fault::Status(code));
        sampler.sample(one, &sampling()).unwrap();
        assert_eq!(count(&server) - before, 2, "HTTP {code} retried once");
    }
    // Too many 5xx: reported after `retries` retries.
    for _ in 0..3 {
        server.push_fault("/v1/completions", Fault::Status(500));
    }
    let e = sampler.sample(one, &sampling()).unwrap_err();
    assert!(matches!(rollout_err(&e), RolloutError::Status { status: 500, .. }), "{e}");
    // 4xx is not retried.
    let before = count(&server);
    server.push_fault("/v1/completions", Fault::Status(400));
    let e = sampler.sample(one, &sampling()).unwrap_err();
    assert!(matches!(rollout_err(&e), RolloutError::Status { status: 400, .. }), "{e}");
    assert_eq!(count(&server) - before, 1);
    // A hung request times out (and is not retried).
    server.push_fault("/v1/completions", Fault::Delay(Duration::from_secs(3)));
    let t0 = Instant::now();
    let e = sampler.sample(one, &sampling()).unwrap_err();
    assert!(matches!(rollout_err(&e), RolloutError::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(2500), "{:?}", t0.elapsed());
    // Aborted requests come back as Aborted rows, never as natural stops.
    server.push_fault("/v1/completions", Fault::Abort);
    let b = sampler.sample(one, &sampling()).unwrap();
    assert!(b.samples.iter().all(|s| s.finish == FinishReason::Aborted && !s.finish.stopped()));
    // Corrupt answers are typed errors naming the field.
    for (fault, field) in [
        (Fault::ClampLogProb, "choices[0].log_probs[0]"),
        (Fault::ShiftPrompt, "choices[0].prompt_token_ids"),
        (Fault::TokenId(100_000), "choices[0].token_ids[0]"),
    ] {
        server.push_fault("/v1/completions", fault.clone());
        let e = sampler.sample(one, &sampling()).unwrap_err();
        match rollout_err(&e) {
            RolloutError::Response { field: f, request, .. } => {
                assert_eq!(f, field, "{fault:?}");
                assert_eq!(request, "prompt 0");
            }
            other => panic!("{fault:?}: {other}"),
        }
    }
    // A dropped connection is reported.
    server.push_fault("/v1/completions", Fault::Hangup);
    let e = sampler.sample(one, &sampling()).unwrap_err();
    assert!(matches!(rollout_err(&e), RolloutError::Transport { .. }), "{e}");
    // Prompts longer than the engine's context are refused before sending.
    let long = SamplingConfig { max_new_tokens: 200, ..sampling() };
    let e = sampler.sample(one, &long).unwrap_err();
    assert!(
        matches!(e, rl_core::Error::Config { ref field, .. } if field == "sampling.max_new_tokens"),
        "{e}"
    );
}

#[test]
fn connection_errors_are_retried_then_reported() {
    let (policy, tok) = tiny_policy();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = EngineConfig {
        model: Some(SERVED.into()),
        retries: 2,
        backoff_ms: 100,
        ..EngineConfig::new([format!("http://127.0.0.1:{port}")])
    };
    let t0 = Instant::now();
    let e = RemoteSampler::connect(Engine::Vllm, cfg, codec(&tok), Some(&policy)).unwrap_err();
    assert!(
        matches!(e, RolloutError::Transport { ref kind, .. } if kind == "ConnectionFailed"),
        "{e}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(300), "2 retries with 100 + 200 ms backoff");
}

#[test]
fn preflight_catches_wrong_model_tokenizer_and_weights() {
    let (policy, tok) = tiny_policy();
    let server =
        MockServer::start(Engine::Vllm, PolicyModel::copy_of(&policy, &tok), SERVED, 128).unwrap();
    let wrong_name = EngineConfig { model: Some("other".into()), ..cfg_for(&server) };
    let e = RemoteSampler::connect(Engine::Vllm, wrong_name, codec(&tok), None).unwrap_err();
    assert!(matches!(e, RolloutError::Preflight { ref check, .. } if check == "model"), "{e}");
    // No model configured: the only served model is used.
    let auto = EngineConfig { model: None, ..cfg_for(&server) };
    let s = RemoteSampler::connect(Engine::Vllm, auto, codec(&tok), None).unwrap();
    assert_eq!(s.preflight_report().model, SERVED);
    assert_eq!(s.preflight_report().context, vec![Some(128)]);
    // Other weights on the engine than in the trainer.
    let (other, _) = tiny_policy();
    perturb(&other, "lm_head", 1.0); // no-op: tied head
    perturb(&other, "model.layers.0.mlp", 2.0);
    let e = RemoteSampler::connect(Engine::Vllm, cfg_for(&server), codec(&tok), Some(&other))
        .unwrap_err();
    assert!(matches!(e, RolloutError::ProbeMismatch { .. }), "{e}");
}
