//! Times the math verifier in-process on a JSONL file of gold/response pairs, one pair at a time:
//! the Rust half of `scripts/bench/verifier_vs_mathverify.sh` (the side-by-side benchmark against
//! Hugging Face's `math-verify`).
//!
//! ```text
//! cargo run --release --example verifier_bench -- PAIRS.jsonl [VERDICTS.jsonl]
//! ```
//!
//! Each input line is an object with `response` (string), `answer` (string or number), and
//! optionally `id` and `precision` (Math-Verify's `float_rounding`, mapped to
//! [`VerifyConfig::float_rounding`]); the fields are those of `rl-zero score`. Each pair is graded
//! with [`MathVerifier::check`] and timed on its own with [`Instant`], after a warm-up on three
//! pairs that are not in the file. `VERDICTS.jsonl` receives one line per pair:
//! `{"id", "correct", "extracted", "us"}` (`us`: microseconds). One JSON summary line goes to
//! stdout: pair count, total, median and max time per pair, pairs slower than 5 s (Math-Verify's
//! default per-call timeout; this verifier has no timeout, its cost is bounded), start-up time
//! (from `RLZ_LAUNCH_NS`, the launch time in Unix nanoseconds, when set) and peak RSS
//! (`VmHWM` of `/proc/self/status`, Linux only).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rl_zero::reward::{MathVerifier, VerifyConfig};
use serde_json::{Value, json};

/// One gold/response pair read from the input file.
#[derive(Debug)]
struct Pair {
    /// The pair's `id` field, or its 0-based line number among the pairs.
    id: Value,
    /// The ground-truth answer.
    answer: String,
    /// The model response to grade.
    response: String,
    /// Math-Verify's `float_rounding` for this pair, if set.
    precision: Option<u32>,
}

/// Math-Verify's default per-call timeout, used here only to count pairs that would exceed it.
const TIMEOUT_S: f64 = 5.0;

/// Pairs graded before timing starts (first-call costs such as page faults and lazy statics).
const WARMUP: &[(&str, &str)] = &[
    ("1", "\\boxed{1}"),
    ("\\frac{1}{2}", "The answer is $0.5$."),
    ("(1, 2)", "so $x \\in (1, 2)$"),
];

fn main() -> Result<()> {
    let started = SystemTime::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, output) = match args.as_slice() {
        [i] => (i.as_str(), None),
        [i, o] => (i.as_str(), Some(o.as_str())),
        _ => bail!("usage: verifier_bench PAIRS.jsonl [VERDICTS.jsonl]"),
    };
    let startup_s = launch_delay(started);
    let pairs = read_pairs(input)?;

    let t = Instant::now();
    for (g, p) in WARMUP {
        std::hint::black_box(MathVerifier::default().check(g, p));
    }
    let warmup_s = t.elapsed().as_secs_f64();

    let mut times = Vec::with_capacity(pairs.len());
    let mut verdicts = Vec::with_capacity(pairs.len());
    let wall = Instant::now();
    for pair in &pairs {
        // Math-Verify's semantics, unevaluated calculations included (the comparison's baseline).
        let verifier = MathVerifier::new(VerifyConfig {
            float_rounding: pair.precision,
            accept_unevaluated: true,
            ..VerifyConfig::default()
        });
        let t = Instant::now();
        let verdict = verifier.check(&pair.answer, &pair.response);
        let us = t.elapsed().as_secs_f64() * 1e6;
        times.push(us);
        verdicts.push(verdict);
    }
    let loop_s = wall.elapsed().as_secs_f64();

    if let Some(path) = output {
        let file = File::create(path).with_context(|| format!("cannot create {path}"))?;
        let mut out = BufWriter::new(file);
        for ((pair, verdict), us) in pairs.iter().zip(&verdicts).zip(&times) {
            let line = json!({
                "id": pair.id,
                "correct": verdict.correct,
                "extracted": verdict.extracted,
                "us": us,
            });
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }

    let (max_i, max_us) =
        times.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, 0.0));
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let summary = json!({
        "side": "rl-zero",
        "version": env!("CARGO_PKG_VERSION"),
        "n": pairs.len(),
        "correct": verdicts.iter().filter(|v| v.correct).count(),
        "total_s": times.iter().sum::<f64>() / 1e6,
        "loop_s": loop_s,
        "median_us": median(&sorted),
        "max_us": max_us,
        "max_id": pairs.get(max_i).map(|p| p.id.clone()),
        "timeouts": 0,
        "over_timeout": times.iter().filter(|&&us| us > TIMEOUT_S * 1e6).count(),
        "startup_s": startup_s,
        "import_s": Value::Null,
        "warmup_s": warmup_s,
        "peak_rss_kb": peak_rss_kb(),
    });
    println!("{summary}");
    Ok(())
}

/// Reads the pairs, naming the line of any malformed one.
fn read_pairs(path: &str) -> Result<Vec<Pair>> {
    let file = File::open(path).with_context(|| format!("cannot open {path}"))?;
    let mut pairs = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{path}:{n}: cannot read"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("{path}:{n}: invalid JSON"))?;
        let response = v["response"]
            .as_str()
            .with_context(|| format!("{path}:{n}: missing string field `response`"))?;
        let answer = match &v["answer"] {
            Value::String(s) => s.clone(),
            Value::Number(x) => x.to_string(),
            _ => bail!("{path}:{n}: missing field `answer` (string or number)"),
        };
        let precision = match &v["precision"] {
            Value::Null => None,
            p => Some(
                p.as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .with_context(|| format!("{path}:{n}: `precision` must be a small integer"))?,
            ),
        };
        let id = match &v["id"] {
            Value::Null => Value::from(pairs.len()),
            id => id.clone(),
        };
        pairs.push(Pair { id, answer, response: response.to_string(), precision });
    }
    Ok(pairs)
}

/// Median of sorted values (0 for none).
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Seconds from the launch time in `RLZ_LAUNCH_NS` (Unix nanoseconds) to `started`, if set.
fn launch_delay(started: SystemTime) -> Option<f64> {
    let launch: u128 = std::env::var("RLZ_LAUNCH_NS").ok()?.trim().parse().ok()?;
    let now = started.duration_since(UNIX_EPOCH).ok()?.as_nanos();
    Some(now.saturating_sub(launch) as f64 / 1e9)
}

/// Peak resident set size in KiB (`VmHWM`), on Linux.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}
