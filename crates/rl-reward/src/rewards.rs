//! Built-in rewards and combinators, all implementing [`RewardFn`].
//!
//! | reward | score |
//! |---|---|
//! | [`OrzReward`] | 1 when the answer is correct **and** the response stopped by itself, else 0 |
//! | [`DapoReward`] | +1 correct, −1 otherwise |
//! | [`R1FormatReward`] | `reward` when the response is `<think>…</think><answer>…</answer>`, else 0 |
//! | [`CountdownReward`] | 1 when the equation uses each number once and hits the target, `format_score` when it parses but is wrong, else 0 |
//! | [`OverlongPenalty`] | DAPO: `min(−(L − (max − buffer)) / buffer · factor, 0)` |
//! | [`LengthPenalty`] | `−coef · min(L, max_len) / max_len` |
//! | [`WeightedSum`], [`Clip`], [`SequenceReward`] | combinators |
//!
//! [`BuiltinReward`] is the closed serde enum of all of them (`#[serde(tag = "type")]`):
//!
//! ```
//! use rl_core::{RewardFn, Sample};
//! use rl_reward::BuiltinReward;
//!
//! let r: BuiltinReward = serde_json::from_str(r#"{
//!     "type": "weighted_sum",
//!     "terms": [
//!         {"weight": 1.0, "reward": {"type": "orz"}},
//!         {"weight": 1.0, "reward": {"type": "overlong", "max_len": 100, "buffer": 20, "factor": 1.0}}
//!     ]
//! }"#)?;
//! r.validate()?;
//! let mut s = Sample::new("\\boxed{4}", "4");
//! s.response_tokens = 90; // 10 tokens into the 20-token buffer: −0.5
//! assert_eq!(r.score(&s)?, 0.5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::LazyLock;

use num_rational::BigRational;
use regex::Regex;
use rl_core::{Error, Result, RewardFn, Sample};
use serde::{Deserialize, Serialize};

use crate::math::expr::{Value, eval, parse_expr};
use crate::math::{MathVerifier, VerifyConfig, extract_answer};

fn answer_of<'a>(s: &'a Sample, name: &str) -> Result<&'a str> {
    s.answer.as_deref().ok_or_else(|| Error::Reward {
        reward: name.to_string(),
        // Scored alone, a sample is at index 0; `score_each` puts in its batch index.
        index: 0,
        reason: "sample has no ground-truth answer".into(),
    })
}

/// Scores `samples` one by one; an [`Error::Reward`] names the sample's index in the batch
/// (`RewardFn::score` sees one sample, so it reports index 0).
fn score_each<R: RewardFn + ?Sized>(r: &R, samples: &[Sample]) -> Result<Vec<f32>> {
    samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            r.score(s).map_err(|e| match e {
                Error::Reward { reward, reason, .. } => Error::Reward { reward, index: i, reason },
                e => e,
            })
        })
        .collect()
}

fn finite(x: f32, what: &str) -> Result<f32> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Error::NonFinite { what: what.to_string(), index: 0, value: x as f64 })
    }
}

/// Open-Reasoner-Zero's outcome reward: 1.0 only if the answer is correct **and** the response
/// finished by itself ([`rl_core::FinishReason::stopped`]); truncated responses get 0.0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrzReward {
    /// Verifier settings.
    pub verify: VerifyConfig,
    /// Require the response to have stopped (ORZ: `stop_reason == "stop"`). Default `true`.
    pub require_stop: bool,
}

impl Default for OrzReward {
    fn default() -> Self {
        Self { verify: VerifyConfig::default(), require_stop: true }
    }
}

impl RewardFn for OrzReward {
    fn score(&self, s: &Sample) -> Result<f32> {
        let gold = answer_of(s, "orz")?;
        if self.require_stop && !s.finish.stopped() {
            return Ok(0.0);
        }
        let ok = MathVerifier::new(self.verify.clone()).check(gold, &s.response).correct;
        Ok(if ok { 1.0 } else { 0.0 })
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        "orz"
    }
}

/// DAPO's rule reward: +1 for a correct answer, −1 otherwise (truncation is handled separately
/// by [`OverlongPenalty`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DapoReward {
    /// Verifier settings.
    pub verify: VerifyConfig,
}

impl RewardFn for DapoReward {
    fn score(&self, s: &Sample) -> Result<f32> {
        let gold = answer_of(s, "dapo")?;
        let ok = MathVerifier::new(self.verify.clone()).check(gold, &s.response).correct;
        Ok(if ok { 1.0 } else { -1.0 })
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        "dapo"
    }
}

