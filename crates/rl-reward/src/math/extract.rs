//! Answer extraction from a free-form response.
//!
//! Candidates are tried in this order; the first that yields text wins:
//!
//! 1. the last `<answer>…</answer>` block (an unclosed block runs to the end): a box inside it
//!    (rule 2) is taken; a bare answer is taken whole; a sentence (`The answer is 12.`) goes
//!    through rules 2 to 5; when they find nothing, the block's text is taken;
//! 2. the last brace-balanced `\boxed{…}` / `\fbox{…}` (also `\boxed 5`). **Several boxes:** the
//!    last box is joined with the boxes right before it when only whitespace, `$`, commas, `and`,
//!    `or`, `\quad` or math delimiters separate them (`\boxed{1}, \boxed{2}` → `1, 2`); an earlier
//!    box separated by prose is ignored. A box whose content holds a box yields the inner box
//!    (`\boxed{\text{the answer is } \boxed{5}}` → `5`);
//! 3. the last "final answer is …" / "the answer is …" / "answer: …" phrase, up to the end of the
//!    sentence or line (the phrase's math span, else its last number); a phrase inside a box
//!    does not count, and one after the last box wins over it;
//! 4. the last math span (`$…$`, `$$…$$`, `\(…\)`, `\[…\]`);
//! 5. the last number (integers, decimals, `a/b` fractions, mixed numbers, thousands separators,
//!    an optional `%`), not glued to letters (`AZYUK2A` has none).

use std::sync::LazyLock;

use regex::Regex;

/// Where an extracted answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An `<answer>` block.
    AnswerTag,
    /// One or more `\boxed{}`.
    Boxed,
    /// A "final answer is …" phrase.
    Phrase,
    /// The last math span.
    Math,
    /// The last number.
    Number,
    /// The whole (short) string, used for ground-truth answers.
    Whole,
}

/// An extracted answer string and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// The raw answer text (not yet normalised).
    pub text: String,
    /// Which rule produced it.
    pub source: Source,
}

/// Largest input considered: longer responses are cut to their last `MAX_INPUT` bytes (answers
/// are at the end).
pub const MAX_INPUT: usize = 64 * 1024;

/// Compiles every pattern of this module now (they are compiled lazily on first use otherwise).
pub(super) fn compile_patterns() {
    for re in [&WORD, &TEXT, &SEPARATORS, &PHRASE, &MATH_SPAN, &NUMBER] {
        LazyLock::force(re);
    }
}

/// Extracts the answer of a model response following the module's rules.
pub fn extract_answer(response: &str) -> Option<Extracted> {
    let s = tail(response, MAX_INPUT);
    if let Some(inner) = answer_tag(s) {
        let t = inner.trim();
        // A box inside the block is the answer; a bare answer is taken whole; a sentence ("The
        // answer is 12.") goes through the other rules.
        if find_box_cmd(t).is_none()
            && let Some(w) = whole_answer(t)
        {
            return Some(Extracted { text: w, source: Source::AnswerTag });
        }
        if let Some(e) = extract_untagged(t) {
            return Some(e);
        }
        if !t.is_empty() {
            return Some(Extracted { text: t.to_string(), source: Source::AnswerTag });
        }
    }
    extract_untagged(s)
}

/// Rules 2 to 5 of the module documentation (everything but the `<answer>` tag).
fn extract_untagged(s: &str) -> Option<Extracted> {
    let boxes = all_boxes(s);
    // A phrase written inside a box (`\boxed{\text{the answer is } 5}`) is the box's business.
    let phrase = phrase(s, &boxes);
    if let Some((box_end, b)) = boxed(s, &boxes) {
        // A "final answer is ..." sentence written after the last box wins over the box.
        match phrase {
            Some((pos, p)) if pos >= box_end => {
                return Some(Extracted { text: p, source: Source::Phrase });
            }
            _ => return Some(Extracted { text: innermost_box(b), source: Source::Boxed }),
        }
    }
    if let Some(w) = whole_answer(s) {
        return Some(Extracted { text: w, source: Source::Whole });
    }
    if let Some((_, p)) = phrase {
        return Some(Extracted { text: p, source: Source::Phrase });
    }
    let span = math_spans(s).pop();
    let number = last_number(s);
    match (span, number) {
        // A standalone number written after the last math span wins ("... so there are 12 ways.").
        (Some(sp), Some((npos, n))) if npos >= sp.0 + sp.2.len() => {
            Some(Extracted { text: n, source: Source::Number })
        }
        (Some(sp), _) => Some(Extracted { text: sp.1, source: Source::Math }),
        (None, Some((_, n))) => Some(Extracted { text: n, source: Source::Number }),
        (None, None) => None,
    }
}

