//! [`RemoteSampler`]: rl-core's [`Sampler`] over an inference engine's HTTP API.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rl_core::rng::SplitMix64;
use rl_core::{
    Device, Prompt, RolloutBatch, RolloutParts, SampledSequence, Sampler, SamplingConfig,
    TokenCodec, TokenScorer,
};
use serde_json::{Value, json};

use crate::http::Http;
use crate::protocol::{
    self, Engine, Expect, GenRequest, Origin, RawChoice, build_request, validate_choice,
};
use crate::{EngineConfig, Result, RolloutError};

/// The per-request seed of sample `k` of prompt `i` (`k = 0` when one request returns all `n`
/// samples): a SplitMix64 mix of `(seed, i, k)`, so a batch is reproducible for a given seed while
/// every request gets its own stream.
pub fn request_seed(seed: u64, prompt: usize, sample: usize) -> u64 {
    let mut r = SplitMix64::new(
        seed ^ (prompt as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (sample as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_u64()
}

/// What the start-up checks found on each server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreflightReport {
    /// The served model name used in requests.
    pub model: String,
    /// Per server: context length the engine reports (`None` when it does not say).
    pub context: Vec<Option<usize>>,
    /// Per server: whether the engine's tokenizer was compared on the probe text.
    pub tokenizer_checked: Vec<bool>,
    /// Per server: mean `|engine − trainer|` log-prob of the greedy probe (when a scorer was given).
    pub probe_mean_abs_diff: Vec<Option<f64>>,
}

/// The state shared by a [`RemoteSampler`] and the [`crate::DiskSync`] built from it.
pub(crate) struct Client {
    pub(crate) engine: Engine,
    pub(crate) cfg: EngineConfig,
    pub(crate) http: Http,
    pub(crate) codec: Arc<dyn TokenCodec>,
    pub(crate) eos_ids: Vec<u32>,
    pub(crate) vocab_size: usize,
    pub(crate) model: String,
    /// The smallest context length any server reported.
    pub(crate) context: Option<usize>,
    /// The last version published through a sync (what every engine must report).
    pub(crate) version: Mutex<Option<u64>>,
}

impl Client {
    pub(crate) fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.cfg.urls[i].trim_end_matches('/'))
    }

    /// One generation request for prompt `prompt_index`: validated sequences.
    #[allow(clippy::too_many_arguments)]
    fn generate_one(
        &self,
        url_index: usize,
        prompt_index: usize,
        prompt: &[u32],
        n: usize,
        seed: u64,
        config: &SamplingConfig,
        label: &str,
    ) -> Result<Vec<SampledSequence>> {
        let url = self.url(url_index, self.engine.generate_path());
        let req =
            GenRequest { model: &self.model, prompt, n, config, seed, eos_ids: &self.eos_ids };
        let body = self.http.post(&url, &build_request(self.engine, &req), label)?;
        let origin = Origin { url: &url, request: label };
        let max = config.max_new_tokens;
        let choices: Vec<RawChoice> = match self.engine {
            Engine::Vllm => protocol::parse_vllm(&body, n, max, &origin)?,
            Engine::Sglang => protocol::parse_sglang(&body, n, max, &origin)?,
            Engine::LlamaCpp => vec![protocol::parse_llama_cpp(&body, max, &origin)?],
        };
        let expect =
            Expect { prompt, max_tokens: max, vocab_size: self.vocab_size, eos_ids: &self.eos_ids };
        choices
            .into_iter()
            .enumerate()
            .map(|(k, c)| {
                let lp = validate_choice(&c, &expect, &format!("choices[{k}]"), &origin)?;
                Ok(SampledSequence::new(prompt_index, c.token_ids, lp, c.finish))
            })
            .collect()
    }

    /// Samples every prompt over all servers with at most `max_concurrency` requests in flight
    /// (round-robin over the URLs); sequences in prompt-major order.
    pub(crate) fn sample_sequences(
        &self,
        prompts: &[Vec<u32>],
        config: &SamplingConfig,
    ) -> Result<Vec<SampledSequence>> {
        config.validate()?;
        if prompts.is_empty() {
            return Err(rl_core::Error::Empty { what: "prompts".into() }.into());
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(rl_core::Error::Empty { what: format!("prompt {i}") }.into());
            }
            if let Some(ctx) = self.context
                && p.len() + config.max_new_tokens > ctx
            {
                return Err(RolloutError::config(
                    "sampling.max_new_tokens",
                    format!(
                        "prompt {i} has {} tokens; with max_new_tokens {} it exceeds the engine's context length {ctx}",
                        p.len(),
                        config.max_new_tokens
                    ),
                ));
            }
        }
        if self.engine == Engine::Sglang
            && !(config.temperature == 1.0 || config.temperature == 0.0)
        {
            return Err(RolloutError::Unsupported(format!(
                "sglang returns log-probs of the temperature-scaled distribution; rl-zero's log-probs are of the temperature-1 model, so sampling.temperature must be 1.0 (got {})",
                config.temperature
            )));
        }
        // Jobs: (prompt, first sample, samples in this request).
        let jobs: Vec<(usize, usize, usize)> = if self.engine.batches_samples() {
            (0..prompts.len()).map(|i| (i, 0, config.n)).collect()
        } else {
            (0..prompts.len()).flat_map(|i| (0..config.n).map(move |k| (i, k, 1))).collect()
        };
        let results: Mutex<Vec<Option<Result<Vec<SampledSequence>>>>> =
            Mutex::new((0..jobs.len()).map(|_| None).collect());
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let workers = self.cfg.max_concurrency.min(jobs.len()).max(1);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        if j >= jobs.len() || failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let (i, k, n) = jobs[j];
                        let label = if self.engine.batches_samples() {
                            format!("prompt {i}")
                        } else {
                            format!("prompt {i} sample {k}")
                        };
                        let seed = request_seed(config.seed, i, k);
                        let out = self.generate_one(
                            j % self.cfg.urls.len(),
                            i,
                            &prompts[i],
                            n,
                            seed,
                            config,
                            &label,
                        );
                        if out.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        results.lock().expect("results lock")[j] = Some(out);
                    }
                });
            }
        });
        let results = results.into_inner().expect("results lock");
        let mut seqs = Vec::with_capacity(prompts.len() * config.n);
        let mut first_err = None;
        for r in results {
            match r {
                Some(Ok(s)) => seqs.extend(s),
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                None => {}
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(seqs)
    }

    /// The weight version server `i` reports (vLLM `GET /weight_info`, SGLang `GET /model_info`
    /// or `/get_weight_version`); `None` for llama.cpp, which has no versions.
    pub(crate) fn engine_version(&self, i: usize) -> Result<Option<String>> {
        let read = |v: &Value| -> Option<String> {
            match v.get("weight_version")? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let path = match self.engine {
            Engine::Vllm => "/weight_info",
            Engine::Sglang => "/model_info",
            Engine::LlamaCpp => return Ok(None),
        };
        let url = self.url(i, path);
        let body = match self.http.get(&url, "weight version") {
            Err(RolloutError::Status { status: 404, .. }) if self.engine == Engine::Sglang => {
                let url = self.url(i, "/get_weight_version");
                (self.http.get(&url, "weight version")?, url)
            }
            other => (other?, url),
        };
        read(&body.0).map(Some).ok_or_else(|| {
            RolloutError::response(&body.1, "weight version", "weight_version", "missing")
        })
    }

    /// Fails with [`RolloutError::VersionMismatch`] when a server does not report `expected`.
    pub(crate) fn check_version(&self, expected: u64) -> Result<()> {
        for i in 0..self.cfg.urls.len() {
            if let Some(reported) = self.engine_version(i)?
                && reported != expected.to_string()
            {
                return Err(RolloutError::VersionMismatch {
                    url: self.cfg.urls[i].clone(),
                    expected: expected.to_string(),
                    reported,
                });
            }
        }
        Ok(())
    }

    /// Greedy probe on every server: mean `|engine − trainer|` log-prob per server; fails with
    /// [`RolloutError::ProbeMismatch`] above the tolerance.
    pub(crate) fn probe(&self, scorer: &dyn TokenScorer) -> Result<Vec<f64>> {
        let prompt = self.codec.encode(&self.cfg.probe_text)?;
        if prompt.is_empty() {
            return Err(RolloutError::config("probe_text", "encodes to no tokens"));
        }
        let config = SamplingConfig::greedy(self.cfg.probe_tokens);
        let mut out = Vec::new();
        for i in 0..self.cfg.urls.len() {
            let seqs =
                self.generate_one(i, 0, &prompt, 1, 0, &config, "probe (greedy, temperature 0)")?;
            let s = &seqs[0];
            if s.token_ids.is_empty() {
                return Err(RolloutError::Preflight {
                    url: self.cfg.urls[i].clone(),
                    check: "probe".into(),
                    reason: "the engine returned no token".into(),
                });
            }
            let local = scorer.score(&[(prompt.clone(), s.token_ids.clone())])?;
            let local = local
                .first()
                .ok_or_else(|| rl_core::Error::msg("scorer returned no row for the probe"))?;
            if local.len() != s.log_probs.len() {
                return Err(rl_core::Error::shape(
                    "scorer row",
                    &[s.log_probs.len()],
                    &[local.len()],
                )
                .into());
            }
            let diff =
                s.log_probs.iter().zip(local).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>()
                    / s.log_probs.len() as f64;
            if diff.is_nan() || diff > self.cfg.probe_tolerance {
                return Err(RolloutError::ProbeMismatch {
                    url: self.cfg.urls[i].clone(),
                    mean_abs_diff: diff,
                    tolerance: self.cfg.probe_tolerance,
                });
            }
            out.push(diff);
        }
        Ok(out)
    }
}

/// Samples through an inference engine (vLLM, SGLang or llama.cpp), token ids in and out.
///
/// Prompts are encoded with the trainer's [`TokenCodec`]; responses come back as ids and
/// per-token log-probs, are validated strictly ([`protocol::validate_choice`]) and assembled
/// with [`RolloutBatch::from_sequences`], exactly like the local sampler's batches. Response
/// texts are decoded locally with the same codec (the reward sees what the trainer trains on).
pub struct RemoteSampler {
    client: Arc<Client>,
    device: Device,
    pad_id: Option<u32>,
    report: PreflightReport,
}

impl std::fmt::Debug for RemoteSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSampler")
            .field("engine", &self.client.engine)
            .field("urls", &self.client.cfg.urls)
            .field("model", &self.client.model)
            .finish()
    }
}

