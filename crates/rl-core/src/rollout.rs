//! The rollout boundary: who samples ([`Sampler`]), where trained weights come from
//! ([`WeightSource`]) and how they reach the sampler ([`WeightSync`]).
//!
//! A trainer is written against these traits only. rl-policy's `LmPolicy` implements
//! [`Sampler`], [`WeightSource`] and [`TokenScorer`] (sampling in the training process);
//! rl-rollout implements [`Sampler`] over HTTP for vLLM, SGLang and llama.cpp, and
//! [`WeightSync`] by writing a Hugging Face directory and calling the engine's reload route.
//! Engines get **token ids**, never text: a [`TokenCodec`] turns prompt text into ids and
//! responses back into text on the trainer's side, so the trainer trains on exactly the tokens
//! the engine sampled.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::{Metrics, Prompt, Result, RolloutBatch, SamplingConfig};

/// Text ↔ token ids with the vocabulary facts a remote sampler checks against an engine.
///
/// Prompts are already templated: `encode` must not add special tokens (no BOS); `decode`
/// should skip special tokens (as the local sampler's response text does).
pub trait TokenCodec: Send + Sync {
    /// Token ids of `text` (no special tokens added).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Text of `ids`, special tokens removed.
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// The end-of-sequence ids generation stops on (e.g. `<|im_end|>` for chat models).
    fn eos_ids(&self) -> Vec<u32>;
    /// Number of ids the tokenizer knows (ids `>= vocab_size` are invalid in a response, even
    /// when the model's embedding matrix is padded beyond it).
    fn vocab_size(&self) -> usize;
}

/// Produces responses: the trainer's only view of generation (a local model or a remote engine).
///
/// The method is called `sample` (not `generate`) so that a type implementing both
/// [`crate::Policy`] and `Sampler` has no ambiguous method.
pub trait Sampler {
    /// `config.n` responses per prompt; responses to `prompts[i]` get group id `i`. Fills
    /// `old_log_probs` **and** `rollout_log_probs` with the sampler's log-probs of the sampled
    /// tokens under the unmodified (temperature-1) model distribution, and `policy_version`
    /// with [`Sampler::policy_version`] when versions are tracked. Rows are built with
    /// [`RolloutBatch::from_sequences`], so every sampler's batches have the same layout.
    fn sample(&mut self, prompts: &[Prompt], config: &SamplingConfig) -> Result<RolloutBatch>;

    /// The weight version the next [`Sampler::sample`] samples from (0 = not tracked).
    fn policy_version(&self) -> u64 {
        0
    }

    /// `true` when sampling happens outside the training process (an inference engine): the
    /// sampler's log-probs then come from other numerics, and a trainer should turn the
    /// rollout/trainer importance-sampling correction on by default.
    fn is_external(&self) -> bool {
        false
    }
}

/// Log-probs of given response tokens under the trainer's **current** weights: what a remote
/// sampler's start-up probe and a weight sync's stale-weights check compare an engine against.
pub trait TokenScorer {
    /// For each `(prompt, response)` pair, the `len(response)` log-probs
    /// `log π(response[t] | prompt, response[..t])` (f32, temperature 1), in input order.
    fn score(&self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<Vec<f32>>>;
}

/// The trained policy's weights, in the form inference engines load.
pub trait WeightSource {
    /// `(name, tensor)` pairs with Hugging Face tensor names (`model.layers.0.self_attn.q_proj.weight`,
    /// ...), sorted by name (a stable order both sides of a broadcast agree on); detached, in the
    /// model's dtype. A tied `lm_head.weight` is not listed.
    fn named_weights(&self) -> Result<Vec<(String, Tensor)>>;

    /// Writes a directory an engine can load with `from_pretrained` semantics: `config.json`,
    /// `model.safetensors` (tensors converted to `dtype`), and `generation_config.json` /
    /// tokenizer files when the source knows them. Files are written under temporary names
    /// and renamed into place. Returns the number of bytes written.
    fn export_hf(&self, dir: &Path, dtype: DType) -> Result<u64>;

    /// The trainer-side scorer for stale-weight checks, if this source can score tokens.
    fn scorer(&self) -> Option<&dyn TokenScorer> {
        None
    }
}

/// What one [`WeightSync::publish`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    /// The version that was published.
    pub version: u64,
    /// Bytes moved (written to disk, or broadcast).
    pub bytes: u64,
    /// Wall time of the whole publication (export + reload + checks), seconds.
    pub seconds: f64,
    /// Of which: writing / sending the weights, seconds.
    pub export_seconds: f64,
    /// Mean `|engine log-prob − trainer log-prob|` of the stale-weights probe, when it ran.
    pub probe_mean_abs_diff: Option<f64>,
}

impl SyncReport {
    /// `time/sync_s`, `sync/bytes`, `sync/version`, `time/sync_export_s` and, when the probe ran,
    /// `sync/probe_log_prob_abs_diff`.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new()
            .with("time/sync_s", self.seconds)
            .with("time/sync_export_s", self.export_seconds)
            .with("sync/bytes", self.bytes as f64)
            .with("sync/version", self.version as f64);
        if let Some(d) = self.probe_mean_abs_diff {
            m.insert("sync/probe_log_prob_abs_diff", d);
        }
        m
    }
}

/// Publishes trained weights to wherever a sampler reads them.
pub trait WeightSync {
    /// Publishes `source`'s current weights as `version` (strictly increasing) and makes the
    /// sampler use them; returns sizes and times. Implementations verify that the engine reports
    /// `version` afterwards and fail with a typed error when it does not.
    fn publish(&mut self, source: &dyn WeightSource, version: u64) -> Result<SyncReport>;

    /// The last version published successfully, if any.
    fn published_version(&self) -> Option<u64>;

    /// Another process published `version` to the same engines (data parallelism: rank 0
    /// publishes, the other ranks record the version so that their samplers can check the
    /// engine reports it). Default: nothing to record.
    fn observe(&mut self, version: u64) -> Result<()> {
        let _ = version;
        Ok(())
    }
}

/// A boxed sync is a sync (a run file picks the kind at run time).
impl<T: WeightSync + ?Sized> WeightSync for Box<T> {
    fn publish(&mut self, source: &dyn WeightSource, version: u64) -> Result<SyncReport> {
        (**self).publish(source, version)
    }

    fn published_version(&self) -> Option<u64> {
        (**self).published_version()
    }

    fn observe(&mut self, version: u64) -> Result<()> {
        (**self).observe(version)
    }
}