/// Deepest box nesting followed into (`\boxed{\text{so } \boxed{5}}` → `5`).
const MAX_BOX_NESTING: usize = 4;

/// The box inside a box's content, when the content holds one (a box inside a box is the answer
/// the outer one wraps); followed at most [`MAX_BOX_NESTING`] levels.
fn innermost_box(mut content: String) -> String {
    for _ in 0..MAX_BOX_NESTING {
        if find_box_cmd(&content).is_none() {
            break;
        }
        let inner = all_boxes(&content);
        match boxed(&content, &inner) {
            Some((_, b)) => content = b,
            None => break,
        }
    }
    content
}

/// A short, single-line response that is itself an answer (`1 000`, `$\frac{1}{3}$`, `11 + 4/9`).
fn whole_answer(s: &str) -> Option<String> {
    // A multi-line response (any chain of thought) is never one; checked before copying it.
    if s.trim().contains('\n') {
        return None;
    }
    let t = strip_delims(s.trim());
    if t.is_empty() || t.len() > 120 || prose_words(&t, 2) > 0 {
        return None;
    }
    // A plain number always parses as a number.
    if super::plain_number(&t).is_some() {
        return Some(t);
    }
    match super::parse_answer(&t) {
        super::Answer::Text(_) => None,
        _ => Some(t),
    }
}

/// Extracts a ground-truth answer: boxes and tags when present, else the whole string when it
/// reads like an answer (not prose), else the response rules.
pub fn extract_gold(gold: &str) -> Option<Extracted> {
    let s = tail(gold, MAX_INPUT);
    if s.contains("\\boxed") || s.contains("\\fbox") || s.contains("<answer>") {
        return extract_answer(s);
    }
    let stripped = strip_delims(s.trim());
    // A matrix or vector (MATH stores them bare, often over several lines) is one answer.
    let matrix = stripped.contains("\\begin{") && stripped.contains("\\end{");
    if prose_words(&stripped, 3) < 2 && !stripped.is_empty() && (matrix || !stripped.contains('\n'))
    {
        return Some(Extracted { text: stripped, source: Source::Whole });
    }
    extract_answer(s)
}

/// A word or a LaTeX command.
static WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\\?[A-Za-z]{2,}").expect("valid regex"));

/// A `\text{…}`-like group, or the environment name of `\begin{…}` / `\end{…}`.
static TEXT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\\(?:text|mbox|mathrm|textbf|begin|end)\{[^}]*\}").expect("valid regex")
});

/// Number of prose words (`min_len`+ letters, not a LaTeX command, not inside `\text{}`, not
/// an environment name such as `pmatrix`).
fn prose_words(s: &str, min_len: usize) -> usize {
    // Words need ASCII letters (`\text{}` groups hold some too).
    if !s.bytes().any(|b| b.is_ascii_alphabetic()) {
        return 0;
    }
    let t = TEXT.replace_all(s, " ");
    WORD.find_iter(&t)
        .filter(|m| !m.as_str().starts_with('\\') && m.len() >= min_len)
        .filter(|m| {
            !matches!(
                m.as_str().to_lowercase().as_str(),
                "and"
                    | "or"
                    | "pct"
                    | "percent"
                    | "percentage"
                    | "sqrt"
                    | "pi"
                    | "sin"
                    | "cos"
                    | "tan"
                    | "log"
                    | "ln"
                    | "exp"
            )
        })
        .count()
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Removes one pair of `$…$`, `$$…$$`, `\(…\)` or `\[…\]` around the whole string.
fn strip_delims(s: &str) -> String {
    let mut t = s.trim();
    for (open, close) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(inner) = t.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
            t = inner.trim();
            break;
        }
    }
    // A gold written as `$a$ miles` or `$-2,1$`: drop the remaining `$`.
    t.replace('$', " ").trim().to_string()
}

fn answer_tag(s: &str) -> Option<&str> {
    // `s.rfind("<answer>")`, stepping between `<` with a byte search (most responses have none).
    let mut end = s.len();
    let tag = loop {
        let i = s[..end].rfind('<')?;
        if s[i..].starts_with("<answer>") {
            break i;
        }
        end = i;
    };
    let start = tag + "<answer>".len();
    let rest = &s[start..];
    Some(match rest.find("</answer>") {
        Some(end) => &rest[..end],
        None => rest,
    })
}