impl RemoteSampler {
    /// Connects to `cfg.urls` and, when `cfg.preflight`, checks each server: it is up, serves the
    /// model (`cfg.model`, or its only model), its tokenizer encodes `cfg.probe_text` to the same
    /// ids as `codec` (vLLM `/tokenize`, llama.cpp `/tokenize`; SGLang is not checked), its
    /// context length, and — when `scorer` is given — a greedy probe whose engine log-probs must
    /// match `scorer`'s to `cfg.probe_tolerance` (right model, right weights, right log-prob mode).
    /// EOS ids are the codec's; they are sent with every request and checked on every response.
    ///
    /// # Errors
    /// [`RolloutError::Config`] for an invalid `cfg`, [`RolloutError::Preflight`] /
    /// [`RolloutError::ProbeMismatch`] for a failed check, transport errors.
    pub fn connect(
        engine: Engine,
        cfg: EngineConfig,
        codec: Arc<dyn TokenCodec>,
        scorer: Option<&dyn TokenScorer>,
    ) -> Result<Self> {
        cfg.validate(&format!("rollout ({})", engine.name()))?;
        let eos_ids = codec.eos_ids();
        if eos_ids.is_empty() {
            return Err(RolloutError::config("codec.eos_ids", "the codec has no EOS id"));
        }
        let vocab_size = codec.vocab_size();
        let http = Http::new(&cfg);
        let mut client = Client {
            engine,
            model: cfg.model.clone().unwrap_or_default(),
            cfg,
            http,
            codec,
            eos_ids,
            vocab_size,
            context: None,
            version: Mutex::new(None),
        };
        let mut report = PreflightReport::default();
        if client.cfg.preflight {
            preflight(&mut client, &mut report)?;
        }
        if client.engine == Engine::Vllm && client.model.is_empty() {
            return Err(RolloutError::config(
                "rollout.model",
                "vLLM needs the served model name (set `model`, or enable preflight)",
            ));
        }
        let client = Arc::new(client);
        if client.cfg.preflight
            && let Some(scorer) = scorer
        {
            report.probe_mean_abs_diff = client.probe(scorer)?.into_iter().map(Some).collect();
        }
        report.model = client.model.clone();
        Ok(Self { client, device: Device::Cpu, pad_id: None, report })
    }

