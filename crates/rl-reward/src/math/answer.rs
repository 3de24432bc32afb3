//! Structured answers (scalars, lists, sets, tuples, intervals, unions, matrices, relations,
//! text) and their comparison.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

use super::VerifyConfig;
use super::expr::{self, Node, Value, has_decimal, parse_expr, symbols};
use super::normalize::{Normalized, normalize, trim_punct};

/// Longest answer that is parsed; longer ones are compared as text.
pub const MAX_ANSWER_LEN: usize = 4_000;
/// Largest number of items of a list, set or matrix.
const MAX_ITEMS: usize = 256;
/// Deepest nesting of structured answers (a tuple of intervals of ...).
const MAX_NEST: usize = 8;
/// Largest total expression size (nodes) of a computed matrix sum or product.
const MAX_MATRIX_NODES: usize = 100_000;

/// The kind of bracket around (or absence of bracket around) a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// `a, b, c` with no bracket: compared as an unordered collection against sets and other
    /// bare lists, and as an ordered one against tuples.
    Bare,
    /// `(a, b)`: an ordered tuple (also an open interval when it has two items).
    Tuple,
    /// `\{a, b\}`: an unordered set.
    Set,
}

/// A relation operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rel {
    /// `=`.
    Eq,
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `\in`.
    In,
}

/// A parsed answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A scalar expression, with a flag telling whether it carried a percent sign.
    Scalar(Node, bool),
    /// A list, tuple or set.
    List(ListKind, Vec<Answer>),
    /// An interval; `true` ends are closed.
    Interval(Box<Answer>, Box<Answer>, bool, bool),
    /// A union of intervals or sets.
    Union(Vec<Answer>),
    /// A matrix, row by row.
    Matrix(Vec<Vec<Answer>>),
    /// A relation chain `a op b op c ...`.
    Relation(Vec<Answer>, Vec<Rel>),
    /// Anything else, as normalised text without spaces.
    Text(String),
}

/// Compiles every pattern of this module now (they are compiled lazily on first use otherwise).
pub(super) fn compile_patterns() {
    for re in [&MIXED_PLAIN, &MIXED_LATEX, &DECIMAL_COMMA, &MATRIX, &MATRIX_ENV] {
        LazyLock::force(re);
    }
}

/// Parses a raw answer string (normalising it first).
pub fn parse_answer(raw: &str) -> Answer {
    if raw.len() > MAX_ANSWER_LEN {
        return Answer::Text(raw.chars().filter(|c| !c.is_whitespace()).collect());
    }
    parse_normalized(&normalize(raw))
}

/// [`parse_answer`] of a raw answer of at most [`MAX_ANSWER_LEN`] bytes that is already
/// normalised (`norm` = [`normalize`] of it), so callers that need both do not normalise twice.
pub(crate) fn parse_normalized(norm: &Normalized) -> Answer {
    let text = mixed_numbers(&norm.text);
    let text = trim_punct(&text);
    if text.contains("\\pm") || text.contains("\\mp") {
        let plus =
            parse_structured(&text.replace("\\pm", "+").replace("\\mp", "-"), norm.percent, 0);
        let minus =
            parse_structured(&text.replace("\\pm", "-").replace("\\mp", "+"), norm.percent, 0);
        return merge_pm(plus, minus);
    }
    parse_structured(text, norm.percent, 0)
}

/// `a ± b` is the collection {a + b, a − b}; `\{1 ± √5, −2\}` the union of both sets.
fn merge_pm(plus: Answer, minus: Answer) -> Answer {
    match (plus, minus) {
        (Answer::List(k, mut a), Answer::List(k2, b)) if k == k2 && k != ListKind::Tuple => {
            a.extend(b);
            Answer::List(k, a)
        }
        (Answer::Relation(mut pa, ops), Answer::Relation(pb, ops2))
            if ops == ops2 && pa.len() == 2 =>
        {
            let last = pa.pop().expect("two parts");
            let other = pb.into_iter().last().expect("two parts");
            pa.push(Answer::List(ListKind::Bare, vec![last, other]));
            Answer::Relation(pa, ops)
        }
        (a, b) => Answer::List(ListKind::Bare, vec![a, b]),
    }
}

