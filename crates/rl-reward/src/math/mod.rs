//! The math answer verifier: extraction, normalisation and comparison, in pure Rust.
//!
//! ```
//! use rl_reward::math::{verify, MathVerifier};
//!
//! assert!(verify("\\frac{1}{2}", "so the answer is \\boxed{0.5}"));
//! assert!(verify("(1, \\frac{9}{2})", "\\boxed{(1, 4.5)}"));
//! assert!(!verify("7", "\\boxed{8}"));
//! let v = MathVerifier::default().check("85", "37 + 48 = \\boxed{85}");
//! assert!(v.correct);
//! assert_eq!(v.extracted.as_deref(), Some("85"));
//! ```
//!
//! * [`extract`]: where the answer is found in a response (the documented order);
//! * [`normalize`]: the string rules applied before parsing;
//! * [`answer`]: structured answers and their comparison semantics;
//! * [`expr`]: the bounded expression parser and exact/numeric evaluator.

pub mod answer;
pub mod expr;
pub mod extract;
pub mod normalize;

use serde::{Deserialize, Serialize};

pub use answer::{Answer, parse_answer};
pub use extract::{Extracted, Source, extract_answer, extract_gold};

/// Comparison settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Relative tolerance used when at least one side is inexact (a decimal compared with a
    /// fraction, or an irrational value). Two exact rationals compare exactly.
    pub rel_tol: f64,
    /// When set, two inexact numbers also match when they agree after rounding to this many
    /// decimal places (Math-Verify's `float_rounding`).
    pub float_rounding: Option<u32>,
}

impl Default for VerifyConfig {
    /// `rel_tol = 1e-4` (Qwen2.5-Math's `math_equal`), no rounding rule.
    fn default() -> Self {
        Self { rel_tol: 1e-4, float_rounding: None }
    }
}

/// The verdict on one gold/response pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `true` when the extracted answer equals the gold answer.
    pub correct: bool,
    /// The answer found in the response (raw text), if any.
    pub extracted: Option<String>,
    /// Which extraction rule found it.
    pub source: Option<Source>,
    /// Why the pair could not be judged (no answer found, unparseable gold, ...).
    pub reason: Option<String>,
}

/// The verifier: stateless apart from its [`VerifyConfig`]; cheap to clone and share.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MathVerifier {
    /// Comparison settings.
    #[serde(default)]
    pub config: VerifyConfig,
}

impl MathVerifier {
    /// A verifier with the given settings.
    pub fn new(config: VerifyConfig) -> Self {
        Self { config }
    }

    /// Extracts the response's answer and compares it with `gold`. Never panics; cost is bounded
    /// by the input caps of [`extract`] and [`expr`].
    pub fn check(&self, gold: &str, response: &str) -> Verdict {
        let Some(g) = extract_gold(gold) else {
            return Verdict {
                correct: false,
                extracted: None,
                source: None,
                reason: Some("empty gold answer".into()),
            };
        };
        let Some(p) = extract_answer(response) else {
            return Verdict {
                correct: false,
                extracted: None,
                source: None,
                reason: Some("no answer found in response".into()),
            };
        };
        let correct = self.equivalent(&g.text, &p.text);
        Verdict { correct, extracted: Some(p.text), source: Some(p.source), reason: None }
    }

    /// Compares two already-extracted answers.
    pub fn equivalent(&self, gold: &str, pred: &str) -> bool {
        let squash = |s: &str| {
            // Very long answers are compared verbatim (minus whitespace), keeping the cost bounded.
            let text = if s.len() > answer::MAX_ANSWER_LEN {
                s.to_string()
            } else {
                normalize::normalize(s).text
            };
            text.chars().filter(|c| !c.is_whitespace()).collect::<String>()
        };
        let (ng, np) = (squash(gold), squash(pred));
        if !ng.is_empty() && ng == np {
            return true;
        }
        // Words compare case-insensitively (`Monday` = `monday`, `\text{Yes}` = `yes`).
        let word = |s: &str| s.len() >= 2 && s.chars().all(char::is_alphabetic);
        if word(&ng) && word(&np) && ng.to_lowercase() == np.to_lowercase() {
            return true;
        }
        answer::equal(&parse_answer(gold), &parse_answer(pred), &self.config)
    }
}

/// [`MathVerifier::check`] with default settings: `true` when the response's answer equals `gold`.
pub fn verify(gold: &str, response: &str) -> bool {
    MathVerifier::default().check(gold, response).correct
}
