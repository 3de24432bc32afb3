//! Request builders and strict response parsers of the three engines' generation routes.
//!
//! Field names follow the engines' sources (cited per function). Every sampling field is always
//! sent: an omitted field takes the engine's default, which comes from the model's
//! `generation_config.json` on vLLM ("user -> server default -> OpenAI default") and is
//! *not* neutral on llama.cpp (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05).

use rl_core::{FinishReason, SamplingConfig};
use serde_json::{Value, json};

use crate::{Result, RolloutError};

/// The inference engines rl-rollout speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engine {
    /// vLLM's OpenAI-compatible server (`vllm serve`).
    Vllm,
    /// SGLang (`python -m sglang.launch_server`).
    Sglang,
    /// llama.cpp (`llama-server`).
    LlamaCpp,
}

impl Engine {
    /// The engine's name as in configs (`vllm`, `sglang`, `llama_cpp`).
    pub fn name(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::LlamaCpp => "llama_cpp",
        }
    }

    /// Path of the generation route.
    pub fn generate_path(self) -> &'static str {
        match self {
            Engine::Vllm => "/v1/completions",
            Engine::Sglang => "/generate",
            Engine::LlamaCpp => "/completion",
        }
    }

    /// The seed as sent on the wire: vLLM's and SGLang's are int64 (vLLM: `ge=-2^63,
    /// le=2^63-1`), masked to `0..2^63`; llama.cpp's a uint32 where `0xFFFFFFFF` means random,
    /// masked to `0..2^31`.
    pub fn wire_seed(self, seed: u64) -> u64 {
        match self {
            Engine::Vllm | Engine::Sglang => seed & i64::MAX as u64,
            Engine::LlamaCpp => seed & 0x7fff_ffff,
        }
    }

    /// `true` when one request returns `n` samples (vLLM `n`, SGLang `sampling_params.n`);
    /// llama.cpp gets one request per sample.
    pub fn batches_samples(self) -> bool {
        !matches!(self, Engine::LlamaCpp)
    }
}

/// One generation request: a token-id prompt and `n` samples.
#[derive(Clone, Copy, Debug)]
pub struct GenRequest<'a> {
    /// The served model name (vLLM's `model` field).
    pub model: &'a str,
    /// Prompt token ids (never text: re-tokenisation would change the tokens).
    pub prompt: &'a [u32],
    /// Samples to return.
    pub n: usize,
    /// Sampling settings.
    pub config: &'a SamplingConfig,
    /// Per-request seed (already mixed per prompt/sample).
    pub seed: u64,
    /// Ids generation stops on (the trainer's EOS ids, sent explicitly).
    pub eos_ids: &'a [u32],
}

/// One sampled response as the engine reported it, before validation against the request.
#[derive(Clone, Debug, PartialEq)]
pub struct RawChoice {
    /// Sampled token ids.
    pub token_ids: Vec<u32>,
    /// Log-prob of each sampled token, as sent (f64 before validation).
    pub log_probs: Vec<f64>,
    /// The mapped finish reason.
    pub finish: FinishReason,
    /// The prompt ids the engine echoed, when it echoes them.
    pub prompt_echo: Option<Vec<u32>>,
    /// The id/string the engine says it stopped on, when it says.
    pub stop_token: Option<u32>,
}