/// A mixed number `4 4/9`.
static MIXED_PLAIN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|[^\d./^_\w])(\d+) +(\d+)/(\d+)").expect("valid regex"));

/// A mixed number `3\frac{1}{2}`.
static MIXED_LATEX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[^\d./^_\w}])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}").expect("valid regex")
});

/// `4 4/9` → `(4+4/9)`, `-4 4/9` → `-(4+4/9)`, `3\frac{1}{2}` → `(3+\frac{1}{2})`.
fn mixed_numbers(s: &str) -> Cow<'_, str> {
    // Only proper fractions form a mixed number; `11 7/6` or `4 4/0` is not a number at all.
    let rep = |c: &regex::Captures<'_>| {
        let (num, den) = (c[3].parse::<u128>().ok(), c[4].parse::<u128>().ok());
        match (num, den) {
            (Some(n), Some(d)) if n < d => format!("{}({}+{}/{})", &c[1], &c[2], &c[3], &c[4]),
            _ => format!("{}?", &c[1]),
        }
    };
    // Both patterns need a fraction; most answers have none and are returned as they are.
    let t = if s.contains('/') { MIXED_PLAIN.replace_all(s, rep) } else { Cow::Borrowed(s) };
    if !t.contains("\\frac") {
        return t;
    }
    match MIXED_LATEX.replace_all(&t, rep) {
        Cow::Borrowed(_) => t,
        Cow::Owned(u) => Cow::Owned(u),
    }
}

/// Splits `s` at top-level occurrences of `sep` (outside any bracket).
fn split_top<'a>(s: &'a str, is_sep: &dyn Fn(&str) -> Option<usize>) -> Vec<(&'a str, &'a str)> {
    let mut parts = Vec::new();
    let mut depth: i32 = 0;
    let mut start = 0;
    let mut sep_text = "";
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        let rest = &s[i..];
        if rest.starts_with("\\{") || rest.starts_with("\\begin") {
            depth += 1;
            i += 2;
            continue;
        }
        if rest.starts_with("\\}") || rest.starts_with("\\end") {
            depth -= 1;
            i += 2;
            continue;
        }
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {
                if depth == 0
                    && let Some(len) = is_sep(rest)
                {
                    parts.push((sep_text, &s[start..i]));
                    sep_text = &s[i..i + len];
                    i += len;
                    start = i;
                    continue;
                }
            }
        }
        i += 1;
        while i < b.len() && !s.is_char_boundary(i) {
            i += 1;
        }
    }
    parts.push((sep_text, &s[start..]));
    parts
}

fn relation_at(rest: &str) -> Option<usize> {
    for op in ["<=", ">=", "!=", "\\approx", "\\in ", "\\in{", "\\equiv", "=", "<", ">"] {
        if rest.starts_with(op) {
            return Some(if op.ends_with('{') { op.len() - 1 } else { op.len() });
        }
    }
    None
}

fn rel_of(op: &str) -> Option<Rel> {
    Some(match op.trim() {
        "=" | "\\approx" | "\\equiv" => Rel::Eq,
        "!=" => Rel::Ne,
        "<" => Rel::Lt,
        "<=" => Rel::Le,
        ">" => Rel::Gt,
        ">=" => Rel::Ge,
        "\\in" => Rel::In,
        _ => return None,
    })
}

/// The closing bracket matching the opening one at byte 0, if it is the last character.
fn wraps_whole(s: &str) -> bool {
    let mut depth = 0i32;
    for (i, ch) in s.char_indices() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + ch.len_utf8() == s.len();
                }
            }
            _ => {}
        }
    }
    false
}

/// A decimal comma where a thousands separator is impossible: `0,111`, `1000,99`.
static DECIMAL_COMMA: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^-?(?:0|\d{4,}),\d+$").expect("valid regex"));

