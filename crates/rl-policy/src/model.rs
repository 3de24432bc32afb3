//! The decoder: Llama / Qwen2 / Qwen3 with grouped-query attention, per-row positions, a causal +
//! padding mask, rotary embeddings and an optional KV cache, in two execution modes.
//!
//! [`Mode::Diff`] is built only from candle ops that have backward passes (`rms_norm_slow`-style
//! normalisation, `softmax(x, D::Minus1)`, rotary embedding as `x·cos + rotate_half(x)·sin`), so
//! every weight receives a gradient. [`Mode::Fused`] uses candle-nn's fused kernels
//! (`rms_norm`, `softmax_last_dim`, `rope`), which silently detach the autograd graph: use it only
//! for sampling and evaluation. The two agree to float tolerance.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear};

use crate::{ModelConfig, PolicyError, Result};

/// Additive mask value for disallowed attention (finite, so fully masked pad rows stay finite).
pub const MASK_VALUE: f32 = -1e9;

/// How the forward pass is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Differentiable: only ops with backward passes. Use for training.
    #[default]
    Diff,
    /// Fused candle-nn kernels (no gradients). Use for sampling.
    Fused,
}

#[derive(Clone, Debug)]
struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Per-layer key/value cache for incremental decoding: `(B, n_kv_heads, K, head_dim)` per layer,
/// keys stored after the rotary embedding.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers] }
    }

    /// Number of cached positions `K` (0 when empty).
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dims()[2])
    }

    /// Keeps only the batch rows `rows` (in that order) of every layer's keys and values.
    ///
    /// # Errors
    /// A row index out of range.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            let idx = Tensor::from_iter(rows.iter().map(|&r| r as u32), k.device())?;
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// `true` when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Positions and attention mask for a forward pass, built from which keys are real tokens.
#[derive(Clone, Debug)]
pub struct AttentionLayout {
    /// `(B, S)` u32 position ids of the `S` query tokens (count of real tokens before each one;
    /// 0 for padding).
    pub positions: Tensor,
    /// `(B, 1, S, K)` additive mask in the model dtype: 0 where query `i` may attend key `j`
    /// (`j` is a real token and `j <= K - S + i`), [`MASK_VALUE`] elsewhere.
    pub mask: Tensor,
}

impl AttentionLayout {
    /// Layout for the last `s` of the `K = key_valid[b].len()` tokens of each row (all rows must
    /// have the same `K`). `key_valid[b][j]` is `false` for padding (left-padded prompts,
    /// right-padded responses, finished rows).
    ///
    /// # Errors
    /// [`PolicyError::Input`] for ragged rows or `s > K`.
    pub fn new(key_valid: &[Vec<bool>], s: usize, dtype: DType, device: &Device) -> Result<Self> {
        let b = key_valid.len();
        let k = key_valid.first().map_or(0, Vec::len);
        if key_valid.iter().any(|r| r.len() != k) || s > k || b == 0 {
            return Err(PolicyError::input(
                "key_valid",
                format!("{b} rows of unequal length or shorter than {s}"),
            ));
        }
        let mut positions = Vec::with_capacity(b * s);
        let mut mask = Vec::with_capacity(b * s * k);
        for row in key_valid {
            let mut count = 0u32;
            let mut pos = Vec::with_capacity(k);
            for &v in row {
                pos.push(if v { count } else { 0 });
                count += u32::from(v);
            }
            positions.extend_from_slice(&pos[k - s..]);
            for i in 0..s {
                let q = k - s + i;
                mask.extend(
                    row.iter()
                        .enumerate()
                        .map(|(j, &v)| if v && j <= q { 0.0 } else { MASK_VALUE }),
                );
            }
        }
        Ok(Self {
            positions: Tensor::from_vec(positions, (b, s), device)?,
            mask: Tensor::from_vec(mask, (b, 1, s, k), device)?.to_dtype(dtype)?,
        })
    }
}

