//! Trainer tests through the public API, with `rl_core::testing::MockPolicy` and small
//! test-only stages.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use rl_core::testing::MockPolicy;
use rl_core::{
    AdvantageEstimator, AdvantageInput, Advantages, Critic, LossOutput, Metrics, PolicyLoss,
    PolicyLossInput, Prompt, RolloutBatch, Sample, SamplingConfig, ValueLoss, ValueLossInput,
};

use rl_trainer::{
    Checkpointable, DynamicSampling, GrpoTrainer, LrSchedule, OptimizerConfig, PromptDataset,
    PromptSource, Shortfall, Trainer, TrainerConfig, TrainerError,
};

type R<T = ()> = rl_trainer::Result<T>;

// ---------------------------------------------------------------------------------------------
// Test stages

/// Dr. GRPO advantage: `r_i − mean_g(r)` broadcast over the response tokens.
struct MeanCentered;

impl AdvantageEstimator for MeanCentered {
    fn estimate(&self, input: &AdvantageInput<'_>) -> rl_core::Result<Advantages> {
        let groups = input.groups()?;
        let r = input.rewards.sequence_scores()?.to_vec1::<f32>()?;
        let mut a = vec![0f32; r.len()];
        for rows in groups.iter() {
            let mean = rows.iter().map(|&i| r[i]).sum::<f32>() / rows.len() as f32;
            for &i in rows {
                a[i] = r[i] - mean;
            }
        }
        let a = Tensor::new(a, input.response_mask.device())?.unsqueeze(1)?;
        let adv = input.response_mask.broadcast_mul(&a)?;
        Ok(Advantages { advantages: adv.clone(), returns: adv })
    }
}

/// γ = λ = 1 GAE with an outcome reward: `A_t = r − V_t`, returns `r` on every valid token.
struct OutcomeMinusValue;

impl AdvantageEstimator for OutcomeMinusValue {
    fn estimate(&self, input: &AdvantageInput<'_>) -> rl_core::Result<Advantages> {
        let v = input.values.ok_or_else(|| rl_core::Error::msg("no values"))?;
        let r = input.rewards.sequence_scores()?.unsqueeze(1)?;
        let returns = input.response_mask.broadcast_mul(&r)?;
        let advantages = returns.sub(&v.mul(input.response_mask)?)?;
        Ok(Advantages { advantages, returns })
    }

    fn requires_values(&self) -> bool {
        true
    }
}

/// PPO clip (ε = 0.2), token-sum normalised by the mini-batch token count.
struct PpoClip;

impl PolicyLoss for PpoClip {
    fn compute(&self, i: &PolicyLossInput<'_>) -> rl_core::Result<LossOutput> {
        let ratio = i.log_probs.sub(i.old_log_probs)?.exp()?;
        let unclipped = ratio.mul(i.advantages)?;
        let clipped = ratio.clamp(0.8f32, 1.2f32)?.mul(i.advantages)?;
        let per_token = unclipped.minimum(&clipped)?.neg()?.mul(i.response_mask)?;
        let local = || i.response_mask.sum_all()?.to_scalar::<f32>().map(f64::from);
        let tokens = i.counts.and_then(|c| c.tokens).map_or_else(local, Ok)?.max(1.0);
        let loss = per_token.sum_all()?.affine(1.0 / tokens, 0.0)?;
        let ratio_mean = rl_core::masked::masked_mean(&ratio, i.response_mask, None)?;
        let metrics = Metrics::new().with("ratio_mean", ratio_mean.to_scalar::<f32>()? as f64);
        Ok(LossOutput { loss, metrics })
    }
}

/// `½ Σ (V − R)² M / tokens`.
struct HalfSquared;

impl ValueLoss for HalfSquared {
    fn compute(&self, i: &ValueLossInput<'_>) -> rl_core::Result<LossOutput> {
        let local = || i.response_mask.sum_all()?.to_scalar::<f32>().map(f64::from);
        let tokens = i.counts.and_then(|c| c.tokens).map_or_else(local, Ok)?.max(1.0);
        let se = i.values.sub(i.returns)?.sqr()?.mul(i.response_mask)?;
        let loss = se.sum_all()?.affine(0.5 / tokens, 0.0)?;
        Ok(LossOutput { loss, metrics: Metrics::new() })
    }
}

/// A critic with one trainable bias: `V_t = b` on every valid token.
#[derive(Debug)]
struct BiasCritic(Var);

impl Critic for BiasCritic {
    fn values(&self, batch: &RolloutBatch) -> rl_core::Result<Tensor> {
        Ok(batch.response_mask.broadcast_mul(self.0.as_tensor())?)
    }

    fn trainable_vars(&self) -> Vec<Var> {
        vec![self.0.clone()]
    }
}

impl Checkpointable for BiasCritic {
    fn save_checkpoint(&self, dir: &Path) -> rl_core::Result<()> {
        std::fs::write(dir.join("bias.json"), serde_json::to_string(&self.0.to_vec1::<f32>()?)?)?;
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &Path) -> rl_core::Result<()> {
        let v: Vec<f32> = serde_json::from_str(&std::fs::read_to_string(dir.join("bias.json"))?)?;
        self.0.set(&Tensor::new(v, self.0.device())?)?;
        Ok(())
    }
}

/// Reward 1.0 when the response contains the token 'b' (id 2 of the mock), else 0.0.
fn contains_b(s: &Sample) -> rl_core::Result<f32> {
    Ok(if s.response.contains('b') { 1.0 } else { 0.0 })
}

fn prompts(n: usize) -> Vec<Prompt> {
    (0..n).map(|i| Prompt::new(format!("q{i}"), "b")).collect()
}

/// Mock with tokens EOS, 'a', 'b', 'c' (all equally likely).
fn mock() -> MockPolicy {
    MockPolicy::new(&[0.0, 0.0, 0.0, 0.0], &Device::Cpu).expect("mock")
}

fn config(n: usize, lr: f64) -> TrainerConfig {
    TrainerConfig {
        sampling: SamplingConfig { n, max_new_tokens: 4, ..SamplingConfig::default() },
        micro_batch_size: 4,
        actor: OptimizerConfig { lr, max_grad_norm: Some(1.0), ..OptimizerConfig::default() },
        critic: OptimizerConfig { lr, ..OptimizerConfig::default() },
        ..TrainerConfig::default()
    }
}

fn grpo(cfg: TrainerConfig) -> R<GrpoTrainer<MockPolicy>> {
    Trainer::grpo(mock(), contains_b, MeanCentered, PpoClip, cfg)
}

fn logits(t: &GrpoTrainer<MockPolicy>) -> Vec<f32> {
    t.policy().logits().as_tensor().to_vec1::<f32>().expect("logits")
}

/// Metrics as `(name, value)` pairs in name order.
type Named = Vec<(String, f64)>;