fn parse_structured(s: &str, percent: bool, nest: usize) -> Answer {
    let s = s.trim();
    let text = || {
        Answer::Text(s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase())
    };
    if nest > MAX_NEST || s.is_empty() {
        return text();
    }
    // Each split below is skipped when its separator does not occur at all (one part).
    let has_comma = s.contains(',');
    // Every relation operator of `relation_at` holds one of these bytes.
    let has_relation = s.bytes().any(|b| matches!(b, b'=' | b'<' | b'>' | b'\\'));
    // Unions.
    if s.contains("\\cup") {
        let union = split_top(s, &|r| r.starts_with("\\cup").then_some(4));
        if union.len() > 1 {
            return Answer::Union(
                union.iter().map(|(_, p)| parse_structured(p, percent, nest + 1)).collect(),
            );
        }
    }
    // A list of relations (`a = 2, b = 3`): every comma-separated piece is a relation.
    if has_comma && has_relation {
        let pieces = split_top(s, &|r| r.starts_with(',').then_some(1));
        if pieces.len() > 1 && pieces.iter().all(|(_, p)| split_top(p, &relation_at).len() > 1) {
            return Answer::List(ListKind::Bare, list_items(s, percent, nest));
        }
    }
    // Relations (`x = 5`, `a < x <= b`, `x \in [0, 1)`); `\approx` ends a chain that has `=` or
    // follows a value (`\frac{\sqrt3}{3} \approx 0.577` is the exact value, `x \approx 0.577` a
    // relation).
    let rel = if has_relation { split_top(s, &relation_at) } else { Vec::new() };
    if rel.len() > 1 {
        let mut parts = Vec::new();
        let mut ops = Vec::new();
        for (i, (op, p)) in rel.iter().enumerate() {
            if i > 0 {
                if op.trim() == "\\approx"
                    && (ops.contains(&Rel::Eq) || parts.last().is_some_and(|p| !is_name(p)))
                {
                    break;
                }
                match rel_of(op) {
                    Some(r) => ops.push(r),
                    None => return text(),
                }
            }
            parts.push(parse_structured(p, percent, nest + 1));
        }
        if parts.len() == 1 {
            return parts.pop().expect("one part");
        }
        return Answer::Relation(parts, ops);
    }
    // Matrices, and sums / products of matrices (both need `\begin{`).
    if s.contains("\\begin")
        && let Some(m) =
            parse_matrix(s, percent, nest).or_else(|| matrix_arithmetic(s, percent, nest))
    {
        return m;
    }
    // A decimal comma where a thousands separator is impossible: `0,111`, `1000,99`.
    if has_comma && DECIMAL_COMMA.is_match(s) {
        return parse_structured(&s.replacen(',', ".", 1), percent, nest + 1);
    }
    // Brackets around the whole answer.
    if let Some(inner) = s.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")) {
        return Answer::List(ListKind::Set, list_items(inner, percent, nest));
    }
    let first = s.chars().next().unwrap_or(' ');
    let last = s.chars().last().unwrap_or(' ');
    if matches!(first, '(' | '[' | '{') && matches!(last, ')' | ']' | '}') && wraps_whole(s) {
        let inner = &s[1..s.len() - 1];
        let items = list_items(inner, percent, nest);
        if first == '{' {
            return if items.len() == 1 {
                items.into_iter().next().expect("one")
            } else {
                Answer::List(ListKind::Bare, items)
            };
        }
        if items.len() == 2 && (first == '[' || last == ']') {
            let mut it = items.into_iter();
            let (lo, hi) = (it.next().expect("two"), it.next().expect("two"));
            return Answer::Interval(Box::new(lo), Box::new(hi), first == '[', last == ']');
        }
        if items.len() >= 2 {
            return Answer::List(ListKind::Tuple, items);
        }
    }
    // Bare lists.
    if has_comma && split_top(s, &|r| r.starts_with(',').then_some(1)).len() > 1 {
        return Answer::List(ListKind::Bare, list_items(s, percent, nest));
    }
    match parse_expr(s) {
        Some(n) => Answer::Scalar(n, percent),
        None => text(),
    }
}

fn list_items(s: &str, percent: bool, nest: usize) -> Vec<Answer> {
    split_top(s, &|r| r.starts_with(',').then_some(1))
        .into_iter()
        .take(MAX_ITEMS)
        .filter(|(_, p)| !p.trim().is_empty())
        .map(|(_, p)| parse_structured(p, percent, nest + 1))
        .collect()
}

