//! Shared helpers of rl-rollout's integration tests: the tiny-arith model behind the mock engine.

#![allow(dead_code, missing_docs, missing_debug_implementations)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rl_core::{DType, Device, RolloutBatch, SampledSequence, SamplingConfig, TokenCodec};
use rl_policy::LmPolicy;
use rl_policy::tokenizer::Tokenizer;
use rl_rollout::testing::MockModel;

/// `assets/tiny-arith` (129,600-parameter Llama with a character tokenizer, tied embeddings).
pub fn tiny_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/tiny-arith"))
}

/// The trainer's policy and its tokenizer.
pub fn tiny_policy() -> (LmPolicy, Tokenizer) {
    let tok = Tokenizer::from_hf_dir(tiny_dir()).unwrap();
    let p = LmPolicy::from_hf_dir(&tiny_dir(), DType::F32, &Device::Cpu).unwrap();
    (p, tok)
}

/// Rows of a batch back as host sequences (prompt index = group id).
pub fn rows(b: &RolloutBatch) -> Vec<SampledSequence> {
    let ids = b.response_ids.to_vec2::<u32>().unwrap();
    let lp = b.rollout_log_probs.as_ref().unwrap_or(&b.old_log_probs).to_vec2::<f32>().unwrap();
    let lens = b.response_lengths().unwrap();
    (0..b.len())
        .map(|r| {
            SampledSequence::new(
                b.group_ids[r],
                ids[r][..lens[r]].to_vec(),
                lp[r][..lens[r]].to_vec(),
                b.samples[r].finish,
            )
        })
        .collect()
}

/// An engine-side copy of a policy (its own weights: only a reload changes them).
pub struct PolicyModel {
    pub policy: LmPolicy,
    pub tokenizer: Tokenizer,
}

impl PolicyModel {
    pub fn copy_of(p: &LmPolicy, tok: &Tokenizer) -> Box<Self> {
        let model = p.model().deep_copy().unwrap();
        Box::new(Self {
            policy: LmPolicy::new(model).with_tokenizer(tok.clone()).with_pad_id(p.pad_id()),
            tokenizer: tok.clone(),
        })
    }
}

impl MockModel for PolicyModel {
    fn generate(
        &mut self,
        prompt: &[u32],
        n: usize,
        config: &SamplingConfig,
    ) -> rl_core::Result<Vec<SampledSequence>> {
        let cfg = SamplingConfig { n, ..config.clone() };
        let b = self.policy.generate_ids(&[prompt.to_vec()], None, &cfg)?;
        Ok(rows(&b))
    }

    fn reload(&mut self, dir: &Path) -> rl_core::Result<()> {
        let pad = self.policy.pad_id();
        let p = LmPolicy::from_hf_dir(dir, DType::F32, &Device::Cpu)?;
        self.policy = p.with_tokenizer(self.tokenizer.clone()).with_pad_id(pad);
        Ok(())
    }

    fn tokenize(&self, text: &str) -> rl_core::Result<Vec<u32>> {
        TokenCodec::encode(&self.tokenizer, text)
    }

    fn load_weights(&mut self, weights: Vec<(String, rl_core::Tensor)>) -> rl_core::Result<()> {
        let vars: std::collections::HashMap<String, rl_core::Var> =
            self.policy.model().named_vars().into_iter().collect();
        for (name, t) in weights {
            let v = vars.get(&name).ok_or_else(|| {
                rl_core::Error::Unsupported(format!("no weight named {name} in the mock model"))
            })?;
            v.set(&t.to_dtype(v.dtype())?)?;
        }
        Ok(())
    }
}

/// Multiplies every weight whose name contains `name` by `factor` (in place: the trainer's
/// optimizer step, as far as the sampler can tell).
pub fn perturb(p: &LmPolicy, name: &str, factor: f64) {
    for (n, v) in p.model().named_vars() {
        if n.contains(name) {
            let t = (v.as_tensor() * factor).unwrap();
            v.set(&t).unwrap();
        }
    }
}

pub fn codec(tok: &Tokenizer) -> Arc<dyn TokenCodec> {
    Arc::new(tok.clone())
}
