//! A mock inference engine on 127.0.0.1 for tests (feature `testing`).
//!
//! [`MockServer`] speaks the parts of the three protocols rl-rollout uses — vLLM
//! (`/v1/completions`, `/v1/models`, `/tokenize`, `/health` and the dev routes `/pause`,
//! `/resume`, `/collective_rpc`, `/reset_prefix_cache`, `/update_weight_version`,
//! `/weight_info`), SGLang (`/generate`, `/model_info`, `/update_weights_from_disk`) and
//! llama.cpp (`/completion`, `/props`, `/tokenize`) — on a `std::net::TcpListener` with one
//! thread per connection. Generation and reloads go to a [`MockModel`] (in rl-zero's tests: a
//! real `LmPolicy`), so log-probs over HTTP can be compared with local ones. Every call is
//! recorded, and [`Fault`]s can be queued per route (HTTP errors, delays, aborts, bad log-probs,
//! a shifted prompt, an ignored reload, a version that is not updated).
//!
//! The mock is strict where the engines are permissive: a generation request that omits a
//! sampling field is answered with HTTP 400, so tests prove that every field is sent.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rl_core::{FinishReason, SampledSequence, SamplingConfig};
use serde_json::{Value, json};

use crate::Engine;

/// The model behind a [`MockServer`].
pub trait MockModel: Send {
    /// `n` samples of `prompt` (one [`SampledSequence`] each, `prompt_index` ignored).
    fn generate(
        &mut self,
        prompt: &[u32],
        n: usize,
        config: &SamplingConfig,
    ) -> rl_core::Result<Vec<SampledSequence>>;
    /// Replaces the weights with those of the Hugging Face directory `dir`.
    fn reload(&mut self, dir: &Path) -> rl_core::Result<()>;
    /// The engine-side tokenizer (for `/tokenize`).
    fn tokenize(&self, text: &str) -> rl_core::Result<Vec<u32>>;
    /// Replaces the named weights (Hugging Face names) in place, as vLLM's in-place reload does
    /// with a weight stream (`rlz_receive_weights`). Default: not supported.
    fn load_weights(&mut self, weights: Vec<(String, rl_core::Tensor)>) -> rl_core::Result<()> {
        let _ = weights;
        Err(rl_core::Error::Unsupported("this mock model cannot load streamed weights".into()))
    }
}

/// A fault injected into the next matching request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this HTTP status (and a short body).
    Status(u16),
    /// Wait this long before answering.
    Delay(Duration),
    /// Close the connection without answering.
    Hangup,
    /// Generation: cut every response in half and report it aborted.
    Abort,
    /// Generation: replace the first log-prob with vLLM's -9999 clamp value.
    ClampLogProb,
    /// Generation: echo the prompt with an extra BOS id 1 in front.
    ShiftPrompt,
    /// Generation: replace the first sampled id with this one.
    TokenId(u32),
    /// Reload routes: answer success without reloading (an engine keeping stale weights).
    IgnoreReload,
    /// `/update_weight_version`: answer success without changing the version.
    KeepVersion,
    /// `rlz_receive_weights`: read the first tensor, then close the stream and fail (a worker
    /// dying mid-transfer).
    DropStream,
    /// Reload routes: load the weights but report something else (`rlz_receive_weights`: one
    /// tensor fewer; `reload_weights_tied`: another path), as a stale or mismatched worker
    /// extension would.
    Misreport,
}

#[derive(Default)]
struct State {
    faults: VecDeque<(String, Fault)>,
    calls: Vec<String>,
    version: String,
    paused: bool,
}

/// A running mock engine; stops (and joins its accept thread) when dropped.
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer").field("addr", &self.addr).finish()
    }
}

struct Shared {
    engine: Engine,
    served: String,
    context: usize,
    model: Mutex<Box<dyn MockModel>>,
    state: Arc<Mutex<State>>,
}

