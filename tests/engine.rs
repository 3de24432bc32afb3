//! `rl-zero train` with its rollouts from an inference engine selected in the run file
//! (`[rollout]` + `[weight_sync]`): the mock vLLM engine of `rl_rollout::testing`, backed by its
//! own copy of the embedded tiny model, over real HTTP on 127.0.0.1.

#[path = "../crates/rl-rollout/tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::PolicyModel;
use rl_rollout::testing::MockServer;
use rl_rollout::{
    DiskSyncConfig, Engine, EngineConfig, RolloutConfig, StreamSyncConfig, WeightSyncConfig,
};
use rl_zero::run::{self, RunFile, TrainOptions};
use serde_json::Value;

const SERVED: &str = "tiny";

/// A mock vLLM serving a fresh copy of the embedded base model.
fn engine() -> MockServer {
    let loaded = run::load_model(None, "main").unwrap();
    let tok = loaded.tokenizer.clone();
    let policy = run::policy(loaded.model, loaded.tokenizer);
    MockServer::start(Engine::Vllm, PolicyModel::copy_of(&policy, &tok), SERVED, 128).unwrap()
}

/// `recipes/tiny/dr_grpo.toml`, shrunk, sampling from `url` and publishing under `dir/sync`.
fn run_file(dir: &Path, url: &str, steps: usize) -> RunFile {
    let mut f =
        RunFile::from_toml_file(run::workspace_root().join("recipes/tiny/dr_grpo.toml")).unwrap();
    f.run.steps = steps;
    f.run.prompts_per_step = 4;
    f.run.eval_prompts = 8;
    f.run.eval_every = 0;
    f.run.out = dir.join("out");
    f.trainer.micro_batch_size = 32;
    f.rollout = RolloutConfig::Vllm(EngineConfig {
        model: Some(SERVED.into()),
        probe_text: "What is 1 + 2?".into(),
        probe_tolerance: 1e-3,
        backoff_ms: 10,
        ..EngineConfig::new([url])
    });
    f.weight_sync = WeightSyncConfig::Disk(DiskSyncConfig::new(dir.join("sync")));
    f
}

/// The per-step metric lines of a run.
fn steps(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("reward/mean").is_some())
        .collect()
}

fn metric(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// The run file's engine drives training: every rollout comes over HTTP, the trainer publishes
/// its weights before the first rollout and after every update, and the engine's log-probs
/// equal the trainer's (the engine samples from the trainer's weights at every step). A resumed
/// run talking to a freshly started engine (still on the base weights) republishes the
/// checkpoint's weights before its first rollout.
#[test]
fn train_samples_from_the_engine_in_the_run_file_and_resumes_onto_a_fresh_engine() {
    let dir = tempfile::tempdir().unwrap();
    let server = engine();
    let file = run_file(dir.path(), &server.url(), 2);
    let mut log = Vec::new();
    run::train_with(&file, TrainOptions::default(), &mut |l| log.push(l.to_string())).unwrap();
    assert!(log.iter().any(|l| l.starts_with("rollout: vllm")), "{log:?}");
    let calls = server.calls();
    let completions = calls.iter().filter(|c| c.contains("/v1/completions")).count();
    assert!(completions >= 2, "{calls:?}");
    let m = steps(&file.run.out);
    assert_eq!(m.len(), 2);
    assert!(metric(&m[0], "time/sync_initial_s") >= 0.0, "initial publish of version 0");
    for (i, s) in m.iter().enumerate() {
        let step = i as f64 + 1.0;
        let diff = metric(s, "rollout/log_prob_abs_diff");
        assert!(diff < 1e-5, "step {step}: engine/trainer mismatch {diff}");
        assert_eq!(metric(s, "sync/version"), step);
        assert!(metric(s, "sync/probe_log_prob_abs_diff") < 1e-5);
    }
    assert_eq!(server.weight_version(), "2");
    drop(server);

    // Resume on a new engine (base weights, version "0"): step 3 must sample from the
    // checkpoint's weights, not the base model's.
    let fresh = engine();
    let resumed = run_file(dir.path(), &fresh.url(), 3);
    let opts = TrainOptions { resume: true, ..TrainOptions::default() };
    run::train_with(&resumed, opts, &mut |_| {}).unwrap();
    let m = steps(&file.run.out);
    assert_eq!(m.len(), 3);
    assert!(metric(&m[2], "time/sync_initial_s") >= 0.0, "republished after the resume");
    let diff = metric(&m[2], "rollout/log_prob_abs_diff");
    assert!(diff < 1e-5, "resumed step: engine/trainer mismatch {diff}");
    assert_eq!(fresh.weight_version(), "3");
}

/// `[weight_sync] type = "tcp"`: the trainer streams its weights into the engine's worker
/// after every update; the engine's log-probs equal the trainer's at every step.
#[test]
fn train_streams_its_weights_to_the_engine_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let server = engine();
    let mut file = run_file(dir.path(), &server.url(), 2);
    file.weight_sync = WeightSyncConfig::Tcp(StreamSyncConfig::default());
    run::train_with(&file, TrainOptions::default(), &mut |_| {}).unwrap();
    let m = steps(&file.run.out);
    assert_eq!(m.len(), 2);
    for (i, s) in m.iter().enumerate() {
        let diff = metric(s, "rollout/log_prob_abs_diff");
        assert!(diff < 1e-5, "step {}: engine/trainer mismatch {diff}", i + 1);
        assert_eq!(metric(s, "sync/bytes"), 4.0 * 129_600.0);
        assert!(metric(s, "sync/probe_log_prob_abs_diff") < 1e-5);
    }
    assert_eq!(server.weight_version(), "2");
    assert!(!dir.path().join("sync").exists(), "tcp sync wrote files");
    let calls = server.calls();
    assert!(!calls.iter().any(|c| c.contains("update_weights_from_disk")), "{calls:?}");
}