/// DeepSeek-R1's format reward: `reward` when the response is exactly one
/// `<think>…</think>` block followed by one `<answer>…</answer>` block (whitespace around is
/// allowed), else 0.0. With `think_in_prompt`, the opening `<think>` is expected in the prompt
/// and the response must start inside the thought.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct R1FormatReward {
    /// Score of a well-formatted response. Default 1.0.
    pub reward: f32,
    /// The template ends with `<think>`. Default `false`.
    pub think_in_prompt: bool,
}

impl Default for R1FormatReward {
    fn default() -> Self {
        Self { reward: 1.0, think_in_prompt: false }
    }
}

impl RewardFn for R1FormatReward {
    fn score(&self, s: &Sample) -> Result<f32> {
        static FULL: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"(?s)^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$")
                .expect("valid regex")
        });
        static OPEN: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"(?s)^.*?</think>\s*<answer>.*?</answer>\s*$").expect("valid regex")
        });
        let r = if self.think_in_prompt { &*OPEN } else { &*FULL };
        let count = |tag: &str| s.response.matches(tag).count();
        let opens = if self.think_in_prompt { 0 } else { 1 };
        let ok = r.is_match(&s.response)
            && count("<think>") == opens
            && count("</think>") == 1
            && count("<answer>") == 1
            && count("</answer>") == 1;
        Ok(if ok { self.reward } else { 0.0 })
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        "r1_format"
    }
}

/// The countdown game (TinyZero): the response's equation (last `<answer>` block, else the last
/// line) must use each of `metadata["numbers"]` exactly once with `+ − × ÷` and parentheses
/// and evaluate exactly (rational arithmetic) to `metadata["target"]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountdownReward {
    /// Score when an equation is found but wrong. Default 0.1 (TinyZero).
    pub format_score: f32,
    /// Score of a correct equation. Default 1.0.
    pub score: f32,
}

impl Default for CountdownReward {
    fn default() -> Self {
        Self { format_score: 0.1, score: 1.0 }
    }
}

impl CountdownReward {
    /// `Some(true/false)` when an equation is found, `None` when there is none.
    pub fn check(equation: &str, numbers: &[i64], target: i64) -> Option<bool> {
        let lhs = equation.split('=').next()?.trim();
        if lhs.is_empty()
            || lhs.len() > 512
            || !lhs.chars().all(|c| c.is_ascii_digit() || " +-*/()×÷\\cdottimes".contains(c))
        {
            return None;
        }
        let plain = lhs.replace('×', "*").replace('÷', "/");
        let node = parse_expr(&plain)?;
        let mut used: Vec<i64> = Vec::new();
        let mut cur = String::new();
        for c in plain.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_digit() {
                cur.push(c);
            } else if !cur.is_empty() {
                used.push(cur.parse().ok()?);
                cur.clear();
            }
        }
        let (mut a, mut b) = (used, numbers.to_vec());
        a.sort_unstable();
        b.sort_unstable();
        if a != b {
            return Some(false);
        }
        Some(
            matches!(eval(&node, &|_| f64::NAN), Value::Exact(v) if v == BigRational::from_integer(target.into())),
        )
    }
}

impl RewardFn for CountdownReward {
    fn score(&self, s: &Sample) -> Result<f32> {
        let bad =
            |why: &str| Error::Reward { reward: "countdown".into(), index: 0, reason: why.into() };
        let numbers: Vec<i64> = s
            .metadata
            .get("numbers")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("metadata.numbers (array of integers) is missing"))?
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| bad("metadata.numbers must hold integers")))
            .collect::<Result<_>>()?;
        let target = s
            .metadata
            .get("target")
            .and_then(|v| v.as_i64())
            .or_else(|| s.answer.as_deref().and_then(|a| a.trim().parse().ok()))
            .ok_or_else(|| bad("metadata.target (integer) is missing"))?;
        let equation = match s.response.rfind("<answer>") {
            Some(i) => {
                let rest = &s.response[i + "<answer>".len()..];
                rest.split("</answer>").next().unwrap_or(rest).to_string()
            }
            None => {
                s.response.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string()
            }
        };
        Ok(match Self::check(&equation, &numbers, target) {
            Some(true) => self.score,
            Some(false) => self.format_score,
            None => 0.0,
        })
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        "countdown"
    }
}

