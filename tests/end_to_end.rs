//! End-to-end: the embedded tiny arithmetic model (`assets/tiny-arith`) learns under Dr. GRPO and
//! under PPO + GAE (Open-Reasoner-Zero). (Exact resume is tested in `rl-trainer`, on a tiny LM.)
//!
//! Training repeats one fixed set of eight addition prompts, where improvement is certain: the
//! test asserts that the mean sampled reward of the last four steps beats that of the first four
//! by more than 0.05, and that greedy accuracy on the training prompts rises.

use std::path::PathBuf;

use candle_core::{DType, Device};
use rl_zero::core::Prompt;
use rl_zero::policy::tokenizer::Tokenizer;
use rl_zero::policy::{LanguageModel, LmPolicy, ValueModel};
use rl_zero::reward::OrzReward;
use rl_zero::trainer::{AlgorithmConfig, LrSchedule, Recipe, TrainerConfig};

fn tiny() -> (LanguageModel, Tokenizer) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-arith");
    let model = LanguageModel::from_hf_dir(&dir, DType::F32, &Device::Cpu).expect("tiny model");
    (model, Tokenizer::from_hf_dir(&dir).expect("tiny tokenizer"))
}

fn policy(model: LanguageModel, tok: Tokenizer) -> LmPolicy {
    let eos = tok.eos_ids().to_vec();
    LmPolicy::new(model).with_tokenizer(tok).with_eos_ids(eos)
}

/// Eight training pairs (none held out of pretraining: `(a·31 + b·17) mod 97 ≥ 10`).
fn prompts() -> Vec<Prompt> {
    [(12, 35), (47, 28), (63, 19), (25, 58), (71, 14), (39, 46), (84, 11), (56, 27)]
        .iter()
        .map(|&(a, b): &(u32, u32)| {
            assert!((a * 31 + b * 17) % 97 >= 10, "{a}+{b} is held out");
            Prompt::new(
                format!("<bos>What is {a} + {b}? Put the final answer in \\boxed{{}}."),
                (a + b).to_string(),
            )
        })
        .collect()
}

fn small(mut t: TrainerConfig, lr: f64) -> TrainerConfig {
    t.sampling.n = 8;
    t.sampling.max_new_tokens = 16;
    t.micro_batch_size = 64;
    t.actor.lr = lr;
    t.actor.schedule = LrSchedule::Constant;
    t.critic.lr = 2e-3;
    t.critic.schedule = LrSchedule::Constant;
    t.seed = 3;
    t
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn dr_grpo_and_ppo_improve_the_tiny_model() -> anyhow::Result<()> {
    let ps = prompts();
    let steps = 16;
    // Dr. GRPO.
    let mut recipe = Recipe::dr_grpo();
    recipe.trainer = small(recipe.trainer, 3e-4);
    recipe.algorithm = AlgorithmConfig::dr_grpo(16);
    let (model, tok) = tiny();
    let mut grpo = recipe.grpo(policy(model, tok), OrzReward::default())?;
    // PPO + GAE with a critic initialised from the base model.
    let mut recipe = Recipe::open_reasoner_zero();
    recipe.trainer = small(recipe.trainer, 3e-4);
    let (model, tok) = tiny();
    let critic = ValueModel::from_model(&model, 3)?;
    let mut ppo = recipe.ppo(policy(model, tok), critic, OrzReward::default())?;

    for (name, trainer) in [("dr_grpo", &mut grpo as &mut dyn Trainable), ("ppo", &mut ppo)] {
        let before = trainer.accuracy(&ps)?;
        let rewards: Vec<f64> =
            (0..steps).map(|_| trainer.train(&ps)).collect::<anyhow::Result<_>>()?;
        let after = trainer.accuracy(&ps)?;
        let (first, last) = (mean(&rewards[..4]), mean(&rewards[steps - 4..]));
        println!(
            "{name}: sampled reward {first:.3} -> {last:.3}, greedy {before:.3} -> {after:.3}"
        );
        assert!(last > first + 0.05, "{name}: reward did not rise: {rewards:?}");
        assert!(after > before, "{name}: greedy accuracy did not rise {before} -> {after}");
    }
    Ok(())
}

/// The two trainers behind one small interface for the test loop.
trait Trainable {
    fn train(&mut self, ps: &[Prompt]) -> anyhow::Result<f64>;
    fn accuracy(&mut self, ps: &[Prompt]) -> anyhow::Result<f64>;
}

impl<C: rl_zero::core::Critic> Trainable for rl_zero::trainer::Trainer<LmPolicy, C> {
    fn train(&mut self, ps: &[Prompt]) -> anyhow::Result<f64> {
        let report = self.step(ps)?;
        Ok(report.metrics.get("reward/mean").expect("reward/mean metric"))
    }
    fn accuracy(&mut self, ps: &[Prompt]) -> anyhow::Result<f64> {
        Ok(self.evaluate(ps, true)?.accuracy)
    }
}

/// Every parameter tensor of a model, flattened, in name order.
fn params(model: &LanguageModel) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let mut out = Vec::new();
    for (name, v) in model.named_vars() {
        out.push((name, v.flatten_all()?.to_vec1::<f32>()?));
    }
    Ok(out)
}