/// A whole answer that is one matrix environment.
static MATRIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\(?\s*\[?\s*\\begin\{(?:[pbvBV]?matrix|array)\}(?:\{[^}]*\})?(.*?)\\end\{(?:[pbvBV]?matrix|array)\}\s*\]?\s*\)?$")
        .expect("valid regex")
});

/// A matrix environment's entries, row by row; `None` when `s` is not one matrix environment.
/// A matrix with an empty entry or more than [`MAX_ITEMS`] entries is its text (compared
/// verbatim: a cut matrix could equal a different one).
fn parse_matrix(s: &str, percent: bool, nest: usize) -> Option<Answer> {
    let c = MATRIX.captures(s)?;
    let body = c.get(1)?.as_str();
    if body.contains("\\begin") {
        return None;
    }
    let text = || Answer::Text(s.chars().filter(|c| !c.is_whitespace()).collect());
    let rows: Vec<&str> = body.split("\\\\").filter(|r| !r.trim().is_empty()).collect();
    let entries = rows.iter().map(|r| r.matches('&').count() + 1).sum::<usize>();
    if rows.is_empty() || entries > MAX_ITEMS {
        return Some(text());
    }
    let rows: Option<Vec<Vec<Answer>>> = rows
        .iter()
        .map(|r| {
            r.split('&')
                .map(|x| (!x.trim().is_empty()).then(|| parse_structured(x, percent, nest + 1)))
                .collect::<Option<Vec<_>>>()
        })
        .collect();
    Some(rows.map_or_else(text, Answer::Matrix))
}

/// One matrix environment anywhere.
static MATRIX_ENV: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^}]*\})?.*?\\end\{(?:[pbvBV]?matrix|array)\}",
    )
    .expect("valid regex")
});

/// `M1 + M2`, `M1 - M2` and `M1 M2` (products) of explicit matrices, computed entry-wise as
/// expressions.
fn matrix_arithmetic(s: &str, percent: bool, nest: usize) -> Option<Answer> {
    let found: Vec<_> = MATRIX_ENV.find_iter(s).collect();
    if found.len() < 2
        || found.len() > 8
        || !s[..found[0].start()].trim().is_empty()
        || !s[found[found.len() - 1].end()..].trim().is_empty()
    {
        return None;
    }
    let to_nodes = |m: Answer| -> Option<Vec<Vec<Node>>> {
        let Answer::Matrix(rows) = m else { return None };
        rows.into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|x| if let Answer::Scalar(n, _) = x { Some(n) } else { None })
                    .collect()
            })
            .collect()
    };
    let mut acc = to_nodes(parse_matrix(found[0].as_str(), percent, nest)?)?;
    // Products copy every entry once per column: the expression size is capped so a chain of
    // products cannot grow exponentially.
    let mut size = acc.iter().flatten().map(Node::size).sum::<usize>();
    for w in found.windows(2) {
        let op = s[w[0].end()..w[1].start()].trim();
        let next = to_nodes(parse_matrix(w[1].as_str(), percent, nest)?)?;
        acc = match op {
            "+" | "-" => {
                size = size.saturating_add(next.iter().flatten().map(Node::size).sum::<usize>());
                if acc.len() != next.len() || acc.iter().zip(&next).any(|(a, b)| a.len() != b.len())
                {
                    return None;
                }
                acc.into_iter()
                    .zip(next)
                    .map(|(a, b)| {
                        a.into_iter()
                            .zip(b)
                            .map(|(x, y)| {
                                Node::Add(vec![
                                    x,
                                    if op == "-" { Node::Neg(Box::new(y)) } else { y },
                                ])
                            })
                            .collect()
                    })
                    .collect()
            }
            "" | "\\cdot" | "\\times" => {
                let inner = next.len();
                if acc.iter().any(|r| r.len() != inner) || next.is_empty() {
                    return None;
                }
                let cols = next[0].len();
                let next_size = next.iter().flatten().map(Node::size).sum::<usize>();
                // Each output entry: one `Add` over `inner` `Mul`s of a copy of two entries.
                let glue = acc.len().saturating_mul(cols).saturating_mul(inner + 1);
                size = size
                    .saturating_mul(cols)
                    .saturating_add(next_size.saturating_mul(acc.len()))
                    .saturating_add(glue);
                if size > MAX_MATRIX_NODES {
                    return None;
                }
                acc.iter()
                    .map(|r| {
                        (0..cols)
                            .map(|j| {
                                Node::Add(
                                    (0..inner)
                                        .map(|k| Node::Mul(vec![r[k].clone(), next[k][j].clone()]))
                                        .collect(),
                                )
                            })
                            .collect()
                    })
                    .collect()
            }
            _ => return None,
        };
    }
    Some(Answer::Matrix(
        acc.into_iter()
            .map(|r| r.into_iter().map(|n| Answer::Scalar(n, percent)).collect())
            .collect(),
    ))
}