/// DAPO's soft overlong punishment, with `L = sample.response_tokens`:
/// `min(−(L − (max_len − buffer)) / buffer · factor, 0)`: 0 up to `max_len − buffer`, falling
/// linearly to `−factor` at `max_len` (and below beyond it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlongPenalty {
    /// Maximum response length (tokens).
    pub max_len: usize,
    /// Length of the penalty ramp (tokens), `0 < buffer <= max_len`.
    pub buffer: usize,
    /// Penalty at `max_len` (DAPO: 1.0).
    #[serde(default = "one")]
    pub factor: f32,
}

fn one() -> f32 {
    1.0
}

impl OverlongPenalty {
    /// Checks `0 < buffer <= max_len` and a finite factor.
    pub fn validate(&self) -> Result<()> {
        if self.buffer == 0 || self.buffer > self.max_len {
            return Err(Error::config("overlong.buffer", "must satisfy 0 < buffer <= max_len"));
        }
        if !self.factor.is_finite() {
            return Err(Error::config("overlong.factor", "must be finite"));
        }
        Ok(())
    }
}

impl RewardFn for OverlongPenalty {
    fn score(&self, s: &Sample) -> Result<f32> {
        self.validate()?;
        let expected = (self.max_len - self.buffer) as f64;
        let exceed = s.response_tokens as f64 - expected;
        let p = -exceed / self.buffer as f64 * self.factor as f64;
        finite(p.min(0.0) as f32, "overlong penalty")
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        "overlong"
    }
}

/// A linear length penalty `−coef · min(L, max_len) / max_len` with `L = sample.response_tokens`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthPenalty {
    /// Penalty at (and beyond) `max_len`.
    pub coef: f32,
    /// Length at which the full penalty applies (> 0).
    pub max_len: usize,
}

impl RewardFn for LengthPenalty {
    fn score(&self, s: &Sample) -> Result<f32> {
        if self.max_len == 0 {
            return Err(Error::config("length_penalty.max_len", "must be > 0"));
        }
        let frac = s.response_tokens.min(self.max_len) as f32 / self.max_len as f32;
        finite(-self.coef * frac, "length penalty")
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        "length_penalty"
    }
}

/// One term of a [`WeightedSum`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Term<R> {
    /// Weight (finite).
    pub weight: f32,
    /// The reward.
    pub reward: R,
}

/// `Σ_k w_k · r_k(sample)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedSum<R = Box<dyn RewardFn>> {
    /// The terms.
    pub terms: Vec<Term<R>>,
}

impl<R: RewardFn> RewardFn for WeightedSum<R> {
    fn score(&self, s: &Sample) -> Result<f32> {
        let mut total = 0.0f32;
        for t in &self.terms {
            total += t.weight * t.reward.score(s)?;
        }
        finite(total, "weighted sum")
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        "weighted_sum"
    }
}

/// Clamps the inner reward to `[min, max]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clip<R = Box<dyn RewardFn>> {
    /// The clipped reward.
    pub reward: R,
    /// Lower bound.
    pub min: f32,
    /// Upper bound (>= `min`).
    pub max: f32,
}

impl<R: RewardFn> RewardFn for Clip<R> {
    fn score(&self, s: &Sample) -> Result<f32> {
        if self.min.partial_cmp(&self.max).is_none_or(|o| o.is_gt()) {
            return Err(Error::config("clip", "needs min <= max (and no NaN)"));
        }
        Ok(finite(self.reward.score(s)?, "clipped reward")?.clamp(self.min, self.max))
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        "clip"
    }
}

/// Tries rewards in order and returns the first score different from `skip` (default 0.0), or
/// `skip` when all of them give it. E.g. `[format_penalty, correctness]`: a badly formatted
/// response gets the format penalty, a well-formatted one its correctness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceReward<R = Box<dyn RewardFn>> {
    /// The rewards, in order.
    pub rewards: Vec<R>,
    /// The score meaning "no opinion, try the next one".
    #[serde(default)]
    pub skip: f32,
}

impl<R: RewardFn> RewardFn for SequenceReward<R> {
    fn score(&self, s: &Sample) -> Result<f32> {
        for r in &self.rewards {
            let x = r.score(s)?;
            if x != self.skip {
                return Ok(x);
            }
        }
        Ok(self.skip)
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        "sequence"
    }
}

