//! [`LanguageModel`]: a configuration plus its weights as trainable [`Var`]s in a [`VarMap`],
//! with random initialisation and Hugging Face checkpoints.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::Transformer;
use crate::ops::ComputeDtype;
use crate::ops::precision::Bf16Buffers;
use crate::{ModelConfig, PolicyError, Result};

/// bf16 products need f32 master weights.
pub(crate) fn check_compute(compute: ComputeDtype, dtype: DType) -> Result<()> {
    if compute == ComputeDtype::Bf16 && dtype != DType::F32 {
        return Err(PolicyError::config(
            "compute_dtype",
            format!("bf16 products need f32 weights (the f32 masters), the model is {dtype:?}"),
        ));
    }
    Ok(())
}

/// A decoder's configuration and weights. Every weight is a [`Var`] named as in Hugging Face
/// checkpoints (`model.layers.0.self_attn.q_proj.weight`, ...); [`VarMap::all_vars`] on
/// [`LanguageModel::varmap`] gives the trainable parameters.
pub struct LanguageModel {
    cfg: ModelConfig,
    varmap: VarMap,
    dtype: DType,
    device: Device,
    compute: ComputeDtype,
    /// The products' dtype of [`LanguageModel::sampler`] when it differs from `compute`.
    sample: Option<ComputeDtype>,
    /// The bf16 weight buffers its decoders share (bf16 compute only).
    bf16_buffers: Arc<Bf16Buffers>,
}

impl std::fmt::Debug for LanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanguageModel")
            .field("architecture", &self.cfg.architecture)
            .field("params", &self.num_params())
            .field("dtype", &self.dtype)
            .field("compute_dtype", &self.compute)
            .field("sample_dtype", &self.sample_compute_dtype())
            .finish()
    }
}

/// Normal samples by Box–Muller from a seeded RNG (candle's CPU RNG cannot be seeded).
fn normal(rng: &mut StdRng, n: usize, mean: f64, std: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect()
}