/// A Llama/Qwen2/Qwen3 decoder over a set of weight tensors.
///
/// Built from trainable [`candle_core::Var`]s (gradients flow into them) or from detached copies
/// of them (sharing storage, so optimizer updates are visible, but no graph is recorded).
#[derive(Clone, Debug)]
pub struct Transformer {
    cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Vec<f32>,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Diff => candle_nn::ops::rms_norm_slow(x, w, eps as f32)?,
        Mode::Fused => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?,
    })
}

/// `(B, n_kv, S, d)` → `(B, n_kv·n_rep, S, d)`: each key/value head serves `n_rep` consecutive
/// query heads (grouped-query attention).
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, n, s, d) = x.dims4()?;
    Ok(Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, n * n_rep, s, d))?)
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

/// Half-split (Hugging Face / NeoX) rotary embedding of `x: (B, heads, S, d)`. `cos, sin` are
/// `(B, S, d/2)` for [`Mode::Fused`] and `(B, 1, S, d)` (halves repeated, see [`rope_tables`]) for
/// [`Mode::Diff`].
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Fused => candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?,
        Mode::Diff => (x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?)?,
    })
}

/// The `cos`/`sin` tables [`rope`] expects in `mode`, from `(B, S, d/2)` halves.
fn rope_tables(cos: Tensor, sin: Tensor, mode: Mode) -> Result<(Tensor, Tensor)> {
    let full =
        |t: &Tensor| -> Result<Tensor> { Ok(Tensor::cat(&[t, t], D::Minus1)?.unsqueeze(1)?) };
    Ok(match mode {
        Mode::Fused => (cos, sin),
        Mode::Diff => (full(&cos)?, full(&sin)?),
    })
}