impl MockServer {
    /// Starts a mock `engine` on 127.0.0.1 (a free port) serving `model` as `served_name`
    /// with a context length of `context` tokens.
    ///
    /// # Errors
    /// Socket errors.
    pub fn start(
        engine: Engine,
        model: Box<dyn MockModel>,
        served_name: &str,
        context: usize,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State { version: "0".into(), ..State::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            engine,
            served: served_name.into(),
            context,
            model: Mutex::new(model),
            state: Arc::clone(&state),
        });
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = handle(stream, &shared);
                });
            }
        });
        Ok(Self { addr, state, stop, thread: Some(thread) })
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues `fault` for the next request whose path starts with `route`.
    pub fn push_fault(&self, route: &str, fault: Fault) {
        self.state.lock().expect("mock state").faults.push_back((route.into(), fault));
    }

    /// Every request so far as `METHOD /path?query`, in arrival order.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().expect("mock state").calls.clone()
    }

    /// The weight version the mock reports.
    pub fn weight_version(&self) -> String {
        self.state.lock().expect("mock state").version.clone()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const MAX_HEADER: usize = 64 << 10;
const MAX_BODY: usize = 16 << 20;

fn handle(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) =
        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut len = 0usize;
    let mut header_bytes = 0;
    loop {
        let mut h = String::new();
        let n = reader.read_line(&mut h)?;
        header_bytes += n;
        if n == 0 || h == "\r\n" || h == "\n" || header_bytes > MAX_HEADER {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    if len > MAX_BODY {
        return respond(stream, 413, &json!({"error": "body too large"}));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let fault = {
        let mut st = shared.state.lock().expect("mock state");
        st.calls.push(if query.is_empty() {
            format!("{method} {path}")
        } else {
            format!("{method} {path}?{query}")
        });
        let pos = st.faults.iter().position(|(r, _)| path.starts_with(r.as_str()));
        pos.and_then(|p| st.faults.remove(p)).map(|(_, f)| f)
    };
    match fault {
        Some(Fault::Status(code)) => {
            return respond(stream, code, &json!({"error": format!("injected {code}")}));
        }
        Some(Fault::Delay(d)) => std::thread::sleep(d),
        Some(Fault::Hangup) => return Ok(()),
        _ => {}
    }
    let req: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return respond(stream, 400, &json!({"error": format!("bad json: {e}")})),
        }
    };
    let (status, answer) = route(shared, &method, path, query, &req, fault.as_ref());
    respond(stream, status, &answer)
}

fn respond(mut stream: TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let text = if body.is_null() { String::new() } else { body.to_string() };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(text.as_bytes())?;
    stream.flush()
}

fn bad(reason: impl Into<String>) -> (u16, Value) {
    (400, json!({"error": reason.into()}))
}

/// The sampling fields a request must carry (every one, so engine defaults never apply).
fn required(engine: Engine) -> &'static [&'static str] {
    match engine {
        Engine::Vllm => &[
            "model",
            "prompt",
            "n",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "stop",
            "stop_token_ids",
            "logprobs",
            "return_token_ids",
        ],
        Engine::Sglang => &[
            "max_new_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "n",
            "stop",
            "stop_token_ids",
            "repetition_penalty",
            "frequency_penalty",
            "presence_penalty",
            "sampling_seed",
        ],
        Engine::LlamaCpp => &[
            "prompt",
            "n_predict",
            "temperature",
            "top_k",
            "top_p",
            "min_p",
            "typical_p",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "dry_multiplier",
            "xtc_probability",
            "mirostat",
            "seed",
            "stop",
            "n_probs",
            "return_tokens",
        ],
    }
}

