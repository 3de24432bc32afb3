//! [`DiskSync`]: publish weights as a Hugging Face directory and make the engine reload it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rl_core::{SyncReport, WeightSource, WeightSync};
use serde_json::{Value, json};

use crate::protocol::Engine;
use crate::sampler::Client;
use crate::{DiskSyncConfig, Result, RolloutError};

/// Publishes weights by writing `dir/v{version}/` (config.json + model.safetensors +
/// generation_config.json) and calling each engine's reload route, then checking the version the
/// engine reports and, every `verify_every` publications, a greedy probe's log-probs against
/// the trainer's ([`rl_core::WeightSource::scorer`]).
///
/// * vLLM (dev mode, `VLLM_SERVER_DEV_MODE=1`): `POST /pause?mode=wait` →
///   `POST /collective_rpc {"method": vllm_reload_method, "kwargs": {"weights_path"}}` →
///   `POST /reset_prefix_cache` → `POST /update_weight_version {"new_version"}` →
///   `POST /resume`, then `GET /weight_info` (`vllm/entrypoints/serve/dev/rlhf/api_router.py`).
///   vLLM's `disk` weight-transfer backend does not exist in 0.32.0; `reload_weights` does.
/// * SGLang: `POST /update_weights_from_disk {"model_path", "weight_version", "flush_cache":
///   true}` (`io_struct.py` `UpdateWeightFromDiskReqInput`), then `GET /model_info`.
/// * llama.cpp: no in-place reload ([`RolloutError::Unsupported`] when building the sync).
#[derive(Debug)]
pub struct DiskSync {
    client: Arc<Client>,
    cfg: DiskSyncConfig,
    dtype: rl_core::DType,
    ledger: Ledger,
    kept: VecDeque<PathBuf>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("engine", &self.engine)
            .field("urls", &self.cfg.urls)
            .finish()
    }
}

impl DiskSync {
    pub(crate) fn new(client: Arc<Client>, cfg: DiskSyncConfig) -> Result<Self> {
        cfg.validate("weight_sync")?;
        if client.engine == Engine::LlamaCpp {
            return Err(RolloutError::Unsupported(
                "llama.cpp cannot reload weights in place (restart llama-server on a new GGUF, or use its router mode); disk weight sync supports vllm and sglang".into(),
            ));
        }
        let dtype = cfg.dtype("weight_sync")?;
        let ledger = Ledger::new(cfg.verify_every);
        Ok(Self { client, cfg, dtype, ledger, kept: VecDeque::new() })
    }

    /// The settings.
    pub fn config(&self) -> &DiskSyncConfig {
        &self.cfg
    }

    fn post(&self, i: usize, path: &str, body: &Value) -> Result<Value> {
        let url = self.client.url(i, path);
        self.client.http.post(&url, body, &format!("weight sync {path}"))
    }

    fn reload_sglang(&self, i: usize, dir: &str, version: u64) -> Result<()> {
        let body = json!({
            "model_path": dir,
            "weight_version": version.to_string(),
            "flush_cache": true,
            "abort_all_requests": false,
        });
        let out = self.post(i, "/update_weights_from_disk", &body)?;
        if out.get("success").and_then(Value::as_bool) != Some(true) {
            let url = self.client.url(i, "/update_weights_from_disk");
            let msg = out.get("message").cloned().unwrap_or(Value::Null);
            return Err(RolloutError::response(
                &url,
                "weight sync",
                "success",
                format!("not true: {msg}"),
            ));
        }
        Ok(())
    }
}

impl WeightSync for DiskSync {
    fn publish(&mut self, source: &dyn WeightSource, version: u64) -> rl_core::Result<SyncReport> {
        Ok(publish(self, source, version)?)
    }

    fn published_version(&self) -> Option<u64> {
        self.ledger.published
    }

    /// Records `version` as the engines' current one (published by another rank), so that
    /// [`crate::EngineConfig::check_version`] checks it before the next rollout.
    fn observe(&mut self, version: u64) -> rl_core::Result<()> {
        self.ledger.observe(&self.client, version);
        Ok(())
    }
}

