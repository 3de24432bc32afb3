//! Where prompts come from: re-exports of [`rl_core::data`] (the trait and the dataset cursor
//! moved there so plugin crates need only `rl-core`).

pub use rl_core::data::{DataPosition, FixedPrompts, PromptDataset, PromptSource};