    /// Builds batches on `device` (default CPU).
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Pads id tensors with `id` (default: the first EOS id). Use the trainer policy's pad id so
    /// that local and remote batches are identical.
    pub fn with_pad_id(mut self, id: u32) -> Self {
        self.pad_id = Some(id);
        self
    }

    /// What the start-up checks found.
    pub fn preflight_report(&self) -> &PreflightReport {
        &self.report
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        self.client.engine
    }

    /// Samples token-id prompts: `n` responses each, group id `i` for `prompts[i]`; `texts[i]`
    /// fills the samples' prompt text, answer and metadata.
    ///
    /// # Errors
    /// Transport errors (after retries), [`RolloutError::Response`] for an invalid answer,
    /// [`RolloutError::VersionMismatch`] when `check_version` is on and an engine does not report
    /// the last published version.
    pub fn sample_ids(
        &self,
        prompts: &[Vec<u32>],
        texts: Option<&[Prompt]>,
        config: &SamplingConfig,
    ) -> Result<RolloutBatch> {
        let version = *self.client.version.lock().expect("version lock");
        if self.client.cfg.check_version
            && let Some(v) = version
        {
            self.client.check_version(v)?;
        }
        let seqs = self.client.sample_sequences(prompts, config)?;
        let mut parts = RolloutParts::new(prompts, &seqs, self.pad_id());
        parts.prompts = texts;
        parts.policy_version = version;
        let codec = &self.client.codec;
        Ok(RolloutBatch::from_sequences(&parts, &|ids| codec.decode(ids), &self.device)?)
    }

