//! Where prompts come from: a shuffled, resumable dataset cursor, and the fixed list used by
//! [`crate::Trainer::step`].

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rl_core::Prompt;
use serde::{Deserialize, Serialize};

use crate::{Result, TrainerError};

/// A stream of prompts for the trainer (DAPO dynamic sampling may ask for several batches per
/// step).
pub trait PromptSource {
    /// The next `n` prompts.
    fn next_prompts(&mut self, n: usize) -> Result<Vec<Prompt>>;

    /// The current position, saved in checkpoints (`None` for sources without one).
    fn position(&self) -> Option<DataPosition> {
        None
    }
}

/// A position in a [`PromptDataset`]: the epoch and the index inside that epoch's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    /// Completed passes over the dataset.
    pub epoch: u64,
    /// Prompts already served in the current epoch.
    pub index: usize,
}

/// Prompts in a seeded order that is reshuffled every epoch; wraps around forever.
///
/// ```
/// use rl_core::Prompt;
/// use rl_trainer::{PromptDataset, PromptSource};
/// let prompts: Vec<Prompt> = (0..5).map(|i| Prompt::new(format!("q{i}"), "a")).collect();
/// let mut a = PromptDataset::new(prompts.clone(), 7, true)?;
/// let first = a.next_prompts(3)?;
/// let mut b = PromptDataset::new(prompts, 7, true)?;
/// b.seek(a.position().unwrap());
/// assert_eq!(a.next_prompts(4)?, b.next_prompts(4)?); // resumes exactly
/// # let _ = first;
/// # Ok::<(), rl_trainer::TrainerError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PromptDataset {
    prompts: Vec<Prompt>,
    seed: u64,
    shuffle: bool,
    order: Vec<usize>,
    pos: DataPosition,
}

impl PromptDataset {
    /// A dataset over `prompts`, shuffled per epoch with `seed` when `shuffle`.
    pub fn new(prompts: Vec<Prompt>, seed: u64, shuffle: bool) -> Result<Self> {
        if prompts.is_empty() {
            return Err(TrainerError::config("dataset", "no prompts"));
        }
        let mut d =
            Self { order: Vec::new(), prompts, seed, shuffle, pos: DataPosition::default() };
        d.seek(DataPosition::default());
        Ok(d)
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Always `false` (construction rejects empty datasets).
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Moves to `pos` (as saved by a checkpoint).
    pub fn seek(&mut self, pos: DataPosition) {
        self.order = (0..self.prompts.len()).collect();
        if self.shuffle {
            self.order
                .shuffle(&mut StdRng::seed_from_u64(crate::trainer::mix(self.seed, &[pos.epoch])));
        }
        self.pos = DataPosition { epoch: pos.epoch, index: pos.index.min(self.prompts.len()) };
    }
}

impl PromptSource for PromptDataset {
    fn next_prompts(&mut self, n: usize) -> Result<Vec<Prompt>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pos.index == self.prompts.len() {
                self.seek(DataPosition { epoch: self.pos.epoch + 1, index: 0 });
            }
            out.push(self.prompts[self.order[self.pos.index]].clone());
            self.pos.index += 1;
        }
        Ok(out)
    }

    fn position(&self) -> Option<DataPosition> {
        Some(self.pos)
    }
}

/// The same prompts on every request (what [`crate::Trainer::step`] uses: dynamic sampling then
/// re-samples the same prompts with fresh seeds).
#[derive(Clone, Copy, Debug)]
pub struct FixedPrompts<'a>(pub &'a [Prompt]);

impl PromptSource for FixedPrompts<'_> {
    fn next_prompts(&mut self, n: usize) -> Result<Vec<Prompt>> {
        if self.0.is_empty() {
            return Err(TrainerError::Core(rl_core::Error::Empty { what: "prompts".into() }));
        }
        Ok(self.0.iter().cycle().take(n).cloned().collect())
    }
}
