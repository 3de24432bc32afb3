//! String normalisation of an extracted answer, before it is parsed.
//!
//! The rules, in the order they are applied (see `docs/reward.md`):
//!
//! 1. unicode: `−`/`–` → `-`, `×` → `\times`, `÷` → `/`, `√` → `\sqrt`, `π` → `\pi`, `∞`, `≤ ≥ ≠`,
//!    `∈ ∪`, thin and non-breaking spaces → a space, `²`/`³` → `^2`/`^3`;
//! 2. sizing and style: `\left`, `\right`, `\big…`, `\displaystyle` are removed;
//! 3. thousands separators: `{,}`, `,\!` between digits are removed; `\!` is removed; `\,` `\;`
//!    `\:` `\ ` `~` `\quad` `\qquad` become spaces;
//! 4. `\dfrac`, `\tfrac`, `\cfrac` → `\frac`;
//! 5. `\text{…}`-like groups (`\text`, `\textbf`, `\textit`, `\textnormal`, `\textrm`, `\mbox`,
//!    `\mathrm`, `\mathbf`, `\mathit`, `\operatorname`): `and`/`or` become a comma; a purely
//!    alphabetic group after a number is a unit and is dropped; otherwise the content is kept;
//! 6. degrees (`^\circ`, `^{\circ}`, `\circ`, `\degree`) are removed;
//! 7. percent (`\%`, `%`, `percent`, `percentage`, `pct`) is removed and remembered;
//! 8. currency (`\$`, `$`, `€`, `£`) is removed; trailing unit words (`cm`, `miles`, `dollars`, …)
//!    after a number are removed;
//! 9. relations: `\le`/`\leq`/`\leqslant` → `<=`, `\ge…` → `>=`, `\ne`/`\neq` → `!=`, `\lt` → `<`,
//!    `\gt` → `>`;
//! 10. digit groups: `7,425,000` → `7425000` when every group after the first has exactly
//!     three digits and the run is not part of a longer comma list; `1 000` → `1000` likewise;
//! 11. trailing sentence punctuation (`.`, `,`, `;`, `:`) and surrounding whitespace are trimmed.

use std::sync::LazyLock;

use regex::Regex;

/// A normalised answer string and whether it carried a percent sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// The normalised text.
    pub text: String,
    /// `true` when a percent sign or word was removed.
    pub percent: bool,
}

static SIZING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|bigg|Bigg|big|Big|displaystyle|textstyle|limits)\b")
        .expect("valid regex")
});
/// `\\frac` (a doubled backslash from an over-escaped string) before a known command → `\frac`.
static DOUBLED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[^\\])\\\\(left|right|frac|dfrac|tfrac|sqrt|sin|cos|tan|pi|le|ge|leq|geq|lt|gt|cdot|times|text|mathrm|infty|boxed|in)\b")
        .expect("valid regex")
});
static TEXT_GROUP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\\(?:text|textbf|textit|textnormal|textrm|textsf|texttt|mbox|mathrm|mathbf|mathit|mathsf|mathtt|operatorname|rm|bf|hbox)\s*\{([^{}]*)\}(\s*\^\s*\{?\s*[23]\s*\}?)?")
        .expect("valid regex")
});
static DEGREES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|\bdegrees?\b").expect("valid regex")
});
static AND: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(?:and|or)\b").expect("valid regex"));
static INFINITY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:infinity|inf)\b|\\infin\b").expect("valid regex"));
static EMPTY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\\varnothing|\\emptyset|\\\{\s*\\\}|\bempty set\b").expect("valid regex")
});
/// `6.02e23`, `1.5E-3`: scientific notation (a digit, `e`/`E`, an optionally signed integer).
static SCIENTIFIC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d)[eE]([+-]?\d+)\b").expect("valid regex"));
static PERCENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\\%|%|\bpercentage\b|\bpercent\b|\bpct\b").expect("valid regex"));
static UNITS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)([\d\}\)])\s*(?:square\s+|sq\.?\s+|cubic\s+)?(?:units?|cm|mm|km|m|meters?|metres?|centimeters?|kilometers?|inches|inch|in|feet|foot|ft|yards?|miles?|mph|hours?|hrs?|minutes?|mins?|seconds?|secs?|s|days?|weeks?|months?|years?|dollars?|cents?|euros?|pounds?|lbs?|kg|grams?|g|liters?|litres?|l|ml|degrees?|students?|people|ways?|points?)(?:\s*\^\s*\{?[23]\}?)?\s*$")
        .expect("valid regex")
});
static RELATIONS: LazyLock<[(Regex, &'static str); 5]> = LazyLock::new(|| {
    let r = |p: &str| Regex::new(p).expect("valid regex");
    [
        (r(r"\\(?:leqslant|leq|le)\b"), "<="),
        (r(r"\\(?:geqslant|geq|ge)\b"), ">="),
        (r(r"\\(?:neq|ne)\b"), "!="),
        (r(r"\\lt\b"), "<"),
        (r(r"\\gt\b"), ">"),
    ]
});