/// Metrics without wall-clock timings (`time/*`, `perf/*`).
fn deterministic(m: &Metrics) -> Named {
    m.iter()
        .filter(|(k, _)| !k.starts_with("time/") && !k.starts_with("perf/"))
        .map(|(k, v)| (k.into(), v))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn grpo_raises_the_reward_of_responses_containing_b() -> R {
    let mut t =
        grpo(TrainerConfig { ppo_epochs: 2, mini_batch_groups: Some(2), ..config(8, 0.1) })?;
    let ps = prompts(4);
    assert_eq!(t.evaluate(&ps, true)?.accuracy, 0.0, "greedy picks EOS first: empty response");
    let rewards: Vec<f64> = (0..12)
        .map(|_| t.step(&ps).map(|r| r.metrics.get("reward/mean").expect("reward")))
        .collect::<R<_>>()?;
    let (first, last) =
        (rewards[..3].iter().sum::<f64>() / 3.0, rewards[9..].iter().sum::<f64>() / 3.0);
    assert!(last > first + 0.2, "rewards did not rise: {rewards:?}");
    let l = logits(&t);
    assert!(
        l[2] > l[0] && l[2] > l[1] && l[2] > l[3],
        "'b' should become the most likely token: {l:?}"
    );
    assert_eq!(t.evaluate(&ps, true)?.accuracy, 1.0);
    assert_eq!(t.state().step, 12);
    assert_eq!(t.state().actor_updates, 12 * 2 * 2, "2 epochs × 2 mini-batches per step");
    Ok(())
}

#[test]
fn step_reports_the_documented_metrics() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("logs/metrics.jsonl");
    let cfg =
        TrainerConfig { entropy_coef: 0.01, metrics_path: Some(path.clone()), ..config(4, 0.05) };
    let mut t = grpo(cfg)?;
    let m = t.step(&prompts(3))?.metrics;
    for name in [
        "reward/mean",
        "reward/std",
        "reward/accuracy",
        "response/length_mean",
        "response/length_max",
        "response/truncated_frac",
        "actor/loss",
        "actor/pg_loss",
        "actor/entropy_bonus/entropy",
        "actor/ratio_mean",
        "actor/grad_norm",
        "actor/lr",
        "actor/updates",
        "perf/generate_tokens_per_s",
        "perf/train_tokens_per_s",
        "time/generate_s",
        "time/score_s",
        "time/prepare_s",
        "time/train_s",
        "time/optimizer_s",
        "time/step_s",
        "train/skipped_total",
        "rollout/log_prob_abs_diff",
    ] {
        assert!(m.get(name).is_some_and(f64::is_finite), "missing metric {name}: {m:?}");
    }
    assert!((m.get("actor/ratio_mean").unwrap() - 1.0).abs() < 1e-6, "on-policy ratio is 1");
    assert!(m.get("rollout/log_prob_abs_diff").unwrap() < 1e-6, "the mock samples exactly");
    assert_eq!(m.get("actor/lr"), Some(0.05));
    assert!(
        (m.get("actor/entropy_bonus/entropy").unwrap() - 4f64.ln()).abs() < 1e-5,
        "uniform over 4 tokens"
    );
    assert!(m.get("response/length_max").unwrap() <= 4.0);
    t.step(&prompts(3))?;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["step"], 2);
    assert_eq!(lines[0]["reward/mean"].as_f64(), m.get("reward/mean"));
    Ok(())
}

#[test]
fn evaluations_are_logged_next_to_their_step_and_plotted() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("run/metrics.jsonl");
    let mut t = grpo(TrainerConfig { metrics_path: Some(path.clone()), ..config(4, 0.05) })?;
    let ps = prompts(3);
    let before = t.evaluate(&ps, true)?;
    t.step(&ps)?;
    t.step(&ps)?;
    let after = t.evaluate(&ps, false)?;
    let text = std::fs::read_to_string(&path)?;
    let lines: Vec<serde_json::Value> =
        text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 4, "eval, 2 train steps, eval:\n{text}");
    assert_eq!((lines[0]["step"].as_u64(), lines[3]["step"].as_u64()), (Some(0), Some(2)));
    assert_eq!(lines[0]["eval/accuracy"].as_f64(), Some(before.accuracy));
    assert_eq!(lines[0]["eval/greedy"].as_f64(), Some(1.0));
    assert_eq!(lines[3]["eval/mean_reward"].as_f64(), Some(after.mean_reward));
    assert_eq!(lines[3]["eval/responses"].as_f64(), Some(3.0));
    assert_eq!(lines[3]["eval/greedy"].as_f64(), Some(0.0));
    assert!(lines[1..3].iter().all(|l| l.get("eval/accuracy").is_none()));

    // Read back: the eval line of step 2 merges with that step's training line.
    let h = rl_trainer::plot::MetricsHistory::read(&path)?;
    assert_eq!(h.len(), 3);
    assert_eq!(h.series("eval/accuracy"), [(0, before.accuracy), (2, after.accuracy)]);
    assert_eq!(h.series("reward/mean").len(), 2);
    assert!(h.get(2, "reward/mean").is_some() && h.get(2, "eval/accuracy").is_some());
    let svg = rl_trainer::plot::plot_run(&path)?;
    assert_eq!(svg, dir.path().join("run/curves.svg"));
    let doc = std::fs::read_to_string(&svg)?;
    assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
    // One eval was sampled, so the label does not claim greedy.
    assert!(doc.contains("held-out accuracy") && !doc.contains("(greedy)"), "{doc}");
    Ok(())
}

/// Two epochs of one mini-batch with `micro` responses per micro-batch: final logits and the
/// step's metrics (without timings).
fn run_micro(micro: usize, seed: u64) -> R<(Vec<f32>, Named)> {
    let mut cfg = TrainerConfig { micro_batch_size: micro, ppo_epochs: 2, seed, ..config(6, 0.1) };
    cfg.actor.max_grad_norm = None;
    cfg.entropy_coef = 0.01;
    let policy = MockPolicy::new(&[0.3, -0.2, 0.1, 0.0], &Device::Cpu)?;
    let mut t = Trainer::grpo(policy, contains_b, MeanCentered, PpoClip, cfg)?;
    let m = t.step(&prompts(3))?.metrics;
    Ok((logits(&t), deterministic(&m)))
}

/// Metric sets that agree name for name to `tol` (relative to max(1, |value|)).
fn assert_same_metrics(got: &[(String, f64)], want: &[(String, f64)], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for ((k, a), (k2, b)) in got.iter().zip(want) {
        assert_eq!(k, k2, "{what}");
        assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what}: {k} = {a} vs {b}");
    }
}

