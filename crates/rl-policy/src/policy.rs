//! [`LmPolicy`] (implements [`rl_core::Policy`]), [`ReferencePolicy`] (frozen) and
//! [`ValueModel`] (implements [`rl_core::Critic`]).

use std::sync::Arc;

use candle_core::{DType, Module, Tensor, Var};
use rl_core::{Critic, Policy, Prompt, RolloutBatch, SamplingConfig, TokenLogProbs};

use crate::logprobs::{PromptResponse, Trimmed, token_log_probs};
use crate::model::{Mode, Transformer};
use crate::sampling::{Generation, StopRules, generate};
use crate::{LanguageModel, PolicyError, Result};

/// Text ↔ token ids, as generation needs it (implemented by [`crate::tokenizer::Tokenizer`]).
/// Prompts are already templated: `encode` must not add special tokens; `decode` should skip them.
pub trait TextCodec: Send + Sync {
    /// Token ids of `text`.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Text of `ids` (special tokens removed).
    fn decode(&self, ids: &[u32]) -> Result<String>;
}

fn batch_view(batch: &RolloutBatch) -> PromptResponse<'_> {
    PromptResponse {
        prompt_ids: &batch.prompt_ids,
        prompt_mask: &batch.prompt_mask,
        response_ids: &batch.response_ids,
        response_mask: &batch.response_mask,
    }
}

/// `(B, T)` log-probs (+ entropies) of a batch's responses under `model` run in `mode`, as f32.
fn batch_log_probs(
    model: &Transformer,
    batch: &RolloutBatch,
    with_entropy: bool,
    mode: Mode,
    chunk: usize,
) -> Result<TokenLogProbs> {
    // Only the columns that hold a real token in some row run (padding gives exactly 0).
    let trim = Trimmed::new(&batch_view(batch))?;
    let view = trim.view();
    let hidden = view.response_hidden(model, mode)?;
    let (lp, ent) = token_log_probs(
        model,
        &hidden,
        view.response_ids,
        view.response_mask,
        chunk,
        with_entropy,
    )?;
    let full = |x: Tensor| trim.pad_back(&x.to_dtype(DType::F32)?);
    Ok(TokenLogProbs { log_probs: full(lp)?, entropy: ent.map(full).transpose()? })
}

/// A trainable causal-LM policy: a [`LanguageModel`], an optional [`TextCodec`] and the
/// generation settings (EOS ids, pad id).
///
/// * [`Policy::log_probs`] runs the differentiable [`Mode::Diff`] forward on the trainable vars.
/// * [`Policy::generate`] runs the fused forward on detached weights (no graph kept).
#[derive(Clone)]
pub struct LmPolicy {
    model: Arc<LanguageModel>,
    codec: Option<Arc<dyn TextCodec>>,
    eos_ids: Vec<u32>,
    pad_id: u32,
    chunk: usize,
}

