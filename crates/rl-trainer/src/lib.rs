//! # rl-trainer
//!
//! The training loops of rl-zero, written against the stage traits of [`rl_core`]:
//! [`Trainer::builder`] (GRPO, Dr. GRPO, DAPO, ... without a critic; PPO with a learned critic
//! through [`TrainerBuilder::critic`]), [`evaluate`] (a policy, a reward and prompts), plus what a run needs around them: [`AdamW`] with saveable state,
//! [`clip_grad_norm`], [`LrSchedule`]s, a serde [`TrainerConfig`], [`checkpoint`]s that resume
//! exactly, per-step [`Metrics`](rl_core::Metrics) written as JSONL (and evaluations, see
//! [`Trainer::evaluate`]), drawn as an SVG of the training curves by [`plot`]. The stage order and the
//! gradient-accumulation semantics are described in [`trainer`] and `docs/trainer.md`.

pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod recipe;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{Checkpointable, TrainerState};
pub use config::{
    DynamicSampling, MAX_RESPONSES_PER_ROUND, OptimizerConfig, RolloutCorrection, Shortfall,
    TrainerConfig,
};
pub use data::{DataPosition, FixedPrompts, PromptDataset, PromptSource};
pub use error::{Result, TrainerError};
pub use eval::{EvalReport, evaluate};
pub use metrics::MetricsLog;
pub use optim::{AdamW, AdamWConfig, ClipReport, clip_grad_norm};
pub use recipe::{AlgorithmConfig, Recipe};
pub use schedule::LrSchedule;
pub use trainer::{
    GrpoTrainer, LossTerm, NoCritic, PpoTrainer, StepReport, TermInput, TrainStep, Trainer,
    TrainerBuilder,
};
