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

use std::sync::Once;

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
    /// Accept an unevaluated calculation of numbers (`10 + 10`, `2 \times 10`, `2^3`) for a
    /// numeric gold answer, as Math-Verify does. Off by default: on a task that states the
    /// calculation (*What is 10 + 10?*), echoing it is not solving it, and a policy finds that
    /// (a SmolLM2 Dr. GRPO run learned to answer `10 + 10` for every held-out sum within 15
    /// steps). Number forms still match: integers, decimals, fractions `a/b`, mixed numbers,
    /// percentages, a sign; so do exact forms with roots, π or functions (`\sqrt{17}` for
    /// `4.1231`) and answers with symbols. The Math-Verify agreement suite runs with it on.
    pub accept_unevaluated: bool,
}

impl Default for VerifyConfig {
    /// `rel_tol = 1e-4` (Qwen2.5-Math's `math_equal`), no rounding rule, unevaluated
    /// calculations refused for a numeric gold answer.
    fn default() -> Self {
        Self { rel_tol: 1e-4, float_rounding: None, accept_unevaluated: false }
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
        compile_patterns();
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
        compile_patterns();
        match plain_numbers_equal(gold, pred) {
            Some(verdict) => verdict,
            None => self.equivalent_full(gold, pred),
        }
    }

    /// [`MathVerifier::equivalent`] without the plain-number fast path.
    fn equivalent_full(&self, gold: &str, pred: &str) -> bool {
        // Each side is normalised once, for the squashed comparison and for parsing.
        let prepare = |s: &str| {
            // Very long answers are compared verbatim (minus whitespace), keeping the cost bounded.
            let norm = (s.len() <= answer::MAX_ANSWER_LEN).then(|| normalize::normalize(s));
            let text = norm.as_ref().map_or(s, |n| n.text.as_str());
            let squashed = text.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            (norm, squashed)
        };
        let ((gold_norm, ng), (pred_norm, np)) = (prepare(gold), prepare(pred));
        if !ng.is_empty() && ng == np {
            return true;
        }
        // Words compare case-insensitively (`Monday` = `monday`, `\text{Yes}` = `yes`).
        let word = |s: &str| s.len() >= 2 && s.chars().all(char::is_alphabetic);
        if word(&ng) && word(&np) && ng.to_lowercase() == np.to_lowercase() {
            return true;
        }
        let parse = |raw: &str, norm: &Option<normalize::Normalized>| match norm {
            Some(n) => answer::parse_normalized(n),
            None => parse_answer(raw),
        };
        answer::equal(&parse(gold, &gold_norm), &parse(pred, &pred_norm), &self.config)
    }
}

/// Compiles all the verifier's patterns on the first call. Rules are skipped when their trigger
/// substring is absent, so without this, each pattern would be compiled (hundreds of
/// microseconds for some) by whichever later call first needs it.
fn compile_patterns() {
    static COMPILED: Once = Once::new();
    COMPILED.call_once(|| {
        normalize::compile_patterns();
        answer::compile_patterns();
        extract::compile_patterns();
    });
}

/// Longest string [`plain_number`] accepts (far below the parser's 400-digit literal cap).
const MAX_PLAIN_LEN: usize = 100;

/// A plain decimal number, reduced to a canonical spelling of its value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlainNumber<'a> {
    /// A leading `-`.
    negative: bool,
    /// The integer digits without leading zeros.
    int: &'a str,
    /// The fractional digits without trailing zeros.
    frac: &'a str,
    /// Written with a decimal point (`1.0`, `.5`): an approximation for the comparison rules.
    decimal: bool,
}

impl PlainNumber<'_> {
    /// Whether both spell the same exact value (`-0` = `0.00`, `007` = `7`, `1.50` = `1.5`).
    fn same_value(&self, other: &PlainNumber<'_>) -> bool {
        let zero = |p: &PlainNumber<'_>| p.int.is_empty() && p.frac.is_empty();
        (zero(self) && zero(other))
            || (self.negative == other.negative && self.int == other.int && self.frac == other.frac)
    }
}

/// A plain decimal number: an optional sign, then digits with an optional fractional part, or a
/// bare fractional part (`42`, `-0`, `+7`, `007`, `1.50`, `.5`), with optional surrounding
/// whitespace. Anything else (`1,000`, `1e3`, `5.`, `1/2`, `−5`) is `None` and goes through the
/// full rules.
pub(crate) fn plain_number(s: &str) -> Option<PlainNumber<'_>> {
    let t = s.trim();
    if t.len() > MAX_PLAIN_LEN {
        return None;
    }
    let (negative, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let valid = all_digits(int)
        && match frac {
            Some(f) => !f.is_empty() && all_digits(f),
            None => !int.is_empty(),
        };
    valid.then(|| PlainNumber {
        negative,
        int: int.trim_start_matches('0'),
        frac: frac.unwrap_or("").trim_end_matches('0'),
        decimal: frac.is_some(),
    })
}

/// The verdict of the full rules on two plain numbers, when it is cheap to know: equal values are
/// equivalent, and unequal ones are not when both or neither are written with a decimal point
/// (exact rationals compare exactly). An integer against an unequal decimal is compared with the
/// tolerance of [`VerifyConfig`] by the full rules (`None`), as is anything that is not a plain
/// number.
fn plain_numbers_equal(gold: &str, pred: &str) -> Option<bool> {
    let (g, p) = (plain_number(gold)?, plain_number(pred)?);
    if g.same_value(&p) {
        Some(true)
    } else if g.decimal == p.decimal {
        Some(false)
    } else {
        None
    }
}

