//! [`LmPolicy`] on the rollout boundary of rl-core: a local [`Sampler`], a [`WeightSource`]
//! (Hugging Face names and directories, for inference engines) and a [`TokenScorer`] (the
//! trainer-side log-probs that engine probes are compared with); [`Tokenizer`] as a
//! [`TokenCodec`].

use std::path::Path;

use candle_core::{DType, Tensor};
use rl_core::{
    FinishReason, Policy, Prompt, RolloutBatch, RolloutParts, SampledSequence, Sampler,
    SamplingConfig, TokenCodec, TokenScorer, WeightSource,
};

use crate::LmPolicy;
use crate::model::Mode;
use crate::tokenizer::Tokenizer;

impl Sampler for LmPolicy {
    /// [`Policy::generate`] (fused sampling on the current, detached weights). The batch is built
    /// by [`RolloutBatch::from_sequences`]: `old_log_probs` and `rollout_log_probs` both hold the
    /// sampling log-probs; no version is tracked (the sampler *is* the trained model).
    fn sample(
        &mut self,
        prompts: &[Prompt],
        config: &SamplingConfig,
    ) -> rl_core::Result<RolloutBatch> {
        Policy::generate(self, prompts, config)
    }
}

impl TokenScorer for LmPolicy {
    /// Recomputes the log-probs with the training numerics ([`Mode::Diff`] on detached weights,
    /// the numbers a trainer's `old_log_probs` recomputation gives). Empty responses give empty
    /// rows.
    fn score(&self, pairs: &[(Vec<u32>, Vec<u32>)]) -> rl_core::Result<Vec<Vec<f32>>> {
        let keep: Vec<usize> = (0..pairs.len()).filter(|&i| !pairs[i].1.is_empty()).collect();
        let mut out = vec![Vec::new(); pairs.len()];
        if keep.is_empty() {
            return Ok(out);
        }
        let prompts: Vec<Vec<u32>> = keep.iter().map(|&i| pairs[i].0.clone()).collect();
        let seqs: Vec<SampledSequence> = keep
            .iter()
            .enumerate()
            .map(|(row, &i)| {
                let ids = pairs[i].1.clone();
                SampledSequence::new(row, ids.clone(), vec![0.0; ids.len()], FinishReason::Eos)
            })
            .collect();
        let parts = RolloutParts::new(&prompts, &seqs, self.pad_id());
        let batch =
            RolloutBatch::from_sequences(&parts, &|_| Ok(String::new()), self.model().device())?;
        let lp = self.log_probs_detached(&batch, false, Mode::Diff)?.log_probs.to_vec2::<f32>()?;
        for (&i, values) in keep.iter().zip(lp) {
            out[i] = values[..pairs[i].1.len()].to_vec();
        }
        Ok(out)
    }
}

/// Writes `bytes` to `path` through a temporary name in the same directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> crate::Result<()> {
    Ok(rl_core::fs::write_atomic(path, |tmp| std::fs::write(tmp, bytes))?)
}

impl WeightSource for LmPolicy {
    /// The model's vars with their Hugging Face names, sorted, detached.
    fn named_weights(&self) -> rl_core::Result<Vec<(String, Tensor)>> {
        Ok(self
            .model()
            .named_vars()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().detach()))
            .collect())
    }

    /// `config.json` (with `torch_dtype`/`dtype` set to `dtype`), `model.safetensors` (every var
    /// converted to `dtype`; a tied head is not written, as transformers does) and
    /// `generation_config.json` (the policy's EOS ids and pad id). Tokenizer files are not known
    /// to an `LmPolicy`; write them once with [`export_tokenizer`].
    fn export_hf(&self, dir: &Path, dtype: DType) -> rl_core::Result<u64> {
        let mut bytes = self.model().save_as(dir, dtype)?;
        let generation = serde_json::json!({
            "eos_token_id": self.eos_ids(),
            "pad_token_id": self.pad_id(),
        });
        write_atomic(
            &dir.join("generation_config.json"),
            serde_json::to_string_pretty(&generation)?.as_bytes(),
        )?;
        bytes += std::fs::metadata(dir.join("generation_config.json"))?.len();
        Ok(bytes)
    }

    fn scorer(&self) -> Option<&dyn TokenScorer> {
        Some(self)
    }
}

/// Writes `tokenizer.json` and a minimal `tokenizer_config.json` (fast tokenizer class, BOS/EOS
/// tokens, `model_max_length`) into `dir`, so that an engine can serve a directory written by
/// [`WeightSource::export_hf`] from a model that was loaded from GGUF.
///
/// # Errors
/// I/O and serialisation errors.
pub fn export_tokenizer(
    tokenizer: &Tokenizer,
    dir: &Path,
    model_max_length: usize,
) -> crate::Result<()> {
    std::fs::create_dir_all(dir)?;
    tokenizer.save_tokenizer_json(dir)?;
    let cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token(),
        "eos_token": tokenizer.eos_token(),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false,
    });
    write_atomic(&dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())
}

impl TokenCodec for Tokenizer {
    /// `encode(text, false)`: prompts are already templated.
    fn encode(&self, text: &str) -> rl_core::Result<Vec<u32>> {
        Ok(Tokenizer::encode(self, text, false)?)
    }

    /// `decode(ids, true)`: special tokens removed.
    fn decode(&self, ids: &[u32]) -> rl_core::Result<String> {
        Ok(Tokenizer::decode(self, ids, true)?)
    }

    fn eos_ids(&self) -> Vec<u32> {
        Tokenizer::eos_ids(self).to_vec()
    }

    fn vocab_size(&self) -> usize {
        Tokenizer::vocab_size(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LanguageModel, ModelConfig};
    use candle_core::Device;

    fn tiny() -> LmPolicy {
        let cfg = ModelConfig::from_hf_json(serde_json::json!({
            "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "eos_token_id": 3, "tie_word_embeddings": true,
        }))
        .unwrap();
        LmPolicy::new(LanguageModel::random(cfg, 0, DType::F32, &Device::Cpu).unwrap())
    }

    #[test]
    fn scorer_matches_sampling_log_probs_and_export_round_trips() -> rl_core::Result<()> {
        let p = tiny();
        let cfg = SamplingConfig { max_new_tokens: 6, n: 2, seed: 3, ..Default::default() };
        let batch = p.generate_ids(&[vec![1, 2, 5], vec![7]], None, &cfg)?;
        assert!(batch.rollout_log_probs.is_some());
        let ids = batch.response_ids.to_vec2::<u32>()?;
        let lens = batch.response_lengths()?;
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..batch.len())
            .map(|r| {
                let prompt = if r < 2 { vec![1, 2, 5] } else { vec![7] };
                (prompt, ids[r][..lens[r]].to_vec())
            })
            .collect();
        let scored = p.score(&pairs)?;
        let sampled = batch.old_log_probs.to_vec2::<f32>()?;
        for r in 0..batch.len() {
            for t in 0..lens[r] {
                assert!((scored[r][t] - sampled[r][t]).abs() < 1e-4, "{r} {t}");
            }
        }
        let dir = tempfile::tempdir()?;
        let bytes = p.export_hf(dir.path(), DType::F32)?;
        assert!(bytes > 0);
        let back = LmPolicy::from_hf_dir(dir.path(), DType::F32, &Device::Cpu)?;
        assert_eq!(back.eos_ids(), &[3]);
        let again = back.score(&pairs)?;
        assert_eq!(again, scored);
        let names: Vec<String> = p.named_weights()?.into_iter().map(|(n, _)| n).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        assert!(!names.iter().any(|n| n == "lm_head.weight"));
        Ok(())
    }
}