    /// Runs the greedy log-prob probe against `scorer` now (what a weight sync does after a
    /// publication): per server, the mean `|engine − trainer|` log-prob.
    ///
    /// # Errors
    /// [`RolloutError::ProbeMismatch`] above `probe_tolerance`; transport errors.
    pub fn probe(&self, scorer: &dyn TokenScorer) -> Result<Vec<f64>> {
        self.client.probe(scorer)
    }

    /// The weight version each server reports (`None` entries for llama.cpp).
    ///
    /// # Errors
    /// Transport errors; [`RolloutError::Response`] when the answer has no version.
    pub fn engine_versions(&self) -> Result<Vec<Option<String>>> {
        (0..self.client.cfg.urls.len()).map(|i| self.client.engine_version(i)).collect()
    }

    /// A disk weight sync to this sampler's engines (see [`crate::DiskSync`]).
    ///
    /// # Errors
    /// [`RolloutError::Config`] for an invalid config; [`RolloutError::Unsupported`] for
    /// llama.cpp (no in-place reload).
    pub fn disk_sync(&self, cfg: crate::DiskSyncConfig) -> Result<crate::DiskSync> {
        crate::DiskSync::new(Arc::clone(&self.client), cfg)
    }

    /// A TCP or NCCL weight sync into this sampler's vLLM workers (see [`crate::StreamSync`]).
    ///
    /// # Errors
    /// [`RolloutError::Config`] for an invalid config; [`RolloutError::Unsupported`] for SGLang
    /// and llama.cpp, and for `nccl` without the `nccl` feature; socket errors binding `listen`.
    pub fn stream_sync(
        &self,
        cfg: crate::StreamSyncConfig,
        transport: crate::StreamTransport,
    ) -> Result<crate::StreamSync> {
        crate::StreamSync::new(Arc::clone(&self.client), cfg, transport)
    }

    /// The weight sync a [`crate::WeightSyncConfig`] asks for (`None` for `type = "none"`).
    ///
    /// # Errors
    /// As [`RemoteSampler::disk_sync`] and [`RemoteSampler::stream_sync`].
    pub fn weight_sync(
        &self,
        cfg: &crate::WeightSyncConfig,
    ) -> Result<Option<Box<dyn rl_core::WeightSync>>> {
        use crate::{StreamTransport, WeightSyncConfig as W};
        Ok(match cfg {
            W::None => None,
            W::Disk(d) => Some(Box::new(self.disk_sync(d.clone())?)),
            W::Tcp(t) => Some(Box::new(self.stream_sync(t.clone(), StreamTransport::Tcp)?)),
            W::Nccl(t) => Some(Box::new(self.stream_sync(t.clone(), StreamTransport::Nccl)?)),
        })
    }

    fn pad_id(&self) -> u32 {
        self.pad_id.unwrap_or(self.client.eos_ids[0])
    }
}

impl Sampler for RemoteSampler {
    /// Encodes the prompts with the codec, then [`RemoteSampler::sample_ids`].
    fn sample(
        &mut self,
        prompts: &[Prompt],
        config: &SamplingConfig,
    ) -> rl_core::Result<RolloutBatch> {
        let ids = prompts
            .iter()
            .map(|p| self.client.codec.encode(&p.text))
            .collect::<rl_core::Result<Vec<_>>>()?;
        Ok(self.sample_ids(&ids, Some(prompts), config)?)
    }

