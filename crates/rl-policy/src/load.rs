//! Loading [`LanguageModel`]s: a local Hugging Face directory, a GGUF file, or the Hub.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use crate::config::{Architecture, RopeScaling};
use crate::{LanguageModel, ModelConfig, PolicyError, Result};

fn require(path: &Path) -> Result<()> {
    if path.is_file() { Ok(()) } else { Err(PolicyError::MissingFile { path: path.to_path_buf() }) }
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> PolicyError {
    PolicyError::CorruptFile { path: path.to_path_buf(), reason: e.to_string() }
}

/// Reads one `.safetensors` file into named tensors.
fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    require(path)?;
    candle_core::safetensors::load(path, device).map_err(|e| corrupt(path, e))
}

impl LanguageModel {
    /// Loads a Hugging Face model directory: `config.json` plus `model.safetensors` or a sharded
    /// `model.safetensors.index.json` (with its shards). Weights are converted to `dtype`.
    ///
    /// # Errors
    /// [`PolicyError::MissingFile`], [`PolicyError::CorruptFile`], [`PolicyError::MissingTensor`],
    /// [`PolicyError::TensorShape`] naming the file and tensor; config errors from
    /// [`ModelConfig::from_file`].
    pub fn from_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (tensors, source) = if single.is_file() {
            (read_safetensors(&single, device)?, single)
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index)?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| corrupt(&index, e))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| corrupt(&index, "no `weight_map` object"))?;
            let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.sort_unstable();
            shards.dedup();
            let mut all = HashMap::new();
            for shard in shards {
                all.extend(read_safetensors(&dir.join(shard), device)?);
            }
            (all, index)
        } else {
            return Err(PolicyError::MissingFile { path: single });
        };
        Self::from_tensors(cfg, tensors, &source, dtype, device)
    }

    /// Loads a GGUF file (llama.cpp format): metadata → [`ModelConfig`], every tensor dequantized
    /// to f32 (then cast to `dtype`), names mapped to Hugging Face names. For
    /// `general.architecture = llama` the Q/K projection rows are un-permuted from llama.cpp's
    /// interleaved rotary layout back to the Hugging Face half-split layout, so the model can be
    /// saved as a normal Hugging Face checkpoint.
    ///
    /// # Errors
    /// [`PolicyError::MissingFile`], [`PolicyError::CorruptFile`] (bad header, missing metadata key,
    /// undecodable tensor), [`PolicyError::UnknownArchitecture`], and the tensor checks of
    /// [`LanguageModel::from_tensors`].
    pub fn from_gguf(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        require(path)?;
        let mut file = File::open(path)?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| corrupt(path, e))?;
        let cfg = gguf_config(&content, path)?;
        let mut tensors = HashMap::new();
        for name in content.tensor_infos.keys() {
            let Some(hf) = gguf_to_hf_name(name) else { continue };
            let t = content
                .tensor(&mut file, name, device)
                .and_then(|q| q.dequantize(device))
                .map_err(|e| corrupt(path, format!("tensor `{name}`: {e}")))?;
            let t = match (cfg.architecture, hf.rsplit('.').nth(1)) {
                (Architecture::Llama, Some("q_proj")) => unpermute(&t, cfg.num_heads)?,
                (Architecture::Llama, Some("k_proj")) => unpermute(&t, cfg.num_kv_heads)?,
                _ => t,
            };
            tensors.insert(hf, t);
        }
        Self::from_tensors(cfg, tensors, path, dtype, device)
    }

    /// Downloads `config.json` and the safetensors weights of `repo_id` at `revision` (e.g.
    /// `"main"`) from the Hugging Face Hub (token from `HF_TOKEN`, cache as `hf-hub` configures it),
    /// then loads them with [`LanguageModel::from_hf_dir`]. Also fetches `tokenizer.json` and
    /// `generation_config.json` when present. Not exercised by the test suite (no network there).
    ///
    /// # Errors
    /// [`PolicyError::Hub`] for network / missing-file errors, then those of `from_hf_dir`.
    pub fn from_hub(
        repo_id: &str,
        revision: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, PathBuf)> {
        use hf_hub::api::sync::ApiBuilder;
        use hf_hub::{Repo, RepoType};
        let api = ApiBuilder::from_env()
            .with_token(std::env::var("HF_TOKEN").ok())
            .build()
            .map_err(|e| PolicyError::Hub(e.to_string()))?;
        let repo = api.repo(Repo::with_revision(
            repo_id.to_string(),
            RepoType::Model,
            revision.to_string(),
        ));
        let hub = |f: &str| {
            repo.get(f).map_err(|e| PolicyError::Hub(format!("{repo_id}@{revision}/{f}: {e}")))
        };
        let config = hub("config.json")?;
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        for optional in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            let _ = repo.get(optional);
        }
        if hub("model.safetensors").is_err() {
            let index = hub("model.safetensors.index.json")?;
            let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)?;
            let mut shards: Vec<String> = json["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            shards.sort_unstable();
            shards.dedup();
            for s in shards {
                hub(&s)?;
            }
        }
        Ok((Self::from_hf_dir(&dir, dtype, device)?, dir))
    }
}