fn sampling_from(engine: Engine, req: &Value) -> Result<(Vec<u32>, usize, SamplingConfig), String> {
    let params = if engine == Engine::Sglang { &req["sampling_params"] } else { req };
    for f in required(engine) {
        if params.get(*f).is_none() {
            return Err(format!(
                "missing sampling field `{f}` (the engine would apply its default)"
            ));
        }
    }
    let prompt_key = if engine == Engine::Sglang { "input_ids" } else { "prompt" };
    let prompt: Vec<u32> = serde_json::from_value(req[prompt_key].clone())
        .map_err(|e| format!("`{prompt_key}` must be token ids: {e}"))?;
    let num = |k: &str| params[k].as_f64().ok_or(format!("`{k}` is not a number"));
    let max_key = match engine {
        Engine::Vllm => "max_tokens",
        Engine::Sglang => "max_new_tokens",
        Engine::LlamaCpp => "n_predict",
    };
    let top_k = num("top_k")?;
    let n = if engine == Engine::LlamaCpp { 1 } else { num("n")? as usize };
    let cfg = SamplingConfig {
        temperature: num("temperature")? as f32,
        top_p: num("top_p")? as f32,
        top_k: if top_k <= 0.0 { None } else { Some(top_k as usize) },
        min_p: num("min_p")? as f32,
        max_new_tokens: num(max_key)? as usize,
        n,
        seed: params[if engine == Engine::Sglang { "sampling_seed" } else { "seed" }]
            .as_u64()
            .unwrap_or(0),
        stop: serde_json::from_value(params["stop"].clone()).unwrap_or_default(),
    };
    Ok((prompt, n, cfg))
}

fn route(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    req: &Value,
    fault: Option<&Fault>,
) -> (u16, Value) {
    let engine = shared.engine;
    let st = || shared.state.lock().expect("mock state");
    match (engine, method, path) {
        (_, "GET", "/health") => (200, Value::Null),
        (Engine::Vllm, "GET", "/v1/models") => (
            200,
            json!({"object": "list", "data": [{"id": shared.served, "object": "model", "max_model_len": shared.context}]}),
        ),
        (Engine::Vllm, "POST", "/tokenize") => tokenize(shared, req["prompt"].as_str()),
        (Engine::LlamaCpp, "POST", "/tokenize") => tokenize(shared, req["content"].as_str()),
        (Engine::LlamaCpp, "GET", "/props") => (
            200,
            json!({"default_generation_settings": {"n_ctx": shared.context}, "model_path": shared.served}),
        ),
        (Engine::Sglang, "GET", "/model_info") => {
            (200, json!({"model_path": shared.served, "weight_version": st().version}))
        }
        (Engine::Vllm, "POST", "/v1/completions")
        | (Engine::Sglang, "POST", "/generate")
        | (Engine::LlamaCpp, "POST", "/completion") => generate(shared, req, fault),
        (Engine::Vllm, "POST", "/pause") => {
            if !query.contains("mode=wait") && !query.contains("mode=keep") {
                return bad("pause without mode=wait|keep would abort requests");
            }
            st().paused = true;
            (200, json!({"status": "paused"}))
        }
        (Engine::Vllm, "POST", "/resume") => {
            st().paused = false;
            (200, json!({"status": "resumed"}))
        }
        (Engine::Vllm, "POST", "/collective_rpc") if req["method"] == "rlz_worker_info" => {
            (200, json!({"results": [{"rank": 0, "world_size": 1, "device": "cpu"}]}))
        }
        (Engine::Vllm, "POST", "/collective_rpc") if req["method"] == "rlz_receive_weights" => {
            match receive_stream(shared, &req["kwargs"], fault) {
                Ok(result) => (200, json!({"results": [result]})),
                Err(e) => (500, json!({"error": e})),
            }
        }
        (Engine::Vllm, "POST", "/collective_rpc") => {
            let method = req["method"].as_str().unwrap_or("");
            let Some(dir) = req["kwargs"]["weights_path"].as_str() else {
                return bad("kwargs.weights_path missing");
            };
            if !matches!(method, "reload_weights" | "reload_weights_tied") {
                return (500, json!({"error": format!("no worker method {method}")}));
            }
            if fault != Some(&Fault::IgnoreReload)
                && let Err(e) = shared.model.lock().expect("mock model").reload(Path::new(dir))
            {
                return (500, json!({"error": e.to_string()}));
            }
            let reported =
                if fault == Some(&Fault::Misreport) { format!("{dir}.old") } else { dir.into() };
            let result = if method == "reload_weights_tied" {
                json!({"weights_path": reported, "tied": true, "lm_head_resynced": true})
            } else {
                Value::Null
            };
            (200, json!({"results": [result]}))
        }
        (Engine::Vllm, "POST", "/reset_prefix_cache") => (200, json!({"success": true})),
        (Engine::Vllm, "POST", "/update_weight_version") => {
            let Some(v) = req["new_version"].as_str() else { return bad("new_version missing") };
            if fault != Some(&Fault::KeepVersion) {
                st().version = v.to_string();
            }
            (200, json!({"success": true, "new_version": v}))
        }
        (Engine::Vllm, "GET", "/weight_info") => (200, json!({"weight_version": st().version})),
        (Engine::Sglang, "POST", "/update_weights_from_disk") => {
            let Some(dir) = req["model_path"].as_str() else { return bad("model_path missing") };
            if fault != Some(&Fault::IgnoreReload)
                && let Err(e) = shared.model.lock().expect("mock model").reload(Path::new(dir))
            {
                return (200, json!({"success": false, "message": e.to_string()}));
            }
            if fault != Some(&Fault::KeepVersion)
                && let Some(v) = req["weight_version"].as_str()
            {
                st().version = v.to_string();
            }
            (200, json!({"success": true, "message": "Succeeded to update model weights."}))
        }
        _ => (404, json!({"error": format!("no route {method} {path}")})),
    }
}

