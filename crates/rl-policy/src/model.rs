//! The decoder: Llama / Qwen2 / Qwen3 with grouped-query attention, per-row positions, a causal +
//! padding mask, rotary embeddings and an optional KV cache, in two execution modes.
//!
//! [`Mode::Diff`] runs every step through [`crate::ops`]: on CPU (f32/f64) fused kernels with
//! analytic backward passes (RMS norm, head split + rotary embedding, scaled masked softmax,
//! SwiGLU, single-node linear layers), elsewhere the same formulas composed from candle ops that
//! have backward passes; every weight receives a gradient. [`Mode::Fused`] uses candle-nn's fused
//! kernels (`rms_norm`, `softmax_last_dim`, `rope`), which silently detach the autograd graph: use
//! it only for sampling and evaluation. The two agree to float tolerance.
//!
//! Grouped-query attention never repeats keys: the query heads that share a key/value head are
//! stacked along the query axis, `(B, n_kv, reps·S, d)`, and score row `r` uses mask row
//! `r mod S`.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear};

use crate::ops::ComputeDtype;
use crate::ops::precision::{Bf16Buffers, Bf16Weights, autocast};
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

impl Layer {
    /// The weights as [`crate::ops::decoder_layer`] takes them.
    fn fused(&self) -> crate::ops::LayerWeights<'_> {
        use crate::ops::layer_index::{DOWN, GATE, K, O, Q, UP, V};
        let mut bias = [None; 9];
        let projections = [
            (Q, &self.q),
            (K, &self.k),
            (V, &self.v),
            (O, &self.o),
            (GATE, &self.gate),
            (UP, &self.up),
            (DOWN, &self.down),
        ];
        for (i, l) in projections {
            bias[i] = l.bias();
        }
        crate::ops::LayerWeights {
            input_norm: &self.input_norm,
            q: self.q.weight(),
            k: self.k.weight(),
            v: self.v.weight(),
            o: self.o.weight(),
            post_norm: &self.post_norm,
            gate: self.gate.weight(),
            up: self.up.weight(),
            down: self.down.weight(),
            bias,
            qk_norm: [self.q_norm.as_ref(), self.k_norm.as_ref()],
        }
    }
}

/// Per-layer key/value cache for incremental decoding: `(B, n_kv_heads, K, head_dim)` keys
/// (after the rotary embedding) and values per layer.
///
/// Untracked keys and values (sampling with detached weights) are written in place into
/// preallocated `(B, n_kv_heads, capacity, head_dim)` buffers, so a decoding step copies only its
/// own new positions, not the whole cache; a full buffer grows to at least twice its capacity.
/// Keys and values that carry an autograd graph are concatenated instead, keeping the graph.
/// In a bf16 [`autocast`] scope on the CPU the untracked buffers hold bf16: the products that
/// read them take bf16 operands anyway, so each position is rounded once when it is appended
/// instead of the whole cache at every decoding step (as PyTorch autocast's bf16 projections
/// fill a bf16 cache). Not `Clone`: two caches must never share buffers that both write into.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    capacity: usize,
}

/// One layer's buffers and how many positions of them are filled.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
    /// Filled by a fused training layer ([`crate::ops::decoder_layer`]): `k` and `v` have no
    /// graph, so gradients could not reach them; appending is an error.
    spent: bool,
}