/// All `\boxed`/`\fbox` contents with their byte spans, in order.
fn all_boxes(s: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(off) = find_box_cmd(&s[from..]) {
        let (cmd_start, cmd_len) = (from + off.0, off.1);
        let mut i = cmd_start + cmd_len;
        let b = s.as_bytes();
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            let mut depth = 0usize;
            let mut j = i;
            let mut end = None;
            while j < b.len() {
                match b[j] {
                    b'\\' => {
                        j += 2;
                        continue;
                    }
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(j);
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            let j = j.min(b.len());
            let close = end.unwrap_or(j);
            let content = &s[i + 1..close.max(i + 1).min(s.len())];
            out.push((cmd_start, (close + 1).min(s.len()), content.to_string()));
            from = (close + 1).min(s.len());
        } else if i > cmd_start + cmd_len {
            // `\boxed 5`: the next run of non-space characters.
            let mut j = i;
            while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'$' {
                j += 1;
            }
            if j > i {
                out.push((cmd_start, j, s[i..j].to_string()));
            }
            from = j.max(i);
        } else {
            from = i;
        }
        while from < s.len() && !s.is_char_boundary(from) {
            from += 1;
        }
        if from >= s.len() {
            break;
        }
    }
    out
}

fn find_box_cmd(s: &str) -> Option<(usize, usize)> {
    let a = s.find("\\boxed").map(|i| (i, 6));
    let b = s.find("\\fbox").map(|i| (i, 5));
    match (a, b) {
        (Some(x), Some(y)) => Some(if x.0 <= y.0 { x } else { y }),
        (x, y) => x.or(y),
    }
}

/// The last box, joined with the boxes right before it (see the module rules), with the byte
/// offset where the last box ends. `boxes` is [`all_boxes`] of `s`.
fn boxed(s: &str, boxes: &[(usize, usize, String)]) -> Option<(usize, String)> {
    // Empty boxes (an echoed "put your answer in \boxed{}") are not answers.
    let boxes: Vec<_> = boxes.iter().filter(|b| !b.2.trim().is_empty()).collect();
    let last = boxes.last()?;
    let mut parts = vec![last.2.clone()];
    let mut start = last.0;
    for b in boxes.iter().rev().skip(1) {
        if separator_only(&s[b.1..start]) {
            parts.push(b.2.clone());
            start = b.0;
        } else {
            break;
        }
    }
    parts.reverse();
    Some((last.1, parts.join(", ")))
}

/// Text allowed between boxes that are joined.
static SEPARATORS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:\s|\$|,|;|\.|\band\b|\bor\b|\\quad|\\qquad|\\text\{\s*(?:and|or|,)?\s*\}|\\\(|\\\)|\\\[|\\\]|\\,)*$")
        .expect("valid regex")
});

fn separator_only(gap: &str) -> bool {
    gap.len() < 200 && SEPARATORS.is_match(gap)
}

/// A "final answer is" phrase.
static PHRASE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:final answer is|final answer\**:|the answer is|answer is|answer\**:|solution is)\s*\**\s*:?\s*\**").expect("valid regex")
});

/// The last "answer is" phrase outside every box of `boxes` (the [`all_boxes`] of `s`), and
/// the answer it announces.
fn phrase(s: &str, boxes: &[(usize, usize, String)]) -> Option<(usize, String)> {
    // Boxes are in order and disjoint: one backwards walk over both lists.
    let mut inside = boxes.iter().rev().peekable();
    let m = PHRASE.find_iter(s).collect::<Vec<_>>().into_iter().rev().find(|m| {
        while inside.peek().is_some_and(|b| b.0 > m.start()) {
            inside.next();
        }
        inside.peek().is_none_or(|b| m.start() >= b.1)
    })?;
    let rest = &s[m.end()..];
    // Up to the end of the sentence: a newline, or a period not inside a number or math span.
    let mut end = rest.len();
    let mut in_dollar = false;
    let bytes = rest.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b'$' => in_dollar = !in_dollar,
            b'\n' if i > 0 => {
                end = i;
                break;
            }
            b'.' if !in_dollar && !bytes.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let sentence = rest[..end].trim().trim_matches('*').trim();
    if sentence.is_empty() {
        return None;
    }
    phrase_answer(sentence).map(|a| (m.start(), a))
}