/// With losses normalised by the mini-batch counts, gradient accumulation over micro-batches
/// gives the same gradients, update and metrics as one pass over the whole mini-batch.
fn assert_micro_invariant(micro: usize, seed: u64) -> R {
    let (whole, want) = run_micro(18, seed)?;
    let (got, metrics) = run_micro(micro, seed)?;
    assert_same_metrics(&metrics, &want, 1e-6, &format!("micro {micro}"));
    for (a, b) in got.iter().zip(&whole) {
        assert!((a - b).abs() < 1e-6, "micro {micro}: {got:?} vs {whole:?}");
    }
    Ok(())
}

#[test]
fn micro_batching_does_not_change_the_update() -> R {
    for micro in [1, 4, 7] {
        assert_micro_invariant(micro, 0)?;
    }
    Ok(())
}

#[test]
fn ppo_trains_the_critic_and_respects_critic_warmup() -> R {
    let cfg = TrainerConfig { critic_warmup_steps: 1, ..config(4, 0.1) };
    let mut t = Trainer::builder(mock(), contains_b)
        .critic(BiasCritic(Var::new(&[0f32], &Device::Cpu)?), HalfSquared)
        .estimator(OutcomeMinusValue)
        .policy_loss(PpoClip)
        .config(cfg)
        .build()?;
    let before = t.policy().logits().as_tensor().to_vec1::<f32>()?;
    let m = t.step(&prompts(4))?.metrics;
    assert_eq!(
        t.policy().logits().as_tensor().to_vec1::<f32>()?,
        before,
        "actor frozen during warm-up"
    );
    assert!(m.get("actor/loss").is_none() && m.get("critic/loss").is_some());
    let bias = |t: &Trainer<MockPolicy, BiasCritic>| {
        t.critic().expect("critic").0.to_vec1::<f32>().expect("b")[0]
    };
    // The mean reward is positive, so the first critic step moves V = 0 up by ≈ lr.
    assert!((bias(&t) - 0.1).abs() < 1e-3, "bias {}", bias(&t));
    assert_eq!((t.state().actor_updates, t.state().critic_updates), (0, 1));
    let m = t.step(&prompts(4))?.metrics;
    assert!(m.get("actor/grad_norm").is_some());
    assert_ne!(
        t.policy().logits().as_tensor().to_vec1::<f32>()?,
        before,
        "actor trains after warm-up"
    );
    assert_eq!((t.state().actor_updates, t.state().critic_updates), (1, 2));
    // GAE without a critic is a config error.
    let err = Trainer::grpo(mock(), contains_b, OutcomeMinusValue, PpoClip, config(4, 0.1));
    assert!(matches!(err, Err(TrainerError::Config { .. })));
    Ok(())
}

#[test]
fn dynamic_sampling_fills_the_batch_or_reports_a_shortfall() -> R {
    let ds = |on_shortfall| {
        Some(DynamicSampling { max_rounds: 8, on_shortfall, prompts_per_round: None })
    };
    let mut t = grpo(TrainerConfig { dynamic_sampling: ds(Shortfall::Error), ..config(4, 0.01) })?;
    let m = t.step(&prompts(6))?.metrics;
    assert_eq!(m.get("dynamic/kept_groups"), Some(6.0));
    assert!(m.get("dynamic/rounds").unwrap() >= 1.0);
    // A policy that always stops at once: every group has the same reward, nothing is kept.
    let always_eos = || MockPolicy::new(&[50.0, 0.0, 0.0, 0.0], &Device::Cpu);
    let cfg = TrainerConfig { dynamic_sampling: ds(Shortfall::Error), ..config(4, 0.01) };
    let mut t = Trainer::grpo(always_eos()?, contains_b, MeanCentered, PpoClip, cfg)?;
    let err = t.step(&prompts(2)).unwrap_err();
    assert!(
        matches!(err, TrainerError::DynamicSamplingShortfall { kept: 0, needed: 2, rounds: 8 }),
        "{err}"
    );
    // With `on_shortfall = "train"`, a step that kept no group counts as a step but skips its
    // update: the weights and the optimizer (schedule) position stay, and the run goes on.
    let cfg = TrainerConfig { dynamic_sampling: ds(Shortfall::Train), ..config(4, 0.01) };
    let mut t = Trainer::grpo(always_eos()?, contains_b, MeanCentered, PpoClip, cfg)?;
    let before = t.policy().logits().as_tensor().to_vec1::<f32>()?;
    for step in 1..=2 {
        let m = t.step(&prompts(2))?.metrics;
        assert_eq!(m.get("dynamic/empty_step"), Some(1.0));
        assert_eq!(m.get("dynamic/kept_groups"), Some(0.0));
        assert_eq!(m.get("dynamic/rounds"), Some(8.0));
        assert!(m.get("reward/mean").is_some() && m.get("actor/loss").is_none());
        assert_eq!((t.state().step, t.state().actor_updates), (step, 0));
    }
    assert_eq!(t.policy().logits().as_tensor().to_vec1::<f32>()?, before);
    // Training on a partial batch when allowed: reward 1 only for prompt q0's group can vary.
    let only_q0 = |s: &Sample| -> rl_core::Result<f32> {
        Ok((s.prompt == "q0" && s.response.contains('b')) as u8 as f32)
    };
    let one_round = |prompts_per_round| TrainerConfig {
        dynamic_sampling: Some(DynamicSampling {
            max_rounds: 1,
            on_shortfall: Shortfall::Train,
            prompts_per_round,
        }),
        ..config(8, 0.01)
    };
    let mut t = Trainer::grpo(mock(), only_q0, MeanCentered, PpoClip, one_round(None))?;
    let m = t.step(&prompts(3))?.metrics;
    assert_eq!(m.get("dynamic/kept_groups"), Some(1.0));
    // A larger round (verl DAPO `gen_batch_size`): 9 prompts drawn (q0, q1, q2 three times over),
    // so the one round holds three q0 groups and keeps them all; never more than the step's 3.
    let mut t = Trainer::grpo(mock(), only_q0, MeanCentered, PpoClip, one_round(Some(9)))?;
    let report = t.step(&prompts(3))?;
    assert_eq!(report.metrics.get("dynamic/kept_groups"), Some(3.0));
    assert_eq!(report.metrics.get("dynamic/rounds"), Some(1.0));
    let mut t = Trainer::grpo(mock(), contains_b, MeanCentered, PpoClip, one_round(Some(9)))?;
    assert_eq!(t.step(&prompts(3))?.metrics.get("dynamic/kept_groups"), Some(3.0));
    // Fewer than the step's prompts act as the step's prompts; 0 and unbounded rounds are refused.
    let mut t = Trainer::grpo(mock(), only_q0, MeanCentered, PpoClip, one_round(Some(1)))?;
    assert_eq!(t.step(&prompts(3))?.metrics.get("dynamic/kept_groups"), Some(1.0));
    for bad in [0, usize::MAX / 2] {
        let err = one_round(Some(bad)).validate().unwrap_err().to_string();
        assert!(err.contains("dynamic_sampling.prompts_per_round"), "{err}");
    }
    let toml = "[dynamic_sampling]\nmax_rounds = 2\nprompts_per_round = 24";
    let c = TrainerConfig::from_toml(toml)?;
    assert_eq!(c.dynamic_sampling.and_then(|d| d.prompts_per_round), Some(24));
    Ok(())
}