/// Undoes llama.cpp's rotary permutation of Q/K rows: `w (n_head·d, in)` →
/// `w.reshape(n_head, d/2, 2, in).transpose(1, 2).reshape(n_head·d, in)` (biases alike).
fn unpermute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let out = dims[0];
    let rest: usize = dims[1..].iter().product();
    let t = w.reshape((n_head, out / n_head / 2, 2, rest))?.transpose(1, 2)?.contiguous()?;
    Ok(t.reshape(dims)?)
}

/// GGUF tensor name → Hugging Face name (`None` for tensors the decoder does not use, such as
/// `rope_freqs`).
fn gguf_to_hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (part, kind) = tail.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Rotary scaling from GGUF metadata: none or `linear`; anything else (YaRN, Llama 3.1's
/// per-frequency `rope_freqs` tensor) is refused rather than silently computed wrong.
fn gguf_rope_scaling(ct: &gguf_file::Content, arch: &str) -> Result<RopeScaling> {
    if ct.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(PolicyError::config(
            "rope_freqs.weight",
            "per-frequency RoPE factors (e.g. Llama 3.1 GGUF) are not supported; load the Hugging Face checkpoint instead",
        ));
    }
    let kind =
        ct.metadata.get(&format!("{arch}.rope.scaling.type")).and_then(|v| v.to_string().ok());
    let factor =
        ct.metadata.get(&format!("{arch}.rope.scaling.factor")).and_then(|v| v.to_f32().ok());
    match (kind.map(String::as_str), factor) {
        (None | Some("none"), _) => Ok(RopeScaling::None),
        (Some("linear"), Some(f)) if f > 0.0 => Ok(RopeScaling::Linear { factor: f as f64 }),
        (Some(other), _) => Err(PolicyError::config(
            format!("{arch}.rope.scaling.type"),
            format!("`{other}` is not supported (none, linear)"),
        )),
    }
}

/// [`ModelConfig`] from GGUF metadata (`{arch}.block_count`, `{arch}.attention.head_count`, ...).
fn gguf_config(ct: &gguf_file::Content, path: &Path) -> Result<ModelConfig> {
    let get = |k: &str| {
        ct.metadata.get(k).ok_or_else(|| corrupt(path, format!("missing metadata `{k}`")))
    };
    let arch_name = get("general.architecture")?.to_string().map_err(|e| corrupt(path, e))?.clone();
    let architecture = Architecture::parse(&arch_name)?;
    let int = |k: &str| -> Result<usize> {
        let v = get(&format!("{arch_name}.{k}"))?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .map(|x| x as usize)
            .map_err(|e| corrupt(path, format!("`{arch_name}.{k}`: {e}")))
    };
    let float = |k: &str, default: f64| -> f64 {
        ct.metadata
            .get(&format!("{arch_name}.{k}"))
            .and_then(|v| v.to_f32().ok())
            // f32 metadata: keep its shortest decimal form (1e-5, not 9.999999747378752e-6).
            .and_then(|x| x.to_string().parse::<f64>().ok())
            .unwrap_or(default)
    };
    let tok_id = |k: &str| ct.metadata.get(k).and_then(|v| v.to_u32().ok());
    let embd = ct
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| corrupt(path, "no `token_embd.weight`"))?;
    let hidden_size = int("embedding_length")?;
    let num_heads = int("attention.head_count")?;
    let head_dim = int("attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
    let has_bias = ct.tensor_infos.contains_key("blk.0.attn_q.bias");
    let cfg = ModelConfig {
        architecture,
        vocab_size: embd.shape.dims()[0],
        hidden_size,
        intermediate_size: int("feed_forward_length")?,
        num_layers: int("block_count")?,
        num_heads,
        num_kv_heads: int("attention.head_count_kv").unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta: float("rope.freq_base", 10_000.0),
        rope_scaling: gguf_rope_scaling(ct, &arch_name)?,
        max_position_embeddings: int("context_length").unwrap_or(4096),
        tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
        qkv_bias: architecture == Architecture::Qwen2 || has_bias,
        o_bias: ct.tensor_infos.contains_key("blk.0.attn_output.bias"),
        mlp_bias: ct.tensor_infos.contains_key("blk.0.ffn_up.bias"),
        qk_norm: architecture == Architecture::Qwen3,
        bos_token_id: tok_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: tok_id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        raw: serde_json::Value::Null,
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf() {
        assert_eq!(
            gguf_to_hf_name("blk.3.attn_k.weight").as_deref(),
            Some("model.layers.3.self_attn.k_proj.weight")
        );
        assert_eq!(
            gguf_to_hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            gguf_to_hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() -> Result<()> {
        // llama.cpp: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(out, in)
        let (n_head, d, inp) = (2usize, 4usize, 3usize);
        let w = Tensor::arange(0f32, (n_head * d * inp) as f32, &Device::Cpu)?
            .reshape((n_head * d, inp))?;
        let permuted = w
            .reshape((n_head, 2, d / 2, inp))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n_head * d, inp))?;
        let back = unpermute(&permuted, n_head)?;
        assert_eq!(back.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        Ok(())
    }
}