/// The closed set of built-in rewards, for configs (`{"type": "orz"}`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuiltinReward {
    /// [`OrzReward`].
    Orz(#[serde(default)] OrzReward),
    /// [`DapoReward`].
    Dapo(#[serde(default)] DapoReward),
    /// [`R1FormatReward`].
    R1Format(#[serde(default)] R1FormatReward),
    /// [`CountdownReward`].
    Countdown(#[serde(default)] CountdownReward),
    /// [`OverlongPenalty`].
    Overlong(OverlongPenalty),
    /// [`LengthPenalty`].
    LengthPenalty(LengthPenalty),
    /// [`WeightedSum`] of built-ins.
    WeightedSum(WeightedSum<BuiltinReward>),
    /// [`Clip`] of a built-in.
    Clip(Box<Clip<BuiltinReward>>),
    /// [`SequenceReward`] of built-ins.
    Sequence(SequenceReward<BuiltinReward>),
}

impl Default for BuiltinReward {
    /// The ORZ outcome reward.
    fn default() -> Self {
        BuiltinReward::Orz(OrzReward::default())
    }
}

impl BuiltinReward {
    /// Checks every parameter (recursively).
    pub fn validate(&self) -> Result<()> {
        match self {
            BuiltinReward::Overlong(o) => o.validate(),
            BuiltinReward::LengthPenalty(l) if l.max_len == 0 || !l.coef.is_finite() => {
                Err(Error::config("length_penalty", "needs max_len > 0 and a finite coef"))
            }
            BuiltinReward::WeightedSum(w) => {
                if w.terms.is_empty() {
                    return Err(Error::config("weighted_sum.terms", "must not be empty"));
                }
                w.terms.iter().try_for_each(|t| {
                    if t.weight.is_finite() {
                        t.reward.validate()
                    } else {
                        Err(Error::config("weighted_sum.weight", "must be finite"))
                    }
                })
            }
            BuiltinReward::Clip(c) if c.min.partial_cmp(&c.max).is_none_or(|o| o.is_gt()) => {
                Err(Error::config("clip", "needs min <= max"))
            }
            BuiltinReward::Clip(c) => c.reward.validate(),
            BuiltinReward::Sequence(q) if q.rewards.is_empty() => {
                Err(Error::config("sequence.rewards", "must not be empty"))
            }
            BuiltinReward::Sequence(q) => q.rewards.iter().try_for_each(BuiltinReward::validate),
            _ => Ok(()),
        }
    }

    fn inner(&self) -> &dyn RewardFn {
        match self {
            BuiltinReward::Orz(r) => r,
            BuiltinReward::Dapo(r) => r,
            BuiltinReward::R1Format(r) => r,
            BuiltinReward::Countdown(r) => r,
            BuiltinReward::Overlong(r) => r,
            BuiltinReward::LengthPenalty(r) => r,
            BuiltinReward::WeightedSum(r) => r,
            BuiltinReward::Clip(r) => r.as_ref(),
            BuiltinReward::Sequence(r) => r,
        }
    }
}

impl RewardFn for BuiltinReward {
    fn score(&self, s: &Sample) -> Result<f32> {
        self.inner().score(s)
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        score_each(self, samples)
    }
    fn name(&self) -> &str {
        self.inner().name()
    }
}

/// The answer a response gives, as the math verifier extracts it (for logging).
pub fn extracted_answer(response: &str) -> Option<String> {
    extract_answer(response).map(|e| e.text)
}

#[cfg(test)]
mod tests {
    use rl_core::FinishReason;

    use super::*;

    fn sample(resp: &str, ans: &str) -> Sample {
        Sample::new(resp, ans)
    }

    #[test]
    fn orz_requires_stop_and_correctness() -> Result<()> {
        let r = OrzReward::default();
        assert_eq!(r.score(&sample("\\boxed{85}", "85"))?, 1.0);
        assert_eq!(r.score(&sample("\\boxed{84}", "85"))?, 0.0);
        let mut t = sample("\\boxed{85}", "85");
        t.finish = FinishReason::Length;
        assert_eq!(r.score(&t)?, 0.0);
        t.finish = FinishReason::StopString;
        assert_eq!(r.score(&t)?, 1.0);
        let mut none = sample("x", "1");
        none.answer = None;
        assert!(matches!(r.score(&none), Err(Error::Reward { index: 0, .. })));
        // In a batch, the error names the sample's index (not its group id).
        let mut batch = vec![sample("\\boxed{85}", "85"), sample("\\boxed{1}", "1"), none];
        batch[2].group_id = 7;
        for r in
            [BuiltinReward::Orz(OrzReward::default()), BuiltinReward::Dapo(DapoReward::default())]
        {
            match r.score_batch(&batch) {
                Err(Error::Reward { index, .. }) => assert_eq!(index, 2, "{r:?}"),
                other => panic!("{r:?}: expected Error::Reward, got {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn dapo_plus_minus_one() -> Result<()> {
        assert_eq!(DapoReward::default().score(&sample("\\boxed{2}", "2"))?, 1.0);
        assert_eq!(DapoReward::default().score(&sample("no idea", "2"))?, -1.0);
        Ok(())
    }

    #[test]
    fn r1_format() -> Result<()> {
        let f = R1FormatReward::default();
        assert_eq!(f.score(&sample("<think>hmm</think>\n<answer>4</answer>", ""))?, 1.0);
        assert_eq!(f.score(&sample("<think>hmm</think> 4", ""))?, 0.0);
        assert_eq!(f.score(&sample("<answer>4</answer><think>x</think>", ""))?, 0.0);
        assert_eq!(
            f.score(&sample("<think>a</think><answer>1</answer><answer>2</answer>", ""))?,
            0.0
        );
        let open = R1FormatReward { think_in_prompt: true, ..Default::default() };
        assert_eq!(open.score(&sample("hmm</think><answer>4</answer>", ""))?, 1.0);
        Ok(())
    }

    #[test]
    fn countdown_exact() {
        assert_eq!(CountdownReward::check("(25 - 5) * 4 / 2", &[25, 5, 4, 2], 40), Some(true));
        assert_eq!(CountdownReward::check("25 - 5 * 4 / 2 = 15", &[25, 5, 4, 2], 15), Some(true));
        assert_eq!(CountdownReward::check("25 + 5 + 4", &[25, 5, 4, 2], 34), Some(false));
        assert_eq!(CountdownReward::check("25 + 25", &[25, 5], 50), Some(false));
        assert_eq!(CountdownReward::check("1 / 3 * 3", &[1, 3, 3], 1), Some(true));
        assert_eq!(CountdownReward::check("import os", &[1], 1), None);
    }

    #[test]
    fn overlong_formula() -> Result<()> {
        let o = OverlongPenalty { max_len: 100, buffer: 20, factor: 1.0 };
        let at = |l| {
            let mut s = sample("", "");
            s.response_tokens = l;
            o.score(&s)
        };
        assert_eq!(at(80)?, 0.0);
        assert_eq!(at(50)?, 0.0);
        assert_eq!(at(90)?, -0.5);
        assert_eq!(at(100)?, -1.0);
        assert!(OverlongPenalty { max_len: 10, buffer: 0, factor: 1.0 }.validate().is_err());
        Ok(())
    }

    #[test]
    fn combinators() -> Result<()> {
        let s = sample("\\boxed{3}", "3");
        let w = WeightedSum::<Box<dyn RewardFn>> {
            terms: vec![
                Term { weight: 2.0, reward: Box::new(DapoReward::default()) },
                Term { weight: 0.5, reward: Box::new(|_: &Sample| Ok(1.0)) },
            ],
        };
        assert_eq!(w.score(&s)?, 2.5);
        let c = Clip::<Box<dyn RewardFn>> { reward: Box::new(w), min: -1.0, max: 1.0 };
        assert_eq!(c.score(&s)?, 1.0);
        let q = SequenceReward::<Box<dyn RewardFn>> {
            rewards: vec![Box::new(|_: &Sample| Ok(0.0)), Box::new(|_: &Sample| Ok(-1.0))],
            skip: 0.0,
        };
        assert_eq!(q.score(&s)?, -1.0);
        Ok(())
    }

    #[test]
    fn builtin_serde_round_trip() -> Result<()> {
        let r: BuiltinReward = serde_json::from_str(
            r#"{"type":"sequence","rewards":[{"type":"r1_format","reward":-1.0},{"type":"clip","reward":{"type":"dapo"},"min":0.0,"max":1.0}]}"#,
        )?;
        r.validate()?;
        let back: BuiltinReward = serde_json::from_str(&serde_json::to_string(&r)?)?;
        assert_eq!(r, back);
        let bad: BuiltinReward =
            serde_json::from_str(r#"{"type":"overlong","max_len":4,"buffer":8}"#)?;
        assert!(bad.validate().is_err());
        assert!(serde_json::from_str::<BuiltinReward>(r#"{"type":"nope"}"#).is_err());
        Ok(())
    }
}