impl std::fmt::Debug for LmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmPolicy")
            .field("architecture", &self.model.config().architecture)
            .field("params", &self.model.num_params())
            .field("eos_ids", &self.eos_ids)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl LmPolicy {
    /// A policy over `model`. EOS ids come from the config (`eos_token_id`); the pad id from
    /// `pad_token_id`, else the first EOS id, else 0.
    pub fn new(model: LanguageModel) -> Self {
        let cfg = model.config();
        let eos_ids = cfg.eos_token_ids.clone();
        let pad_id = cfg
            .raw
            .get("pad_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32)
            .or_else(|| eos_ids.first().copied())
            .unwrap_or(0);
        Self { model: Arc::new(model), codec: None, eos_ids, pad_id, chunk: 0 }
    }

    /// Loads model and tokenizer from a GGUF file ([`LanguageModel::from_gguf`],
    /// [`Tokenizer::from_gguf_file`](crate::tokenizer::Tokenizer::from_gguf_file)).
    ///
    /// # Errors
    /// Those of both loaders.
    pub fn from_gguf(
        path: &std::path::Path,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let model = LanguageModel::from_gguf(path, dtype, device)?;
        Ok(Self::new(model).with_tokenizer(crate::tokenizer::Tokenizer::from_gguf_file(path)?))
    }

    /// Loads a Hugging Face directory ([`LanguageModel::from_hf_dir`]) and, when `tokenizer.json`
    /// is present, its tokenizer (EOS ids then come from `generation_config.json`).
    ///
    /// # Errors
    /// Those of both loaders.
    pub fn from_hf_dir(
        dir: &std::path::Path,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let policy = Self::new(LanguageModel::from_hf_dir(dir, dtype, device)?);
        if dir.join("tokenizer.json").is_file() {
            Ok(policy.with_tokenizer(crate::tokenizer::Tokenizer::from_hf_dir(dir)?))
        } else {
            Ok(policy)
        }
    }

    /// Loads from a model source string: a `.gguf` file ([`LmPolicy::from_gguf`]), a local
    /// directory ([`LmPolicy::from_hf_dir`]), or else a Hub repo id with an optional `@revision`
    /// (`"HuggingFaceTB/SmolLM2-135M-Instruct@main"`, [`LanguageModel::from_hub`]; needs network).
    ///
    /// # Errors
    /// Those of the chosen loader.
    pub fn load(source: &str, dtype: DType, device: &candle_core::Device) -> Result<Self> {
        let path = std::path::Path::new(source);
        if path.is_file() {
            Self::from_gguf(path, dtype, device)
        } else if path.is_dir() {
            Self::from_hf_dir(path, dtype, device)
        } else if source.ends_with(".gguf") || source.starts_with('.') || source.starts_with('/') {
            Err(PolicyError::MissingFile { path: path.to_path_buf() })
        } else {
            let (repo, revision) = source.split_once('@').unwrap_or((source, "main"));
            let (_, dir) = LanguageModel::from_hub(repo, revision, dtype, device)?;
            Self::from_hf_dir(&dir, dtype, device)
        }
    }

    /// Sets the text codec (needed by [`Policy::generate`] and stop strings).
    pub fn with_codec(mut self, codec: Arc<dyn TextCodec>) -> Self {
        self.codec = Some(codec);
        self
    }

    /// Uses `tokenizer` as the codec, and takes its EOS ids (when it has any, e.g. `<|im_end|>`
    /// for chat models) and pad id.
    pub fn with_tokenizer(mut self, tokenizer: crate::tokenizer::Tokenizer) -> Self {
        if !tokenizer.eos_ids().is_empty() {
            self.eos_ids = tokenizer.eos_ids().to_vec();
        }
        if let Some(pad) = tokenizer.pad_id() {
            self.pad_id = pad;
        }
        self.with_codec(Arc::new(tokenizer))
    }

    /// Replaces the EOS ids (e.g. from `generation_config.json`, or `<|im_end|>` for chat models).
    pub fn with_eos_ids(mut self, ids: Vec<u32>) -> Self {
        self.eos_ids = ids;
        self
    }

    /// Sets the padding id used in prompt/response tensors.
    pub fn with_pad_id(mut self, id: u32) -> Self {
        self.pad_id = id;
        self
    }

    /// Positions per log-prob chunk (0 = automatic, see
    /// [`DEFAULT_CHUNK_ELEMENTS`](crate::logprobs::DEFAULT_CHUNK_ELEMENTS)).
    pub fn with_log_prob_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk;
        self
    }

    /// The model.
    pub fn model(&self) -> &LanguageModel {
        &self.model
    }

    /// The EOS ids generation stops on.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The padding id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// A frozen deep copy of the current weights (for KL penalties).
    ///
    /// # Errors
    /// Device errors while copying.
    pub fn reference(&self) -> Result<ReferencePolicy> {
        Ok(ReferencePolicy { model: self.model.deep_copy()?, chunk: self.chunk })
    }

    /// `(B, T)` f32 log-probs (and entropies) in `mode` on **detached** weights: the exact numbers
    /// of [`Policy::log_probs`] (for [`Mode::Diff`]) without an autograd graph, e.g. to recompute
    /// `old_log_probs` so that the first PPO ratio is exactly 1.
    ///
    /// # Errors
    /// Batch shape errors.
    pub fn log_probs_detached(
        &self,
        batch: &RolloutBatch,
        with_entropy: bool,
        mode: Mode,
    ) -> Result<TokenLogProbs> {
        batch_log_probs(&self.model.detached()?, batch, with_entropy, mode, self.chunk)
    }

    /// Samples from token-id prompts (each non-empty) and assembles a [`RolloutBatch`]: prompts
    /// left-padded to `P`, responses right-padded to `T` with the pad id, `old_log_probs` the
    /// sampling log-probs (temperature-1 model distribution, see [`crate::sampling`]), group id
    /// `i` for the `n` responses of `prompts[i]`. `texts[i]` (when given) fills the samples'
    /// prompt text and answers; responses are decoded when a codec is set.
    ///
    /// # Errors
    /// Invalid config or prompts, codec failures.
    pub fn generate_ids(
        &self,
        prompts: &[Vec<u32>],
        texts: Option<&[Prompt]>,
        config: &SamplingConfig,
    ) -> Result<RolloutBatch> {
        let model = self.model.sampler()?;
        let stop_fn = |ids: &[u32]| -> Result<bool> {
            match &self.codec {
                Some(c) => {
                    let text = c.decode(ids)?;
                    Ok(config.stop.iter().any(|s| !s.is_empty() && text.contains(s.as_str())))
                }
                None => Ok(false),
            }
        };
        let has_stop = !config.stop.is_empty() && self.codec.is_some();
        let rules = StopRules {
            eos_ids: &self.eos_ids,
            stop: if has_stop { Some(&stop_fn) } else { None },
        };
        let Generation { tokens, log_probs, finish } =
            generate(&model, prompts, config, rules, self.pad_id)?;
        let n = config.n;
        let sequences: Vec<rl_core::SampledSequence> = tokens
            .into_iter()
            .zip(log_probs)
            .zip(finish)
            .enumerate()
            .map(|(r, ((ids, lp), fin))| rl_core::SampledSequence::new(r / n, ids, lp, fin))
            .collect();
        let mut parts = rl_core::RolloutParts::new(prompts, &sequences, self.pad_id);
        parts.prompts = texts;
        let decode = |ids: &[u32]| -> rl_core::Result<String> {
            match &self.codec {
                Some(c) => Ok(c.decode(ids)?),
                None => Ok(String::new()),
            }
        };
        Ok(RolloutBatch::from_sequences(&parts, &decode, self.model.device())?)
    }
}