/// The worker side of a TCP weight stream, as `scripts/vllm/rlz_vllm_ext.py` does it: connect,
/// say hello with the nonce and version, read every tensor, load them.
fn receive_stream(
    shared: &Shared,
    kwargs: &Value,
    fault: Option<&Fault>,
) -> std::result::Result<Value, String> {
    if kwargs["transport"] != "tcp" {
        return Err(format!("the mock receives over tcp only, not {}", kwargs["transport"]));
    }
    let (Some(address), Some(nonce), Some(version), Some(specs)) = (
        kwargs["address"].as_str(),
        kwargs["nonce"].as_u64(),
        kwargs["version"].as_u64(),
        kwargs["tensors"].as_array(),
    ) else {
        return Err(format!("kwargs need address, nonce, version and tensors: {kwargs}"));
    };
    let mut sock = TcpStream::connect(address).map_err(|e| format!("connect {address}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let mut hello = crate::STREAM_HELLO.to_vec();
    hello.extend_from_slice(&nonce.to_le_bytes());
    hello.extend_from_slice(&version.to_le_bytes());
    hello.extend_from_slice(&0u32.to_le_bytes());
    sock.write_all(&hello).map_err(|e| e.to_string())?;
    let mut weights = Vec::with_capacity(specs.len());
    let mut bytes = 0u64;
    for spec in specs {
        let (Some(name), Some(dtype), Some(shape)) =
            (spec[0].as_str(), spec[1].as_str(), spec[2].as_array())
        else {
            return Err(format!("bad tensor spec {spec}"));
        };
        let dtype = crate::export_dtype(dtype, "dtype").map_err(|e| e.to_string())?;
        let shape: Vec<usize> =
            shape.iter().filter_map(|d| d.as_u64()).map(|d| d as usize).collect();
        let mut buf = vec![0u8; shape.iter().product::<usize>() * dtype.size_in_bytes()];
        sock.read_exact(&mut buf).map_err(|e| format!("reading {name}: {e}"))?;
        bytes += buf.len() as u64;
        let t = rl_core::Tensor::from_raw_buffer(&buf, dtype, &shape, &rl_core::Device::Cpu)
            .map_err(|e| e.to_string())?;
        weights.push((name.to_string(), t));
        if fault == Some(&Fault::DropStream) {
            return Err(format!("worker dropped the stream after {name}"));
        }
    }
    let n = weights.len() - usize::from(fault == Some(&Fault::Misreport));
    if fault != Some(&Fault::IgnoreReload) {
        shared
            .model
            .lock()
            .expect("mock model")
            .load_weights(weights)
            .map_err(|e| e.to_string())?;
    }
    Ok(
        json!({"version": version, "rank": 0, "tensors": n, "bytes": bytes, "tied": true, "lm_head_resynced": true}),
    )
}

fn tokenize(shared: &Shared, text: Option<&str>) -> (u16, Value) {
    let Some(text) = text else { return bad("no text to tokenize") };
    match shared.model.lock().expect("mock model").tokenize(text) {
        Ok(ids) => {
            (200, json!({"tokens": ids, "count": ids.len(), "max_model_len": shared.context}))
        }
        Err(e) => (500, json!({"error": e.to_string()})),
    }
}

fn generate(shared: &Shared, req: &Value, fault: Option<&Fault>) -> (u16, Value) {
    let engine = shared.engine;
    if engine == Engine::Vllm && req["model"].as_str() != Some(shared.served.as_str()) {
        return (404, json!({"error": format!("model {} does not exist", req["model"])}));
    }
    if engine == Engine::Vllm
        && (req["logprobs"] != json!(0) || req["return_token_ids"] != json!(true))
    {
        return bad("rl-zero needs logprobs: 0 and return_token_ids: true");
    }
    let (prompt, n, cfg) = match sampling_from(engine, req) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let mut seqs = match shared.model.lock().expect("mock model").generate(&prompt, n, &cfg) {
        Ok(s) => s,
        Err(e) => return (500, json!({"error": e.to_string()})),
    };
    for s in &mut seqs {
        match fault {
            Some(Fault::Abort) => {
                let keep = s.token_ids.len() / 2;
                s.token_ids.truncate(keep);
                s.log_probs.truncate(keep);
                s.finish = FinishReason::Aborted;
            }
            Some(Fault::ClampLogProb) if !s.log_probs.is_empty() => s.log_probs[0] = -9999.0,
            Some(Fault::TokenId(id)) if !s.token_ids.is_empty() => s.token_ids[0] = *id,
            _ => {}
        }
    }
    let echo: Vec<u32> = if fault == Some(&Fault::ShiftPrompt) {
        std::iter::once(1).chain(prompt.iter().copied()).collect()
    } else {
        prompt.clone()
    };
    let stop_str = cfg.stop.first().cloned().unwrap_or_default();
    match engine {
        Engine::Vllm => {
            let choices: Vec<Value> = seqs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let (reason, stop_reason) = match s.finish {
                        FinishReason::Eos => ("stop", Value::Null),
                        FinishReason::StopString => ("stop", json!(stop_str)),
                        FinishReason::Length => ("length", Value::Null),
                        FinishReason::Aborted => ("abort", Value::Null),
                    };
                    json!({
                        "index": i, "text": "",
                        "logprobs": {"token_logprobs": s.log_probs, "tokens": s.token_ids.iter().map(|t| format!("token_id:{t}")).collect::<Vec<_>>()},
                        "finish_reason": reason, "stop_reason": stop_reason,
                        "token_ids": s.token_ids, "prompt_token_ids": echo,
                    })
                })
                .collect();
            // Out of order on purpose: parsers must use `index`.
            let choices: Vec<Value> = choices.into_iter().rev().collect();
            (
                200,
                json!({"id": "cmpl-mock", "object": "text_completion", "model": shared.served, "choices": choices}),
            )
        }
        Engine::Sglang => {
            let outs: Vec<Value> = seqs
                .iter()
                .map(|s| {
                    let fr = match s.finish {
                        FinishReason::Eos => json!({"type": "stop", "matched": s.token_ids.last()}),
                        FinishReason::StopString => json!({"type": "stop", "matched": stop_str}),
                        FinishReason::Length => {
                            json!({"type": "length", "length": s.token_ids.len()})
                        }
                        FinishReason::Aborted => json!({"type": "abort", "message": "aborted"}),
                    };
                    let otl: Vec<Value> = s
                        .token_ids
                        .iter()
                        .zip(&s.log_probs)
                        .map(|(t, l)| json!([l, t, null]))
                        .collect();
                    json!({"text": "", "output_ids": s.token_ids, "meta_info": {
                        "output_token_logprobs": otl, "finish_reason": fr,
                        "weight_version": shared.state.lock().expect("mock state").version}})
                })
                .collect();
            if n == 1 { (200, outs[0].clone()) } else { (200, Value::Array(outs)) }
        }
        Engine::LlamaCpp => {
            let s = &seqs[0];
            let stop_type = match s.finish {
                FinishReason::Eos => "eos",
                FinishReason::StopString => "word",
                FinishReason::Length => "limit",
                FinishReason::Aborted => "none",
            };
            let probs: Vec<Value> = s
                .token_ids
                .iter()
                .zip(&s.log_probs)
                .map(|(t, l)| json!({"id": t, "token": "", "logprob": l, "bytes": [], "top_logprobs": []}))
                .collect();
            (
                200,
                json!({"content": "", "tokens": s.token_ids, "completion_probabilities": probs,
                "stop_type": stop_type, "stopping_word": "", "truncated": false,
                "tokens_evaluated": prompt.len()}),
            )
        }
    }
}