/// Whether `gold` and `pred` are the same answer.
pub fn equal(gold: &Answer, pred: &Answer, cfg: &VerifyConfig) -> bool {
    eq_depth(gold, pred, cfg, 0)
}

fn eq_depth(g: &Answer, p: &Answer, cfg: &VerifyConfig, depth: usize) -> bool {
    use Answer::*;
    if depth > MAX_NEST * 2 {
        return false;
    }
    let eq = |a: &Answer, b: &Answer| eq_depth(a, b, cfg, depth + 1);
    match (g, p) {
        (Scalar(a, pa), Scalar(b, pb)) => scalar_eq(a, *pa, b, *pb, cfg),
        (Text(a), Text(b)) => strip_parens(a) == strip_parens(b),
        (Text(a), Scalar(n, _)) | (Scalar(n, _), Text(a)) => {
            // `\text{E}` vs `E`: a single symbol equals the same text.
            matches!(n, Node::Sym(s) if s.to_lowercase() == strip_parens(a))
        }
        (Relation(pg, og), Relation(pp, op)) => {
            relation_eq(pg, og, pp, op, cfg, depth)
                || match (assignment_value(pg, og), assignment_value(pp, op)) {
                    (Some(a), Some(b)) => eq(a, b),
                    _ => match (relation_as_value(pg, og), relation_as_value(pp, op)) {
                        (Some(a), Some(b))
                            if matches!(a, Interval(..)) || matches!(b, Interval(..)) =>
                        {
                            eq(&a, &b)
                        }
                        _ => false,
                    },
                }
        }
        // A gold relation only reduces to its value when it is an assignment (`x = 5`, chains).
        (Relation(parts, ops), other) => {
            relation_as_value(parts, ops).is_some_and(|v| eq(&v, other))
        }
        // A predicted `… = value` (a computation ending in its result) is read as its last value.
        (other, Relation(parts, ops)) => {
            let v = if ops.iter().all(|o| *o == Rel::Eq) {
                parts.last().cloned()
            } else {
                relation_as_value(parts, ops)
            };
            v.is_some_and(|v| eq(other, &v))
        }
        (List(kg, a), List(kp, b)) => {
            let ordered = *kg == ListKind::Tuple || *kp == ListKind::Tuple;
            if ordered {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| eq(x, y))
            } else {
                a.iter().all(|x| b.iter().any(|y| eq(x, y)))
                    && b.iter().all(|y| a.iter().any(|x| eq(x, y)))
            }
        }
        (List(_, a), single) | (single, List(_, a)) if a.len() == 1 => eq(&a[0], single),
        (Interval(a, b, lc, rc), Interval(c, d, lc2, rc2)) => {
            lc == lc2 && rc == rc2 && eq(a, c) && eq(b, d)
        }
        (Interval(a, b, false, false), List(ListKind::Tuple, v))
        | (List(ListKind::Tuple, v), Interval(a, b, false, false)) => {
            v.len() == 2 && eq(a, &v[0]) && eq(b, &v[1])
        }
        (Union(a), Union(b)) => {
            a.len() == b.len()
                && a.iter().all(|x| b.iter().any(|y| eq(x, y)))
                && b.iter().all(|y| a.iter().any(|x| eq(x, y)))
        }
        (Matrix(a), Matrix(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(r, s)| r.len() == s.len() && r.iter().zip(s).all(|(x, y)| eq(x, y)))
        }
        (Matrix(m), List(ListKind::Tuple, v)) | (List(ListKind::Tuple, v), Matrix(m)) => {
            // A column vector equals a tuple of the same entries.
            m.iter().all(|r| r.len() == 1)
                && m.len() == v.len()
                && m.iter().zip(v).all(|(r, x)| eq(&r[0], x))
        }
        _ => false,
    }
}

