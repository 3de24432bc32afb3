//! # rl-core
//!
//! The types and traits every rl-zero stage shares. A training step is a pipeline:
//!
//! 1. a [`Policy`] samples responses to [`Prompt`]s into a [`RolloutBatch`];
//! 2. a [`RewardFn`] scores each [`Sample`] into [`Rewards`];
//! 3. an [`AdvantageEstimator`] turns rewards (and critic values) into [`Advantages`];
//! 4. a [`PolicyLoss`] (and, for PPO, a [`ValueLoss`]) produces a [`LossOutput`] to minimise.
//!
//! Stage crates implement these traits (`rl-reward`, `rl-advantage`, `rl-loss`, `rl-policy`);
//! `rl-trainer` is the one place that knows their order. Every trait a user implements lives here,
//! so plugin authors depend on `rl-core` alone: the four stages above, plus [`LossTerm`] (extra
//! actor-loss terms), [`ReferenceModel`] (KL anchors), [`PromptSource`] (prompt streams),
//! [`Checkpointable`] (state that survives a restart) and [`Critic`].
//!
//! Shapes: `B` responses, `T` padded response length, `P` padded prompt length, `V` vocabulary;
//! response-aligned tensors are `(B, T)` f32 and right-padded, with `response_mask` 1.0 on real
//! tokens (EOS included). See [`RolloutBatch`] for the full table.
//!
//! ```
//! use rl_core::{RewardFn, Sample};
//!
//! /// Reward 1.0 when the response contains the ground-truth answer, else 0.0.
//! struct Contains;
//!
//! impl RewardFn for Contains {
//!     fn score(&self, s: &Sample) -> rl_core::Result<f32> {
//!         let answer = s.answer.as_deref().ok_or_else(|| rl_core::Error::msg("no answer"))?;
//!         Ok(if s.response.contains(answer) { 1.0 } else { 0.0 })
//!     }
//!     fn name(&self) -> &str { "contains" }
//! }
//!
//! assert_eq!(Contains.score(&Sample::new("it is 12", "12"))?, 1.0);
//! # Ok::<(), rl_core::Error>(())
//! ```

mod batch;
pub mod check;
pub mod checkpoint;
pub mod data;
pub mod dist;
mod error;
pub mod fs;
pub mod grad;
pub mod host;
pub mod masked;
pub mod metrics;
pub mod rng;
mod rollout;
mod stages;
#[cfg(feature = "testing")]
pub mod testing;

pub use batch::{
    Advantages, FinishReason, Groups, Metadata, Prompt, Rewards, RolloutBatch, Sample,
};
pub use batch::{RolloutParts, SampledSequence};
pub use candle_core::{DType, Device, Tensor, Var};
pub use checkpoint::Checkpointable;
pub use data::{DataPosition, FixedPrompts, PromptDataset, PromptSource};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use rollout::{Sampler, SyncReport, TokenCodec, TokenScorer, WeightSource, WeightSync};
pub use stages::{
    AdvantageEstimator, AdvantageInput, Critic, GlobalCounts, LossOutput, LossTerm, Policy,
    PolicyLoss, PolicyLossInput, PolicyStats, ReferenceModel, RewardFn, SamplingConfig, TermInput,
    TokenLogProbs, ValueLoss, ValueLossInput,
};