/// An engine without a weight sync, a weight sync without an engine, NCCL and llama.cpp
/// training are refused before anything is written, naming the table.
#[test]
fn engine_settings_are_checked_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let base = run_file(dir.path(), "http://127.0.0.1:9", 1);
    let mut cases = Vec::new();
    cases.push((RunFile { weight_sync: WeightSyncConfig::None, ..base.clone() }, "weight_sync"));
    cases.push((RunFile { rollout: RolloutConfig::Local, ..base.clone() }, "weight_sync"));
    if !rl_rollout::NCCL_BUILT {
        let nccl = WeightSyncConfig::Nccl(StreamSyncConfig::default());
        cases.push((RunFile { weight_sync: nccl, ..base.clone() }, "nccl"));
    }
    let llama = RolloutConfig::LlamaCpp(EngineConfig::new(["http://127.0.0.1:9"]));
    cases.push((RunFile { rollout: llama, ..base.clone() }, "llama.cpp"));
    let mut empty = base.clone();
    empty.rollout = RolloutConfig::Vllm(EngineConfig::default());
    cases.push((empty, "rollout.urls"));
    for (file, needle) in cases {
        let e = format!(
            "{:#}",
            run::train_with(&file, TrainOptions::default(), &mut |_| {}).unwrap_err()
        );
        assert!(e.contains(needle), "{needle}: {e}");
        assert!(!file.run.out.exists(), "{needle}: wrote {}", file.run.out.display());
    }
    // The tables round-trip through TOML (a saved run.toml resumes with the same engine).
    let text = base.to_toml().unwrap();
    assert!(text.contains("[rollout]") && text.contains("[weight_sync]"), "{text}");
    assert_eq!(RunFile::from_toml(&text).unwrap(), base);
}

/// No engine reachable: a typed connection error naming the engine and URL, nothing written.
#[test]
fn an_unreachable_engine_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = run_file(dir.path(), "http://127.0.0.1:9", 1);
    if let RolloutConfig::Vllm(c) = &mut file.rollout {
        c.retries = 0;
        c.connect_timeout_s = 1.0;
    }
    let e =
        format!("{:#}", run::train_with(&file, TrainOptions::default(), &mut |_| {}).unwrap_err());
    assert!(e.contains("vllm") && e.contains("127.0.0.1:9"), "{e}");
    assert!(!file.run.out.exists());
}
