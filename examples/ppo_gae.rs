//! PPO with GAE and a learned critic: the Open-Reasoner-Zero recipe (γ = λ = 1, no KL, clip 0.2,
//! value clip 0.2, critic initialised from the base model, reward 1 only for a correct answer from a
//! response that stopped by itself).
//!
//! With no arguments it trains the embedded tiny arithmetic model (`assets/tiny-arith`, 130k
//! parameters, deliberately under-trained) on two-digit addition, offline on the CPU in a few
//! minutes, and prints the greedy accuracy on held-out prompts before, during and after training:
//!
//! ```text
//! cargo run --release --example ppo_gae
//! cargo run --release --example ppo_gae -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --steps 20
//! cargo run --release --example ppo_gae -- --model … --lr 2e-6 --critic-lr 1e-5 --warmup-steps 0
//! cargo run --release --example ppo_gae -- --help
//! ```
//!
//! `--model` takes a GGUF file, a Hugging Face directory or a Hub repo id. Metrics of every step are
//! appended to `runs/ppo_gae/metrics.jsonl`; the trained policy and critic are saved under
//! `runs/ppo_gae/checkpoints/` as Hugging Face directories.

mod common;

use anyhow::Result;
use rl_zero::policy::ValueModel;
use rl_zero::reward::OrzReward;
use rl_zero::trainer::{LrSchedule, Recipe};

fn main() -> Result<()> {
    let mut run = common::setup("ppo_gae")?;
    // Open-Reasoner-Zero: GAE(1, 1) + critic, PPO clip 0.2, value clip 0.2, no KL, token-mean.
    // ORZ itself: 128 prompts × 64 samples, 8000 new tokens, lr 1e-6 / 5e-6 with 50 warm-up steps
    // on 7B+ models; the tiny model needs larger, un-warmed steps.
    let mut recipe = Recipe::open_reasoner_zero();
    let t = &mut recipe.trainer;
    if run.tiny {
        t.critic.lr = 2e-3;
        t.actor.schedule = LrSchedule::Constant;
        t.critic.schedule = LrSchedule::Constant;
    }
    // lr: 1e-4 for the embedded model; a real model keeps the recipe's 1e-6 (PPO on SmolLM2 is
    // not tuned yet: its token-mean loss weighs each token ~5x more than Dr. GRPO's sum / 64, so
    // Dr. GRPO's 2e-5 does not carry over). Command-line options last.
    run.size(t, (1e-4, 1e-6));
    run.banner("PPO+GAE (Open-Reasoner-Zero)", t.sampling.n);

    let critic = ValueModel::from_model(run.model()?, run.args.seed)?;
    let policy = run.policy()?;
    let mut trainer = recipe.ppo(policy, critic, OrzReward::default())?;
    run.train(&mut trainer)
}