impl LayerKv {
    /// Appends `k, v: (B, g, S, d)`; returns views of all `len + S` cached positions.
    fn append(
        slot: &mut Option<Self>,
        k: &Tensor,
        v: &Tensor,
        capacity: usize,
    ) -> Result<(Tensor, Tensor)> {
        let s = k.dim(2)?;
        let len = slot.as_ref().map_or(0, |e| e.len);
        if slot.as_ref().is_some_and(|e| e.spent) {
            return Err(PolicyError::input(
                "cache",
                "a fused training pass used this cache's keys and values (their gradients \
                 flowed back then); start a new KvCache for another pass",
            ));
        }
        let need = len + s;
        let tracked = k.track_op() || v.track_op();
        // Untracked f32 keys and values of a bf16 scope are kept in bf16 (see [`KvCache`]).
        let (k, v) = match !tracked
            && k.device().is_cpu()
            && (k.dtype(), v.dtype()) == (DType::F32, DType::F32)
            && crate::ops::precision::bf16_for(k).is_some()
        {
            true => (crate::ops::blas::to_bf16(k)?, crate::ops::blas::to_bf16(v)?),
            false => (k.clone(), v.clone()),
        };
        let (k, v) = (&k, &v);
        match slot {
            Some(e)
                if !tracked
                    && !e.k.track_op()
                    && e.k.dtype() == k.dtype()
                    && need <= e.k.dim(2)? =>
            {
                e.k.slice_set(&k.contiguous()?, 2, len)?;
                e.v.slice_set(&v.contiguous()?, 2, len)?;
                e.len = need;
            }
            _ => {
                // A new buffer: the filled prefix, the new positions and (untracked) free room.
                let room = if tracked {
                    0
                } else {
                    let old = slot.as_ref().map_or(0, |e| e.k.dim(2).unwrap_or(0));
                    capacity.max(2 * old).max(need) - need
                };
                let grow = |old: Option<&Tensor>, new: &Tensor| -> Result<Tensor> {
                    let mut parts = Vec::with_capacity(3);
                    if let Some(old) = old {
                        parts.push(old.narrow(2, 0, len)?.to_dtype(new.dtype())?);
                    }
                    parts.push(new.clone());
                    if room > 0 {
                        let (b, g, _, d) = new.dims4()?;
                        parts.push(Tensor::zeros((b, g, room, d), new.dtype(), new.device())?);
                    }
                    Ok(Tensor::cat(&parts, 2)?)
                };
                let (ok, ov) = (slot.as_ref().map(|e| &e.k), slot.as_ref().map(|e| &e.v));
                *slot = Some(Self { k: grow(ok, k)?, v: grow(ov, v)?, len: need, spent: false });
            }
        }
        let e = slot.as_ref().expect("filled above");
        Ok((e.k.narrow(2, 0, need)?, e.v.narrow(2, 0, need)?))
    }
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// An empty cache for `num_layers` layers whose buffers hold `positions` positions before
    /// they first grow (prompt length + `max_new_tokens` when sampling).
    pub fn with_capacity(num_layers: usize, positions: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), capacity: positions }
    }

    /// Number of cached positions `K` (0 when empty).
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |e| e.len)
    }

    /// Keeps only the batch rows `rows` (in that order) of every layer's keys and values.
    ///
    /// # Errors
    /// A row index out of range.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        for e in self.layers.iter_mut().flatten() {
            let idx = Tensor::from_iter(rows.iter().map(|&r| r as u32), e.k.device())?;
            e.k = e.k.index_select(&idx, 0)?;
            e.v = e.v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// `true` when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type of the cached keys and values (`None` while empty): the model's, or
    /// bf16 for keys and values without a graph in a bf16 [`autocast`] scope on the CPU.
    pub fn dtype(&self) -> Option<DType> {
        self.layers.first().and_then(|l| l.as_ref()).map(|e| e.k.dtype())
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
    /// The bf16 copies of the weights (bf16 compute dtype), made on first use.
    bf16: Option<Arc<Bf16Weights>>,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Diff => crate::ops::rms_norm(x, w, eps),
        Mode::Fused => Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?),
    }
}

/// `x: (B, S, n·d)` → `(B, g, (n/g)·S, d)` heads (see [`crate::ops::split_heads`]), rotated
/// when `rotary` is given (`cos, sin: (B, S, d/2)`).
fn split_heads(
    x: &Tensor,
    heads: usize,
    groups: usize,
    rotary: Option<(&Tensor, &Tensor)>,
    mode: Mode,
) -> Result<Tensor> {
    match mode {
        Mode::Diff => crate::ops::split_heads(x, heads, groups, rotary),
        Mode::Fused => {
            let (b, s) = (x.dim(0)?, x.dim(1)?);
            let x = x.reshape((b, s, heads, ()))?.transpose(1, 2)?.contiguous()?;
            let x = match rotary {
                Some((cos, sin)) => candle_nn::rotary_emb::rope(&x, cos, sin)?,
                None => x,
            };
            let d = x.dim(3)?;
            Ok(x.reshape((b, groups, heads / groups * s, d))?)
        }
    }
}

