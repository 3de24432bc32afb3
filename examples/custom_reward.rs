//! A reward plugin in a few lines, scored safely in parallel.
//!
//! `cargo run --example custom_reward`
//!
//! The plugin is a closure against `rl-core` alone; `SafeRunner` runs it on a batch with rayon,
//! turns a panic or a timeout into a fallback reward, and counts failures in the metrics.

use std::time::Duration;

use rl_zero::core::{RewardFn, Sample};
use rl_zero::reward::{OnFailure, OrzReward, SafeRunner, verify};

fn main() -> rl_zero::core::Result<()> {
    // Correct answers earn 1.0, minus 0.1 per 100 characters of rambling; a response that
    // mentions "panic" triggers a bug in this (deliberately fragile) plugin.
    let concise_and_correct = |s: &Sample| -> rl_zero::core::Result<f32> {
        if s.response.contains("panic") {
            panic!("a plugin bug");
        }
        let gold = s.answer.as_deref().unwrap_or_default();
        let correct = if verify(gold, &s.response) { 1.0 } else { 0.0 };
        Ok(correct - 0.1 * (s.response.len() / 100) as f32)
    };

    let batch = vec![
        Sample::new("37 + 48 = \\boxed{85}", "85"),
        Sample::new(format!("{} so \\boxed{{85}}", "Let me think. ".repeat(20)), "85"),
        Sample::new("\\boxed{84}", "85"),
        Sample::new("panic!", "85"),
    ];

    let runner = SafeRunner::new(concise_and_correct)
        .on_failure(OnFailure::Fallback(0.0))
        .timeout(Duration::from_secs(1));
    let out = runner.run(&batch)?;
    println!("plugin scores: {:?}", out.scores);
    println!("metrics: {:?}", out.metrics);

    // Built-in rewards are plain `RewardFn`s too.
    println!("ORZ scores: {:?}", OrzReward::default().score_batch(&batch)?);
    Ok(())
}