/// A real engine server started by a test (vLLM, SGLang, llama.cpp): its whole process group
/// (engines start worker processes) gets SIGTERM on drop, then SIGKILL after `grace`.
#[derive(Debug)]
pub struct EngineProcess {
    child: std::process::Child,
    /// The server's base URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// The file receiving the server's stdout and stderr.
    pub log: std::path::PathBuf,
    grace: Duration,
}

impl EngineProcess {
    /// Spawns `cmd` in a process group of its own with its output in `log`, then polls
    /// `GET {url}/health` every second until it answers 200.
    ///
    /// # Errors
    /// The spawn error, or the last 3,000 bytes of the log when the server is not healthy after
    /// `timeout` or exits first (the process group is killed before returning).
    pub fn spawn(
        mut cmd: std::process::Command,
        url: &str,
        log: &Path,
        timeout: Duration,
    ) -> Result<Self, String> {
        use std::os::unix::process::CommandExt;
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        cmd.stdout(std::process::Stdio::from(file))
            .stderr(std::process::Stdio::from(err))
            .process_group(0);
        let child = cmd.spawn().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let mut server = Self {
            child,
            url: url.trim_end_matches('/').to_string(),
            log: log.to_path_buf(),
            grace: Duration::from_secs(20),
        };
        let health = format!("{}/health", server.url);
        let t0 = std::time::Instant::now();
        loop {
            if ureq::get(&health).timeout(Duration::from_secs(2)).call().is_ok() {
                return Ok(server);
            }
            let exited = matches!(server.child.try_wait(), Ok(Some(_)));
            if exited || t0.elapsed() > timeout {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail = &text[text.floor_char_boundary(text.len().saturating_sub(3000))..];
                let why = if exited { "exited" } else { "is not healthy" };
                server.grace = Duration::from_secs(2);
                return Err(format!(
                    "the server {why} after {:.0} s; log tail:\n{tail}",
                    t0.elapsed().as_secs_f64()
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let kill = |signal: &str| {
            let _ = std::process::Command::new("kill")
                .args(["-s", signal, "--", &group])
                .stderr(std::process::Stdio::null())
                .status();
        };
        kill("TERM");
        let t0 = std::time::Instant::now();
        while t0.elapsed() < self.grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        kill("KILL");
        let _ = self.child.wait();
    }
}
