//! # rl-reward
//!
//! Rule-based rewards for R1-Zero-style RL, all implementing [`rl_core::RewardFn`]:
//!
//! * [`math`]: a pure-Rust math answer verifier (extraction, normalisation, exact comparison);
//! * [`rewards`]: the Open-Reasoner-Zero outcome reward, DAPO ±1, the R1 format reward,
//!   countdown, DAPO overlong and length penalties, combinators, and the serde enum
//!   [`BuiltinReward`] of all built-ins;
//! * [`runner`]: a parallel, panic- and timeout-safe batch runner for any reward (plugins);
//! * [`tasks`]: the `rl-data` crate re-exported (seeded arithmetic and countdown prompt generators,
//!   JSONL / Parquet dataset loaders).
//!
//! ```
//! use rl_core::{FinishReason, RewardFn, Sample};
//! use rl_reward::OrzReward;
//!
//! let mut s = Sample::new("... so the answer is \\boxed{\\frac{1}{2}}", "0.5");
//! assert_eq!(OrzReward::default().score(&s)?, 1.0);
//! s.finish = FinishReason::Length; // truncated responses get 0
//! assert_eq!(OrzReward::default().score(&s)?, 0.0);
//! # Ok::<(), rl_core::Error>(())
//! ```

pub mod math;
pub mod rewards;
pub mod runner;
/// Prompt generators and dataset loaders: the `rl-data` crate, re-exported under its former path.
pub use rl_data as tasks;

pub use math::{MathVerifier, Verdict, VerifyConfig, verify};
pub use rewards::{
    BuiltinReward, Clip, CountdownReward, DapoReward, LengthPenalty, OrzReward, OverlongPenalty,
    R1FormatReward, SequenceReward, WeightedSum,
};
pub use runner::{OnFailure, SafeRunner};