/// The JSON body of a generation request (see the module docs for why every field is sent).
///
/// * vLLM `POST /v1/completions` (`vllm/entrypoints/openai/completion/protocol.py`,
///   `CompletionRequest`): `prompt` as ids, `logprobs: 0` (the sampled token's log-prob only),
///   `return_token_ids`, `stop_token_ids` = the trainer's EOS ids, `include_stop_str_in_output`.
/// * SGLang `POST /generate` (`python/sglang/srt/managers/io_struct.py` `GenerateReqInput`,
///   `sampling_params.py`): `input_ids`, `return_logprob`, `no_stop_trim`, `sampling_seed`.
/// * llama.cpp `POST /completion` (`tools/server/README.md`): `prompt` as ids, `n_probs: 1`,
///   `post_sampling_probs: false` (raw softmax), `return_tokens`, `cache_prompt: false`.
pub fn build_request(engine: Engine, r: &GenRequest<'_>) -> Value {
    let c = r.config;
    match engine {
        Engine::Vllm => json!({
            "model": r.model,
            "prompt": r.prompt,
            "n": r.n,
            "max_tokens": c.max_new_tokens,
            "min_tokens": 0,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "top_k": c.top_k.map_or(-1, |k| k as i64),
            "min_p": c.min_p,
            "seed": engine.wire_seed(r.seed),
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "repetition_penalty": 1.0,
            "stop": c.stop,
            "stop_token_ids": r.eos_ids,
            "ignore_eos": false,
            "include_stop_str_in_output": true,
            "skip_special_tokens": true,
            "logprobs": 0,
            "return_token_ids": true,
            "echo": false,
            "stream": false,
        }),
        Engine::Sglang => json!({
            "input_ids": r.prompt,
            "sampling_params": {
                "max_new_tokens": c.max_new_tokens,
                "min_new_tokens": 0,
                "temperature": c.temperature,
                "top_p": c.top_p,
                "top_k": c.top_k.map_or(-1, |k| k as i64),
                "min_p": c.min_p,
                "n": r.n,
                "presence_penalty": 0.0,
                "frequency_penalty": 0.0,
                "repetition_penalty": 1.0,
                "stop": c.stop,
                "stop_token_ids": r.eos_ids,
                "ignore_eos": false,
                "no_stop_trim": true,
                "skip_special_tokens": true,
                "sampling_seed": engine.wire_seed(r.seed),
            },
            "return_logprob": true,
            "stream": false,
        }),
        Engine::LlamaCpp => json!({
            "prompt": r.prompt,
            "n_predict": c.max_new_tokens,
            "temperature": c.temperature,
            "top_k": c.top_k.unwrap_or(0),
            "top_p": c.top_p,
            "min_p": c.min_p,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "repeat_last_n": 0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "dry_multiplier": 0.0,
            "xtc_probability": 0.0,
            "mirostat": 0,
            "seed": engine.wire_seed(r.seed),
            "stop": c.stop,
            "ignore_eos": false,
            "n_probs": 1,
            "post_sampling_probs": false,
            "return_tokens": true,
            "cache_prompt": false,
            "stream": false,
        }),
    }
}

/// Where a response came from, for error messages.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    /// The server URL.
    pub url: &'a str,
    /// The request label (e.g. `prompt 3`).
    pub request: &'a str,
}

impl Origin<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> RolloutError {
        RolloutError::response(self.url, self.request, field, reason)
    }
}

fn field<'v>(v: &'v Value, key: &str, path: &str, o: &Origin<'_>) -> Result<&'v Value> {
    v.get(key).ok_or_else(|| o.err(format!("{path}{key}"), "missing"))
}

fn ids(v: &Value, path: &str, o: &Origin<'_>, limit: usize) -> Result<Vec<u32>> {
    let arr = v.as_array().ok_or_else(|| o.err(path, "not an array of token ids"))?;
    if arr.len() > limit {
        return Err(o.err(path, format!("{} ids, more than the {limit} allowed", arr.len())));
    }
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| o.err(format!("{path}[{i}]"), format!("not a token id: {x}")))
        })
        .collect()
}

fn log_probs(v: &Value, path: &str, o: &Origin<'_>, limit: usize) -> Result<Vec<f64>> {
    let arr = v.as_array().ok_or_else(|| o.err(path, "not an array of log-probs"))?;
    if arr.len() > limit {
        return Err(o.err(path, format!("{} log-probs, more than the {limit} allowed", arr.len())));
    }
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64().ok_or_else(|| o.err(format!("{path}[{i}]"), format!("not a number: {x}")))
        })
        .collect()
}

