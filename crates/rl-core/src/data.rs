//! Where prompts come from: the [`PromptSource`] trait the trainer pulls from, a shuffled,
//! resumable dataset cursor ([`PromptDataset`]) and a fixed list ([`FixedPrompts`]).
//!
//! Task generators and file loaders (JSONL, Parquet) live in `rl-data`; they produce the
//! `Vec<Prompt>` a [`PromptDataset`] serves.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::rng::mix_seed;
use crate::{Error, Prompt, Result};

/// A stream of prompts for the trainer (DAPO dynamic sampling may ask for several batches per
/// step). Implement it for your own data (a streaming reader, a curriculum): the trainer only
/// calls these two methods.
///
/// ```
/// use rl_core::{Prompt, data::PromptSource};
///
/// /// `a + b` questions with growing operands: a curriculum in five lines.
/// struct Curriculum(u64);
/// impl PromptSource for Curriculum {
///     fn next_prompts(&mut self, n: usize) -> rl_core::Result<Vec<Prompt>> {
///         self.0 += 1;
///         Ok((0..n as u64).map(|i| Prompt::new(format!("{i} + {}", self.0), (i + self.0).to_string())).collect())
///     }
/// }
/// assert_eq!(Curriculum(0).next_prompts(2)?[1].answer.as_deref(), Some("2"));
/// # Ok::<(), rl_core::Error>(())
/// ```
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
/// use rl_core::data::{PromptDataset, PromptSource};
/// let prompts: Vec<Prompt> = (0..5).map(|i| Prompt::new(format!("q{i}"), "a")).collect();
/// let mut a = PromptDataset::new(prompts.clone(), 7, true)?;
/// let first = a.next_prompts(3)?;
/// let mut b = PromptDataset::new(prompts, 7, true)?;
/// b.seek(a.position().unwrap());
/// assert_eq!(a.next_prompts(4)?, b.next_prompts(4)?); // resumes exactly
/// # let _ = first;
/// # Ok::<(), rl_core::Error>(())
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
    ///
    /// # Errors
    /// [`Error::Empty`] for no prompts.
    pub fn new(prompts: Vec<Prompt>, seed: u64, shuffle: bool) -> Result<Self> {
        if prompts.is_empty() {
            return Err(Error::Empty { what: "dataset".into() });
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
            self.order.shuffle(&mut StdRng::seed_from_u64(mix_seed(self.seed, &[pos.epoch])));
        }
        self.pos = DataPosition { epoch: pos.epoch, index: pos.index.min(self.prompts.len()) };
    }
}

impl PromptSource for PromptDataset {
    fn next_prompts(&mut self, n: usize) -> Result<Vec<Prompt>> {
        let mut out = Vec::with_capacity(n.min(self.prompts.len().saturating_mul(4)));
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

/// The same prompts on every request (what the trainer's `step(&prompts)` uses: dynamic sampling
/// then re-samples the same prompts with fresh seeds).
#[derive(Clone, Copy, Debug)]
pub struct FixedPrompts<'a>(pub &'a [Prompt]);

impl PromptSource for FixedPrompts<'_> {
    fn next_prompts(&mut self, n: usize) -> Result<Vec<Prompt>> {
        if self.0.is_empty() {
            return Err(Error::Empty { what: "prompts".into() });
        }
        Ok(self.0.iter().cycle().take(n).cloned().collect())
    }
}
