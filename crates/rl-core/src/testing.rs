//! Mocks and helpers for tests of downstream crates (feature `testing`).
//!
//! - [`MockPolicy`]: a policy with one trainable logit vector shared by every position, so
//!   log-probs, sampling and gradients are known in closed form.
//! - [`BatchBuilder`]: a `RolloutBatch` from row lengths and group ids.
//! - [`assert_close`]: element-wise comparison with a tolerance and a readable failure message.

use candle_core::{D, DType, Device, Tensor, Var};

use crate::{
    Error, FinishReason, Policy, Prompt, Result, RolloutBatch, Sample, SamplingConfig,
    TokenLogProbs,
};

pub use crate::rng::SplitMix64;

/// A policy whose next-token distribution is `softmax(logits)` at every position, independent of
/// the context. Token ids are `0..V`; id 0 is EOS; a token `k > 0` decodes to the character
/// `(b'a' + k - 1)`.
#[derive(Debug)]
pub struct MockPolicy {
    logits: Var,
    prompt_ids: Vec<u32>,
}

impl MockPolicy {
    /// A mock with the given logits (`V` entries, f32) on `device`.
    pub fn new(logits: &[f32], device: &Device) -> Result<Self> {
        if logits.len() < 2 {
            return Err(Error::config("mock.logits", "need at least 2 tokens"));
        }
        Ok(Self { logits: Var::new(logits, device)?, prompt_ids: vec![1, 2] })
    }

    /// The trainable logits `(V,)`.
    pub fn logits(&self) -> &Var {
        &self.logits
    }

    fn decode(ids: &[u32]) -> String {
        ids.iter().filter(|&&i| i > 0).map(|&i| (b'a' + (i as u8 - 1) % 26) as char).collect()
    }
}

/// The mock's logits in `logits.safetensors`.
impl crate::Checkpointable for MockPolicy {
    fn save_checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        self.logits.as_tensor().save_safetensors("logits", dir.join("logits.safetensors"))?;
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &std::path::Path) -> Result<()> {
        let path = dir.join("logits.safetensors");
        let t = candle_core::safetensors::load(&path, self.logits.device())?;
        let logits = t.get("logits").ok_or_else(|| Error::File {
            path: path.clone(),
            reason: "no `logits` tensor".into(),
        })?;
        crate::checkpoint::set_var(&self.logits, logits, "logits", &path)
    }
}

/// The mock's logits as the one weight `logits` (`export_hf` writes `model.safetensors` only).
impl crate::WeightSource for MockPolicy {
    fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![("logits".into(), self.logits.as_tensor().detach())])
    }

    fn export_hf(&self, dir: &std::path::Path, dtype: DType) -> Result<u64> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("model.safetensors");
        self.logits.as_tensor().to_dtype(dtype)?.save_safetensors("logits", &path)?;
        Ok(std::fs::metadata(&path)?.len())
    }
}

impl Policy for MockPolicy {
    fn generate(&mut self, prompts: &[Prompt], config: &SamplingConfig) -> Result<RolloutBatch> {
        config.validate()?;
        if prompts.is_empty() {
            return Err(Error::Empty { what: "prompts".into() });
        }
        let dev = self.logits.device().clone();
        let logits = self.logits.as_tensor().detach().to_dtype(DType::F64)?;
        let logp = candle_nn_free_log_softmax(&logits)?.to_vec1::<f64>()?;
        let mut rng = SplitMix64::new(config.seed);
        let b = prompts.len() * config.n;
        let t = config.max_new_tokens.max(1);
        let (mut ids, mut mask, mut olp) =
            (vec![0u32; b * t], vec![0f32; b * t], vec![0f32; b * t]);
        let (mut samples, mut group_ids) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for (g, prompt) in prompts.iter().enumerate() {
            for k in 0..config.n {
                let row = g * config.n + k;
                let mut toks = Vec::new();
                let mut finish = FinishReason::Length;
                for step in 0..config.max_new_tokens {
                    let tok = if config.temperature == 0.0 {
                        argmax(&logp)
                    } else {
                        let u = rng.next_f64();
                        let mut acc = 0.0;
                        let mut pick = logp.len() - 1;
                        for (i, lp) in logp.iter().enumerate() {
                            acc += lp.exp();
                            if u < acc {
                                pick = i;
                                break;
                            }
                        }
                        pick
                    };
                    ids[row * t + step] = tok as u32;
                    mask[row * t + step] = 1.0;
                    olp[row * t + step] = logp[tok] as f32;
                    toks.push(tok as u32);
                    if tok == 0 {
                        finish = FinishReason::Eos;
                        break;
                    }
                }
                samples.push(Sample {
                    prompt: prompt.text.clone(),
                    response: Self::decode(&toks),
                    answer: prompt.answer.clone(),
                    finish,
                    response_tokens: toks.len(),
                    group_id: g,
                    metadata: prompt.metadata.clone(),
                });
                group_ids.push(g);
            }
        }
        let p = self.prompt_ids.len();
        let prompt_ids: Vec<u32> = (0..b).flat_map(|_| self.prompt_ids.iter().copied()).collect();
        Ok(RolloutBatch {
            prompt_ids: Tensor::from_vec(prompt_ids, (b, p), &dev)?,
            prompt_mask: Tensor::ones((b, p), DType::F32, &dev)?,
            response_ids: Tensor::from_vec(ids, (b, t), &dev)?,
            response_mask: Tensor::from_vec(mask, (b, t), &dev)?,
            rollout_log_probs: Some(Tensor::from_vec(olp.clone(), (b, t), &dev)?),
            old_log_probs: Tensor::from_vec(olp, (b, t), &dev)?,
            ref_log_probs: None,
            values: None,
            policy_version: None,
            group_ids,
            samples,
        })
    }