/// Applies every rule of the module documentation to `s`.
pub fn normalize(s: &str) -> Normalized {
    let mut t = map_unicode(s);
    t = DOUBLED.replace_all(&t, "$1\\$2").into_owned();
    // Protect LaTeX row breaks `\\` from the single-backslash rules below.
    t = t.replace("\\\\", "\u{2}");
    t = t.replace("\\left.", "").replace("\\right.", "");
    t = SIZING.replace_all(&t, "").into_owned();
    t = t.replace("{,}", "").replace("{, }", "");
    t = join_bang_commas(&t);
    t = t.replace("\\!", "");
    for sp in ["\\qquad", "\\quad", "\\,", "\\;", "\\:", "\\ ", "~"] {
        t = t.replace(sp, " ");
    }
    for f in ["\\dfrac", "\\tfrac", "\\cfrac"] {
        t = t.replace(f, "\\frac");
    }
    t = strip_text_groups(&t);
    t = DEGREES.replace_all(&t, "").into_owned();
    t = INFINITY.replace_all(&t, "\\infty").into_owned();
    t = SCIENTIFIC.replace_all(&t, "$1\\times 10^{$2}").into_owned();
    t = EMPTY.replace_all(&t, "\\emptyset").into_owned();
    t = AND.replace_all(&t, ",").into_owned();
    let percent = PERCENT.is_match(&t);
    t = PERCENT.replace_all(&t, "").into_owned();
    for c in ["\\$", "$", "€", "£", "\\euro"] {
        t = t.replace(c, "");
    }
    t = trim_punct(&t).to_string();
    for _ in 0..2 {
        let before = t.len();
        t = UNITS.replace(t.trim_end(), "$1").into_owned();
        if t.len() == before {
            break;
        }
    }
    for (re, rep) in RELATIONS.iter() {
        t = re.replace_all(&t, *rep).into_owned();
    }
    t = t.replace("=<", "<=").replace("=>", ">=").replace("\\approx", " \\approx ");
    t = join_digit_groups(&t, ',');
    t = join_digit_groups(&t, ' ');
    t = t.replace('\u{2}', "\\\\");
    Normalized { text: trim_punct(&t).to_string(), percent }
}

fn map_unicode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '−' | '–' | '—' | '‐' => out.push('-'),
            '×' | '⋅' | '·' => out.push_str("\\cdot "),
            '÷' => out.push('/'),
            '√' => out.push_str("\\sqrt"),
            'π' => out.push_str("\\pi "),
            '∞' => out.push_str("\\infty "),
            '≤' => out.push_str("<="),
            '≥' => out.push_str(">="),
            '≠' => out.push_str("!="),
            '≈' => out.push_str("\\approx "),
            '∈' => out.push_str("\\in "),
            '∪' => out.push_str("\\cup "),
            '²' => out.push_str("^2"),
            '³' => out.push_str("^3"),
            '°' => {}
            '\u{2009}' | '\u{202f}' | '\u{00a0}' | '\u{2007}' | '\t' | '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `12,\!345` → `12345` (MATH's thousands separator).
fn join_bang_commas(s: &str) -> String {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(\d),\\!\s*(\d)").expect("valid regex"));
    let mut t = s.to_string();
    // Overlapping matches (`1,\!000,\!000`) need a second pass.
    for _ in 0..2 {
        t = RE.replace_all(&t, "$1$2").into_owned();
    }
    t
}