    fn policy_version(&self) -> u64 {
        self.client.version.lock().expect("version lock").unwrap_or(0)
    }

    fn is_external(&self) -> bool {
        true
    }
}

fn preflight(client: &mut Client, report: &mut PreflightReport) -> Result<()> {
    let probe_ids = client.codec.encode(&client.cfg.probe_text)?;
    let mut contexts = Vec::new();
    for i in 0..client.cfg.urls.len() {
        let base = client.cfg.urls[i].clone();
        let fail = |check: &str, reason: String| RolloutError::Preflight {
            url: base.clone(),
            check: check.into(),
            reason,
        };
        let health = client.url(i, "/health");
        client.http.get(&health, "preflight /health")?;
        let (context, tokenized): (Option<usize>, Option<Vec<u32>>) = match client.engine {
            Engine::Vllm => {
                let url = client.url(i, "/v1/models");
                let models = client.http.get(&url, "preflight /v1/models")?;
                let data =
                    models.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
                let ids: Vec<String> = data
                    .iter()
                    .filter_map(|m| m.get("id").and_then(Value::as_str).map(String::from))
                    .collect();
                if client.model.is_empty() {
                    match ids.as_slice() {
                        [one] => client.model = one.clone(),
                        _ => {
                            return Err(fail(
                                "model",
                                format!("the server serves {ids:?}; set `model` to one of them"),
                            ));
                        }
                    }
                }
                let card = data
                    .iter()
                    .find(|m| m.get("id").and_then(Value::as_str) == Some(client.model.as_str()))
                    .ok_or_else(|| {
                        fail("model", format!("`{}` is not served (served: {ids:?})", client.model))
                    })?;
                let ctx = card.get("max_model_len").and_then(Value::as_u64).map(|c| c as usize);
                let url = client.url(i, "/tokenize");
                let body = json!({"model": client.model, "prompt": client.cfg.probe_text, "add_special_tokens": false});
                let tok = client.http.post(&url, &body, "preflight /tokenize")?;
                let ids = tok.get("tokens").cloned().unwrap_or(Value::Null);
                let ids: Option<Vec<u32>> = serde_json::from_value(ids).ok();
                (
                    ctx,
                    Some(ids.ok_or_else(|| fail("tokenizer", "no `tokens` in /tokenize".into()))?),
                )
            }
            Engine::Sglang => {
                let url = client.url(i, "/model_info");
                let info = match client.http.get(&url, "preflight /model_info") {
                    Err(RolloutError::Status { status: 404, .. }) => client
                        .http
                        .get(&client.url(i, "/get_model_info"), "preflight /get_model_info")?,
                    other => other?,
                };
                if client.model.is_empty() {
                    client.model =
                        info.get("model_path").and_then(Value::as_str).unwrap_or("").to_string();
                }
                (None, None)
            }
            Engine::LlamaCpp => {
                let url = client.url(i, "/props");
                let props = client.http.get(&url, "preflight /props")?;
                let ctx = props
                    .pointer("/default_generation_settings/n_ctx")
                    .or_else(|| props.get("n_ctx"))
                    .and_then(Value::as_u64)
                    .map(|c| c as usize);
                if client.model.is_empty() {
                    client.model =
                        props.get("model_path").and_then(Value::as_str).unwrap_or("").to_string();
                }
                let url = client.url(i, "/tokenize");
                let body = json!({"content": client.cfg.probe_text, "add_special": false});
                let tok = client.http.post(&url, &body, "preflight /tokenize")?;
                let ids: Option<Vec<u32>> =
                    tok.get("tokens").cloned().and_then(|v| serde_json::from_value(v).ok());
                (
                    ctx,
                    Some(ids.ok_or_else(|| fail("tokenizer", "no `tokens` in /tokenize".into()))?),
                )
            }
        };
        if let Some(engine_ids) = &tokenized
            && *engine_ids != probe_ids
        {
            return Err(fail(
                "tokenizer",
                format!(
                    "the engine encodes {:?} to {engine_ids:?}, rl-zero's tokenizer to {probe_ids:?}",
                    client.cfg.probe_text
                ),
            ));
        }
        if let Some(c) = context
            && c <= client.cfg.probe_tokens + probe_ids.len()
        {
            return Err(fail("context", format!("context length {c} is too small for the probe")));
        }
        contexts.push(context);
        report.tokenizer_checked.push(tokenized.is_some());
    }
    client.context = contexts.iter().flatten().copied().min();
    report.context = contexts;
    Ok(())
}