impl Policy for LmPolicy {
    /// Encodes each prompt's text with the codec (error without one), then
    /// [`LmPolicy::generate_ids`].
    fn generate(
        &mut self,
        prompts: &[Prompt],
        config: &SamplingConfig,
    ) -> rl_core::Result<RolloutBatch> {
        let codec = self.codec.as_ref().ok_or_else(|| {
            PolicyError::input("codec", "LmPolicy::generate needs a TextCodec (with_codec)")
        })?;
        let ids = prompts.iter().map(|p| codec.encode(&p.text)).collect::<Result<Vec<_>>>()?;
        Ok(self.generate_ids(&ids, Some(prompts), config)?)
    }

    fn log_probs(
        &self,
        batch: &RolloutBatch,
        with_entropy: bool,
    ) -> rl_core::Result<TokenLogProbs> {
        Ok(batch_log_probs(&self.model.trainable()?, batch, with_entropy, Mode::Diff, self.chunk)?)
    }

    fn trainable_vars(&self) -> Vec<Var> {
        self.model.vars()
    }
}

/// A frozen copy of a policy: log-probs without gradients (never give its vars to an optimizer).
#[derive(Debug)]
pub struct ReferencePolicy {
    model: LanguageModel,
    chunk: usize,
}

impl ReferencePolicy {
    /// Wraps a loaded model as a frozen reference.
    pub fn new(model: LanguageModel) -> Self {
        Self { model, chunk: 0 }
    }

    /// `(B, T)` f32 reference log-probs of the batch's responses (0.0 on padding), computed with the
    /// [`Mode::Diff`] numerics on detached weights (so a reference equal to the policy gives
    /// exactly zero KL).
    ///
    /// # Errors
    /// Batch shape errors.
    pub fn log_probs(&self, batch: &RolloutBatch) -> Result<Tensor> {
        Ok(batch_log_probs(&self.model.detached()?, batch, false, Mode::Diff, self.chunk)?
            .log_probs)
    }

    /// The model.
    pub fn model(&self) -> &LanguageModel {
        &self.model
    }
}

impl rl_core::ReferenceModel for ReferencePolicy {
    fn reference_log_probs(&self, batch: &RolloutBatch) -> rl_core::Result<Tensor> {
        Ok(ReferencePolicy::log_probs(self, batch)?)
    }

    fn weights(&self) -> Vec<Var> {
        self.model.vars()
    }
}

/// A PPO critic: a decoder backbone (initialised from the policy's weights, as Open-Reasoner-Zero
/// does) and a scalar value head `value_head: Linear(H, 1)` on the final hidden states.
#[derive(Debug)]
pub struct ValueModel {
    backbone: LanguageModel,
    head_w: Var,
    head_b: Var,
}

