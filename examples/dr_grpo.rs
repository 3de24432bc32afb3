//! Dr. GRPO ("Understanding R1-Zero-Like Training"): advantage = reward − group mean (no std
//! division), each response's token sum divided by a constant (the generation budget), no critic,
//! no KL; reward 1 for a correct, self-terminated answer (the Open-Reasoner-Zero rule).
//!
//! With no arguments it trains the embedded tiny arithmetic model on two-digit addition, offline on
//! the CPU, and prints the held-out greedy accuracy before, during and after training:
//!
//! ```text
//! cargo run --release --example dr_grpo
//! cargo run --release --example dr_grpo -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --steps 20
//! ```
//!
//! Metrics go to `runs/dr_grpo/metrics.jsonl`, the trained policy to `runs/dr_grpo/checkpoints/`.

mod common;

use anyhow::Result;
use clap::Parser;
use rl_zero::reward::OrzReward;
use rl_zero::trainer::{AlgorithmConfig, PromptDataset, Recipe};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = common::Args::parse();
    common::pin_threads_for_tiny_model(&args);
    let loaded = common::load(&args)?;
    let (train, test) = common::addition_prompts(&loaded, args.seed, args.eval_prompts)?;

    let tiny = loaded.tiny;
    let mut recipe = Recipe::dr_grpo();
    let t = &mut recipe.trainer;
    t.sampling.n = args.samples.unwrap_or(8);
    t.sampling.max_new_tokens = args.max_new_tokens.unwrap_or(if tiny { 16 } else { 128 });
    t.actor.lr = args.lr.unwrap_or(if tiny { 1e-4 } else { 1e-6 });
    t.micro_batch_size = if tiny { 64 } else { 4 };
    t.seed = args.seed;
    let out = args.out.join("dr_grpo");
    std::fs::create_dir_all(&out)?;
    t.metrics_path = Some(out.join("metrics.jsonl"));
    // The Dr. GRPO loss normaliser is the generation budget.
    recipe.algorithm = AlgorithmConfig::dr_grpo(t.sampling.max_new_tokens);
    let steps = args.steps.unwrap_or(if tiny { 30 } else { 20 });
    let groups = args.prompts.unwrap_or(if tiny { 32 } else { 8 });

    let policy = common::policy(loaded.model, loaded.tokenizer);
    println!(
        "Dr. GRPO on {}: {steps} steps × {groups} prompts × {} samples",
        if tiny { "the embedded tiny arithmetic model" } else { "the given model" },
        recipe.trainer.sampling.n
    );
    let mut trainer = recipe.grpo(policy, OrzReward::default())?;
    let mut data = PromptDataset::new(train, args.seed, true)?;
    common::train_and_report(&mut trainer, &mut data, &test, &args, groups, steps, &out)
}