impl LanguageModel {
    /// Wraps named weights after checking that every tensor of [`ModelConfig::tensor_shapes`] is
    /// present with the right shape (extra tensors, e.g. a tied `lm_head.weight`, are ignored).
    /// Weights are converted to `dtype` and moved to `device`.
    ///
    /// # Errors
    /// [`PolicyError::MissingTensor`] / [`PolicyError::TensorShape`] naming `source` (the file or
    /// directory the weights came from) and the tensor.
    pub fn from_tensors(
        cfg: ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        source: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for (name, shape) in cfg.tensor_shapes() {
                let t = tensors.remove(&name).ok_or_else(|| PolicyError::MissingTensor {
                    path: source.to_path_buf(),
                    name: name.clone(),
                })?;
                if t.dims() != shape.as_slice() {
                    return Err(PolicyError::TensorShape {
                        path: source.to_path_buf(),
                        name,
                        expected: shape,
                        got: t.dims().to_vec(),
                    });
                }
                let t = t.to_dtype(dtype)?.to_device(device)?;
                let var = Var::from_tensor(&t)?;
                crate::runtime::huge_pages_for(var.as_tensor());
                data.insert(name, var);
            }
        }
        Ok(Self {
            cfg,
            varmap,
            dtype,
            device: device.clone(),
            compute: ComputeDtype::F32,
            sample: None,
            bf16_buffers: Arc::default(),
        })
    }

    /// A randomly initialised model (reproducible for a `seed`): matrices `N(0, 0.02²)` like
    /// transformers' `initializer_range`, norm weights `N(1, 0.1²)` and biases `N(0, 0.02²)` (not the
    /// usual 1 and 0, so tests see every parameter matter).
    ///
    /// # Errors
    /// Invalid configs.
    pub fn random(cfg: ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in cfg.tensor_shapes() {
            let n = shape.iter().product();
            let values = if name.ends_with("norm.weight") {
                normal(&mut rng, n, 1.0, 0.1)
            } else {
                normal(&mut rng, n, 0.0, 0.02)
            };
            tensors.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        Self::from_tensors(cfg, tensors, Path::new("<random init>"), dtype, device)
    }

    /// A deep copy: new `Var`s with copied storage (training the copy leaves `self` unchanged).
    /// Used for a frozen reference policy and to initialise a critic from the policy.
    ///
    /// # Errors
    /// Device errors while copying.
    pub fn deep_copy(&self) -> Result<Self> {
        let varmap = VarMap::new();
        {
            let mut dst = varmap.data().lock().expect("varmap lock");
            for (name, var) in self.named_vars() {
                let copy = Var::from_tensor(&var.as_tensor().copy()?)?;
                crate::runtime::huge_pages_for(copy.as_tensor());
                dst.insert(name, copy);
            }
        }
        Ok(Self {
            cfg: self.cfg.clone(),
            varmap,
            dtype: self.dtype,
            device: self.device.clone(),
            compute: self.compute,
            sample: self.sample,
            bf16_buffers: Arc::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype of the matrix products of the decoders this model builds ([`Self::trainable`],
    /// [`Self::detached`]): f32 (the default) or bf16 with f32 accumulation (mixed precision;
    /// see [`crate::ops::precision`]).
    pub fn compute_dtype(&self) -> ComputeDtype {
        self.compute
    }

    /// Sets the [`Self::compute_dtype`] of the decoders built from now on. The weights stay in
    /// their dtype (the f32 masters the optimizer updates); each decoder converts them to bf16
    /// once, on first use. Asking for bf16 on a CPU whose AMX tiles would go unused logs
    /// [`crate::ops::blas::amx_unused`] once per process.
    ///
    /// # Errors
    /// [`PolicyError::Config`] (`compute_dtype`) for bf16 on weights that are not f32.
    pub fn set_compute_dtype(&mut self, compute: ComputeDtype) -> Result<()> {
        check_compute(compute, self.dtype)?;
        self.compute = compute;
        self.hint_amx(compute);
        Ok(())
    }

    /// Logs [`crate::ops::blas::amx_unused`] once per process when `compute` is bf16 on a CPU.
    fn hint_amx(&self, compute: ComputeDtype) {
        if compute == ComputeDtype::Bf16 && self.device.is_cpu() {
            static HINT: std::sync::Once = std::sync::Once::new();
            if let Some(why) = crate::ops::blas::amx_unused() {
                HINT.call_once(|| tracing::warn!("{why}"));
            }
        }
    }

    /// The dtype of the matrix products of [`Self::sampler`]: the one set by
    /// [`Self::set_sample_compute_dtype`], else [`Self::compute_dtype`].
    pub fn sample_compute_dtype(&self) -> ComputeDtype {
        self.sample.unwrap_or(self.compute)
    }

    /// Sets the dtype of the sampler's matrix products apart from the training ones (`None`:
    /// follow [`Self::compute_dtype`], the default), as verl sets its rollout dtype apart from the
    /// actor's: for a CPU that samples faster in one precision and trains faster in the other,
    /// or to keep the rollouts of an f32 run (the same tokens for a seed) while the update runs
    /// in bf16. Which mix is fastest depends on the CPU: measure it (`docs/benchmarks.md`; on
    /// the AMX Xeon with MKL, bf16 for both was the fastest on 2026-12-05). The old log-probs of
    /// the PPO ratio should then come from the training forward (the trainer's default,
    /// `recompute_old_log_probs`), as verl recomputes them for a vLLM sampler.
    ///
    /// # Errors
    /// [`PolicyError::Config`] (`compute_dtype`) for bf16 on weights that are not f32.
    pub fn set_sample_compute_dtype(&mut self, sample: Option<ComputeDtype>) -> Result<()> {
        if let Some(s) = sample {
            check_compute(s, self.dtype)?;
            self.hint_amx(s);
        }
        self.sample = sample;
        Ok(())
    }

    /// `self` with [`Self::set_compute_dtype`] applied.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use rl_policy::{ComputeDtype, LanguageModel, Mode, ModelConfig};
    ///
    /// let cfg = ModelConfig::from_hf_json(serde_json::json!({
    ///     "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
    ///     "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
    /// }))?;
    /// let model = LanguageModel::random(cfg.clone(), 0, DType::F32, &Device::Cpu)?;
    /// let ids = Tensor::new(&[[0u32, 5, 7]], &Device::Cpu)?;
    /// let valid = vec![vec![true; 3]];
    /// let f32_logits = model.trainable()?.forward(&ids, &valid, Mode::Diff)?;
    /// let model = model.with_compute_dtype(ComputeDtype::Bf16)?;
    /// let bf16_logits = model.trainable()?.forward(&ids, &valid, Mode::Diff)?;
    /// assert_eq!(bf16_logits.dtype(), DType::F32);
    /// let diff = (f32_logits - bf16_logits)?.abs()?.max_all()?.to_scalar::<f32>()?;
    /// assert!(diff > 0.0 && diff < 0.05, "{diff}");
    /// // bf16 products need f32 master weights.
    /// let f64_model = LanguageModel::random(cfg, 0, DType::F64, &Device::Cpu)?;
    /// assert!(f64_model.with_compute_dtype(ComputeDtype::Bf16).is_err());
    /// # Ok::<(), rl_policy::PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Self::set_compute_dtype`].
    pub fn with_compute_dtype(mut self, compute: ComputeDtype) -> Result<Self> {
        self.set_compute_dtype(compute)?;
        Ok(self)
    }

    /// The weights' device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The underlying [`VarMap`] (Hugging Face names → vars).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// `(name, var)` pairs sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The trainable parameters, sorted by name.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    fn transformer(&self, detach: bool, compute: ComputeDtype) -> Result<Transformer> {
        let data = self.varmap.data().lock().expect("varmap lock");
        Transformer::from_weights(&self.cfg, |name| {
            data.get(name)
                .map(|v| if detach { v.as_tensor().detach() } else { v.as_tensor().clone() })
        })?
        .with_compute_dtype(compute)
        .map(|t| t.with_bf16_buffers(self.bf16_buffers.clone()))
    }

    /// The decoder over the trainable vars: gradients of its outputs reach [`Self::vars`].
    ///
    /// # Errors
    /// Never for a model built by this crate.
    pub fn trainable(&self) -> Result<Transformer> {
        self.transformer(false, self.compute)
    }

    /// The decoder over detached views of the vars (same storage, so later optimizer updates are
    /// visible, except through the bf16 weight copies of a bf16 [`Self::compute_dtype`], made
    /// once per decoder: build a new one after an update; no autograd graph is recorded). Use
    /// for sampling and reference log-probs. The decoders of one model write their bf16 copies
    /// into the same buffers ([`crate::ops::precision::Bf16Buffers`]), so an older decoder reads
    /// the weights a newer one converted.
    ///
    /// # Errors
    /// Never for a model built by this crate.
    pub fn detached(&self) -> Result<Transformer> {
        self.transformer(true, self.compute)
    }

    /// [`Self::detached`] with the sampler's products, [`Self::sample_compute_dtype`]: the
    /// decoder that generates rollouts and evaluation responses.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use rl_policy::{ComputeDtype, LanguageModel, ModelConfig};
    ///
    /// let cfg = ModelConfig::from_hf_json(serde_json::json!({
    ///     "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
    ///     "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
    /// }))?;
    /// let mut model = LanguageModel::random(cfg, 0, DType::F32, &Device::Cpu)?;
    /// model.set_compute_dtype(ComputeDtype::Bf16)?;
    /// assert_eq!(model.sampler()?.compute_dtype(), ComputeDtype::Bf16);
    /// // bf16 training products, f32 sampling.
    /// model.set_sample_compute_dtype(Some(ComputeDtype::F32))?;
    /// assert_eq!(model.sampler()?.compute_dtype(), ComputeDtype::F32);
    /// assert_eq!(model.detached()?.compute_dtype(), ComputeDtype::Bf16);
    /// # Ok::<(), rl_policy::PolicyError>(())
    /// ```
    ///
    /// # Errors
    /// Never for a model built by this crate.
    pub fn sampler(&self) -> Result<Transformer> {
        self.transformer(true, self.sample_compute_dtype())
    }

    /// Saves a Hugging Face checkpoint into `dir` (created if needed): `config.json` and
    /// `model.safetensors` (weights in the model dtype; a tied `lm_head` is not written, as
    /// transformers does). Each file is written to a temporary name and renamed into place.
    ///
    /// # Errors
    /// I/O and serialisation errors.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_as(dir, self.dtype).map(drop)
    }

    /// [`LanguageModel::save`] with the weights converted to `dtype` (and `torch_dtype` / `dtype`
    /// of `config.json` saying so); returns the bytes of the two files.
    ///
    /// # Errors
    /// I/O, conversion and serialisation errors.
    pub fn save_as(&self, dir: &Path, dtype: DType) -> Result<u64> {
        std::fs::create_dir_all(dir)?;
        let tensors: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().detach().to_dtype(dtype)?)))
            .collect::<Result<_>>()?;
        let weights = dir.join("model.safetensors");
        rl_core::fs::write_atomic(&weights, |tmp| candle_core::safetensors::save(&tensors, tmp))?;
        let mut cfg = self.cfg.to_hf_json();
        if let Some(obj) = cfg.as_object_mut() {
            let name = match dtype {
                DType::F64 => "float64",
                DType::F16 => "float16",
                DType::BF16 => "bfloat16",
                _ => "float32",
            };
            // transformers 4 reads `torch_dtype`, transformers 5 `dtype`.
            obj.insert("torch_dtype".into(), name.into());
            obj.insert("dtype".into(), name.into());
        }
        let config = dir.join("config.json");
        let text = serde_json::to_string_pretty(&cfg)?;
        rl_core::fs::write_atomic(&config, |tmp| std::fs::write(tmp, &text))?;
        Ok(std::fs::metadata(&weights)?.len() + std::fs::metadata(&config)?.len())
    }
}