impl ValueModel {
    /// A critic whose backbone is a deep copy of `model` and whose head is `N(0, 1/(H+1)²)`
    /// (OpenRLHF's value-head init) with zero bias, drawn from `seed`.
    ///
    /// # Errors
    /// Device errors.
    pub fn from_model(model: &LanguageModel, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let backbone = model.deep_copy()?;
        let h = model.config().hidden_size;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let std = 1.0 / (h as f64 + 1.0);
        let w: Vec<f64> = (0..h)
            .map(|_| {
                let (u1, u2): (f64, f64) =
                    (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect();
        let dev = model.device();
        let head_w = Var::from_tensor(&Tensor::from_vec(w, (1, h), dev)?.to_dtype(model.dtype())?)?;
        let head_b = Var::from_tensor(&Tensor::zeros(1, model.dtype(), dev)?)?;
        Ok(Self { backbone, head_w, head_b })
    }

    /// `(B, T)` values in `mode` (differentiable for [`Mode::Diff`] on trainable weights).
    fn values_in(&self, batch: &RolloutBatch, trainable: bool) -> Result<Tensor> {
        let model =
            if trainable { self.backbone.trainable()? } else { self.backbone.detached()? };
        let (w, b) = if trainable {
            (self.head_w.as_tensor().clone(), self.head_b.as_tensor().clone())
        } else {
            (self.head_w.as_tensor().detach(), self.head_b.as_tensor().detach())
        };
        let trim = Trimmed::new(&batch_view(batch))?;
        let hidden = trim.view().response_hidden(&model, Mode::Diff)?;
        let v = candle_nn::Linear::new(w, Some(b)).forward(&hidden)?.squeeze(2)?;
        let mask = trim.response_mask.to_dtype(v.dtype())?;
        trim.pad_back(&(v * mask)?.to_dtype(DType::F32)?)
    }

    /// `(B, T)` f32 values without an autograd graph (for rollouts / GAE).
    ///
    /// # Errors
    /// Batch shape errors.
    pub fn values_detached(&self, batch: &RolloutBatch) -> Result<Tensor> {
        self.values_in(batch, false)
    }

    /// The backbone.
    pub fn backbone(&self) -> &LanguageModel {
        &self.backbone
    }

    /// Saves the backbone as a Hugging Face checkpoint in `dir` (see [`LanguageModel::save`]) and
    /// the head as `dir/value_head.safetensors` (`value_head.weight (1, H)`, `value_head.bias (1,)`).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        self.backbone.save(dir)?;
        let head: std::collections::HashMap<String, Tensor> = [
            ("value_head.weight".to_string(), self.head_w.as_tensor().detach()),
            ("value_head.bias".to_string(), self.head_b.as_tensor().detach()),
        ]
        .into();
        let path = dir.join(VALUE_HEAD_FILE);
        rl_core::fs::write_atomic(&path, |tmp| candle_core::safetensors::save(&head, tmp))?;
        Ok(())
    }

    /// Loads a critic saved by [`ValueModel::save`].
    ///
    /// # Errors
    /// Those of [`LanguageModel::from_hf_dir`]; [`PolicyError::MissingTensor`] /
    /// [`PolicyError::TensorShape`] for the head.
    pub fn load(dir: &std::path::Path, dtype: DType, device: &candle_core::Device) -> Result<Self> {
        let backbone = LanguageModel::from_hf_dir(dir, dtype, device)?;
        let path = dir.join(VALUE_HEAD_FILE);
        if !path.is_file() {
            return Err(PolicyError::MissingFile { path });
        }
        let mut head = candle_core::safetensors::load(&path, device)
            .map_err(|e| PolicyError::CorruptFile { path: path.clone(), reason: e.to_string() })?;
        let h = backbone.config().hidden_size;
        let mut take = |name: &str, shape: &[usize]| -> Result<Var> {
            let t = head.remove(name).ok_or_else(|| PolicyError::MissingTensor {
                path: path.clone(),
                name: name.into(),
            })?;
            if t.dims() != shape {
                return Err(PolicyError::TensorShape {
                    path: path.clone(),
                    name: name.into(),
                    expected: shape.to_vec(),
                    got: t.dims().to_vec(),
                });
            }
            Ok(Var::from_tensor(&t.to_dtype(dtype)?)?)
        };
        let head_w = take("value_head.weight", &[1, h])?;
        let head_b = take("value_head.bias", &[1])?;
        Ok(Self { backbone, head_w, head_b })
    }
}

/// File name of a critic's value head next to its backbone checkpoint.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";

impl Critic for ValueModel {
    /// `V(x, y_<t)`: the head applied to the hidden state at the position that predicts response
    /// token `t` (the last prompt token for `t = 0`), 0.0 on padding.
    fn values(&self, batch: &RolloutBatch) -> rl_core::Result<Tensor> {
        Ok(self.values_in(batch, true)?)
    }

    /// Backbone vars (except an untied `lm_head.weight`, which the critic does not use) and the
    /// head's weight and bias.
    fn trainable_vars(&self) -> Vec<Var> {
        let mut vars: Vec<Var> = self
            .backbone
            .named_vars()
            .into_iter()
            .filter(|(n, _)| n != "lm_head.weight")
            .map(|(_, v)| v)
            .collect();
        vars.push(self.head_w.clone());
        vars.push(self.head_b.clone());
        vars
    }
}
