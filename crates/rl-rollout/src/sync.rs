//! [`DiskSync`]: publish weights as a Hugging Face directory and make the engine reload it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
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
    published: Option<u64>,
    count: u64,
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
        Ok(Self { client, cfg, dtype, published: None, count: 0, kept: VecDeque::new() })
    }

    /// The settings.
    pub fn config(&self) -> &DiskSyncConfig {
        &self.cfg
    }

    fn post(&self, i: usize, path: &str, body: &Value) -> Result<Value> {
        let url = self.client.url(i, path);
        self.client.http.post(&url, body, &format!("weight sync {path}"))
    }

    fn reload_vllm(&self, i: usize, dir: &str, version: u64) -> Result<()> {
        self.post(i, "/pause?mode=wait", &Value::Null)?;
        let run = || -> Result<()> {
            let method = self.cfg.vllm_reload_method.as_str();
            let body = json!({"method": method, "kwargs": {"weights_path": dir}});
            let out = self.post(i, "/collective_rpc", &body)?;
            let url = self.client.url(i, "/collective_rpc");
            let results =
                out.get("results").and_then(Value::as_array).filter(|r| !r.is_empty()).ok_or_else(
                    || RolloutError::response(&url, "weight sync", "results", "missing or empty"),
                )?;
            if method == "reload_weights_tied" {
                for (w, r) in results.iter().enumerate() {
                    if r.get("weights_path").and_then(Value::as_str) != Some(dir) {
                        return Err(RolloutError::response(
                            &url,
                            "weight sync",
                            format!("results[{w}].weights_path"),
                            format!("worker did not reload {dir}: {r}"),
                        ));
                    }
                }
            }
            let reset = self.post(i, "/reset_prefix_cache", &Value::Null)?;
            if reset.get("success").and_then(Value::as_bool) == Some(false) {
                let url = self.client.url(i, "/reset_prefix_cache");
                return Err(RolloutError::response(&url, "weight sync", "success", "false"));
            }
            self.post(i, "/update_weight_version", &json!({"new_version": version.to_string()}))?;
            Ok(())
        };
        let out = run();
        // Always resume, also after a failure (a paused engine would hang the next rollout).
        let resumed = self.post(i, "/resume", &Value::Null);
        out.and(resumed.map(|_| ()))
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
        self.published
    }

    /// Records `version` as the engines' current one (published by another rank), so that
    /// [`crate::EngineConfig::check_version`] checks it before the next rollout.
    fn observe(&mut self, version: u64) -> rl_core::Result<()> {
        *self.client.version.lock().expect("version lock") = Some(version);
        self.published = Some(version);
        Ok(())
    }
}

fn publish(s: &mut DiskSync, source: &dyn WeightSource, version: u64) -> Result<SyncReport> {
    if let Some(last) = s.published
        && version <= last
    {
        return Err(RolloutError::config(
            "weight_sync.version",
            format!("versions must increase: {version} after {last}"),
        ));
    }
    let verify = s.cfg.verify_every > 0 && (s.count + 1).is_multiple_of(s.cfg.verify_every as u64);
    if verify && source.scorer().is_none() {
        return Err(RolloutError::config(
            "weight_sync.verify_every",
            "the weight source has no scorer to check the engine against (set verify_every = 0)",
        ));
    }
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
    s.kept.push_back(dir.clone());
    let export_seconds = t0.elapsed().as_secs_f64();
    let abs = std::fs::canonicalize(&dir)?;
    let abs_str = abs.to_str().ok_or_else(|| {
        RolloutError::config("weight_sync.dir", format!("{} is not valid UTF-8", abs.display()))
    })?;
    for i in 0..s.client.cfg.urls.len() {
        match s.client.engine {
            Engine::Vllm => s.reload_vllm(i, abs_str, version)?,
            Engine::Sglang => s.reload_sglang(i, abs_str, version)?,
            Engine::LlamaCpp => unreachable!("rejected in DiskSync::new"),
        }
    }
    s.client.check_version(version)?;
    *s.client.version.lock().expect("version lock") = Some(version);
    s.published = Some(version);
    s.count += 1;
    let probe = if verify {
        let scorer = source.scorer().expect("checked above");
        let diffs = s.client.probe(scorer)?;
        Some(diffs.iter().copied().fold(0.0, f64::max))
    } else {
        None
    };
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
