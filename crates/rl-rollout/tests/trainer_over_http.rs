//! The real trainer (`rl_trainer::Trainer`) with its rollouts from the mock vLLM engine over
//! HTTP, publishing its weights to the engine through `DiskSync` after every update.

mod common;

use common::{PolicyModel, codec, tiny_policy};
use rl_core::{Prompt, Sample, SamplingConfig};
use rl_loss::PpoLoss;
use rl_rollout::testing::MockServer;
use rl_rollout::{DiskSyncConfig, Engine, EngineConfig, RemoteSampler};
use rl_trainer::{OptimizerConfig, Trainer, TrainerConfig};

const SERVED: &str = "tiny";

fn prompts() -> Vec<Prompt> {
    [(12, 30), (7, 58)]
        .iter()
        .map(|(a, b)| Prompt::new(format!("What is {a} + {b}?"), (a + b).to_string()))
        .collect()
}

/// 1.0 when the response contains the answer's first digit (a reward the tiny model earns
/// sometimes, so group advantages are not all zero).
fn first_digit(s: &Sample) -> rl_core::Result<f32> {
    let d = s.answer.as_deref().and_then(|a| a.chars().next()).unwrap_or('0');
    Ok(f32::from(u8::from(s.response.contains(d))))
}

/// Runs 3 Dr. GRPO steps publishing every `sync_every` steps; the metrics of each step.
fn run(sync_every: usize) -> Vec<rl_core::Metrics> {
    let (policy, tok) = tiny_policy();
    let server =
        MockServer::start(Engine::Vllm, PolicyModel::copy_of(&policy, &tok), SERVED, 128).unwrap();
    let cfg = EngineConfig {
        model: Some(SERVED.into()),
        probe_text: "What is 1 + 2?".into(),
        probe_tolerance: 1e-3,
        backoff_ms: 10,
        ..EngineConfig::new([server.url()])
    };
    let sampler = RemoteSampler::connect(Engine::Vllm, cfg, codec(&tok), Some(&policy)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sync = sampler.disk_sync(DiskSyncConfig::new(dir.path())).unwrap();
    let config = TrainerConfig {
        sampling: SamplingConfig { n: 4, max_new_tokens: 12, ..SamplingConfig::default() },
        micro_batch_size: 4,
        actor: OptimizerConfig { lr: 3e-2, ..OptimizerConfig::default() },
        ..TrainerConfig::default()
    };
    let mut t = Trainer::builder(policy, first_digit)
        .estimator(rl_advantage::DrGrpo::default())
        .policy_loss(PpoLoss::dr_grpo(12))
        .sampler(sampler)
        .weight_sync(sync, sync_every)
        .config(config)
        .build()
        .unwrap();
    (0..3).map(|_| t.step(&prompts()).unwrap().metrics).collect()
}

/// Publishing after every update keeps the engine on the trainer's weights: every step's
/// engine/trainer log-prob mismatch is below 1e-5, the IS weights are 1, and each publish is
/// verified by the engine's version and a log-prob probe.
#[test]
fn the_trainer_samples_over_http_and_publishes_every_step() {
    for (i, m) in run(1).iter().enumerate() {
        let step = i as f64 + 1.0;
        let diff = m.get("rollout/log_prob_abs_diff").expect("mismatch metric");
        eprintln!("step {step}: mismatch {diff:e}, sync {:?} s", m.get("time/sync_s"));
        assert!(diff < 1e-5, "step {step}: {diff}");
        let w = m.get("rollout_is/weight_mean").expect("TIS on for an external sampler");
        assert!((w - 1.0).abs() < 1e-4, "step {step}: {w}");
        assert_eq!(m.get("sync/version"), Some(step));
        assert!(m.get("sync/bytes").unwrap() > 400_000.0);
        assert!(m.get("sync/probe_log_prob_abs_diff").unwrap() < 1e-5);
        assert!(m.get("actor/grad_norm").unwrap() > 0.0, "step {step}: the policy moved");
    }
}

/// Publishing every other step: the step after a skipped publish samples from stale weights,
/// which shows as a log-prob mismatch and IS weights away from 1 (that TIS then corrects).
#[test]
fn a_skipped_publish_shows_as_a_mismatch_that_tis_corrects() {
    let m = run(2);
    let stale = m[1].get("rollout/log_prob_abs_diff").unwrap();
    assert!(stale > 1e-4, "step 2 samples from the initial weights: {stale}");
    assert!(m[1].get("sync/version").is_some() && m[0].get("sync/version").is_none());
    let fresh = m[2].get("rollout/log_prob_abs_diff").unwrap();
    let w = m[1].get("rollout_is/weight_mean").unwrap();
    eprintln!("stale step: mismatch {stale:e}, IS weight mean {w}; next step {fresh:e}");
    assert!(fresh < 1e-5, "step 3 samples from the weights published at step 2: {fresh}");
    assert!((w - 1.0).abs() > 1e-4, "{w}");
}