/// Parses a vLLM `/v1/completions` answer for one prompt with `n` samples (`choices[i].index` is
/// the sample; the order of `choices` is not trusted). Observed shape: vLLM 0.32.0,
/// `tests/fixtures/vllm_0.32.0_completion.json`.
///
/// `stop_reason`: `null` = EOS, an integer = a `stop_token_ids` hit, a string = a stop string
/// (`vllm/entrypoints/openai/completion/protocol.py`, `CompletionResponseChoice`).
///
/// # Errors
/// [`RolloutError::Response`] naming the JSON path of the first problem.
pub fn parse_vllm(
    body: &Value,
    n: usize,
    max_tokens: usize,
    o: &Origin<'_>,
) -> Result<Vec<RawChoice>> {
    let choices = field(body, "choices", "", o)?
        .as_array()
        .ok_or_else(|| o.err("choices", "not an array"))?;
    if choices.len() != n {
        return Err(o.err("choices", format!("{} choices for n = {n}", choices.len())));
    }
    let mut out: Vec<Option<RawChoice>> = vec![None; n];
    for (i, c) in choices.iter().enumerate() {
        let p = format!("choices[{i}].");
        let index = field(c, "index", &p, o)?
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&x| x < n)
            .ok_or_else(|| o.err(format!("{p}index"), format!("must be an integer < n = {n}")))?;
        if out[index].is_some() {
            return Err(o.err(format!("{p}index"), format!("index {index} appears twice")));
        }
        let token_ids = match c.get("token_ids") {
            Some(v) if !v.is_null() => ids(v, &format!("{p}token_ids"), o, max_tokens)?,
            _ => {
                return Err(o.err(
                    format!("{p}token_ids"),
                    "missing: the server must support `return_token_ids` (vLLM >= 0.10.2)",
                ));
            }
        };
        let lp_obj = field(c, "logprobs", &p, o)?;
        if lp_obj.is_null() {
            return Err(o.err(format!("{p}logprobs"), "null: request `logprobs: 0` was ignored"));
        }
        let lps = log_probs(
            field(lp_obj, "token_logprobs", &format!("{p}logprobs."), o)?,
            &format!("{p}logprobs.token_logprobs"),
            o,
            max_tokens,
        )?;
        let prompt_echo = match c.get("prompt_token_ids") {
            Some(v) if !v.is_null() => {
                Some(ids(v, &format!("{p}prompt_token_ids"), o, usize::MAX)?)
            }
            _ => None,
        };
        let reason = field(c, "finish_reason", &p, o)?;
        let stop_reason = c.get("stop_reason").unwrap_or(&Value::Null);
        let (finish, stop_token) = match reason.as_str() {
            Some("length") => (FinishReason::Length, None),
            Some("abort") => (FinishReason::Aborted, None),
            Some("stop") => match stop_reason {
                Value::Null => (FinishReason::Eos, None),
                Value::Number(x) => (
                    FinishReason::Eos,
                    Some(x.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| {
                        o.err(format!("{p}stop_reason"), format!("not a token id: {x}"))
                    })?),
                ),
                Value::String(_) => (FinishReason::StopString, None),
                other => {
                    return Err(o.err(format!("{p}stop_reason"), format!("unexpected {other}")));
                }
            },
            _ => {
                return Err(o.err(
                    format!("{p}finish_reason"),
                    format!("{reason} is not one of \"stop\", \"length\", \"abort\""),
                ));
            }
        };
        out[index] = Some(RawChoice { token_ids, log_probs: lps, finish, prompt_echo, stop_token });
    }
    Ok(out.into_iter().map(|c| c.expect("every index filled: n distinct indices < n")).collect())
}

