//! Fuzz targets for the parsers that read what users and servers hand rl-zero.
//!
//! Each target takes arbitrary bytes, must return without panicking, hanging or allocating
//! beyond the input's bounds, and checks an invariant of what it accepted:
//!
//! | target | input | invariant on success |
//! | --- | --- | --- |
//! | [`run_file`] | a run file (TOML) | it validates, and `to_toml` parses back to the same file (what `--resume` compares) |
//! | [`dataset_jsonl`] | a JSONL dataset | at most one prompt per non-blank line |
//! | [`engine_response`] | a vLLM / SGLang / llama.cpp generation answer (JSON) | `n` choices; validated log-probs are finite, `<= 0`, one per token; ids in the vocabulary; at most `max_tokens` |
//! | [`verifier`] | a gold answer and a response | a correct verdict names its extracted answer; the verdict is deterministic |
//!
//! Each target returns whether the input was accepted all the way (a valid file, every choice
//! valid, a correct answer); the tests use it to check that the seeds reach the deep paths.
//!
//! The libFuzzer drivers (`fuzz_targets/`, feature `libfuzzer`) call these functions; with a
//! nightly toolchain, `cargo fuzz run <target> --features libfuzzer` fuzzes with coverage
//! feedback from the seeds in `fuzz/corpus/<target>/`. On stable, the drivers build and run
//! without coverage instrumentation (CI runs each for a fixed number of inputs), and this crate's
//! tests run every seed and thousands of random mutations of them.

use std::path::Path;

use rl_data::{DatasetFields, read_jsonl};
use rl_reward::MathVerifier;
use rl_rollout::protocol::{Expect, Origin, parse_llama_cpp, parse_sglang, parse_vllm};
use rl_zero::run::RunFile;

/// Vocabulary size the engine target checks ids against (SmolLM2's).
pub const VOCAB_SIZE: usize = 49_152;
/// `max_tokens` of the engine target's imagined request.
pub const MAX_TOKENS: usize = 64;

/// A run file: parse and validate; an accepted file must survive the round trip through
/// `to_toml` (the saved `run.toml` that `--resume` compares with the checkpoint's).
///
/// # Panics
/// When an accepted file does not round-trip: a finding.
pub fn run_file(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let Ok(file) = RunFile::from_toml(text) else { return false };
    let saved = file.to_toml().expect("an accepted run file serializes");
    let back = RunFile::from_toml(&saved)
        .unwrap_or_else(|e| panic!("the saved run file does not parse: {e:#}\n{saved}"));
    assert_eq!(back, file, "the saved run file differs from the accepted one:\n{saved}");
    true
}

/// A JSONL dataset read from memory with the default fields (`prompt`, `answer`): accepted
/// datasets hold at most one prompt per non-blank line.
///
/// # Panics
/// When more prompts than non-blank lines come back: a finding.
pub fn dataset_jsonl(data: &[u8]) -> bool {
    let Ok(prompts) = read_jsonl(data, Path::new("<fuzz>"), &DatasetFields::default()) else {
        return false;
    };
    let lines = data.split(|&b| b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count();
    assert!(prompts.len() <= lines, "{} prompts from {lines} non-blank lines", prompts.len());
    true
}

/// An engine's generation answer. The first byte picks the engine (vLLM, SGLang, llama.cpp),
/// the second the number of samples `n` (1-4), the rest is the JSON body. Parsed choices are
/// validated as rl-zero validates them (prompt echo taken as the sent prompt, EOS id 2).
///
/// # Panics
/// When a parser returns another number of choices than `n`, or validation passes something
/// the trainer relies on not seeing: a finding.
pub fn engine_response(data: &[u8]) -> bool {
    let [engine, n, body @ ..] = data else { return false };
    let n = 1 + usize::from(n % 4);
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else { return false };
    let o = Origin { url: "http://fuzz", request: "prompt 0" };
    let choices = match engine % 3 {
        0 => parse_vllm(&body, n, MAX_TOKENS, &o),
        1 => parse_sglang(&body, n, MAX_TOKENS, &o),
        _ => parse_llama_cpp(&body, MAX_TOKENS, &o).map(|c| vec![c]),
    };
    let Ok(choices) = choices else { return false };
    let mut valid = 0;
    if engine % 3 != 2 {
        assert_eq!(choices.len(), n, "parsed {} choices for n = {n}", choices.len());
    }
    for (i, c) in choices.iter().enumerate() {
        let prompt = c.prompt_echo.clone().unwrap_or_else(|| vec![1, 2, 3]);
        let expect = Expect {
            prompt: &prompt,
            max_tokens: MAX_TOKENS,
            vocab_size: VOCAB_SIZE,
            eos_ids: &[2],
        };
        let Ok(lps) =
            rl_rollout::protocol::validate_choice(c, &expect, &format!("choices[{i}]"), &o)
        else {
            continue;
        };
        assert_eq!(lps.len(), c.token_ids.len(), "one log-prob per token");
        assert!(c.token_ids.len() <= MAX_TOKENS, "{} tokens > max_tokens", c.token_ids.len());
        assert!(c.token_ids.iter().all(|&t| (t as usize) < VOCAB_SIZE), "an id outside the vocab");
        assert!(lps.iter().all(|l| l.is_finite() && *l <= 1e-4), "a log-prob not finite or > 0");
        valid += 1;
    }
    valid == choices.len()
}

/// A gold answer and a response, separated by the first zero byte (no zero byte: the whole input
/// is both), compared by the default [`MathVerifier`].
///
/// # Panics
/// When a correct verdict has no extracted answer, or two calls disagree: a finding.
pub fn verifier(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let (gold, response) = text.split_once('\0').unwrap_or((&text, &text));
    let v = MathVerifier::default();
    let first = v.check(gold, response);
    assert!(!first.correct || first.extracted.is_some(), "correct without an answer");
    assert_eq!(v.check(gold, response), first, "the verdict changed between two calls");
    first.correct
}

#[cfg(test)]
mod tests;