/// [`MathVerifier::check`] with default settings: `true` when the response's answer equals `gold`.
pub fn verify(gold: &str, response: &str) -> bool {
    MathVerifier::default().check(gold, response).correct
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Numbers and near-numbers, each compared with every other by both paths.
    const NUMBERS: &[&str] = &[
        "-0",
        "0",
        "+0",
        "0.0",
        "-0.0",
        "00",
        "0.00",
        "007",
        "7",
        "+7",
        "-7",
        "7.0",
        "-07",
        "1.50",
        "1.5",
        "1.500",
        "01.5",
        ".5",
        "0.5",
        "-.5",
        "+.5",
        ".50",
        "-0.5",
        "1,000",
        "1000",
        "1000.0",
        "1e3",
        "1E3",
        "1.0e3",
        "5.",
        "5",
        "1 000",
        " 5 ",
        "\t12\n",
        "12",
        "12.0001",
        "12.00001",
        "11.9999",
        "-12",
        "3.14159",
        "3.14",
        "2",
        "2.0",
        "-2",
        "1/2",
        "−5",
        "-5",
        "",
        "-",
        "+",
        ".",
        "+-5",
        "--5",
        "1.2.3",
        "1..2",
        "1_000",
        "0x10",
        "10%",
        "$5",
        "99999999999999999999999999999999999999",
        "100000000000000000000000000000000000000",
        "100000000000000000000000000000000000000.0",
        "0.10000000000000000000000000000000000000001",
        "123456789012345678901234567890123456789012345678901234567890",
        "123456789012345678901234567890123456789012345678901234567890.000",
    ];

    fn configs() -> [VerifyConfig; 3] {
        [
            VerifyConfig::default(),
            VerifyConfig { float_rounding: Some(2), ..VerifyConfig::default() },
            VerifyConfig { rel_tol: 0.0, float_rounding: None, accept_unevaluated: false },
        ]
    }

    #[test]
    fn plain_number_fast_path_agrees_with_full_rules() {
        let mut fast_verdicts = 0;
        for cfg in configs() {
            let v = MathVerifier::new(cfg);
            for g in NUMBERS {
                for p in NUMBERS {
                    let full = v.equivalent_full(g, p);
                    if let Some(fast) = plain_numbers_equal(g, p) {
                        assert_eq!(fast, full, "fast path vs full rules on {g:?} / {p:?}");
                        fast_verdicts += 1;
                    }
                    assert_eq!(v.equivalent(g, p), full, "{g:?} / {p:?}");
                }
            }
        }
        assert!(fast_verdicts > 1000, "the fast path decided only {fast_verdicts} pairs");
        for s in ["-0", "007", "1.50", "1.5", ".5", "+7", " 5 ", "-.5"] {
            assert!(plain_number(s).is_some(), "{s:?} is a plain number");
        }
        // A plain number always parses as a number (`extract::whole_answer` relies on it).
        for s in NUMBERS.iter().filter(|s| plain_number(s).is_some()) {
            assert!(matches!(parse_answer(s), Answer::Scalar(..)), "{s:?} parses as a number");
        }
        for s in ["1,000", "1e3", "5.", "1 000", "1/2", "−5", "", "-", ".", "+-5", "10%", "1_000"]
        {
            assert!(plain_number(s).is_none(), "{s:?} takes the full rules");
        }
        assert_eq!(plain_numbers_equal("-0", "0"), Some(true));
        assert_eq!(plain_numbers_equal("007", "7"), Some(true));
        assert_eq!(plain_numbers_equal("1.50", "1.5"), Some(true));
        assert_eq!(plain_numbers_equal(".5", "0.50"), Some(true));
        assert_eq!(plain_numbers_equal("12", "13"), Some(false));
        assert_eq!(plain_numbers_equal("1.5", "1.6"), Some(false));
        // An integer against a different decimal is the tolerance rule's call.
        assert_eq!(plain_numbers_equal("12", "12.0001"), None);
        assert!(MathVerifier::default().equivalent("12", "12.0001"));
        assert_eq!(plain_numbers_equal("1,000", "1000"), None);
        assert!(MathVerifier::default().equivalent("1,000", "1000"));
        assert!(MathVerifier::default().equivalent("1e3", "1000"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Few distinct digits, so that many pairs spell the same value differently.
        #[test]
        fn plain_number_fast_path_agrees_on_random_numbers(
            g in "[ ]?[+-]?0{0,2}[0-2]{0,2}(\\.[0-2]{0,2}0{0,2})?",
            p in "[+-]?0{0,2}[0-2]{0,2}(\\.[0-2]{0,2}0{0,2})?[ ]?",
        ) {
            for cfg in configs() {
                let v = MathVerifier::new(cfg);
                let full = v.equivalent_full(&g, &p);
                if let Some(fast) = plain_numbers_equal(&g, &p) {
                    prop_assert_eq!(fast, full, "{:?} / {:?}", g, p);
                }
                prop_assert_eq!(v.equivalent(&g, &p), full);
            }
        }
    }
}