    fn log_probs(&self, batch: &RolloutBatch, with_entropy: bool) -> Result<TokenLogProbs> {
        let logp = candle_nn_free_log_softmax(self.logits.as_tensor())?; // (V,)
        let (b, t) = crate::check::dims2(&batch.response_ids, "response_ids")?;
        let flat = batch.response_ids.flatten_all()?;
        let lp = logp.index_select(&flat, 0)?.reshape((b, t))?;
        let lp = lp.mul(&batch.response_mask)?;
        let entropy = if with_entropy {
            let h = logp.exp()?.mul(&logp)?.sum_all()?.neg()?;
            Some(h.broadcast_as((b, t))?.mul(&batch.response_mask)?)
        } else {
            None
        };
        Ok(TokenLogProbs { log_probs: lp, entropy })
    }

    fn trainable_vars(&self) -> Vec<Var> {
        vec![self.logits.clone()]
    }
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

/// `log_softmax` over the last dim from differentiable primitives (rl-core depends on
/// candle-core only).
fn candle_nn_free_log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Builds a [`RolloutBatch`] from response lengths and group ids; token ids are `1..`, prompts
/// are two tokens, old log-probs are `-0.1·(t+1)` on valid tokens.
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use rl_core::testing::BatchBuilder;
/// let batch = BatchBuilder::new(4).row(0, 2).row(0, 4).row(1, 1).build().unwrap();
/// assert_eq!(batch.len(), 3);
/// assert_eq!(batch.response_lengths().unwrap(), vec![2, 4, 1]);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    t: usize,
    rows: Vec<(usize, usize)>,
    device: Device,
}

impl BatchBuilder {
    /// A builder for responses padded to `t` tokens.
    pub fn new(t: usize) -> Self {
        Self { t, rows: Vec::new(), device: Device::Cpu }
    }

    /// Adds a response of `len` valid tokens in group `group`.
    pub fn row(mut self, group: usize, len: usize) -> Self {
        self.rows.push((group, len));
        self
    }

    /// Adds `n` responses of the given lengths (cycled) in group `group`.
    pub fn group(mut self, group: usize, lens: &[usize]) -> Self {
        for &l in lens {
            self.rows.push((group, l));
        }
        self
    }

    /// Builds the batch.
    pub fn build(&self) -> Result<RolloutBatch> {
        let (b, t) = (self.rows.len(), self.t);
        let mut mask = vec![0f32; b * t];
        let mut ids = vec![0u32; b * t];
        let mut olp = vec![0f32; b * t];
        let mut samples = Vec::new();
        for (i, &(g, len)) in self.rows.iter().enumerate() {
            if len > t {
                return Err(Error::shape("row length", &[t], &[len]));
            }
            for j in 0..len {
                mask[i * t + j] = 1.0;
                ids[i * t + j] = (j + 1) as u32;
                olp[i * t + j] = -0.1 * (j + 1) as f32;
            }
            samples.push(Sample { response_tokens: len, group_id: g, ..Sample::default() });
        }
        let d = &self.device;
        Ok(RolloutBatch {
            prompt_ids: Tensor::ones((b, 2), DType::U32, d)?,
            prompt_mask: Tensor::ones((b, 2), DType::F32, d)?,
            response_ids: Tensor::from_vec(ids, (b, t), d)?,
            response_mask: Tensor::from_vec(mask, (b, t), d)?,
            old_log_probs: Tensor::from_vec(olp, (b, t), d)?,
            ref_log_probs: None,
            values: None,
            rollout_log_probs: None,
            policy_version: None,
            group_ids: self.rows.iter().map(|r| r.0).collect(),
            samples,
        })
    }
}

/// Asserts that `actual` and `expected` have the same number of elements and
/// `|a − e| <= tol · max(1, |e|)` element-wise. NaN never compares equal. Panics with the first
/// offending index (this is a test helper).
pub fn assert_close(actual: &Tensor, expected: &[f64], tol: f64) {
    let a = actual
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec1::<f64>())
        .expect("assert_close: tensor to host");
    assert_eq!(a.len(), expected.len(), "assert_close: length {} vs {}", a.len(), expected.len());
    for (i, (x, e)) in a.iter().zip(expected).enumerate() {
        let ok = (x - e).abs() <= tol * e.abs().max(1.0);
        assert!(ok, "assert_close: index {i}: got {x}, expected {e} (tol {tol})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_policy_log_probs_match_sampling_and_get_gradients() -> Result<()> {
        let mut p = MockPolicy::new(&[0.0, 1.0, 2.0], &Device::Cpu)?;
        let cfg = SamplingConfig { max_new_tokens: 5, n: 3, seed: 7, ..Default::default() };
        let batch = p.generate(&[Prompt::new("q", "a"), Prompt::new("r", "b")], &cfg)?;
        batch.validate()?;
        assert_eq!(batch.group_ids, vec![0, 0, 0, 1, 1, 1]);
        let lp = p.log_probs(&batch, true)?;
        // On-policy: recomputed log-probs equal the sampling log-probs.
        let diff = lp.log_probs.sub(&batch.old_log_probs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        let grads = lp.log_probs.sum_all()?.backward()?;
        assert!(grads.get(p.logits().as_tensor()).is_some());
        // Same seed, same batch.
        let again = p.generate(&[Prompt::new("q", "a"), Prompt::new("r", "b")], &cfg)?;
        assert_eq!(again.response_ids.to_vec2::<u32>()?, batch.response_ids.to_vec2::<u32>()?);
        Ok(())
    }

    #[test]
    #[should_panic(expected = "index 1")]
    fn assert_close_fails_on_difference() {
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        assert_close(&t, &[1.0, 2.5], 1e-6);
    }
}
