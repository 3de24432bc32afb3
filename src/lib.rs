//! # rl-zero
//!
//! Composable reinforcement-learning building blocks for training language models to reason,
//! in the style of DeepSeek-R1-Zero: RL straight on a base model with rule-based rewards.
//!
//! This facade re-exports the stage crates in pipeline order:
//!
//! | module | crate | stage |
//! |---|---|---|
//! | [`core`] | `rl-core` | batch types, stage traits, masked ops, errors |
//! | [`policy`] | `rl-policy` | trainable candle language models: loading, sampling, log-probs |
//! | [`reward`] | `rl-reward` | math verifier, format/length rewards, safe plugins |
//! | [`advantage`] | `rl-advantage` | GAE, GRPO, Dr. GRPO, RLOO, REINFORCE++, ... |
//! | [`loss`] | `rl-loss` | PPO clip family, value, entropy, KL, aggregation modes |
//! | [`trainer`] | `rl-trainer` | PPO and GRPO-family training loops |

pub use rl_advantage as advantage;
pub use rl_core as core;
pub use rl_data as data;
pub use rl_dist as dist;
pub use rl_loss as loss;
pub use rl_policy as policy;
pub use rl_reward as reward;
pub use rl_rollout as rollout;
pub use rl_trainer as trainer;

pub mod run;

// The README's code blocks are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