impl Transformer {
    /// Builds the decoder from named weights (Hugging Face names, see
    /// [`ModelConfig::tensor_shapes`]); `get(name)` returns the tensor.
    ///
    /// # Errors
    /// [`PolicyError::Input`] when a weight is missing (the loaders check names and shapes first).
    pub fn from_weights(cfg: &ModelConfig, get: impl Fn(&str) -> Option<Tensor>) -> Result<Self> {
        let w = |name: &str| {
            get(name).ok_or_else(|| PolicyError::input("weights", format!("missing `{name}`")))
        };
        let lin = |prefix: &str, bias: bool| -> Result<Linear> {
            let b = if bias { Some(w(&format!("{prefix}.bias"))?) } else { None };
            Ok(Linear::new(w(&format!("{prefix}.weight"))?, b))
        };
        let layers = (0..cfg.num_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                Ok(Layer {
                    input_norm: w(&format!("{p}.input_layernorm.weight"))?,
                    q: lin(&format!("{p}.self_attn.q_proj"), cfg.qkv_bias)?,
                    k: lin(&format!("{p}.self_attn.k_proj"), cfg.qkv_bias)?,
                    v: lin(&format!("{p}.self_attn.v_proj"), cfg.qkv_bias)?,
                    o: lin(&format!("{p}.self_attn.o_proj"), cfg.o_bias)?,
                    q_norm: cfg
                        .qk_norm
                        .then(|| w(&format!("{p}.self_attn.q_norm.weight")))
                        .transpose()?,
                    k_norm: cfg
                        .qk_norm
                        .then(|| w(&format!("{p}.self_attn.k_norm.weight")))
                        .transpose()?,
                    post_norm: w(&format!("{p}.post_attention_layernorm.weight"))?,
                    gate: lin(&format!("{p}.mlp.gate_proj"), cfg.mlp_bias)?,
                    up: lin(&format!("{p}.mlp.up_proj"), cfg.mlp_bias)?,
                    down: lin(&format!("{p}.mlp.down_proj"), cfg.mlp_bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_w = w("model.embed_tokens.weight")?;
        let head_w = if cfg.tie_word_embeddings { embed_w.clone() } else { w("lm_head.weight")? };
        Ok(Self {
            cfg: cfg.clone(),
            embed: Embedding::new(embed_w, cfg.hidden_size),
            layers,
            norm: w("model.norm.weight")?,
            lm_head: Linear::new(head_w, None),
            inv_freq: cfg.inv_freq().iter().map(|&f| f as f32).collect(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.norm.dtype()
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        self.norm.device()
    }

    /// `cos, sin: (B, S, head_dim/2)` for `positions: (B, S)` u32, computed in f32 as transformers
    /// does, then cast to the model dtype.
    fn rotary(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, s) = positions.dims2()?;
        let pos = positions.flatten_all()?.to_vec1::<u32>()?;
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(b * s * half);
        let mut sin = Vec::with_capacity(b * s * half);
        for p in pos {
            for f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let dev = positions.device();
        let mk = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (b, s, half), dev)?.to_dtype(self.dtype())?)
        };
        Ok((mk(cos)?, mk(sin)?))
    }

    /// Final hidden states `(B, S, H)` (after the last norm) for `ids: (B, S)` u32.
    ///
    /// `layout` gives positions `(B, S)` and the additive mask `(B, 1, S, K)` where
    /// `K = cache.len() + S`. With a cache, keys/values of these `S` tokens are appended to it.
    ///
    /// # Errors
    /// Shape mismatches between `ids`, `layout` and the cache.
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        layout: &AttentionLayout,
        mut cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (mb, _, ms, mk) = layout.mask.dims4()?;
        if (mb, ms, mk) != (b, s, past + s) || layout.positions.dims() != [b, s] {
            return Err(PolicyError::input(
                "layout",
                format!(
                    "mask {:?} / positions {:?} do not fit ids ({b}, {s}) with {past} cached",
                    layout.mask.dims(),
                    layout.positions.dims()
                ),
            ));
        }
        if let Some(c) = cache.as_mut()
            && c.layers.len() != self.layers.len()
        {
            c.layers = vec![None; self.layers.len()];
        }
        let (cos, sin) = self.rotary(&layout.positions)?;
        let (cos, sin) = rope_tables(cos, sin, mode)?;
        let mut x = self.embed.forward(ids)?;
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let eps = self.cfg.rms_norm_eps;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, eps, mode)?;
            let heads = |lin: &Linear, n: usize, norm: &Option<Tensor>| -> Result<Tensor> {
                let t = lin.forward(&h)?.reshape((b, s, n, hd))?;
                let t = match norm {
                    Some(w) => rms_norm(&t, w, eps, mode)?,
                    None => t,
                };
                Ok(t.transpose(1, 2)?.contiguous()?)
            };
            let q = rope(&heads(&layer.q, nh, &layer.q_norm)?, &cos, &sin, mode)?;
            let mut k = rope(&heads(&layer.k, nkv, &layer.k_norm)?, &cos, &sin, mode)?;
            let mut v = heads(&layer.v, nkv, &None)?;
            if let Some(c) = cache.as_mut() {
                if let Some((pk, pv)) = &c.layers[li] {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                c.layers[li] = Some((k.clone(), v.clone()));
            }
            let k = repeat_kv(k, nh / nkv)?.contiguous()?;
            let v = repeat_kv(v, nh / nkv)?.contiguous()?;
            let scores =
                (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(&layout.mask)?;
            let probs = match mode {
                Mode::Diff => candle_nn::ops::softmax(&scores, D::Minus1)?,
                Mode::Fused => candle_nn::ops::softmax_last_dim(&scores)?,
            };
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, nh * hd))?;
            x = (x + layer.o.forward(&attn)?)?;
            let h = rms_norm(&x, &layer.post_norm, eps, mode)?;
            let mlp = layer.down.forward(
                &(candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?,
            )?;
            x = (x + mlp)?;
        }
        rms_norm(&x, &self.norm, eps, mode)
    }

    /// Logits `(..., V)` of hidden states `(..., H)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }

    /// All-position logits `(B, S, V)` of `ids: (B, S)` u32 where `valid: (B, S)` says which
    /// tokens are real (left and/or right padding allowed), without a cache.
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn forward(&self, ids: &Tensor, valid: &[Vec<bool>], mode: Mode) -> Result<Tensor> {
        let layout = AttentionLayout::new(valid, ids.dim(1)?, self.dtype(), self.device())?;
        self.logits(&self.hidden_states(ids, &layout, None, mode)?)
    }
}