/// A loss that is NaN: every update is skipped, the weights never change, and the run stops
/// with a typed error once the limit is exceeded.
#[test]
fn non_finite_losses_skip_updates_then_stop() -> R {
    let nan_loss = |i: &PolicyLossInput<'_>| -> rl_core::Result<LossOutput> {
        Ok(LossOutput {
            loss: i.log_probs.sum_all()?.affine(f64::NAN, 0.0)?,
            metrics: Metrics::new(),
        })
    };
    struct F<L>(L);
    impl<L: Fn(&PolicyLossInput<'_>) -> rl_core::Result<LossOutput>> PolicyLoss for F<L> {
        fn compute(&self, i: &PolicyLossInput<'_>) -> rl_core::Result<LossOutput> {
            (self.0)(i)
        }
    }
    let cfg =
        TrainerConfig { max_skipped_updates: 2, mini_batch_groups: Some(1), ..config(2, 0.1) };
    let mut t = Trainer::grpo(mock(), contains_b, MeanCentered, F(nan_loss), cfg)?;
    let before = logits(&t);
    let m = t.step(&prompts(2))?.metrics;
    assert_eq!(m.get("actor/updates"), Some(0.0));
    assert_eq!(m.get("train/skipped_total"), Some(2.0));
    assert_eq!(logits(&t), before);
    let err = t.step(&prompts(2)).unwrap_err();
    assert!(matches!(err, TrainerError::NonFiniteUpdates { skipped: 3, limit: 2, .. }), "{err}");
    Ok(())
}

/// Save after two steps, continue one step; a fresh trainer resumed from the checkpoint
/// produces exactly the same third step (metrics and weights), data position included.
#[test]
fn resume_reproduces_the_next_step_exactly() -> R {
    let dir = tempfile::tempdir()?;
    let cfg = TrainerConfig {
        actor: OptimizerConfig {
            schedule: LrSchedule::WarmupConstant { warmup_steps: 3 },
            ..config(4, 0.1).actor
        },
        ..config(4, 0.1)
    };
    let new = || -> R<(Trainer<MockPolicy, BiasCritic>, PromptDataset)> {
        let t = Trainer::builder(mock(), contains_b)
            .critic(BiasCritic(Var::new(&[0f32], &Device::Cpu)?), HalfSquared)
            .estimator(OutcomeMinusValue)
            .policy_loss(PpoClip)
            .config(cfg.clone())
            .build()?;
        Ok((t, PromptDataset::new(prompts(5), 3, true)?))
    };
    let (mut a, mut data_a) = new()?;
    a.step_from(&mut data_a, 2)?;
    a.step_from(&mut data_a, 2)?;
    let saved = a.save_checkpoint(dir.path())?;
    assert!(saved.ends_with("step-000002"));
    let expected = a.step_from(&mut data_a, 2)?;

    // A save killed half-way leaves a temp dir behind; resume ignores it.
    std::fs::create_dir_all(dir.path().join(".tmp-step-000003/policy"))?;
    let (mut b, mut data_b) = new()?;
    let state = b.resume(dir.path())?.expect("a checkpoint");
    assert_eq!(state.step, 2);
    data_b.seek(state.data.expect("data position"));
    let got = b.step_from(&mut data_b, 2)?;
    assert_eq!(got.step, expected.step);
    assert_eq!(deterministic(&got.metrics), deterministic(&expected.metrics));
    assert_eq!(
        b.policy().logits().as_tensor().to_vec1::<f32>()?,
        a.policy().logits().as_tensor().to_vec1::<f32>()?
    );
    assert_eq!(data_b.position(), data_a.position());

    // A checkpoint for a different model is rejected with a typed error.
    let mut other = Trainer::grpo(
        MockPolicy::new(&[0.0, 0.0], &Device::Cpu)?,
        contains_b,
        MeanCentered,
        PpoClip,
        config(2, 0.1),
    )?;
    assert!(other.load_checkpoint(&saved).is_err());
    Ok(())
}

/// GRPO and PPO trainers behind one `dyn TrainStep`.
#[test]
fn trainers_share_an_object_safe_interface() -> R {
    let dir = tempfile::tempdir()?;
    let critic = BiasCritic(Var::new(&[0f32], &Device::Cpu)?);
    let ppo = Trainer::builder(mock(), contains_b)
        .critic(critic, HalfSquared)
        .estimator(OutcomeMinusValue)
        .policy_loss(PpoClip)
        .config(config(2, 0.1))
        .build()?;
    let mut all: Vec<Box<dyn rl_trainer::TrainStep>> =
        vec![Box::new(grpo(config(2, 0.1))?), Box::new(ppo)];
    for (i, t) in all.iter_mut().enumerate() {
        let mut data = PromptDataset::new(prompts(3), 0, true)?;
        assert_eq!(t.step_from(&mut data, 2)?.step, 1);
        assert!((0.0..=1.0).contains(&t.evaluate(&prompts(2), true)?.accuracy));
        let root = dir.path().join(i.to_string());
        t.save_checkpoint(&root)?;
        assert_eq!(t.resume(&root)?.map(|s| s.step), Some(1));
        assert_eq!(t.state().data.map(|d| d.index), Some(2));
    }
    Ok(())
}