/// `(B, g, (n/g)·S, d)` → `(B, S, n·d)`.
fn merge_heads(x: &Tensor, heads: usize, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Diff => crate::ops::merge_heads(x, heads),
        Mode::Fused => {
            let (b, g, rs, d) = x.dims4()?;
            let s = rs * g / heads;
            Ok(x.reshape((b, heads, s, d))?.transpose(1, 2)?.reshape((b, s, heads * d))?)
        }
    }
}

/// `x · wᵀ + bias` of a [`Linear`] layer, in both modes ([`crate::ops::linear`] records no graph
/// node for detached weights).
fn linear(lin: &Linear, x: &Tensor) -> Result<Tensor> {
    crate::ops::linear(x, lin.weight(), lin.bias())
}

/// Attention probabilities `softmax(scale · q·kᵀ + mask)` of `q: (B, G, R, d)` and
/// `k: (B, G, K, d)` with the `(B, 1, S, K)` mask (score row `r` uses mask row `r mod S`).
fn attention_probs(
    q: &Tensor,
    k: &Tensor,
    mask: &Tensor,
    scale: f64,
    mode: Mode,
) -> Result<Tensor> {
    match mode {
        Mode::Diff => crate::ops::attention_probs(q, k, mask, scale),
        Mode::Fused => {
            let scores = crate::ops::matmul(q, &k.t()?)?;
            let reps = scores.dim(2)? / mask.dim(2)?.max(1);
            let mask = Tensor::cat(&vec![mask; reps], 2)?;
            Ok(candle_nn::ops::softmax_last_dim(&(scores * scale)?.broadcast_add(&mask)?)?)
        }
    }
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
            bf16: None,
        })
    }

    /// This decoder with its matrix products in `compute` (see [`crate::ops::precision`]): with
    /// [`ComputeDtype::Bf16`] every product of its forward passes and of their backward passes
    /// takes bf16 operands and accumulates in f32; norms, softmax, log-softmax, entropy and all
    /// results and gradients stay f32. The bf16 copies of the weights are made on first use and
    /// kept as long as this decoder (and its clones) live: build a new decoder after the weights
    /// change.
    ///
    /// # Errors
    /// [`PolicyError::Config`] (`compute_dtype`) for bf16 on weights that are not f32.
    pub fn with_compute_dtype(mut self, compute: ComputeDtype) -> Result<Self> {
        crate::weights::check_compute(compute, self.dtype())?;
        self.bf16 = match compute {
            ComputeDtype::F32 => None,
            ComputeDtype::Bf16 => Some(Arc::new(Bf16Weights::new())),
        };
        Ok(self)
    }

    /// With bf16 products ([`Self::with_compute_dtype`]), the bf16 weight copies are written
    /// into `buffers` (shared with other decoders of the same weights, reused across updates)
    /// instead of fresh memory; unchanged in f32.
    pub fn with_bf16_buffers(mut self, buffers: Arc<Bf16Buffers>) -> Self {
        if self.bf16.is_some() {
            self.bf16 = Some(Arc::new(Bf16Weights::with_buffers(buffers)));
        }
        self
    }

    /// The dtype of the matrix products.
    pub fn compute_dtype(&self) -> ComputeDtype {
        match self.bf16 {
            Some(_) => ComputeDtype::Bf16,
            None => ComputeDtype::F32,
        }
    }

    /// `(weight elements converted to bf16, seconds spent converting)` by this decoder so far
    /// (`(0, 0.0)` in f32).
    pub fn bf16_conversion_stats(&self) -> (u64, f64) {
        self.bf16.as_ref().map_or((0, 0.0), |c| c.conversion_stats())
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
            c.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let (cos, sin) = self.rotary(&layout.positions)?;
        let _precision = autocast(self.bf16.clone());
        let mut x = self.embed.forward(ids)?;
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let (eps, scale) = (self.cfg.rms_norm_eps, 1.0 / (hd as f64).sqrt());
        let shape = crate::ops::LayerShape { heads: nh, kv_heads: nkv, head_dim: hd, eps };
        for (li, layer) in self.layers.iter().enumerate() {
            // A training pass without a cache or over a training pass's cache: the whole layer
            // as one graph node when it applies.
            if let Mode::Diff = mode {
                let w = layer.fused();
                let past = match cache.as_ref() {
                    None => Some(None),
                    Some(c) => match &c.layers[li] {
                        Some(e) if e.k.track_op() && !e.spent => {
                            Some(Some((e.k.narrow(2, 0, e.len)?, e.v.narrow(2, 0, e.len)?)))
                        }
                        _ => None,
                    },
                };
                if let Some(past) = past {
                    let (rot, mask, kv) =
                        ((&cos, &sin), &layout.mask, past.as_ref().map(|(k, v)| (k, v)));
                    if let Some((y, all)) = crate::ops::decoder_layer(&x, &w, shape, rot, mask, kv)?
                    {
                        if let (Some(c), Some((k, v))) = (cache.as_mut(), all) {
                            let len = k.dim(2)?;
                            c.layers[li] = Some(LayerKv { k, v, len, spent: true });
                        }
                        x = y;
                        continue;
                    }
                }
            }
            let h = rms_norm(&x, &layer.input_norm, eps, mode)?;
            // `n` heads of `lin(h)` in `groups`, after the optional per-head norm (Qwen3)
            let heads =
                |lin: &Linear, n: usize, groups: usize, norm: &Option<Tensor>, rot: bool| {
                    let t = linear(lin, &h)?;
                    let t = match norm {
                        Some(w) => rms_norm(&t.reshape((b, s, n, hd))?, w, eps, mode)?,
                        None => t,
                    };
                    split_heads(&t, n, groups, rot.then_some((&cos, &sin)), mode)
                };
            // Grouped-query attention without repeating keys: the `reps` query heads served by
            // one key/value head are stacked along the query axis, q: (B, n_kv, reps·S, d).
            let q = heads(&layer.q, nh, nkv, &layer.q_norm, true)?;
            let mut k = heads(&layer.k, nkv, nkv, &layer.k_norm, true)?;
            let mut v = heads(&layer.v, nkv, nkv, &None, false)?;
            if let Some(c) = cache.as_mut() {
                (k, v) = LayerKv::append(&mut c.layers[li], &k, &v, c.capacity)?;
            }
            let probs = attention_probs(&q, &k, &layout.mask, scale, mode)?;
            let attn = merge_heads(&crate::ops::matmul(&probs, &v)?, nh, mode)?;
            // The fused projections keep no extra activations in the graph (see their docs).
            x = crate::ops::linear_add(&attn, layer.o.weight(), layer.o.bias(), &x)?;
            let h = rms_norm(&x, &layer.post_norm, eps, mode)?;
            let (gate, up) = (linear(&layer.gate, &h)?, linear(&layer.up, &h)?);
            let (down, bias) = (layer.down.weight(), layer.down.bias());
            let mlp = match mode {
                Mode::Diff => crate::ops::swiglu_linear(&gate, &up, down, bias)?,
                Mode::Fused => linear(&layer.down, &(candle_nn::ops::silu(&gate)? * up)?)?,
            };
            x = (x + mlp)?;
        }
        rms_norm(&x, &self.norm, eps, mode)
    }

    /// Logits `(..., V)` of hidden states `(..., H)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let _precision = autocast(self.bf16.clone());
        linear(&self.lm_head, hidden)
    }

    /// Log-probs of `targets: (N)` and entropies, both `(N)`, of the logits of hidden states
    /// `(N, H)`, `chunk_rows` rows at a time without an `(N, V)` tensor in the autograd graph
    /// ([`crate::ops::head_log_prob_entropy`]).
    pub fn head_log_prob_entropy(
        &self,
        hidden: &Tensor,
        targets: &Tensor,
        chunk_rows: usize,
    ) -> Result<(Tensor, Tensor)> {
        let _precision = autocast(self.bf16.clone());
        crate::ops::head_log_prob_entropy(hidden, self.lm_head.weight(), targets, chunk_rows)
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
