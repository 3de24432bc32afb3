//! Model configuration parsed from a Hugging Face `config.json` (or GGUF metadata).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::{PolicyError, Result};

/// The decoder families this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2, Mistral (no sliding window): optional `attention_bias` on q/k/v/o.
    Llama,
    /// Qwen2 / Qwen2.5: bias on q/k/v, none on o.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k before rotary embedding.
    Qwen3,
}

impl Architecture {
    /// Parses a `model_type` (`"llama"`, `"mistral"`, `"qwen2"`, `"qwen3"`) or an
    /// `architectures[0]` class name (`"LlamaForCausalLM"`, ...).
    ///
    /// # Errors
    /// [`PolicyError::UnknownArchitecture`] naming anything else.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().trim_end_matches("forcausallm") {
            "llama" | "mistral" | "smollm2" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            _ => Err(PolicyError::UnknownArchitecture { name: name.to_string() }),
        }
    }

    /// The `model_type` transformers uses for this family.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }

    /// The `architectures[0]` class name transformers uses for this family.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// How rotary frequencies are rescaled (`rope_scaling` / `rope_parameters.rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// `"linear"`: positions divided by `factor` (inverse frequencies divided by it).
    Linear {
        /// Scaling factor.
        factor: f64,
    },
    /// `"llama3"`: Llama 3.1 frequency-dependent scaling.
    Llama3 {
        /// Scaling factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Context length of the original model.
        original_max_position_embeddings: f64,
    },
}

/// Everything the decoder needs to know about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The decoder family.
    pub architecture: Architecture,
    /// Vocabulary size `V`.
    pub vocab_size: usize,
    /// Hidden size `H`.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when `< num_heads`).
    pub num_kv_heads: usize,
    /// Per-head dimension (`hidden_size / num_heads` unless given).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Maximum positions (informational; positions beyond it still work).
    pub max_position_embeddings: usize,
    /// `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys (Qwen3).
    pub qk_norm: bool,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (generation stops on any of them).
    pub eos_token_ids: Vec<u32>,
    /// The `config.json` this was parsed from (written back unchanged by checkpoints).
    pub raw: Value,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

fn ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
}