/// The largest elementwise difference of two parameter lists, and the name of the tensor.
fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f32, String) {
    let mut worst = (0f32, String::new());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let d = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        if d >= worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}

/// Gradient accumulation over micro-batches (where the matrix weights' gradients accumulate in
/// place, `rl_policy::ops::GradSink`) gives the update of one pass over the whole mini-batch:
/// policy and critic parameters after one step agree, for micro-batches of 64 (all 64 responses
/// at once) and of 5 (13 micro-batches, the last one short), under Dr. GRPO and PPO + critic;
/// and every parameter tensor moved (no weight's gradient was left in a sink).
#[test]
fn micro_batching_does_not_change_the_lm_update() -> anyhow::Result<()> {
    let ps = prompts();
    type Params = Vec<(String, Vec<f32>)>;
    let run = |ppo: bool, micro: usize| -> anyhow::Result<(Params, Params)> {
        let (model, tok) = tiny();
        if ppo {
            let mut recipe = Recipe::open_reasoner_zero();
            recipe.trainer = small(recipe.trainer, 1e-3);
            recipe.trainer.micro_batch_size = micro;
            let critic = ValueModel::from_model(&model, 3)?;
            let mut t = recipe.ppo(policy(model, tok), critic, OrzReward::default())?;
            t.step(&ps)?;
            let critic = params(t.critic().expect("critic").backbone())?;
            Ok((params(t.policy().model())?, critic))
        } else {
            let mut recipe = Recipe::dr_grpo();
            recipe.trainer = small(recipe.trainer, 1e-3);
            recipe.trainer.micro_batch_size = micro;
            recipe.algorithm = AlgorithmConfig::dr_grpo(16);
            let mut t = recipe.grpo(policy(model, tok), OrzReward::default())?;
            t.step(&ps)?;
            Ok((params(t.policy().model())?, Vec::new()))
        }
    };
    let (base, _) = tiny();
    let start = params(&base)?;
    for ppo in [false, true] {
        let (whole, whole_critic) = run(ppo, 64)?;
        let (micro, micro_critic) = run(ppo, 5)?;
        for ((name, after), (_, before)) in micro.iter().zip(&start) {
            let moved = after.iter().zip(before).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(moved > 0.0, "ppo={ppo}: the step did not move `{name}`");
        }
        for (what, a, b) in [("policy", &whole, &micro), ("critic", &whole_critic, &micro_critic)] {
            let (d, name) = max_diff(a, b);
            assert!(
                d < 1e-5,
                "ppo={ppo}: {what} `{name}` differs by {d} between micro-batch sizes"
            );
        }
    }
    Ok(())
}

/// With one actor update per batch the update's own forward supplies the old log-probs: the
/// PPO ratio is exactly 1 and the sampler/trainer mismatch is still reported. With two
/// mini-batches the old log-probs are recomputed before the first update, and the second
/// mini-batch's ratio moves away from 1.
#[test]
fn one_update_per_batch_uses_its_own_forward_as_old_log_probs() -> anyhow::Result<()> {
    let ps = prompts();
    for (mini, on_policy) in [(None, true), (Some(4), false)] {
        let (model, tok) = tiny();
        let mut recipe = Recipe::dr_grpo();
        recipe.trainer = small(recipe.trainer, 1e-3);
        recipe.trainer.mini_batch_groups = mini;
        recipe.trainer.shuffle = false;
        recipe.algorithm = AlgorithmConfig::dr_grpo(16);
        let mut t = recipe.grpo(policy(model, tok), OrzReward::default())?;
        let m = t.step(&ps)?.metrics;
        let ratio = m.get("actor/ratio_mean").expect("ratio");
        let diff = m.get("rollout/log_prob_abs_diff").expect("sampler/trainer mismatch");
        assert!(diff < 1e-4, "mini {mini:?}: mismatch {diff}");
        assert_eq!(ratio == 1.0, on_policy, "mini {mini:?}: ratio mean {ratio}");
    }
    Ok(())
}