fn phrase_answer(sentence: &str) -> Option<String> {
    let spans = math_spans(sentence);
    let number = last_number(sentence);
    // The whole sentence when it is math-only, else its last math span or number, whichever is later.
    let outside: String = {
        let mut t = sentence.to_string();
        for (_, _, whole) in spans.iter().rev() {
            t = t.replacen(whole.as_str(), " ", 1);
        }
        t
    };
    let outside_words =
        outside.split_whitespace().filter(|w| w.chars().any(|c| c.is_alphabetic())).count();
    if !spans.is_empty() && outside_words == 0 {
        return Some(spans.iter().map(|s| s.1.clone()).collect::<Vec<_>>().join(" "));
    }
    let looks_math = !sentence.chars().any(|c| c.is_alphabetic()) || sentence.contains('\\');
    if spans.is_empty() && looks_math {
        return Some(sentence.to_string());
    }
    match (spans.last(), number) {
        (Some(sp), Some((npos, n))) => Some(if npos > sp.0 { n } else { sp.1.clone() }),
        (Some(sp), None) => Some(sp.1.clone()),
        (None, Some((_, n))) => Some(n),
        (None, None) => None,
    }
}

/// A math span; the group that matched holds its content.
static MATH_SPAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\(([^\n]+?)\\\)|\$((?:\\.|[^$\\\n])+?)\$")
        .expect("valid regex")
});

/// Math spans `(start, inner, whole)` in order: `$$…$$`, `$…$` (inline spans do not cross a blank
/// line), `\(…\)`, `\[…\]`.
fn math_spans(s: &str) -> Vec<(usize, String, String)> {
    // Every span needs a `$` or a backslash.
    if !s.bytes().any(|c| c == b'$' || c == b'\\') {
        return Vec::new();
    }
    MATH_SPAN
        .captures_iter(s)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let inner = (1..=4).find_map(|k| c.get(k))?.as_str();
            if inner.trim().is_empty() {
                return None;
            }
            Some((whole.start(), inner.trim().to_string(), whole.as_str().to_string()))
        })
        .collect()
}

/// A number, as [`last_number`] reads it.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[-+]?(?:(?:\d{1,3}(?: \d{3})+|\d+) \d+/\d+|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|\.\d+)(?:\s*%)?")
        .expect("valid regex")
});

/// The last standalone number `(start, text)`.
fn last_number(s: &str) -> Option<(usize, String)> {
    let b = s.as_bytes();
    // Numbers inside a math region that did not form a valid span are not extracted. The counts
    // are kept incrementally so the scan stays linear.
    let (mut at, mut dollars, mut open) = (0usize, 0usize, 0i64);
    let mut inside_broken_math = move |pos: usize| {
        for i in at..pos {
            let prev = if i > 0 { b[i - 1] } else { b' ' };
            match (prev, b[i]) {
                (b'\\', b'$') => {}
                (_, b'$') => dollars += 1,
                (b'\\', b'(') => open += 1,
                (b'\\', b')') => open -= 1,
                _ => {}
            }
        }
        at = at.max(pos);
        dollars % 2 == 1 || open > 0
    };
    NUMBER
        .find_iter(s)
        .filter(|m| !inside_broken_math(m.start()))
        .filter(|m| {
            let before = m.start().checked_sub(1).map(|i| b[i]);
            let after = b.get(m.end()).copied();
            !before.is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b'^' || c == b'{')
                && !after.is_some_and(|c| c == b'_' || c == b'^')
        })
        .last()
        .map(|m| (m.start(), m.as_str().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> Option<String> {
        extract_answer(s).map(|e| e.text)
    }

    #[test]
    fn order_and_boxes() {
        assert_eq!(
            ex("so \\boxed{\\frac{1}{2}} and \\boxed{3}").as_deref(),
            Some("\\frac{1}{2}, 3")
        );
        assert_eq!(
            ex("first \\boxed{1}. Later we see it is wrong, so \\boxed{2}").as_deref(),
            Some("2")
        );
        assert_eq!(ex("\\boxed{a{b}c}").as_deref(), Some("a{b}c"));
        assert_eq!(ex("\\boxed 5 done").as_deref(), Some("5"));
        assert_eq!(ex("<answer>\\boxed{7}</answer>").as_deref(), Some("7"));
        assert_eq!(ex("<answer> 12 </answer> \\boxed{9}").as_deref(), Some("12"));
        assert_eq!(ex("The final answer is $28 \\%$. I hope").as_deref(), Some("28 \\%"));
        assert_eq!(ex("Final Answer: The largest $n$ is 34.").as_deref(), Some("34"));
        assert_eq!(ex("AZYUK2A"), None);
        assert_eq!(ex("it is 4 4/9.").as_deref(), Some("4 4/9"));
        assert_eq!(ex("\\boxed{unclosed").as_deref(), Some("unclosed"));
    }
}
