//! Learning-rate schedules, as multipliers of a base learning rate.

use serde::{Deserialize, Serialize};

use crate::{Result, TrainerError};

/// How the learning rate evolves over optimizer steps (`step` counts from 0: the first update
/// uses `lr(0)`). Serialized with a `type` tag:
///
/// ```
/// use rl_trainer::LrSchedule;
/// let s: LrSchedule = toml::from_str("type = \"warmup_constant\"\nwarmup_steps = 4").unwrap();
/// assert_eq!(s.lr(1.0, 0), 0.0);
/// assert_eq!(s.lr(1.0, 2), 0.5);
/// assert_eq!(s.lr(1.0, 100), 1.0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base learning rate at every step (verl default, `lr_scheduler_type: constant`;
    /// understand-r1-zero recipe).
    #[default]
    Constant,
    /// Linear warm-up from 0 over `warmup_steps`, then constant (Open-Reasoner-Zero:
    /// `num_warmup_steps 50`; DAPO recipe: 10).
    WarmupConstant {
        /// Steps of linear warm-up (`lr·step/warmup_steps`).
        warmup_steps: usize,
    },
    /// Linear warm-up, then half a cosine from the base rate down to `min_lr_ratio × base` at
    /// `total_steps` (transformers `get_cosine_with_min_lr_schedule_with_warmup`, chosen by
    /// OpenRLHF/oat `cosine_with_min_lr`, min ratio 0.1, warm-up 3% of the steps). After
    /// `total_steps` the rate stays at the minimum (transformers would start a new cosine).
    WarmupCosine {
        /// Steps of linear warm-up.
        warmup_steps: usize,
        /// Total optimizer steps of the run (≥ `warmup_steps`).
        total_steps: usize,
        /// Final rate as a fraction of the base rate, in `[0, 1]`.
        min_lr_ratio: f64,
    },
}

impl LrSchedule {
    /// OpenRLHF/oat's `cosine_with_min_lr` for a run of `total_steps`: 3% warm-up, min ratio 0.1.
    pub fn openrlhf_cosine(total_steps: usize) -> Self {
        let warmup_steps = (total_steps as f64 * 0.03).ceil() as usize;
        LrSchedule::WarmupCosine { warmup_steps, total_steps, min_lr_ratio: 0.1 }
    }

    /// The multiplier of the base rate at optimizer step `step`.
    pub fn factor(&self, step: usize) -> f64 {
        let warm = |w: usize| if step < w { Some(step as f64 / w.max(1) as f64) } else { None };
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::WarmupConstant { warmup_steps } => warm(warmup_steps).unwrap_or(1.0),
            LrSchedule::WarmupCosine { warmup_steps, total_steps, min_lr_ratio } => {
                warm(warmup_steps).unwrap_or_else(|| {
                    let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                    let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                    min_lr_ratio + (1.0 - min_lr_ratio) * cosine
                })
            }
        }
    }

    /// The learning rate `base · factor(step)`.
    pub fn lr(&self, base: f64, step: usize) -> f64 {
        base * self.factor(step)
    }

    /// Checks the fields; `prefix` is the config path.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        if let LrSchedule::WarmupCosine { warmup_steps, total_steps, min_lr_ratio } = *self {
            if total_steps < warmup_steps || total_steps == 0 {
                return Err(TrainerError::config(
                    format!("{prefix}.total_steps"),
                    "must be > 0 and >= warmup_steps",
                ));
            }
            if !(0.0..=1.0).contains(&min_lr_ratio) {
                return Err(TrainerError::config(
                    format!("{prefix}.min_lr_ratio"),
                    "must be in [0, 1]",
                ));
            }
        }
        Ok(())
    }
}