fn strip_parens(s: &str) -> String {
    s.trim_matches(|c| c == '(' || c == ')').to_string()
}

/// `x = 5`, `f(2) = 5`, `x = 1 + 1 = 2` and `x \in [0, 1)`: the value on the right.
fn assignment_value<'a>(parts: &'a [Answer], ops: &[Rel]) -> Option<&'a Answer> {
    if ops.len() >= 2 && ops.iter().all(|o| *o == Rel::Eq) {
        return parts.last();
    }
    if ops.len() == 1 && matches!(ops[0], Rel::Eq | Rel::In) && is_name(&parts[0]) {
        return parts.last();
    }
    None
}

/// A relation compared with a plain value: assignments reduce to their value, `x \in I` to `I`,
/// and `a < x <= b` to the interval `(a, b]`.
fn relation_as_value(parts: &[Answer], ops: &[Rel]) -> Option<Answer> {
    if let Some(v) = assignment_value(parts, ops) {
        return Some(v.clone());
    }
    if ops.len() == 1 && ops[0] == Rel::In {
        return parts.last().cloned();
    }
    // `x > a` → (a, ∞), `x <= a` → (−∞, a], and the mirrored `a < x`.
    if ops.len() == 1 && matches!(ops[0], Rel::Lt | Rel::Le | Rel::Gt | Rel::Ge) {
        let (name_left, name_right) = (is_name(&parts[0]), is_name(&parts[1]));
        if name_left != name_right {
            let op = if name_left { ops[0] } else { flip(ops[0]) };
            let bound = if name_left { &parts[1] } else { &parts[0] };
            let inf = |neg: bool| {
                let n = if neg { Node::Neg(Box::new(Node::Inf)) } else { Node::Inf };
                Box::new(Answer::Scalar(n, false))
            };
            let b = Box::new(bound.clone());
            return Some(match op {
                Rel::Gt => Answer::Interval(b, inf(false), false, false),
                Rel::Ge => Answer::Interval(b, inf(false), true, false),
                Rel::Lt => Answer::Interval(inf(true), b, false, false),
                _ => Answer::Interval(inf(true), b, false, true),
            });
        }
    }
    if ops.len() == 2 && is_name(&parts[1]) {
        let lower = |r: Rel| matches!(r, Rel::Lt | Rel::Le);
        let upper = |r: Rel| matches!(r, Rel::Gt | Rel::Ge);
        let (lo, hi, lc, rc) = if lower(ops[0]) && lower(ops[1]) {
            (&parts[0], &parts[2], ops[0] == Rel::Le, ops[1] == Rel::Le)
        } else if upper(ops[0]) && upper(ops[1]) {
            (&parts[2], &parts[0], ops[1] == Rel::Ge, ops[0] == Rel::Ge)
        } else {
            return None;
        };
        return Some(Answer::Interval(Box::new(lo.clone()), Box::new(hi.clone()), lc, rc));
    }
    None
}

fn is_name(a: &Answer) -> bool {
    match a {
        Answer::Scalar(Node::Sym(_), _) => true,
        // `f(x)`, `p(8)`, `(p, q)`: a function value or a tuple of names.
        Answer::Scalar(Node::Mul(v), _) => v.len() == 2 && matches!(v[0], Node::Sym(_)),
        Answer::List(_, items) => items.iter().all(is_name),
        _ => false,
    }
}

