//! String normalisation of an extracted answer, before it is parsed.
//!
//! The rules, in the order they are applied (see `docs/reward.md`):
//!
//! 1. unicode: `−`/`–` → `-`, `×` → `\times`, `÷` → `/`, `√` → `\sqrt`, `π` → `\pi`, `∞`, `≤ ≥ ≠`,
//!    `∈ ∪`, thin and non-breaking spaces → a space, `²`/`³` → `^2`/`^3`;
//! 2. sizing and style: `\left`, `\right`, `\big…`, `\displaystyle` are removed;
//! 3. thousands separators: `{,}`, `,\!` between digits are removed; `\!` is removed; `\,` `\;`
//!    `\:` `\ ` `~` `\quad` `\qquad` become spaces; repeating decimals `0.\overline{3}`,
//!    `0.1\overline{6}`, `0.\bar{3}` become their exact fraction (`(3/9)`, `(15/90)`);
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

use std::borrow::Cow;
use std::sync::LazyLock;

use num_bigint::BigInt;
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
/// A repeating decimal `0.1\overline{6}` / `0.\overline3` / `0.\bar{3}`: (what precedes, the
/// integer digits, the fixed fraction digits, the repeating digits braced or single).
static REPEATING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[^0-9])([0-9]{0,60})\.([0-9]{0,60})\\(?:overline|bar)\s*(?:\{\s*([0-9]{1,60})\s*\}|([0-9]))")
        .expect("valid regex")
});
/// Relation commands: (a substring every match contains, pattern, replacement).
static RELATIONS: LazyLock<[(&'static str, Regex, &'static str); 5]> = LazyLock::new(|| {
    let r = |p: &str| Regex::new(p).expect("valid regex");
    [
        ("\\le", r(r"\\(?:leqslant|leq|le)\b"), "<="),
        ("\\ge", r(r"\\(?:geqslant|geq|ge)\b"), ">="),
        ("\\ne", r(r"\\(?:neq|ne)\b"), "!="),
        ("\\lt", r(r"\\lt\b"), "<"),
        ("\\gt", r(r"\\gt\b"), ">"),
    ]
});

/// Compiles every pattern of this module now (they are compiled lazily on first use otherwise).
pub(super) fn compile_patterns() {
    for re in [
        &SIZING,
        &DOUBLED,
        &TEXT_GROUP,
        &DEGREES,
        &AND,
        &INFINITY,
        &EMPTY,
        &SCIENTIFIC,
        &PERCENT,
        &UNITS,
        &BANG_COMMA,
        &REPEATING,
    ] {
        LazyLock::force(re);
    }
    LazyLock::force(&RELATIONS);
}

/// Applies every rule of the module documentation to `s`.
///
/// Every pass is skipped when the substring it needs is absent, and passes that match nothing
/// do not copy the string: a plain answer like `42` costs a few byte scans.
pub fn normalize(s: &str) -> Normalized {
    let mut t = map_unicode(s);
    if t.contains("\\\\") {
        regex_replace(&mut t, &DOUBLED, "$1\\$2");
        // Protect LaTeX row breaks `\\` from the single-backslash rules below.
        replace_str(&mut t, "\\\\", "\u{2}");
    }
    if t.contains('\\') {
        replace_str(&mut t, "\\left.", "");
        replace_str(&mut t, "\\right.", "");
        regex_replace(&mut t, &SIZING, "");
    }
    if t.contains("{,") {
        replace_str(&mut t, "{,}", "");
        replace_str(&mut t, "{, }", "");
    }
    if t.contains(",\\!") {
        join_bang_commas(&mut t);
    }
    if t.contains('\\') {
        for sp in ["\\!", "\\qquad", "\\quad", "\\,", "\\;", "\\:", "\\ "] {
            replace_str(&mut t, sp, if sp == "\\!" { "" } else { " " });
        }
    }
    replace_str(&mut t, "~", " ");
    if t.contains("\\overline") || t.contains("\\bar") {
        let rep = |c: &regex::Captures<'_>| {
            let repeating = c.get(4).or_else(|| c.get(5)).map_or("", |m| m.as_str());
            format!("{}{}", &c[1], repeating_fraction(&c[2], &c[3], repeating))
        };
        if let Cow::Owned(u) = REPEATING.replace_all(&t, rep) {
            t = u;
        }
    }
    if t.contains("frac") {
        for f in ["\\dfrac", "\\tfrac", "\\cfrac"] {
            replace_str(&mut t, f, "\\frac");
        }
    }
    if t.contains('\\') {
        strip_text_groups(&mut t);
    }
    if t.contains("circ") || t.contains("degree") {
        regex_replace(&mut t, &DEGREES, "");
    }
    if t.contains("inf") {
        regex_replace(&mut t, &INFINITY, "\\infty");
    }
    if t.bytes().any(|b| b == b'e' || b == b'E') {
        regex_replace(&mut t, &SCIENTIFIC, "$1\\times 10^{$2}");
    }
    if t.contains('\\') || t.contains("empty") {
        regex_replace(&mut t, &EMPTY, "\\emptyset");
    }
    if t.contains("and") || t.contains("or") {
        regex_replace(&mut t, &AND, ",");
    }
    let percent = (t.contains('%') || t.contains("perc") || t.contains("pct"))
        && regex_replace(&mut t, &PERCENT, "");
    for c in ["\\$", "$", "€", "£", "\\euro"] {
        replace_str(&mut t, c, "");
    }
    trim_punct_in_place(&mut t);
    // The unit words are ASCII, but the pattern is case-insensitive, which also matches a few
    // non-ASCII letters (`ſ` for `s`, the Kelvin sign for `k`).
    if t.bytes().any(|b| b.is_ascii_alphabetic() || !b.is_ascii()) {
        for _ in 0..2 {
            let before = t.len();
            t.truncate(t.trim_end().len());
            if let Cow::Owned(u) = UNITS.replace(&t, "$1") {
                t = u;
            }
            if t.len() == before {
                break;
            }
        }
    } else {
        t.truncate(t.trim_end().len());
    }
    if t.contains('\\') {
        for (trigger, re, rep) in RELATIONS.iter() {
            if t.contains(trigger) {
                regex_replace(&mut t, re, rep);
            }
        }
    }
    replace_str(&mut t, "=<", "<=");
    replace_str(&mut t, "=>", ">=");
    replace_str(&mut t, "\\approx", " \\approx ");
    for sep in [',', ' '] {
        // Without a separator there is nothing to join.
        if t.contains(sep) {
            t = join_digit_groups(&t, sep);
        }
    }
    replace_str(&mut t, "\u{2}", "\\\\");
    trim_punct_in_place(&mut t);
    Normalized { text: t, percent }
}