fn publish(s: &mut DiskSync, source: &dyn WeightSource, version: u64) -> Result<SyncReport> {
    let verify = s.ledger.start(source, version)?;
    let t0 = Instant::now();
    std::fs::create_dir_all(&s.cfg.dir)?;
    let dir = s.cfg.dir.join(format!("v{version}"));
    let tmp = s.cfg.dir.join(format!(".v{version}.tmp{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let bytes = source.export_hf(&tmp, s.dtype)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir)?;
    // A version whose publication failed is published again under the same name: one entry,
    // or pruning would remove the directory twice (and fail on the second, after the swap).
    s.kept.retain(|d| d != &dir);
    s.kept.push_back(dir.clone());
    let export_seconds = t0.elapsed().as_secs_f64();
    let abs = std::fs::canonicalize(&dir)?;
    let abs_str = abs.to_str().ok_or_else(|| {
        RolloutError::config("weight_sync.dir", format!("{} is not valid UTF-8", abs.display()))
    })?;
    match s.client.engine {
        Engine::Vllm => {
            let method = s.cfg.vllm_reload_method.as_str();
            let call = json!({"method": method, "kwargs": {"weights_path": abs_str}});
            let calls = vec![call; s.client.cfg.urls.len()];
            vllm_swap(
                &s.client,
                version,
                &calls,
                |_| Ok(()),
                |results| {
                    if method == "reload_weights_tied" {
                        check_results(&s.client, results, "weights_path", &json!(abs_str))?;
                    }
                    Ok(())
                },
            )?;
        }
        Engine::Sglang => {
            for i in 0..s.client.cfg.urls.len() {
                s.reload_sglang(i, abs_str, version)?;
            }
        }
        Engine::LlamaCpp => unreachable!("rejected in DiskSync::new"),
    }
    let probe = s.ledger.finish(&s.client, source, version, verify)?;
    while s.kept.len() > s.cfg.keep_last {
        if let Some(old) = s.kept.pop_front() {
            std::fs::remove_dir_all(&old)?;
        }
    }
    Ok(SyncReport {
        version,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
        export_seconds,
        probe_mean_abs_diff: probe,
    })
}

/// The bookkeeping every weight sync shares: the last version, the publication count and the
/// probe cadence.
#[derive(Debug)]
pub(crate) struct Ledger {
    pub(crate) published: Option<u64>,
    count: u64,
    verify_every: usize,
}

impl Ledger {
    pub(crate) fn new(verify_every: usize) -> Self {
        Self { published: None, count: 0, verify_every }
    }

    /// Checks that `version` increases; whether this publication runs the probe.
    pub(crate) fn start(&self, source: &dyn WeightSource, version: u64) -> Result<bool> {
        if let Some(last) = self.published
            && version <= last
        {
            return Err(RolloutError::config(
                "weight_sync.version",
                format!("versions must increase: {version} after {last}"),
            ));
        }
        let every = self.verify_every as u64;
        let verify = every > 0 && (self.count + 1).is_multiple_of(every);
        if verify && source.scorer().is_none() {
            return Err(RolloutError::config(
                "weight_sync.verify_every",
                "the weight source has no scorer to check the engine against (set verify_every = 0)",
            ));
        }
        Ok(verify)
    }

    /// After the engines loaded `version`: checks the version they report, records it, and runs
    /// the probe when `verify` (its largest per-server mean |Δ|).
    pub(crate) fn finish(
        &mut self,
        client: &Client,
        source: &dyn WeightSource,
        version: u64,
        verify: bool,
    ) -> Result<Option<f64>> {
        client.check_version(version)?;
        self.observe(client, version);
        self.count += 1;
        if !verify {
            return Ok(None);
        }
        let scorer = source.scorer().expect("checked in Ledger::start");
        let diffs = client.probe(scorer)?;
        Ok(Some(diffs.iter().copied().fold(0.0, f64::max)))
    }

    pub(crate) fn observe(&mut self, client: &Client, version: u64) {
        *client.version.lock().expect("version lock") = Some(version);
        self.published = Some(version);
    }
}

/// vLLM's weight swap on every server (dev mode, `VLLM_SERVER_DEV_MODE=1`): `POST
/// /pause?mode=wait` on all → `POST /collective_rpc calls[i]` to every server at once while
/// `send` runs on this thread (it gets a flag that turns true when a call failed, so it can
/// stop waiting for workers that will not come) → `check` on every server's `results` (one
/// entry per worker; a worker that did not load the weights fails here, before the engine is
/// told the new version) → `POST /reset_prefix_cache` →
/// `POST /update_weight_version {"new_version"}` on each → `POST /resume` on every paused
/// server, also after a failure (a paused engine would hang the next rollout).
pub(crate) fn vllm_swap(
    client: &Client,
    version: u64,
    calls: &[Value],
    send: impl FnOnce(&AtomicBool) -> Result<()>,
    check: impl FnOnce(&[Vec<Value>]) -> Result<()>,
) -> Result<()> {
    let post = |i: usize, path: &str, body: &Value| {
        client.http.post(&client.url(i, path), body, &format!("weight sync {path}"))
    };
    let mut paused = 0;
    let run = || -> Result<()> {
        for i in 0..calls.len() {
            post(i, "/pause?mode=wait", &Value::Null)?;
            paused += 1;
        }
        let failed = AtomicBool::new(false);
        let (answers, sent) = std::thread::scope(|s| {
            let handles: Vec<_> = calls
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    let failed = &failed;
                    s.spawn(move || {
                        let url = client.url(i, "/collective_rpc");
                        let out = client.http.post_once(&url, body, "weight sync /collective_rpc");
                        if out.is_err() {
                            failed.store(true, Ordering::SeqCst);
                        }
                        out
                    })
                })
                .collect();
            let sent = send(&failed);
            let answers: Vec<Result<Value>> =
                handles.into_iter().map(|h| h.join().expect("collective_rpc thread")).collect();
            (answers, sent)
        });
        // The engine's own error says more than "a worker never connected".
        let answers = answers.into_iter().collect::<Result<Vec<_>>>()?;
        sent?;
        let mut all = Vec::with_capacity(answers.len());
        for (i, out) in answers.into_iter().enumerate() {
            let url = client.url(i, "/collective_rpc");
            let results = out
                .get("results")
                .and_then(Value::as_array)
                .filter(|r| !r.is_empty())
                .cloned()
                .ok_or_else(|| {
                    RolloutError::response(&url, "weight sync", "results", "missing or empty")
                })?;
            all.push(results);
        }
        check(&all)?;
        for i in 0..calls.len() {
            let reset = post(i, "/reset_prefix_cache", &Value::Null)?;
            if reset.get("success").and_then(Value::as_bool) == Some(false) {
                let url = client.url(i, "/reset_prefix_cache");
                return Err(RolloutError::response(&url, "weight sync", "success", "false"));
            }
            post(i, "/update_weight_version", &json!({"new_version": version.to_string()}))?;
        }
        Ok(())
    };
    let out = run();
    let resumed: Result<()> =
        (0..paused).try_for_each(|i| post(i, "/resume", &Value::Null).map(drop));
    out.and(resumed)
}

/// Checks that every worker's result has `field == want` (the proof that rl-zero's worker
/// method ran, not another one that also answers 200).
pub(crate) fn check_results(
    client: &Client,
    results: &[Vec<Value>],
    field: &str,
    want: &Value,
) -> Result<()> {
    for (i, per_worker) in results.iter().enumerate() {
        for (w, r) in per_worker.iter().enumerate() {
            if r.get(field) != Some(want) {
                return Err(RolloutError::response(
                    &client.url(i, "/collective_rpc"),
                    "weight sync",
                    format!("results[{w}].{field}"),
                    format!("expected {want}, the worker answered {r}"),
                ));
            }
        }
    }
    Ok(())
}