/// Equations compare as `lhs − rhs` up to a non-zero factor; inequalities up to a positive
/// factor after flipping `>`/`>=` into `<`/`<=`.
fn relation_eq(
    pg: &[Answer],
    og: &[Rel],
    pp: &[Answer],
    op: &[Rel],
    cfg: &VerifyConfig,
    depth: usize,
) -> bool {
    if og.len() != op.len() {
        return false;
    }
    if og.len() == 1 {
        let (Some(fg), Some(fp)) =
            (difference(&pg[0], &pg[1], og[0]), difference(&pp[0], &pp[1], op[0]))
        else {
            return og == op && pg.iter().zip(pp).all(|(a, b)| eq_depth(a, b, cfg, depth + 1));
        };
        let (kg, kp) = (canonical(og[0]), canonical(op[0]));
        if kg != kp {
            return false;
        }
        return match kg {
            Rel::Eq | Rel::Ne => proportional(&fg, &fp, false, cfg),
            _ => proportional(&fg, &fp, true, cfg),
        };
    }
    // Chains: same operators, same parts (or the same chain read backwards).
    let same = og == op && pg.iter().zip(pp).all(|(a, b)| eq_depth(a, b, cfg, depth + 1));
    let flipped: Vec<Rel> = op.iter().rev().map(|r| flip(*r)).collect();
    same || (og == flipped.as_slice()
        && pg.iter().zip(pp.iter().rev()).all(|(a, b)| eq_depth(a, b, cfg, depth + 1)))
}

fn canonical(r: Rel) -> Rel {
    match r {
        Rel::Gt => Rel::Lt,
        Rel::Ge => Rel::Le,
        r => r,
    }
}

fn flip(r: Rel) -> Rel {
    match r {
        Rel::Lt => Rel::Gt,
        Rel::Gt => Rel::Lt,
        Rel::Le => Rel::Ge,
        Rel::Ge => Rel::Le,
        r => r,
    }
}

/// `lhs − rhs` (or `rhs − lhs` for `>`/`>=`) as an expression.
fn difference(l: &Answer, r: &Answer, op: Rel) -> Option<Node> {
    let (Answer::Scalar(a, _), Answer::Scalar(b, _)) = (l, r) else { return None };
    if op == Rel::In {
        return None;
    }
    let (a, b) = if matches!(op, Rel::Gt | Rel::Ge) { (b, a) } else { (a, b) };
    Some(Node::Add(vec![a.clone(), Node::Neg(Box::new(b.clone()))]))
}

/// Deterministic sample points for free symbols (distinct per symbol and point, in [0.35, 2.6]).
fn point(sym: &str, k: usize) -> f64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ (k as u64).wrapping_mul(0x9E3779B97F4A7C15);
    for b in sym.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h ^= h >> 29;
    0.35 + (h % 10_000) as f64 / 10_000.0 * 2.25
}

const POINTS: usize = 7;

fn eval_at(n: &Node, k: usize) -> f64 {
    expr::eval(n, &|s| point(s, k)).to_f64()
}

/// `f ≡ c·g` for a constant `c ≠ 0` (`c > 0` when `positive`), checked at sample points.
fn proportional(f: &Node, g: &Node, positive: bool, cfg: &VerifyConfig) -> bool {
    let mut ratio: Option<f64> = None;
    let mut valid = 0;
    for k in 0..POINTS {
        let (a, b) = (eval_at(f, k), eval_at(g, k));
        if !(a.is_finite() && b.is_finite()) {
            continue;
        }
        if a.abs() < 1e-12 || b.abs() < 1e-12 {
            if !(a.abs() < 1e-12 && b.abs() < 1e-12) {
                return false;
            }
            continue;
        }
        let r = a / b;
        match ratio {
            None => ratio = Some(r),
            Some(r0) => {
                if !close(r0, r, cfg.rel_tol.max(1e-9)) {
                    return false;
                }
            }
        }
        valid += 1;
    }
    valid >= 2 && ratio.is_some_and(|r| !positive || r > 0.0)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    if a == b {
        return true;
    }
    if !(a.is_finite() && b.is_finite()) {
        return false;
    }
    (a - b).abs() <= rel * a.abs().max(b.abs()) * (1.0 + 1e-9) || (a - b).abs() <= 1e-12
}

