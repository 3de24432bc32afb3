//! The task generators of `rl-data` (re-exported as `rl_reward::tasks`) against the rewards that
//! score them: every generated arithmetic answer verifies, and a countdown prompt's own solution
//! earns the countdown reward's full score.

use rl_core::{FinishReason, RewardFn, Sample};
use rl_reward::tasks::{arithmetic, countdown};
use rl_reward::{CountdownReward, verify};

#[test]
fn arithmetic_answers_verify() -> rl_core::Result<()> {
    for level in 1..=4 {
        for p in arithmetic(20, level, 3)? {
            let a = p.answer.clone().unwrap_or_default();
            assert!(verify(&a, &format!("\\boxed{{{a}}}")), "{p:?}");
        }
    }
    Ok(())
}

#[test]
fn countdown_prompts_score_with_the_countdown_reward() -> rl_core::Result<()> {
    let reward = CountdownReward::default();
    let mut sums = 0;
    for p in countdown(200, 4, 11)? {
        let numbers: Vec<i64> =
            p.metadata["numbers"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let sample = |equation: String| Sample {
            response: format!("<answer>{equation}</answer>"),
            metadata: p.metadata.clone(),
            finish: FinishReason::Eos,
            ..Sample::default()
        };
        let sum: i64 = numbers.iter().sum();
        let all = numbers.iter().map(i64::to_string).collect::<Vec<_>>().join(" + ");
        // The generator's metadata is what the reward reads: a sum of the numbers scores full
        // marks exactly when the target is that sum, and the format score otherwise.
        let expected = if p.metadata["target"] == sum { reward.score } else { reward.format_score };
        assert_eq!(reward.score(&sample(all))?, expected, "{p:?}");
        sums += usize::from(p.metadata["target"] == sum);
    }
    assert!(sums > 0, "no countdown prompt of the 200 has the sum as its target");
    Ok(())
}