/// Parses a SGLang `/generate` answer: one object for `n = 1`, a list of `n` objects otherwise.
/// Each has `output_ids` and `meta_info.{output_token_logprobs: [[logprob, id, text|null], …],
/// finish_reason: {type, matched}}` (`python/sglang/srt/managers/tokenizer_manager.py`; verl
/// reads the same fields in `async_sglang_server.py`).
///
/// # Errors
/// [`RolloutError::Response`] naming the JSON path of the first problem.
pub fn parse_sglang(
    body: &Value,
    n: usize,
    max_tokens: usize,
    o: &Origin<'_>,
) -> Result<Vec<RawChoice>> {
    let items: Vec<&Value> = match body {
        Value::Array(a) => a.iter().collect(),
        obj @ Value::Object(_) => vec![obj],
        other => return Err(o.err("body", format!("expected an object or a list, got {other}"))),
    };
    if items.len() != n {
        return Err(o.err("body", format!("{} outputs for n = {n}", items.len())));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let p = if n == 1 && !body.is_array() { String::new() } else { format!("[{i}].") };
            let meta = field(item, "meta_info", &p, o)?;
            let mp = format!("{p}meta_info.");
            let otl = field(meta, "output_token_logprobs", &mp, o)?
                .as_array()
                .ok_or_else(|| o.err(format!("{mp}output_token_logprobs"), "not an array"))?;
            if otl.len() > max_tokens {
                return Err(o.err(
                    format!("{mp}output_token_logprobs"),
                    format!("{} tokens, more than max_new_tokens = {max_tokens}", otl.len()),
                ));
            }
            let (mut token_ids, mut lps) = (Vec::new(), Vec::new());
            for (t, e) in otl.iter().enumerate() {
                let ep = format!("{mp}output_token_logprobs[{t}]");
                let lp = e.get(0).and_then(Value::as_f64).ok_or_else(|| {
                    o.err(format!("{ep}[0]"), format!("log-prob is not a number: {e}"))
                })?;
                let id = e.get(1).and_then(Value::as_u64).and_then(|x| u32::try_from(x).ok());
                token_ids.push(id.ok_or_else(|| o.err(format!("{ep}[1]"), "not a token id"))?);
                lps.push(lp);
            }
            if let Some(out_ids) = item.get("output_ids").filter(|v| !v.is_null()) {
                let out_ids = ids(out_ids, &format!("{p}output_ids"), o, max_tokens)?;
                if out_ids != token_ids {
                    return Err(o.err(
                        format!("{p}output_ids"),
                        "differ from the ids in meta_info.output_token_logprobs",
                    ));
                }
            }
            let fr = field(meta, "finish_reason", &mp, o)?;
            let kind = fr.get("type").and_then(Value::as_str).unwrap_or("");
            let matched = fr.get("matched").unwrap_or(&Value::Null);
            let (finish, stop_token) = match (kind, matched) {
                ("length", _) => (FinishReason::Length, None),
                ("abort", _) => (FinishReason::Aborted, None),
                ("stop", Value::String(_)) => (FinishReason::StopString, None),
                ("stop", Value::Number(x)) => {
                    (FinishReason::Eos, x.as_u64().and_then(|x| u32::try_from(x).ok()))
                }
                ("stop", Value::Null) => (FinishReason::Eos, None),
                _ => {
                    return Err(o.err(
                        format!("{mp}finish_reason"),
                        format!("{fr} is not a known finish reason"),
                    ));
                }
            };
            Ok(RawChoice { token_ids, log_probs: lps, finish, prompt_echo: None, stop_token })
        })
        .collect()
}

/// Parses a llama.cpp `/completion` answer (one sample): `tokens`,
/// `completion_probabilities[i].{id, logprob}`, `stop_type` (`eos` | `limit` | `word`),
/// `truncated` (`tools/server/README.md`, "POST /completion").
///
/// # Errors
/// [`RolloutError::Response`] naming the JSON path of the first problem; a `truncated` answer
/// (the context was exceeded) is an error.
pub fn parse_llama_cpp(body: &Value, max_tokens: usize, o: &Origin<'_>) -> Result<RawChoice> {
    if body.get("truncated").and_then(Value::as_bool) == Some(true) {
        return Err(o.err("truncated", "the prompt and response exceeded the context size"));
    }
    let probs = field(body, "completion_probabilities", "", o)?
        .as_array()
        .ok_or_else(|| o.err("completion_probabilities", "not an array: request `n_probs: 1`"))?;
    if probs.len() > max_tokens {
        return Err(o.err(
            "completion_probabilities",
            format!("{} tokens, more than n_predict = {max_tokens}", probs.len()),
        ));
    }
    let (mut token_ids, mut lps) = (Vec::new(), Vec::new());
    for (t, e) in probs.iter().enumerate() {
        let p = format!("completion_probabilities[{t}]");
        let id = e.get("id").and_then(Value::as_u64).and_then(|x| u32::try_from(x).ok());
        token_ids.push(id.ok_or_else(|| o.err(format!("{p}.id"), "not a token id"))?);
        let lp = e.get("logprob").and_then(Value::as_f64);
        lps.push(lp.ok_or_else(|| o.err(format!("{p}.logprob"), "not a number"))?);
    }
    if let Some(tokens) = body.get("tokens").filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        let tokens = ids(tokens, "tokens", o, max_tokens)?;
        if tokens != token_ids {
            return Err(o.err("tokens", "differ from the ids in completion_probabilities"));
        }
    }
    let finish = match body.get("stop_type").and_then(Value::as_str) {
        Some("eos") => FinishReason::Eos,
        Some("word") => FinishReason::StopString,
        Some("limit") => FinishReason::Length,
        other => {
            return Err(o.err("stop_type", format!("{other:?} is not one of eos, word, limit")));
        }
    };
    Ok(RawChoice { token_ids, log_probs: lps, finish, prompt_echo: None, stop_token: None })
}