fn strip_text_groups(s: &str) -> String {
    let mut t = s.to_string();
    // Nested groups (`\text{\textbf{x}}`) unwrap from the inside out; the loop is bounded.
    for _ in 0..4 {
        if !TEXT_GROUP.is_match(&t) {
            break;
        }
        let whole_is_group = TEXT_GROUP.find(t.trim()).is_some_and(|m| m.len() == t.trim().len());
        t = TEXT_GROUP
            .replace_all(&t.clone(), |c: &regex::Captures<'_>| {
                let inner = c[1].trim();
                let start = c.get(0).map_or(0, |m| m.start());
                let has_number_before = t[..start].chars().any(|ch| ch.is_ascii_digit());
                // Units may hold `/`, `.`, `-` and `^` (`m/s`, `km^2`).
                let alphabetic = inner.chars().any(char::is_alphabetic)
                    && inner.chars().all(|ch| ch.is_alphabetic() || " /.-^23".contains(ch));
                if matches!(inner, "and" | "or" | ",") {
                    ",".to_string()
                } else if alphabetic && has_number_before && !whole_is_group {
                    " ".to_string()
                } else {
                    // A unit's power (`\text{ cm}^2`) goes with the unit; otherwise it is kept.
                    format!(" {inner}{} ", c.get(2).map_or("", |m| m.as_str()))
                }
            })
            .into_owned();
    }
    t
}

/// Joins digit groups separated by `sep` when they form a thousands-separated number: the first
/// group has 1–3 digits, every further group exactly 3, and the run is delimited by characters
/// that cannot continue a list of numbers.
fn join_digit_groups(s: &str, sep: char) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let starts_run = chars[i].is_ascii_digit()
            && (i == 0
                || !(chars[i - 1].is_ascii_digit() || chars[i - 1] == '.' || chars[i - 1] == sep));
        if !starts_run {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && chars[j].is_ascii_digit() {
            j += 1;
        }
        let first_len = j - i;
        let mut groups = vec![(i, j)];
        let mut k = j;
        while k < chars.len() && chars[k] == sep {
            let g0 = k + 1;
            let mut g1 = g0;
            while g1 < chars.len() && chars[g1].is_ascii_digit() {
                g1 += 1;
            }
            if g1 - g0 != 3 {
                break;
            }
            groups.push((g0, g1));
            k = g1;
        }
        let after = chars.get(k).copied();
        let next_after = chars.get(k + 1).copied();
        // A comma run followed by another comma + digit is a list (`1,234,5`), not a number.
        let list_continues = sep == ','
            && after == Some(sep)
            && next_after.is_some_and(|c| c.is_ascii_digit() || c == ' ');
        // `(12,102)` and `[1,100]` are pairs, not numbers.
        let bracketed = sep == ','
            && (i > 0 && matches!(chars[i - 1], '(' | '[') || matches!(after, Some(')' | ']')));
        let leading_zero = chars[i] == '0';
        if groups.len() > 1 && first_len <= 3 && !leading_zero && !list_continues && !bracketed {
            for (a, b) in &groups {
                out.extend(&chars[*a..*b]);
            }
        } else {
            out.extend(&chars[i..k]);
        }
        i = k;
    }
    out
}

/// Trims whitespace and one level of trailing sentence punctuation (an ellipsis is kept).
pub fn trim_punct(s: &str) -> &str {
    let mut t = s.trim();
    for _ in 0..3 {
        if t.ends_with("...") || t.ends_with("\\dots") || t.ends_with("\\ldots") {
            break;
        }
        match t.chars().last() {
            Some('.' | ',' | ';' | ':') => t = t[..t.len() - 1].trim_end(),
            _ => break,
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s).text
    }

    #[test]
    fn rules() {
        assert_eq!(n("7,425,000"), "7425000");
        assert_eq!(n("1 000"), "1000");
        assert_eq!(n("1,2,3"), "1,2,3");
        assert_eq!(n("32, 349"), "32, 349");
        assert_eq!(n("1,234,5"), "1,234,5");
        assert_eq!(n("14{,}916"), "14916");
        assert_eq!(n("11,\\! 111,\\! 111,\\! 100"), "11111111100");
        assert_eq!(n("\\dfrac{1}{2}"), "\\frac{1}{2}");
        assert_eq!(n("90^\\circ"), "90");
        assert_eq!(n("125\\text{ miles}"), "125");
        assert_eq!(n("\\text{Evelyn}").trim(), "Evelyn");
        assert_eq!(n("5 cm^2."), "5");
        assert!(normalize("28\\%").percent);
        assert_eq!(n("\\$1,000.99"), "1000.99");
        assert_eq!(n("−5"), "-5");
        assert_eq!(n("x \\geq 5"), "x >= 5");
    }
}
