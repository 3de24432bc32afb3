//! The plugin's stages inside the real trainer: a PPO run with the position critic, the
//! squared-log-ratio term and the curriculum, checkpointed and resumed.

use rl_advantage::Gae;
use rl_core::testing::MockPolicy;
use rl_core::{
    Device, GlobalCounts, LossTerm, PromptSource, RewardFn, Sample, SamplingConfig, Tensor,
    TermInput, Var,
};
use rl_loss::{ClippedValueLoss, PpoLoss};
use rl_trainer::{OptimizerConfig, Trainer, TrainerConfig};
use rl_zero_plugin_example::{AdditionCurriculum, PositionCritic, SquaredLogRatio};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// 1.0 when the response contains a `b` (the mock's tokens are EOS, `a`, `b`, `c`).
struct ContainsB;

impl RewardFn for ContainsB {
    fn score(&self, s: &Sample) -> rl_core::Result<f32> {
        Ok(if s.response.contains('b') { 1.0 } else { 0.0 })
    }
    fn name(&self) -> &str {
        "contains_b"
    }
}

fn config() -> TrainerConfig {
    TrainerConfig {
        sampling: SamplingConfig { n: 2, max_new_tokens: 4, ..SamplingConfig::default() },
        micro_batch_size: 2,
        actor: OptimizerConfig { lr: 0.1, ..OptimizerConfig::default() },
        critic: OptimizerConfig { lr: 0.1, ..OptimizerConfig::default() },
        ..TrainerConfig::default()
    }
}

fn trainer() -> R<Trainer<MockPolicy, PositionCritic>> {
    let policy = MockPolicy::new(&[0.0, 0.0, 0.0, 0.0], &Device::Cpu)?;
    let critic = PositionCritic::new(4, &Device::Cpu)?;
    Ok(Trainer::builder(policy, ContainsB)
        .critic(critic, ClippedValueLoss::open_reasoner_zero())
        .estimator(Gae::default())
        .policy_loss(PpoLoss::open_reasoner_zero())
        .loss_term(SquaredLogRatio { coef: 0.5 })
        .config(config())
        .build()?)
}

#[test]
fn plugin_stages_train_checkpoint_and_resume() -> R {
    let dir = tempfile::tempdir()?;
    let mut t = trainer()?;
    let mut source = AdditionCurriculum::new(3, 2);
    let mut last = None;
    for _ in 0..3 {
        last = Some(t.step_from(&mut source, 2)?.metrics);
    }
    let m = last.expect("three steps");
    // The term ran and reported its value (a mean of squares: finite and ≥ 0).
    let v = m.get("actor/sq_log_ratio/value").expect("the plugin term's metric");
    assert!(v.is_finite() && v >= 0.0, "{v}");
    // The critic learned something: returns are 0/1, so some position moved off 0.
    let w = t.critic().expect("critic").weights().to_vec1::<f32>()?;
    assert!(w.iter().any(|x| x.abs() > 1e-4), "{w:?}");

    let root = dir.path().join("ckpt");
    t.save_checkpoint(&root)?;
    let mut fresh = trainer()?;
    let state = fresh.resume(&root)?.expect("a checkpoint to resume");
    assert_eq!(state.step, 3);
    assert_eq!(fresh.critic().expect("critic").weights().to_vec1::<f32>()?, w);
    // The curriculum continues where the checkpoint says.
    let mut resumed = AdditionCurriculum::new(3, 2);
    resumed.seek(state.data.expect("the curriculum's position"));
    assert_eq!(resumed.next_prompts(4)?, source.next_prompts(4)?);
    Ok(())
}

#[test]
fn squared_log_ratio_matches_a_hand_computation() -> R {
    let dev = Device::Cpu;
    let lp = Var::new(&[[-1.0f32, -2.0, -0.5], [-0.3, -0.7, -9.0]], &dev)?;
    let old = Tensor::new(&[[-1.5f32, -2.0, -0.1], [-0.3, -0.2, 0.0]], &dev)?;
    let mask = Tensor::new(&[[1f32, 1.0, 1.0], [1.0, 1.0, 0.0]], &dev)?;
    let counts = GlobalCounts { tokens: Some(10.0), ..GlobalCounts::default() };
    let input = TermInput {
        log_probs: lp.as_tensor(),
        entropy: None,
        old_log_probs: &old,
        ref_log_probs: None,
        response_mask: &mask,
        group_ids: &[0, 0],
        counts: &counts,
    };
    let out = SquaredLogRatio { coef: 2.0 }.compute(&input)?;
    // Σ M d² = 0.25 + 0 + 0.16 + 0 + 0.25 (the masked -9 vs 0 is left out) = 0.66; ½ / 10.
    let value = 0.5 * 0.66 / 10.0;
    assert!((out.metrics.get("value").unwrap() - value).abs() < 1e-6);
    assert!((f64::from(out.loss.to_scalar::<f32>()?) - 2.0 * value).abs() < 1e-6);
    // d/d lp = coef · M · d / tokens.
    let g = out.loss.backward()?;
    let g = g.get(&lp).expect("gradient").to_vec2::<f32>()?;
    let want = [[0.1f32, 0.0, -0.08], [0.0, -0.1, 0.0]];
    for (row, want) in g.iter().zip(want) {
        for (a, b) in row.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }
    let err = SquaredLogRatio { coef: f64::NAN }.compute(&input).unwrap_err();
    assert!(err.to_string().contains("sq_log_ratio.coef"), "{err}");
    Ok(())
}

#[test]
fn the_critic_rejects_responses_longer_than_its_table() -> R {
    let critic = PositionCritic::new(2, &Device::Cpu)?;
    let mut policy = MockPolicy::new(&[-5.0, 0.0], &Device::Cpu)?;
    let cfg = SamplingConfig { n: 1, max_new_tokens: 3, ..SamplingConfig::default() };
    let batch = rl_core::Policy::generate(&mut policy, &[rl_core::Prompt::new("q", "a")], &cfg)?;
    let err = rl_core::Critic::values(&critic, &batch).unwrap_err();
    assert!(err.to_string().contains("position_critic.max_len"), "{err}");
    Ok(())
}