/// vLLM's OpenAI layer clamps `-inf` log-probs to this value
/// (`max(logprob, -9999.0)` in the completion serving code): a clamped value is not a log-prob.
pub const CLAMP_SENTINEL: f64 = -9999.0;

/// What a validated choice must agree with.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// The prompt that was sent.
    pub prompt: &'a [u32],
    /// `max_new_tokens`.
    pub max_tokens: usize,
    /// Tokenizer vocabulary size: ids must be below it.
    pub vocab_size: usize,
    /// The trainer's EOS ids.
    pub eos_ids: &'a [u32],
}

/// Strict checks of one choice: equal lengths, at most `max_tokens`, ids in the vocabulary,
/// log-probs finite, `<= 0` (up to 1e-4 of rounding) and not the clamp sentinel, the prompt echoed
/// unchanged (a BOS inserted by the server shifts every position), EOS only as the last token and
/// only with an EOS finish reason, which must end on one of the trainer's EOS ids. Returns the
/// log-probs as f32.
///
/// # Errors
/// [`RolloutError::Response`] naming `label` (e.g. `choices[2]`) and the field.
pub fn validate_choice(
    c: &RawChoice,
    e: &Expect<'_>,
    label: &str,
    o: &Origin<'_>,
) -> Result<Vec<f32>> {
    let n = c.token_ids.len();
    if c.log_probs.len() != n {
        return Err(o.err(
            format!("{label}.log_probs"),
            format!("{} log-probs for {n} tokens", c.log_probs.len()),
        ));
    }
    if n > e.max_tokens {
        return Err(o.err(
            format!("{label}.token_ids"),
            format!("{n} tokens > max_new_tokens {}", e.max_tokens),
        ));
    }
    if let Some(echo) = &c.prompt_echo
        && echo.as_slice() != e.prompt
    {
        let at = echo
            .iter()
            .zip(e.prompt)
            .position(|(a, b)| a != b)
            .unwrap_or(echo.len().min(e.prompt.len()));
        return Err(o.err(
            format!("{label}.prompt_token_ids"),
            format!(
                "prompt not echoed unchanged (first difference at position {at}; {} ids sent, {} echoed)",
                e.prompt.len(),
                echo.len()
            ),
        ));
    }
    for (t, &id) in c.token_ids.iter().enumerate() {
        if id as usize >= e.vocab_size {
            return Err(o.err(
                format!("{label}.token_ids[{t}]"),
                format!("id {id} outside the tokenizer's vocabulary ({})", e.vocab_size),
            ));
        }
        if e.eos_ids.contains(&id) && t + 1 != n {
            return Err(o.err(
                format!("{label}.token_ids[{t}]"),
                format!("EOS id {id} before the end of the response ({n} tokens): the engine's EOS ids differ"),
            ));
        }
    }
    let mut out = Vec::with_capacity(n);
    for (t, &lp) in c.log_probs.iter().enumerate() {
        if !lp.is_finite() || lp <= CLAMP_SENTINEL || lp > 1e-4 {
            return Err(o.err(
                format!("{label}.log_probs[{t}]"),
                format!("{lp} is not a log-prob (finite, <= 0, > {CLAMP_SENTINEL})"),
            ));
        }
        out.push(lp.min(0.0) as f32);
    }
    if c.finish == FinishReason::Eos {
        match c.token_ids.last() {
            Some(last) if e.eos_ids.contains(last) => {}
            last => {
                return Err(o.err(
                    format!("{label}.finish_reason"),
                    format!(
                        "EOS stop, but the last token {last:?} is not one of the EOS ids {:?}",
                        e.eos_ids
                    ),
                ));
            }
        }
        if let Some(s) = c.stop_token
            && !e.eos_ids.contains(&s)
        {
            return Err(
                o.err(format!("{label}.stop_reason"), format!("stopped on id {s}, not an EOS id"))
            );
        }
    }
    Ok(out)
}