/// The exact value of `int.fixed(repeating)(repeating)…` as `(n/d)`:
/// `n = int·fixed·repeating − int·fixed` (digit strings), `d = 10^|fixed| · (10^|repeating| − 1)`.
fn repeating_fraction(int: &str, fixed: &str, repeating: &str) -> String {
    let digits = |s: &str| s.parse::<BigInt>().unwrap_or_default();
    let n = digits(&format!("{int}{fixed}{repeating}")) - digits(&format!("{int}{fixed}"));
    let d = format!("{}{}", "9".repeat(repeating.len()), "0".repeat(fixed.len()));
    format!("({n}/{d})")
}

/// `t = t.replace(pat, rep)`, without copying `t` when `pat` does not occur.
fn replace_str(t: &mut String, pat: &str, rep: &str) {
    if t.contains(pat) {
        *t = t.replace(pat, rep);
    }
}

/// `t = re.replace_all(t, rep)`, without copying `t` when nothing matches; `true` on a match.
fn regex_replace(t: &mut String, re: &Regex, rep: &str) -> bool {
    match re.replace_all(t, rep) {
        Cow::Owned(u) => {
            *t = u;
            true
        }
        Cow::Borrowed(_) => false,
    }
}

/// [`trim_punct`] applied to an owned string, in place.
fn trim_punct_in_place(t: &mut String) {
    let trimmed = trim_punct(t);
    if trimmed.len() != t.len() {
        let start = trimmed.as_ptr() as usize - t.as_ptr() as usize;
        let end = start + trimmed.len();
        t.truncate(end);
        t.drain(..start);
    }
}

fn map_unicode(s: &str) -> String {
    // Only non-ASCII characters and the ASCII tab / carriage return / newline are mapped.
    if !s.bytes().any(|b| !b.is_ascii() || matches!(b, b'\t' | b'\r' | b'\n')) {
        return s.to_string();
    }
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

/// `12,\!345`.
static BANG_COMMA: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d),\\!\s*(\d)").expect("valid regex"));

/// `12,\!345` → `12345` (MATH's thousands separator).
fn join_bang_commas(t: &mut String) {
    // Overlapping matches (`1,\!000,\!000`) need a second pass.
    for _ in 0..2 {
        regex_replace(t, &BANG_COMMA, "$1$2");
    }
}

fn strip_text_groups(t: &mut String) {
    // Nested groups (`\text{\textbf{x}}`) unwrap from the inside out; the loop is bounded.
    for _ in 0..4 {
        if !TEXT_GROUP.is_match(t) {
            break;
        }
        let whole_is_group = TEXT_GROUP.find(t.trim()).is_some_and(|m| m.len() == t.trim().len());
        *t = TEXT_GROUP
            .replace_all(t, |c: &regex::Captures<'_>| {
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
