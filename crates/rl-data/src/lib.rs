//! Prompts for rl-zero, in one crate: seeded arithmetic and countdown prompt generators, dataset
//! loaders for JSON lines and Parquet ([`load_jsonl`], [`read_jsonl`], [`load_parquet`],
//! [`load_dataset`] by extension) with configurable field names ([`DatasetFields`]), and the
//! cursor the trainer draws from ([`PromptDataset`], [`PromptSource`], from rl-core so that plugin
//! crates need rl-core alone). `rl_reward::tasks` re-exports this crate, so paths written against
//! it keep working.
//!
//! ```
//! use rl_data::{arithmetic, countdown};
//!
//! let p = arithmetic(3, 1, 42)?;
//! assert_eq!(p.len(), 3);
//! assert!(p[0].text.ends_with("Put the final answer in \\boxed{}."));
//! assert_eq!(p, arithmetic(3, 1, 42)?); // seeded: reproducible
//! let c = countdown(2, 4, 7)?;
//! assert_eq!(c[0].metadata["numbers"].as_array().unwrap().len(), 4);
//! # Ok::<(), rl_core::Error>(())
//! ```

mod dataset;

use rl_core::{Error, Metadata, Prompt, Result};

pub use dataset::{
    DatasetError, DatasetErrorKind, DatasetFields, JsonlFields, Record, json_text, load_dataset,
    load_jsonl, load_parquet, read_jsonl,
};

/// The seeded generator of the task generators (re-exported from rl-core).
pub use rl_core::rng::SplitMix64;

/// The prompt cursor and source trait the trainer draws from (defined in rl-core).
pub use rl_core::data::{DataPosition, FixedPrompts, PromptDataset, PromptSource};

/// `n` arithmetic prompts at `difficulty` 1–4, seeded:
///
/// | level | question |
/// |---|---|
/// | 1 | `a + b` or `a − b`, two-digit operands |
/// | 2 | `a × b`, one- and two-digit operands |
/// | 3 | `a + b × c`, up to three digits |
/// | 4 | `(a − b) × c + d`, up to three digits, may be negative |
///
/// Example: "What is 37 + 48? Put the final answer in \boxed{}." with answer "85"; metadata
/// holds `task = "arithmetic"` and `difficulty`.
///
/// # Errors
/// [`Error::Config`] for a difficulty outside 1–4.
pub fn arithmetic(n: usize, difficulty: u8, seed: u64) -> Result<Vec<Prompt>> {
    if !(1..=4).contains(&difficulty) {
        return Err(Error::config("arithmetic.difficulty", "must be 1, 2, 3 or 4"));
    }
    let mut rng = SplitMix64::new(seed);
    Ok((0..n)
        .map(|_| {
            let (q, a) = match difficulty {
                1 => {
                    let (x, y) = (rng.range(10, 99), rng.range(10, 99));
                    if rng.next_u64().is_multiple_of(2) {
                        (format!("{x} + {y}"), x + y)
                    } else {
                        (format!("{x} - {y}"), x - y)
                    }
                }
                2 => {
                    let (x, y) = (rng.range(2, 9), rng.range(10, 99));
                    (format!("{x} \\times {y}"), x * y)
                }
                3 => {
                    let (x, y, z) = (rng.range(10, 999), rng.range(2, 99), rng.range(2, 99));
                    (format!("{x} + {y} \\times {z}"), x + y * z)
                }
                _ => {
                    let (x, y, z, w) = (
                        rng.range(10, 999),
                        rng.range(10, 999),
                        rng.range(2, 20),
                        rng.range(1, 999),
                    );
                    (format!("({x} - {y}) \\times {z} + {w}"), (x - y) * z + w)
                }
            };
            let mut metadata = Metadata::new();
            metadata.insert("task".into(), "arithmetic".into());
            metadata.insert("difficulty".into(), difficulty.into());
            Prompt {
                text: format!("What is {q}? Put the final answer in \\boxed{{}}."),
                answer: Some(a.to_string()),
                metadata,
            }
        })
        .collect())
}

/// `n` countdown prompts with `k` numbers (2–6) in 1–99, seeded. The target is built from a
/// random equation over all numbers that stays a positive integer, so every puzzle is solvable.
/// Metadata holds `numbers` and `target` (what `rl_reward::CountdownReward` reads); the answer is
/// the target.
///
/// # Errors
/// [`Error::Config`] for `k` outside 2–6.
pub fn countdown(n: usize, k: usize, seed: u64) -> Result<Vec<Prompt>> {
    if !(2..=6).contains(&k) {
        return Err(Error::config("countdown.k", "must be between 2 and 6"));
    }
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let nums: Vec<i64> = (0..k).map(|_| rng.range(1, 99)).collect();
        let mut target = nums[0];
        for &x in &nums[1..] {
            target = match rng.next_u64() % 4 {
                0 => target + x,
                1 if target > x => target - x,
                2 if target * x <= 1000 => target * x,
                3 if target % x == 0 => target / x,
                _ => target + x,
            };
        }
        if target <= 0 {
            continue;
        }
        let list = nums.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let mut metadata = Metadata::new();
        metadata.insert("task".into(), "countdown".into());
        metadata.insert("numbers".into(), nums.clone().into());
        metadata.insert("target".into(), target.into());
        out.push(Prompt {
            text: format!(
                "Using the numbers [{list}], create an equation that equals {target}. You can use basic arithmetic \
                 operations (+, -, *, /) and each number exactly once. Show your work in <think> </think> tags \
                 and return the final equation in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
            ),
            answer: Some(target.to_string()),
            metadata,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_seeded_and_bounded() -> Result<()> {
        for level in 1..=4 {
            let p = arithmetic(20, level, 3)?;
            assert_eq!(p, arithmetic(20, level, 3)?);
            assert!(p.iter().all(|p| p.answer.as_deref().is_some_and(|a| !a.is_empty())));
        }
        assert!(arithmetic(1, 9, 0).is_err());
        assert_ne!(arithmetic(5, 1, 1)?, arithmetic(5, 1, 2)?);
        Ok(())
    }

    #[test]
    fn countdown_is_consistent() -> Result<()> {
        for p in countdown(50, 4, 11)? {
            let t = p.metadata["target"].as_i64().unwrap_or(0);
            assert!(t > 0);
        }
        assert!(countdown(1, 1, 0).is_err());
        Ok(())
    }
}