fn rope_scaling(v: Option<&Value>) -> Result<RopeScaling> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(RopeScaling::None) };
    let kind =
        v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        v.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| PolicyError::config(format!("rope_scaling.{k}"), "missing number"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(PolicyError::config(
            "rope_scaling.rope_type",
            format!("`{other}` is not supported"),
        )),
    }
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json` value.
    ///
    /// # Errors
    /// [`PolicyError::UnknownArchitecture`] for other model types, [`PolicyError::Config`] for
    /// missing/inconsistent fields (heads not dividing, activation other than SiLU, unsupported rope
    /// scaling), [`PolicyError::Json`] for malformed JSON.
    pub fn from_hf_json(raw: Value) -> Result<Self> {
        let c: HfConfig = serde_json::from_value(raw.clone())?;
        let name = c
            .model_type
            .clone()
            .or_else(|| c.architectures.as_ref().and_then(|a| a.first().cloned()))
            .ok_or_else(|| {
                PolicyError::config("model_type", "neither model_type nor architectures given")
            })?;
        let architecture = Architecture::parse(&name)?;
        if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(PolicyError::config(
                "hidden_act",
                format!("`{act}` is not supported (only silu)"),
            ));
        }
        // transformers 5 writes `rope_parameters {rope_theta, rope_type, ...}`; 4.x writes
        // `rope_theta` and `rope_scaling`.
        let params = c.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(c.rope_theta)
            .unwrap_or(10_000.0);
        let scaling = rope_scaling(params.or(c.rope_scaling.as_ref()))?;
        let cfg = Self {
            architecture,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling: scaling,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            qkv_bias: architecture == Architecture::Qwen2 || c.attention_bias.unwrap_or(false),
            o_bias: architecture != Architecture::Qwen2 && c.attention_bias.unwrap_or(false),
            mlp_bias: c.mlp_bias.unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id: ids(&c.bos_token_id).first().copied(),
            eos_token_ids: ids(&c.eos_token_id),
            raw,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses `config.json`.
    ///
    /// # Errors
    /// [`PolicyError::MissingFile`], [`PolicyError::CorruptFile`] (not JSON), and the errors of
    /// [`ModelConfig::from_hf_json`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PolicyError::MissingFile { path: path.to_path_buf() },
            _ => PolicyError::Io(e),
        })?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| PolicyError::CorruptFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_hf_json(raw)
    }

    /// Checks that the sizes are positive and the heads divide evenly.
    ///
    /// # Errors
    /// [`PolicyError::Config`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(PolicyError::config(field, "must be > 0"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(PolicyError::config(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(PolicyError::config("head_dim", "must be even for rotary embeddings"));
        }
        if !(self.rope_theta > 0.0 && self.rms_norm_eps >= 0.0) {
            return Err(PolicyError::config("rope_theta", "must be > 0 (and rms_norm_eps >= 0)"));
        }
        Ok(())
    }

    /// RoPE inverse frequencies `θ^(-2i/d)` (length `head_dim / 2`), with scaling applied, in f64.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        let base: Vec<f64> =
            (0..d / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
        match self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen
                                - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Every weight of the model: Hugging Face name and shape, in a fixed order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            let mut push = |n: &str, s: Vec<usize>| out.push((format!("{p}.{n}"), s));
            push("input_layernorm.weight", vec![h]);
            for (name, out_dim) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                push(&format!("self_attn.{name}.weight"), vec![out_dim, h]);
                if self.qkv_bias {
                    push(&format!("self_attn.{name}.bias"), vec![out_dim]);
                }
            }
            push("self_attn.o_proj.weight", vec![h, q]);
            if self.o_bias {
                push("self_attn.o_proj.bias", vec![h]);
            }
            if self.qk_norm {
                push("self_attn.q_norm.weight", vec![self.head_dim]);
                push("self_attn.k_norm.weight", vec![self.head_dim]);
            }
            push("post_attention_layernorm.weight", vec![h]);
            for (name, s) in
                [("gate_proj", vec![i, h]), ("up_proj", vec![i, h]), ("down_proj", vec![h, i])]
            {
                let rows = s[0];
                push(&format!("mlp.{name}.weight"), s);
                if self.mlp_bias {
                    push(&format!("mlp.{name}.bias"), vec![rows]);
                }
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }

    /// A `config.json` for this configuration: the original one when it was parsed from JSON,
    /// otherwise a minimal transformers-compatible one.
    pub fn to_hf_json(&self) -> Value {
        if self.raw.is_object() {
            return self.raw.clone();
        }
        let eos = match self.eos_token_ids.as_slice() {
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        };
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        serde_json::json!({
            "rope_scaling": rope_scaling,
            "architectures": [self.architecture.class_name()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.o_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "qwen2", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "eos_token_id": [3, 4], "rope_theta": 1e6
        })
    }

    #[test]
    fn parses_qwen2_with_bias_and_eos_list() -> Result<()> {
        let c = ModelConfig::from_hf_json(base())?;
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert!(c.qkv_bias && !c.o_bias && !c.qk_norm);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.tensor_shapes().len(), 1 + 12 + 2);
        Ok(())
    }

    #[test]
    fn synthesized_json_round_trips() -> Result<()> {
        let mut c = ModelConfig::from_hf_json(base())?;
        c.raw = Value::Null;
        c.rope_scaling = RopeScaling::Linear { factor: 2.0 };
        let back = ModelConfig::from_hf_json(c.to_hf_json())?;
        assert_eq!(ModelConfig { raw: Value::Null, ..back }, c);
        Ok(())
    }

    #[test]
    fn unknown_architecture_is_named() {
        let mut v = base();
        v["model_type"] = "gpt_neox".into();
        let err = ModelConfig::from_hf_json(v).unwrap_err();
        assert!(
            matches!(&err, PolicyError::UnknownArchitecture { name } if name == "gpt_neox"),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_heads_and_activation() {
        let mut v = base();
        v["num_key_value_heads"] = 3.into();
        assert!(matches!(ModelConfig::from_hf_json(v), Err(PolicyError::Config { .. })));
        let mut v = base();
        v["hidden_act"] = "gelu".into();
        assert!(matches!(ModelConfig::from_hf_json(v), Err(PolicyError::Config { .. })));
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies() -> Result<()> {
        let mut v = base();
        v["model_type"] = "llama".into();
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = ModelConfig::from_hf_json(v)?;
        let plain = ModelConfig { rope_scaling: RopeScaling::None, ..c.clone() }.inv_freq();
        let scaled = c.inv_freq();
        assert_eq!(scaled[0], plain[0]);
        assert!(scaled[1] < plain[1]);
        Ok(())
    }
}