fn round_to(x: f64, d: u32) -> f64 {
    let m = 10f64.powi(d as i32);
    (x * m).round() / m
}

fn numbers_close(a: f64, b: f64, cfg: &VerifyConfig) -> bool {
    close(a, b, cfg.rel_tol)
        || cfg.float_rounding.is_some_and(|d| round_to(a, d) == round_to(b, d) && a.is_finite())
}

/// A number as written for an answer: a literal, a fraction of literals, a mixed number
/// (`11 4/9`), scientific notation (`1.5E-3`), with an optional sign.
fn number_form(n: &Node) -> bool {
    let num = |n: &Node| matches!(n, Node::Num(..));
    let fraction = |n: &Node| matches!(n, Node::Div(p, q) if num(p) && num(q));
    let ten =
        |n: &Node| matches!(n, Node::Num(r, _) if r.is_integer() && r.to_integer() == 10.into());
    let exponent = |n: &Node| num(n) || matches!(n, Node::Neg(x) if num(x));
    match n {
        Node::Neg(x) => number_form(x),
        Node::Add(parts) => matches!(parts.as_slice(), [i, f] if num(i) && fraction(f)),
        Node::Mul(parts) => {
            matches!(parts.as_slice(), [m, Node::Pow(b, e)] if num(m) && ten(b) && exponent(e))
        }
        n => num(n) || fraction(n),
    }
}

/// Arithmetic of number literals only (`+ − × ÷` and powers): a calculation whose result is a
/// number form.
fn literal_arithmetic(n: &Node) -> bool {
    match n {
        Node::Num(..) => true,
        Node::Neg(x) => literal_arithmetic(x),
        Node::Add(v) | Node::Mul(v) => v.iter().all(literal_arithmetic),
        Node::Div(p, q) | Node::Pow(p, q) => literal_arithmetic(p) && literal_arithmetic(q),
        _ => false,
    }
}

fn scalar_eq(a: &Node, pa: bool, b: &Node, pb: bool, cfg: &VerifyConfig) -> bool {
    // An unevaluated calculation of numbers (`10 + 10`) is not an answer to a numeric question;
    // exact forms with roots, π, functions (`\sqrt{17}`) still are.
    if !cfg.accept_unevaluated && number_form(a) && !number_form(b) && literal_arithmetic(b) {
        return false;
    }
    if scalar_eq_plain(a, b, cfg) {
        return true;
    }
    // `28%` equals `28` (the sign is dropped) and also `0.28`.
    let hundredth = |n: &Node| {
        Node::Div(
            Box::new(n.clone()),
            Box::new(Node::Num(num_rational::BigRational::from_integer(100.into()), false)),
        )
    };
    (pa && !pb && scalar_eq_plain(&hundredth(a), b, cfg))
        || (pb && !pa && scalar_eq_plain(a, &hundredth(b), cfg))
}

fn scalar_eq_plain(a: &Node, b: &Node, cfg: &VerifyConfig) -> bool {
    if a == b {
        return true;
    }
    let (sa, sb) = (symbols(a), symbols(b));
    // Different free symbols can still be equal (`\sin^2 x + \cos^2 x` and `1`): the numeric
    // check below decides.
    if sa.is_empty() && sb.is_empty() {
        let (va, vb) = (expr::eval(a, &|_| f64::NAN), expr::eval(b, &|_| f64::NAN));
        return match (&va, &vb) {
            (Value::Exact(x), Value::Exact(y)) => {
                x == y
                    || (has_decimal(a) != has_decimal(b)
                        && numbers_close(va.to_f64(), vb.to_f64(), cfg))
            }
            _ => numbers_close(va.to_f64(), vb.to_f64(), cfg),
        };
    }
    let mut valid = 0;
    for k in 0..POINTS {
        let (x, y) = (eval_at(a, k), eval_at(b, k));
        if x.is_nan() && y.is_nan() {
            continue;
        }
        if !close(x, y, cfg.rel_tol.min(1e-6)) {
            return false;
        }
        valid += 1;
    }
    valid >= 3
}
