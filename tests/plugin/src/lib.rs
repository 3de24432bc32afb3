//! # rl-zero-plugin-example
//!
//! A plugin crate that depends on `rl-core` alone and extends a run at three seams:
//!
//! - [`SquaredLogRatio`]: a [`LossTerm`] added to the actor loss, `c · ½ · Σ M (log π − log π_old)²
//!   / tokens` (the k2 estimator of the KL to the rollout policy, a soft trust region);
//! - [`AdditionCurriculum`]: a [`PromptSource`] of `a+b=` prompts whose operands grow with the
//!   number of prompts served, resumable from its [`DataPosition`];
//! - [`PositionCritic`]: a [`Critic`] with one learned value per response position, saved and
//!   restored through [`Checkpointable`].
//!
//! The crate's tests plug all three into `rl_trainer::Trainer` and resume a checkpoint.
//!
//! ```
//! use rl_core::{LossTerm, PromptSource};
//! use rl_zero_plugin_example::{AdditionCurriculum, SquaredLogRatio};
//!
//! let mut source = AdditionCurriculum::new(7, 4);
//! let prompts = source.next_prompts(3)?;
//! assert_eq!(prompts.len(), 3);
//! assert_eq!(source.position().map(|p| p.index), Some(3));
//! assert_eq!(SquaredLogRatio { coef: 0.1 }.name(), "sq_log_ratio");
//! # Ok::<(), rl_core::Error>(())
//! ```

use std::path::Path;

use rl_core::checkpoint::{load_vars, save_vars};
use rl_core::rng::SplitMix64;
use rl_core::{
    Checkpointable, Critic, DType, DataPosition, Device, Error, LossOutput, LossTerm, Metrics,
    Prompt, PromptSource, Result, RolloutBatch, Tensor, TermInput, Var,
};

/// `coef · ½ · Σ_{b,t} M (log π − log π_old)² / tokens`, with `tokens` the mini-batch's valid
/// token count ([`rl_core::GlobalCounts::tokens`], so micro-batch terms add up to the
/// mini-batch's), else the micro-batch's own. Inputs `(B, T)` f32; the loss is a scalar f32.
///
/// Metrics (under `actor/sq_log_ratio/`): `value`, the term before `coef`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SquaredLogRatio {
    /// Coefficient `c` (≥ 0).
    pub coef: f64,
}

impl LossTerm for SquaredLogRatio {
    fn compute(&self, i: &TermInput<'_>) -> Result<LossOutput> {
        if !(self.coef >= 0.0 && self.coef.is_finite()) {
            return Err(Error::config("sq_log_ratio.coef", "must be a finite number >= 0"));
        }
        let tokens = match i.counts.tokens {
            Some(t) => t,
            None => f64::from(i.response_mask.sum_all()?.to_scalar::<f32>()?),
        }
        .max(1.0);
        let d = i.log_probs.sub(i.old_log_probs)?;
        let value = d.sqr()?.mul(i.response_mask)?.sum_all()?.affine(0.5 / tokens, 0.0)?;
        let metrics = Metrics::new().with("value", f64::from(value.to_scalar::<f32>()?));
        Ok(LossOutput { loss: value.affine(self.coef, 0.0)?, metrics })
    }

    fn name(&self) -> &str {
        "sq_log_ratio"
    }
}

/// `a+b=` prompts with the sum as the answer. Operands have `1 + served / per_level` digits (at
/// most 9), so the task hardens as training goes on; the operands of prompt `k` depend only on
/// `(seed, k)`, so [`AdditionCurriculum::seek`] resumes exactly.
#[derive(Clone, Debug)]
pub struct AdditionCurriculum {
    seed: u64,
    per_level: usize,
    served: usize,
}

impl AdditionCurriculum {
    /// A curriculum that adds a digit every `per_level` prompts (`0` is treated as 1).
    pub fn new(seed: u64, per_level: usize) -> Self {
        Self { seed, per_level: per_level.max(1), served: 0 }
    }

    /// Continues from a position saved in a checkpoint (`rl_trainer::TrainerState::data`).
    pub fn seek(&mut self, pos: DataPosition) {
        self.served = pos.index;
    }

    fn prompt(&self, k: usize) -> Prompt {
        let digits = (1 + k / self.per_level).min(9) as u32;
        let hi = 10u64.pow(digits);
        let mut rng = SplitMix64::new(rl_core::rng::mix_seed(self.seed, &[k as u64]));
        let (a, b) = (rng.next_u64() % hi, rng.next_u64() % hi);
        Prompt::new(format!("{a}+{b}="), (a + b).to_string())
    }
}

impl PromptSource for AdditionCurriculum {
    fn next_prompts(&mut self, n: usize) -> Result<Vec<Prompt>> {
        let out = (self.served..self.served + n).map(|k| self.prompt(k)).collect();
        self.served += n;
        Ok(out)
    }

    fn position(&self) -> Option<DataPosition> {
        Some(DataPosition { epoch: 0, index: self.served })
    }
}

/// A critic with one learned value per response position: `V[b, t] = w[t] · M[b, t]`, `w` a
/// `(max_len,)` f32 [`Var`] initialised to 0. Responses longer than `max_len` are an error.
#[derive(Debug)]
pub struct PositionCritic {
    w: Var,
}

impl PositionCritic {
    /// A critic for responses of at most `max_len` tokens on `device`.
    pub fn new(max_len: usize, device: &Device) -> Result<Self> {
        if max_len == 0 {
            return Err(Error::config("position_critic.max_len", "must be at least 1"));
        }
        Ok(Self { w: Var::zeros(max_len, DType::F32, device)? })
    }

    /// The learned values `(max_len,)` f32.
    pub fn weights(&self) -> &Var {
        &self.w
    }
}

impl Critic for PositionCritic {
    fn values(&self, batch: &RolloutBatch) -> Result<Tensor> {
        let t = batch.response_mask.dim(1)?;
        let max_len = self.w.dim(0)?;
        if t > max_len {
            return Err(Error::config(
                "position_critic.max_len",
                format!("responses are {t} tokens long, the critic holds {max_len} positions"),
            ));
        }
        let w = self.w.as_tensor().narrow(0, 0, t)?.unsqueeze(0)?;
        Ok(batch.response_mask.broadcast_mul(&w)?)
    }

    fn trainable_vars(&self) -> Vec<Var> {
        vec![self.w.clone()]
    }
}

/// The weights in `position_critic.safetensors` ([`rl_core::checkpoint::save_vars`]).
impl Checkpointable for PositionCritic {
    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        save_vars(&dir.join("position_critic.safetensors"), std::slice::from_ref(&self.w))
    }

    fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        load_vars(&dir.join("position_critic.safetensors"), std::slice::from_ref(&self.w))
    }
}