#[test]
fn configs_round_trip_through_toml_and_reject_typos() -> R {
    for c in [
        TrainerConfig::default(),
        TrainerConfig::open_reasoner_zero(),
        TrainerConfig::dr_grpo(),
        TrainerConfig::dapo(),
        TrainerConfig {
            actor: OptimizerConfig {
                schedule: LrSchedule::openrlhf_cosine(100),
                ..OptimizerConfig::default()
            },
            ..TrainerConfig::default()
        },
    ] {
        c.validate()?;
        let text = c.to_toml()?;
        assert_eq!(TrainerConfig::from_toml(&text)?, c, "{text}");
    }
    let err = TrainerConfig::from_toml("[actor]\nlearning_rate = 1e-6").unwrap_err();
    assert!(
        matches!(&err, TrainerError::ConfigParse(_)) && err.to_string().contains("learning_rate"),
        "{err}"
    );
    let err = TrainerConfig::from_toml("[actor.schedule]\ntype = \"cosine\"").unwrap_err();
    assert!(err.to_string().contains("cosine"), "{err}");
    for (text, field) in [
        ("ppo_epochs = 0", "ppo_epochs"),
        ("micro_batch_size = 0", "micro_batch_size"),
        ("[actor]\nlr = -1.0", "actor.lr"),
        ("[critic.adam]\nbeta2 = 1.0", "critic.adam.beta2"),
        ("[actor]\nmax_grad_norm = 0.0", "actor.max_grad_norm"),
    ] {
        match TrainerConfig::from_toml(text) {
            Err(TrainerError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(matches!(
        TrainerConfig::from_toml("[sampling]\nn = 0"),
        Err(TrainerError::Core(rl_core::Error::Config { .. }))
    ));
    Ok(())
}

#[test]
fn dataset_cycles_through_every_prompt_each_epoch() -> R {
    let mut d = PromptDataset::new(prompts(5), 11, true)?;
    let mut seen: Vec<String> = d.next_prompts(5)?.into_iter().map(|p| p.text).collect();
    seen.sort();
    assert_eq!(seen, prompts(5).into_iter().map(|p| p.text).collect::<Vec<_>>());
    let _ = d.next_prompts(2)?;
    assert_eq!(d.position().map(|p| (p.epoch, p.index)), Some((1, 2)));
    assert!(PromptDataset::new(Vec::new(), 0, true).is_err());
    Ok(())
}

mod props {
    use super::assert_micro_invariant;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        /// Any micro-batch size gives the same update as the whole mini-batch.
        #[test]
        fn accumulation_is_exact(micro in 1usize..12, seed in 0u64..1000) {
            assert_micro_invariant(micro, seed).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recipes: the real estimators of rl-advantage and losses of rl-loss, picked by name.

mod recipes {
    use super::*;
    use rl_trainer::{AlgorithmConfig, Recipe};

    fn small(mut r: Recipe) -> Recipe {
        let t = config(8, 0.1);
        r.trainer.sampling = t.sampling;
        r.trainer.micro_batch_size = 4;
        r.trainer.actor.lr = 0.1;
        r.trainer.actor.schedule = LrSchedule::Constant;
        r.trainer.critic.lr = 0.1;
        r.trainer.critic.schedule = LrSchedule::Constant;
        r
    }

    #[test]
    fn recipes_round_trip_and_name_bad_stages() -> R {
        for r in
            [Recipe::default(), Recipe::open_reasoner_zero(), Recipe::dr_grpo(), Recipe::dapo()]
        {
            let text = r.to_toml()?;
            assert_eq!(Recipe::from_toml(&text)?, r, "{text}");
        }
        let text = "[algorithm.advantage]\ntype = \"dr_grpo\"\n[algorithm.policy_loss]\ntype = \"ppo\"\nclip_high = 0.28\n[trainer]\nppo_epochs = 2";
        let r = Recipe::from_toml(text)?;
        assert_eq!(
            (r.algorithm.advantage, r.trainer.ppo_epochs),
            (rl_advantage::Advantage::dr_grpo(), 2)
        );
        for (bad, name) in [
            ("[algorithm.policy_loss]\ntype = \"ppo2\"", "ppo2"),
            ("[algorithm]\nadvantages = 1", "advantages"),
            ("[trainer.actor]\nlearning_rate = 1.0", "learning_rate"),
        ] {
            let err = Recipe::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains(name), "{bad}: {err}");
        }
        Ok(())
    }

    /// The TOML example of `docs/trainer.md` parses and validates.
    #[test]
    fn the_documented_recipe_parses() -> R {
        let doc = include_str!("../../../docs/trainer.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let text = &doc[start..start + doc[start..].find("```").expect("closed block")];
        let r = Recipe::from_toml(text)?;
        assert_eq!(r.trainer.mini_batch_groups, Some(32));
        assert!(matches!(
            r.trainer.actor.schedule,
            LrSchedule::WarmupCosine { total_steps: 100, .. }
        ));
        assert_eq!(r.algorithm.advantage, rl_advantage::Advantage::dr_grpo());
        Ok(())
    }

    /// Leaving zero-advantage rows out (`skip_zero_advantage_rows`, on by default) changes only
    /// the work: Dr. GRPO with and without it ends with the same weights and metrics, over a
    /// step where two groups got one reward for every sample and a step where every group did
    /// (one micro-batch still runs, so AdamW moves the weights on its moments exactly as with
    /// zero gradients).
    #[test]
    fn skipping_zero_advantage_rows_changes_only_the_work() -> R {
        fn flat_for_q0_q1(s: &Sample) -> rl_core::Result<f32> {
            if s.prompt == "q0" || s.prompt == "q1" { Ok(0.5) } else { contains_b(s) }
        }
        let run = |skip: bool| -> R<(Vec<f32>, Vec<Named>, Vec<f64>)> {
            let mut r = small(Recipe::dr_grpo());
            r.algorithm = AlgorithmConfig::dr_grpo(4);
            r.trainer.skip_zero_advantage_rows = skip;
            let mut t = r.grpo(mock(), flat_for_q0_q1)?;
            let ps = prompts(5);
            let (mut named, mut skipped) = (Vec::new(), Vec::new());
            for batch in [&ps[..], &ps[..2], &ps[..]] {
                let m = t.step(batch)?.metrics;
                skipped.push(m.get("train/zero_adv_rows_skipped").expect("metric"));
                let m = deterministic(&m);
                named.push(
                    m.into_iter().filter(|(k, _)| k != "train/zero_adv_rows_skipped").collect(),
                );
            }
            Ok((logits(&t), named, skipped))
        };
        let (want_logits, want, none) = run(false)?;
        let (got_logits, got, skipped) = run(true)?;
        assert_eq!(none, [0.0; 3]);
        // Step 1: at least the 16 responses of q0 and q1; step 2: all 16 but one micro-batch.
        assert!(skipped[0] >= 16.0 && skipped[1] == 12.0, "{skipped:?}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_same_metrics(g, w, 1e-6, &format!("step {}", i + 1));
        }
        for (a, b) in got_logits.iter().zip(&want_logits) {
            assert!((a - b).abs() < 1e-6, "{got_logits:?} vs {want_logits:?}");
        }
        assert!(want_logits.iter().any(|v| *v != 0.0), "the run must move the weights");
        Ok(())
    }

    #[test]
    fn dr_grpo_recipe_raises_the_reward() -> R {
        let mut r = small(Recipe::dr_grpo());
        r.algorithm = AlgorithmConfig::dr_grpo(4);
        let mut t = r.grpo(mock(), contains_b)?;
        let ps = prompts(4);
        let rewards: Vec<f64> = (0..12)
            .map(|_| t.step(&ps).map(|s| s.metrics.get("reward/mean").expect("reward")))
            .collect::<R<_>>()?;
        let (first, last) =
            (rewards[..3].iter().sum::<f64>() / 3.0, rewards[9..].iter().sum::<f64>() / 3.0);
        assert!(last > first + 0.2, "{rewards:?}");
        assert_eq!(t.evaluate(&ps, true)?.accuracy, 1.0);
        Ok(())
    }

    /// The real rl-loss PPO loss, KL and entropy terms, and their metrics, do not depend on the
    /// micro-batch size.
    #[test]
    fn recipe_metrics_do_not_depend_on_micro_batching() -> R {
        let run = |micro: usize| -> R<(Vec<f32>, Named)> {
            let mut r = small(Recipe::dapo());
            r.trainer.dynamic_sampling = None;
            r.trainer.micro_batch_size = micro;
            r.trainer.ppo_epochs = 2;
            r.algorithm.kl_loss = Some(rl_loss::KlLoss { coef: 0.1, ..Default::default() });
            r.algorithm.entropy_bonus =
                Some(rl_loss::EntropyBonus { coef: 0.01, ..Default::default() });
            let mut t = r.builder(mock(), contains_b)?.reference(mock()).build()?;
            let m = t.step(&prompts(3))?.metrics;
            Ok((logits(&t), deterministic(&m)))
        };
        let (want_logits, want) = run(24)?;
        for micro in [1, 5] {
            let (got_logits, got) = run(micro)?;
            assert_same_metrics(&got, &want, 1e-5, &format!("micro {micro}"));
            for (a, b) in got_logits.iter().zip(&want_logits) {
                assert!((a - b).abs() < 1e-5, "micro {micro}: {got_logits:?} vs {want_logits:?}");
            }
        }
        assert!(
            want.iter().any(|(k, _)| k == "actor/kl/kl")
                && want.iter().any(|(k, _)| k == "actor/clipfrac")
        );
        Ok(())
    }

    #[test]
    fn dapo_recipe_steps_with_dynamic_sampling() -> R {
        let mut t = small(Recipe::dapo()).grpo(mock(), contains_b)?;
        let m = t.step(&prompts(4))?.metrics;
        assert_eq!(m.get("dynamic/kept_groups"), Some(4.0));
        assert!(m.get("actor/clipfrac").is_some(), "{m:?}");
        Ok(())
    }

    #[test]
    fn ppo_recipe_trains_actor_and_critic() -> R {
        let r = small(Recipe::open_reasoner_zero());
        let critic = BiasCritic(Var::new(&[0f32], &Device::Cpu)?);
        let mut t = r.ppo(mock(), critic, contains_b)?;
        let m = t.step(&prompts(4))?.metrics;
        for k in
            ["actor/loss", "actor/grad_norm", "critic/loss", "critic/clipfrac", "critic/grad_norm"]
        {
            assert!(m.get(k).is_some_and(f64::is_finite), "{k}: {m:?}");
        }
        assert_eq!((t.state().actor_updates, t.state().critic_updates), (1, 1));
        let critic = BiasCritic(Var::new(&[0f32], &Device::Cpu)?);
        assert!(matches!(
            small(Recipe::dr_grpo()).ppo(mock(), critic, contains_b),
            Err(TrainerError::Config { .. })
        ));
        assert!(
            matches!(r.grpo(mock(), contains_b), Err(TrainerError::Config { .. })),
            "GAE needs a critic"
        );
        Ok(())
    }

    #[test]
    fn kl_and_entropy_terms_use_the_reference_and_entropies() -> R {
        let mut r = small(Recipe::dr_grpo());
        r.algorithm = AlgorithmConfig {
            kl_loss: Some(rl_loss::KlLoss { coef: 0.1, ..Default::default() }),
            entropy_bonus: Some(rl_loss::EntropyBonus { coef: 0.01, ..Default::default() }),
            ..AlgorithmConfig::dr_grpo(4)
        };
        r.trainer.mini_batch_groups = Some(1);
        let mut t = r.builder(mock(), contains_b)?.reference(mock()).build()?;
        let m = t.step(&prompts(2))?.metrics;
        let kl = m.get("actor/kl/kl").expect("kl metric");
        assert!(kl > 0.0 && kl.is_finite(), "the second mini-batch sees an updated policy: {kl}");
        // The token-mean entropy of the (slightly trained) policy: just below ln 4.
        let h = m.get("actor/entropy_bonus/entropy").expect("entropy");
        assert!(h > 4f64.ln() - 0.05 && h <= 4f64.ln() + 1e-6, "{h}");
        assert!(m.get("actor/entropy_bonus/loss").expect("bonus") < 0.0);
        // Without a reference policy the KL term is a typed error when the trainer is built.
        let Err(err) = r.grpo(mock(), contains_b) else {
            panic!("a KL term without a reference must not build");
        };
        assert!(
            matches!(&err, TrainerError::Config { field, .. } if field == "algorithm.kl_loss"),
            "{err:?}"
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// External samplers, rollout correction and weight sync

mod external {
    use std::cell::RefCell;
    use std::rc::Rc;

    use rl_core::{Policy, Sampler, SyncReport, WeightSource, WeightSync};
    use rl_loss::{IsLevel, PpoLoss, TruncatedIs};
    use rl_trainer::RolloutCorrection;

    use super::*;

    /// A stand-in inference engine: its own mock model (its own logits), external, recording
    /// the batches it returns.
    struct Engine {
        model: Rc<RefCell<MockPolicy>>,
        seen: Rc<RefCell<Vec<RolloutBatch>>>,
    }

    /// Loads the published weights into the engine's model (what a reload does).
    struct Reload(Rc<RefCell<MockPolicy>>);

    impl WeightSync for Reload {
        fn publish(
            &mut self,
            source: &dyn WeightSource,
            version: u64,
        ) -> rl_core::Result<SyncReport> {
            let w = source.named_weights()?;
            self.0.borrow().logits().set(&w[0].1)?;
            Ok(SyncReport { version, ..SyncReport::default() })
        }
        fn published_version(&self) -> Option<u64> {
            None
        }
    }

    impl Sampler for Engine {
        fn sample(
            &mut self,
            prompts: &[Prompt],
            config: &SamplingConfig,
        ) -> rl_core::Result<RolloutBatch> {
            let batch = self.model.borrow_mut().generate(prompts, config)?;
            assert!(batch.rollout_log_probs.is_some(), "the mock fills the sampler's log-probs");
            self.seen.borrow_mut().push(batch.clone());
            Ok(batch)
        }

        fn is_external(&self) -> bool {
            true
        }
    }

    /// (version, weights) of each publish.
    type Published = Rc<RefCell<Vec<(u64, Vec<f32>)>>>;
    /// Records every publish.
    #[derive(Default)]
    struct Recorder(Published);
    impl WeightSync for Recorder {
        fn publish(
            &mut self,
            source: &dyn WeightSource,
            version: u64,
        ) -> rl_core::Result<SyncReport> {
            let w = source.named_weights()?;
            assert_eq!(w[0].0, "logits");
            self.0.borrow_mut().push((version, w[0].1.to_vec1::<f32>()?));
            Ok(SyncReport { version, bytes: 16, ..SyncReport::default() })
        }
        fn published_version(&self) -> Option<u64> {
            self.0.borrow().last().map(|(v, _)| *v)
        }
    }

    fn engine(logits: &[f32]) -> (Engine, Rc<RefCell<Vec<RolloutBatch>>>) {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let model = Rc::new(RefCell::new(MockPolicy::new(logits, &Device::Cpu).expect("mock")));
        (Engine { model, seen: seen.clone() }, seen)
    }

    /// A continuous reward (share of `b` tokens), so group advantages are rarely all zero.
    fn share_of_b(s: &Sample) -> rl_core::Result<f32> {
        let n = s.response.chars().count().max(1) as f32;
        Ok(s.response.chars().filter(|&c| c == 'b').count() as f32 / n)
    }

    /// GRPO with 2 prompts × 4 responses in two micro-batches, with `sampler` (reloaded after
    /// every step when `reload`).
    fn trainer(
        sampler: Option<Engine>,
        correction: RolloutCorrection,
        reload: bool,
    ) -> R<rl_trainer::GrpoTrainer<MockPolicy>> {
        let mut b = Trainer::builder(mock(), share_of_b)
            .estimator(MeanCentered)
            .policy_loss(PpoLoss::grpo())
            .config(TrainerConfig { rollout_correction: correction, ..config(4, 0.1) });
        if let Some(s) = sampler {
            if reload {
                b = b.weight_sync(Reload(s.model.clone()), 1);
            }
            b = b.sampler(s);
        }
        b.build()
    }

    fn deterministic(m: &Metrics) -> Vec<(String, f64)> {
        m.iter()
            .filter(|(k, _)| !k.starts_with("time/") && !k.starts_with("perf/"))
            .filter(|(k, _)| !k.contains("is_weight") && !k.contains("is_truncated"))
            .filter(|(k, _)| !k.starts_with("rollout_is/") && !k.starts_with("sync/"))
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// An engine with the policy's own weights, reloaded after every step, reproduces the local
    /// run (IS weights 1).
    #[test]
    fn an_external_sampler_with_the_same_weights_reproduces_the_local_run() -> R {
        let mut local = trainer(None, RolloutCorrection::default(), false)?;
        let (e, _) = engine(&[0.0, 0.0, 0.0, 0.0]);
        let mut remote = trainer(Some(e), RolloutCorrection::default(), true)?;
        for _ in 0..3 {
            let a = local.step(&prompts(2))?.metrics;
            let b = remote.step(&prompts(2))?.metrics;
            let w = b.get("rollout_is/weight_mean").expect("TIS ran");
            assert!((w - 1.0).abs() < 1e-5, "{w}");
            assert_eq!(b.get("rollout_is/truncated_frac"), Some(0.0));
            assert!(a.get("rollout_is/weight_mean").is_none(), "a local sampler is not corrected");
            let (a, b) = (deterministic(&a), deterministic(&b));
            assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
            for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
                assert_eq!(ka, kb);
                assert!((va - vb).abs() <= 1e-5 * va.abs().max(1.0), "{ka}: {va} vs {vb}");
            }
        }
        Ok(())
    }

    /// An engine with other weights: the truncated IS weights are `min(π_old / π_engine, c)`
    /// token by token, equal to a hand computation, and they change the policy loss.
    #[test]
    fn truncated_is_weights_match_a_hand_computation_and_reach_the_loss() -> R {
        let engine_logits = [0.0f32, 1.0, 0.0, 0.0];
        let tis = TruncatedIs { level: IsLevel::Token, threshold: 1.2 };
        let (e, seen) = engine(&engine_logits);
        let mut t = trainer(Some(e), RolloutCorrection::Tis(tis), false)?;
        let m = t.step(&prompts(2))?.metrics;
        // π_old is the (untrained) uniform policy: 1/4 for every token; the engine's softmax.
        let z: f64 = engine_logits.iter().map(|&l| f64::from(l).exp()).sum();
        let batch = seen.borrow()[0].clone();
        let (ids, mask) =
            (batch.response_ids.to_vec2::<u32>()?, batch.response_mask.to_vec2::<f32>()?);
        let (mut sum, mut truncated, mut n) = (0.0, 0.0, 0.0);
        for (row, m) in ids.iter().zip(&mask) {
            for (&id, &m) in row.iter().zip(m) {
                if m == 0.0 {
                    continue;
                }
                let raw = 0.25 / (f64::from(engine_logits[id as usize]).exp() / z);
                sum += raw.min(1.2);
                truncated += f64::from(u8::from(raw > 1.2));
                n += 1.0;
            }
        }
        let (want_mean, want_frac) = (sum / n, truncated / n);
        let got = m.get("rollout_is/weight_mean").expect("TIS metric");
        assert!((got - want_mean).abs() < 1e-5, "{got} vs {want_mean}");
        let got = m.get("rollout_is/truncated_frac").expect("TIS metric");
        assert!((got - want_frac).abs() < 1e-9, "{got} vs {want_frac}");
        assert!(want_frac > 0.0 && want_frac < 1.0, "both kinds of token were sampled");

        // The same rollout without the correction: another policy loss (the weights reach it).
        let (e, _) = engine(&engine_logits);
        let mut off = trainer(Some(e), RolloutCorrection::Off, false)?;
        let m_off = off.step(&prompts(2))?.metrics;
        assert!(m_off.get("rollout_is/weight_mean").is_none());
        let (pg, pg_off) = (m.get("actor/pg_loss").unwrap(), m_off.get("actor/pg_loss").unwrap());
        assert_eq!(m.get("reward/mean"), m_off.get("reward/mean"), "the same rollout");
        assert!((pg - pg_off).abs() > 1e-6, "{pg} vs {pg_off}");
        Ok(())
    }

    /// Publishes the initial weights (version 0) before the first rollout, then every
    /// `sync_every` steps, with the step as version and the updated weights.
    #[test]
    fn weights_are_published_every_sync_every_steps() -> R {
        let log = Rc::new(RefCell::new(Vec::new()));
        let (e, _) = engine(&[0.0, 0.0, 0.0, 0.0]);
        let mut t = Trainer::builder(mock(), share_of_b)
            .estimator(MeanCentered)
            .policy_loss(PpoLoss::grpo())
            .sampler(e)
            .weight_sync(Recorder(log.clone()), 2)
            .config(config(2, 0.1))
            .build()?;
        let initial = t.policy().logits().to_vec1::<f32>()?;
        for step in 1..=4u64 {
            let m = t.step(&prompts(2))?.metrics;
            if step == 1 {
                assert_eq!(log.borrow()[0], (0, initial.clone()), "initial publish");
                assert!(m.get("time/sync_initial_s").is_some());
            }
            let published = m.get("sync/version");
            assert_eq!(published, (step % 2 == 0).then_some(step as f64), "step {step}");
            if step % 2 == 0 {
                assert_eq!(m.get("sync/bytes"), Some(16.0));
                let (v, w) = log.borrow().last().cloned().expect("published");
                assert_eq!(v, step);
                assert_eq!(w, t.policy().logits().to_vec1::<f32>()?, "the updated weights");
            }
        }
        assert_eq!(log.borrow().iter().map(|(v, _)| *v).collect::<Vec<_>>(), vec![0, 2, 4]);
        Ok(())
    }

    /// Steps that take no optimizer step (empty dynamic-sampling steps) publish nothing new; a
    /// due publish after an update still sends it, even on an empty step.
    #[test]
    fn a_due_publish_is_skipped_only_when_no_step_changed_the_weights() -> R {
        let log = Rc::new(RefCell::new(Vec::new()));
        let (e, _) = engine(&[0.0, 0.0, 0.0, 0.0]);
        let engine_model = e.model.clone();
        // Token 0 ends a response: at logit 50 every response is empty and every reward 0, so
        // no group is kept; at 0 the rewards vary.
        let set_engine = |eos: f32| {
            let logits = Tensor::new(&[eos, 0.0, 0.0, 0.0], &Device::Cpu).expect("logits");
            engine_model.borrow().logits().set(&logits).expect("set")
        };
        let dynamic_sampling = Some(DynamicSampling {
            max_rounds: 4,
            on_shortfall: Shortfall::Train,
            prompts_per_round: None,
        });
        let mut t = Trainer::builder(mock(), share_of_b)
            .estimator(MeanCentered)
            .policy_loss(PpoLoss::grpo())
            .sampler(e)
            .weight_sync(Recorder(log.clone()), 2)
            .config(TrainerConfig { dynamic_sampling, ..config(2, 0.1) })
            .build()?;
        // Steps 1 (mixed: update), 2 (empty: due, the update of step 1 is sent), 3 and 4 (empty:
        // nothing new at 4), 5 and 6 (mixed: sent at 6).
        for (step, empty) in
            [(1u64, false), (2, true), (3, true), (4, true), (5, false), (6, false)]
        {
            set_engine(if empty { 50.0 } else { 0.0 });
            let m = t.step(&prompts(2))?.metrics;
            assert_eq!(m.get("dynamic/empty_step").is_some(), empty, "step {step}");
            let due = [2, 6].contains(&step);
            assert_eq!(m.get("sync/version"), due.then_some(step as f64), "step {step}");
            if due {
                let (v, w) = log.borrow().last().cloned().expect("published");
                assert_eq!((v, w), (step, t.policy().logits().to_vec1::<f32>()?));
            }
        }
        assert_eq!(log.borrow().iter().map(|(v, _)| *v).collect::<Vec<_>>(), vec![0, 2, 6]);
        Ok(())
    }

    /// An external sampler needs the trainer's own old log-probs.
    #[test]
    fn an_external_sampler_without_recomputed_old_log_probs_is_refused() {
        let (e, _) = engine(&[0.0, 0.0, 0.0, 0.0]);
        let built = Trainer::builder(mock(), share_of_b)
            .estimator(MeanCentered)
            .policy_loss(PpoLoss::grpo())
            .sampler(e)
            .config(TrainerConfig { recompute_old_log_probs: false, ..config(2, 0.1) })
            .build();
        let Err(err) = built else { panic!("built") };
        assert!(err.to_string().contains("trainer.recompute_old_log_probs"), "{err}");
        let bad = TrainerConfig {
            rollout_correction: RolloutCorrection::Tis(TruncatedIs {
                threshold: 0.0,
                ..TruncatedIs::default()
            }),
            ..TrainerConfig::default()
        };
        let err = bad.validate().unwrap_err();
        assert!(err.to_string().contains("rollout_correction.threshold"), "{err}");
    }
}

/// Under more than one rank, what cannot be data-parallel yet is refused at build time.
#[test]
fn data_parallel_refuses_batch_statistics_dynamic_sampling_and_kl_in_reward() -> R {
    use rl_core::dist::{ProcessGroup, ReduceOp};

    /// A group that claims two ranks (build never communicates).
    #[derive(Debug)]
    struct TwoRanks;
    impl ProcessGroup for TwoRanks {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn backend(&self) -> &'static str {
            "none"
        }
        fn all_reduce_sum(&mut self, _: &Tensor) -> rl_core::Result<()> {
            unreachable!("build does not communicate")
        }
        fn broadcast(&mut self, _: &Tensor, _: usize) -> rl_core::Result<()> {
            unreachable!("build does not communicate")
        }
        fn barrier(&mut self) -> rl_core::Result<()> {
            unreachable!("build does not communicate")
        }
        fn all_gather_bytes(&mut self, _: &[u8]) -> rl_core::Result<Vec<Vec<u8>>> {
            unreachable!("build does not communicate")
        }
        fn all_reduce_u64(&mut self, _: &mut [u64], _: ReduceOp) -> rl_core::Result<()> {
            unreachable!("build does not communicate")
        }
        fn all_reduce_f64(&mut self, _: &mut [f64], _: ReduceOp) -> rl_core::Result<()> {
            unreachable!("build does not communicate")
        }
    }
    let critic = || BiasCritic(Var::new(&[0f32], &Device::Cpu).expect("var"));
    // A batch std is not all-reduced: refused.
    let batch_std = Trainer::builder(mock(), contains_b)
        .estimator(rl_advantage::BatchStd::default())
        .policy_loss(PpoClip)
        .process_group(Box::new(TwoRanks))
        .config(config(2, 0.1))
        .build();
    let Err(err) = batch_std else { panic!("a batch std under DP") };
    assert!(err.to_string().contains("algorithm.advantage"), "{err}");
    // Whitened GAE (its moments are merged over the ranks) and plain GAE build.
    Trainer::builder(mock(), contains_b)
        .critic(critic(), HalfSquared)
        .estimator(rl_advantage::Gae::open_reasoner_zero())
        .policy_loss(PpoClip)
        .process_group(Box::new(TwoRanks))
        .config(config(2, 0.1))
        .build()?;
    Trainer::builder(mock(), contains_b)
        .critic(critic(), HalfSquared)
        .estimator(rl_advantage::Gae { whiten: rl_advantage::Whiten::None, ..Default::default() })
        .policy_loss(PpoClip)
        .process_group(Box::new(TwoRanks))
        .config(config(2, 0.1))
        .build()?;
    let dynamic =
        TrainerConfig { dynamic_sampling: Some(DynamicSampling::default()), ..config(2, 0.1) };
    let built = Trainer::builder(mock(), contains_b)
        .estimator(MeanCentered)
        .policy_loss(PpoClip)
        .process_group(Box::new(TwoRanks))
        .config(dynamic)
        .build();
    let Err(err) = built else { panic!("dynamic sampling under DP") };
    assert!(err.to_string().contains("trainer.dynamic_sampling"), "{err}");
    Ok(())
}
