//! A whole decoder layer as one graph node, with a hand-written backward pass (training passes
//! on the CPU, without a key/value cache or over the cache of an earlier training pass).
//!
//! candle's backward pass gives every gradient a graph node receives a zero-filled accumulator
//! and adds it there (`GradStore::or_insert`, then `add`): with the ~16 nodes of a layer that is
//! a `memset` and an add pass over every activation, 13 % of a SmolLM2 forward + backward in
//! bf16 on an AMX Xeon (`docs/benchmarks.md`). This node records the layer once; its backward
//! pass chains the same fused kernels and products as the per-op graph (the same maths: the tests
//! compare gradients), adds each gradient where it is produced, and keeps the activations that
//! only feed products in the products' dtype (bf16 in a bf16 [`autocast`](super::autocast) scope,
//! half the bytes, rounded once instead of once per product).
//!
//! Weight gradients cannot leave a candle custom op except as gradients of its inputs, so the
//! node is used only while a [`GradSink`] holds every weight of the layer (as the trainer's
//! gradient accumulation does); otherwise the layer runs as the per-op graph.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

use super::*;
use crate::Result;

/// The weights of one Llama-style decoder layer (the model's own tensors: the gradient sink
/// looks them up by identity). Shapes, with `H` hidden, `I` intermediate, `n`/`g` query/key-value
/// heads of size `d`: norms `(H)`, `q`/`o` `(n·d, H)` / `(H, n·d)`, `k`/`v` `(g·d, H)`,
/// `gate`/`up` `(I, H)`, `down` `(H, I)`; each projection's optional bias `(out)` (Qwen2's q/k/v,
/// Llama's `attention_bias` / `mlp_bias`) and the optional per-head norms `(d)` of queries and
/// keys (Qwen3).
pub(crate) struct LayerWeights<'a> {
    pub(crate) input_norm: &'a Tensor,
    pub(crate) q: &'a Tensor,
    pub(crate) k: &'a Tensor,
    pub(crate) v: &'a Tensor,
    pub(crate) o: &'a Tensor,
    pub(crate) post_norm: &'a Tensor,
    pub(crate) gate: &'a Tensor,
    pub(crate) up: &'a Tensor,
    pub(crate) down: &'a Tensor,
    /// Biases, indexed like [`LayerWeights::all`] (`None` for the norms).
    pub(crate) bias: [Option<&'a Tensor>; 9],
    /// The per-head norms of queries and keys.
    pub(crate) qk_norm: [Option<&'a Tensor>; 2],
}

/// Head counts and norm epsilon of a layer.
#[derive(Clone, Copy)]
pub(crate) struct LayerShape {
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) eps: f64,
}

/// The order of the weights in [`DecoderLayer`]'s arrays.
pub(crate) const IN_NORM: usize = 0;
pub(crate) const Q: usize = 1;
pub(crate) const K: usize = 2;
pub(crate) const V: usize = 3;
pub(crate) const O: usize = 4;
pub(crate) const POST_NORM: usize = 5;
pub(crate) const GATE: usize = 6;
pub(crate) const UP: usize = 7;
pub(crate) const DOWN: usize = 8;

impl LayerWeights<'_> {
    /// The nine weights in the order of [`IN_NORM`] .. [`DOWN`].
    pub(crate) fn all(&self) -> [&Tensor; 9] {
        [
            self.input_norm,
            self.q,
            self.k,
            self.v,
            self.o,
            self.post_norm,
            self.gate,
            self.up,
            self.down,
        ]
    }
}

/// The products' operands: bf16 copies (weights from the scope's cache, activations rounded
/// once) in a bf16 scope, the tensors themselves (detached) otherwise.
struct Mix(Option<Arc<precision::Bf16Weights>>);

impl Mix {
    /// An activation as a product operand.
    fn act(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        match self.0 {
            Some(_) => blas::to_bf16(t),
            None => Ok(t.detach()),
        }
    }

    /// A weight `(out, in)` as a product operand.
    fn weight(&self, w: &Tensor) -> candle_core::Result<Tensor> {
        match &self.0 {
            Some(c) => c.get(w),
            None => Ok(w.detach()),
        }
    }

    /// `a: (M, in) · wᵀ (+ bias)` → `(M, out)`.
    fn proj(&self, a: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let y = blas::mm(a, &self.weight(w)?.t()?)?;
        match bias {
            Some(b) => y.broadcast_add(&b.detach()),
            None => Ok(y),
        }
    }
}

/// What the backward pass of a layer reads, kept from its forward pass. Operands of products
/// only (`*_m`, `q`, `k`, `v`) are in the products' dtype.
struct Saved {
    /// `(M, H)`: the input norm's output.
    h1_m: Tensor,
    /// `(B, g, (n/g)·S, d)`, `(B, g, K, d)`, `(B, g, K, d)`: rotated queries and keys, values
    /// (`K = P + S` with `P` cached positions).
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// `(B, g, (n/g)·S, K)` f32/f64: the attention probabilities.
    probs: Tensor,
    /// `(M, H)`: the merged attention output.
    attn_m: Tensor,
    /// `(B, S, H)`: the residual stream after attention, and `(M, H)` its norm.
    x2: Tensor,
    h2_m: Tensor,
    /// `(M, I)`: the MLP's gate and up projections (the activation is recomputed).
    gate: Tensor,
    up: Tensor,
    /// `(B, S, n, d)` / `(B, S, g, d)`: query and key projections before their per-head norms.
    q_pre: Option<Tensor>,
    k_pre: Option<Tensor>,
}

/// A weight and the sink slot its gradient goes to.
type Held = (Tensor, Arc<sink::Slot>);

/// A decoder layer `y = x2 + down(swiglu(gate(h2), up(h2)))`, `x2 = x + o(attn(h1))`,
/// `h1 = norm(x)`, `h2 = norm(x2)` (projections with optional biases, queries and keys with
/// optional per-head norms), as one custom op on `x: (B, S, H)`.
struct DecoderLayer {
    weights: [Tensor; 9],
    slots: [Arc<sink::Slot>; 9],
    bias: [Option<Held>; 9],
    qk_norm: [Option<Held>; 2],
    mix: Mix,
    shape: LayerShape,
    cos: Tensor,
    sin: Tensor,
    saved: Saved,
    /// Cached positions before these tokens (`k`, `v` hold them first; `None`: no cache, the
    /// node has one input).
    past: Option<usize>,
    /// The output, computed before the node is recorded and moved into it by `cpu_fwd`.
    out: Mutex<Option<Tensor>>,
}

/// `Heads` as a no-graph op on `t` with the rotary tables.
fn heads(t: &Tensor, cos: &Tensor, sin: &Tensor, h: Heads) -> candle_core::Result<Tensor> {
    t.contiguous()?.apply_op3_no_bwd(cos, sin, &Op(h))
}

/// `(∂x, ∂w)` of `rms_norm(x, w)` for the output gradient `g`.
fn norm_grads(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let w = w.detach();
    let g = g.reshape(x.shape())?;
    let mut gs = RmsNorm { eps }.grads(&[x, &w], x, &g)?;
    match (nth(&mut gs, 0), nth(&mut gs, 1)) {
        (Some(gx), Some(gw)) => Ok((gx, gw)),
        _ => candle_core::bail!("rl-decoder-layer: the norm gave no gradient"),
    }
}

/// Adds a gradient to a sink's running sum.
fn sink_to(slot: &sink::Slot, g: Tensor) -> candle_core::Result<()> {
    match slot.add(g)? {
        None => Ok(()),
        Some(_) => candle_core::bail!(
            "rl-decoder-layer: the GradSink holding the layer's weights was dropped between the \
             forward and the backward pass (keep it alive until backward returns)"
        ),
    }
}

impl DecoderLayer {
    /// Adds weight `i`'s gradient to its sink's running sum.
    fn sink(&self, i: usize, g: Tensor) -> candle_core::Result<()> {
        sink_to(&self.slots[i], g)
    }

    /// With a bias on projection `i`, adds its gradient: the column sums of the projection's
    /// output gradient `d: (..., out)` (f32/f64, before any rounding).
    fn sink_bias(&self, i: usize, d: &Tensor) -> candle_core::Result<()> {
        match &self.bias[i] {
            Some((b, slot)) => sink_to(slot, d.reshape(((), b.elem_count()))?.sum(0)?),
            None => Ok(()),
        }
    }

    /// The gradient of projection `i`'s output from the gradient `d: (B, S, n·d)` of its
    /// (per-head normed) heads: through the per-head norm `j` when there is one (its weight's
    /// gradient to the sink); the bias's gradient to the sink; `(M, n·d)` as a product operand.
    fn projection_grad(
        &self,
        i: usize,
        d: Tensor,
        norm: Option<(usize, &Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let d = match (norm, &self.qk_norm) {
            (Some((j, pre)), held) if held[j].is_some() => {
                let (w, slot) = held[j].as_ref().expect("checked");
                let (dpre, dw) = norm_grads(pre, w, &d, self.shape.eps)?;
                sink_to(slot, dw)?;
                dpre.reshape(d.shape())?
            }
            _ => d,
        };
        self.sink_bias(i, &d)?;
        let (b, t, _) = d.dims3()?;
        self.mix.act(&d)?.reshape((b * t, ()))
    }

    fn heads_op(&self, n: usize, rotate: bool, inverse: bool) -> Heads {
        Heads { heads: n, groups: self.shape.kv_heads, rotate, inverse }
    }

    /// The output, moved out of the node when candle records it.
    fn output(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some(y) = self.out.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            candle_core::bail!("rl-decoder-layer: the node was applied twice");
        };
        let (s, l) = y.storage_and_layout();
        let (candle_core::Storage::Cpu(s), Some((a, b))) = (&*s, l.contiguous_offsets()) else {
            candle_core::bail!("rl-decoder-layer: the output must be a contiguous CPU tensor");
        };
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(v[a..b].to_vec()),
            CpuStorage::F64(v) => CpuStorage::F64(v[a..b].to_vec()),
            _ => candle_core::bail!("rl-decoder-layer: f32 or f64 only"),
        };
        Ok((out, y.shape().clone()))
    }

    /// `∂x` for the output gradient `gy`, and with cached positions the gradients of the cached
    /// keys and values `(B, g, P, d)`; the weights' gradients go to their sinks.
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        x: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let (s, mix, w) = (&self.saved, &self.mix, &self.weights);
        let (b, t, h) = x.dims3()?;
        let m = b * t;
        let LayerShape { heads: nh, kv_heads: nkv, eps, .. } = self.shape;
        let gy = gy.contiguous()?;
        // MLP: y = x2 + swiglu(gate, up) · downᵀ (+ bias)
        self.sink_bias(DOWN, &gy)?;
        let g_m = mix.act(&gy)?.reshape((m, h))?;
        let dact = blas::mm(&g_m, &mix.weight(&w[DOWN])?)?;
        // [∂gate; ∂up; activation] in one pass (one sigmoid per element for the three).
        let n = s.gate.elem_count();
        let all = cpu_kernel(&SwigluBwd { with_act: true }, &[&s.gate, &s.up, &dact])?;
        drop(dact);
        let part = |i: usize| all.narrow(0, i * n, n)?.reshape(s.gate.shape());
        self.sink(DOWN, blas::mm(&g_m.t()?, &mix.act(&part(2)?)?)?)?;
        drop(g_m);
        let (dgate, dup) = (part(0)?, part(1)?);
        self.sink_bias(GATE, &dgate)?;
        self.sink_bias(UP, &dup)?;
        let (dgate, dup) = (mix.act(&dgate)?, mix.act(&dup)?);
        drop(all);
        let dh2 = blas::mm(&dgate, &mix.weight(&w[GATE])?)?;
        let dh2 = (dh2 + blas::mm(&dup, &mix.weight(&w[UP])?)?)?;
        self.sink(GATE, blas::mm(&dgate.t()?, &s.h2_m)?)?;
        self.sink(UP, blas::mm(&dup.t()?, &s.h2_m)?)?;
        drop((dgate, dup));
        let (dx2, dw) = norm_grads(&s.x2, &w[POST_NORM], &dh2, eps)?;
        self.sink(POST_NORM, dw)?;
        let dx2 = (dx2 + &gy)?;
        // Attention: x2 = x + merge(probs · v) · oᵀ (+ bias)
        self.sink_bias(O, &dx2)?;
        let d2 = mix.act(&dx2)?.reshape((m, h))?;
        let dattn = blas::mm(&d2, &mix.weight(&w[O])?)?;
        self.sink(O, blas::mm(&d2.t()?, &s.attn_m)?)?;
        drop(d2);
        let dctx = heads(
            &dattn.reshape((b, t, h))?,
            &self.cos,
            &self.sin,
            self.heads_op(nh, false, false),
        )?;
        let dctx = mix.act(&dctx)?;
        let dprobs = blas::mm(&dctx, &s.v.t()?)?;
        let dv = blas::mm(&mix.act(&s.probs)?.t()?, &dctx)?;
        drop(dctx);
        let scale = 1.0 / (self.shape.head_dim as f64).sqrt();
        let ds = s.probs.apply_op2_no_bwd(&dprobs, &Op(SoftmaxBwd { scale }))?;
        drop(dprobs);
        let ds = mix.act(&ds)?;
        let dq = blas::mm(&ds, &s.k)?;
        let dk = blas::mm(&ds.t()?, &s.q)?;
        drop(ds);
        let merge = |d: &Tensor, n: usize, rotate: bool| {
            heads(d, &self.cos, &self.sin, self.heads_op(n, rotate, true))
        };
        // Keys and values of cached positions go back to the pass that cached them.
        let p = self.past.unwrap_or(0);
        let t_new = dk.dim(2)? - p;
        let past = match self.past {
            None => None,
            Some(_) => Some((dk.narrow(2, 0, p)?.contiguous()?, dv.narrow(2, 0, p)?.contiguous()?)),
        };
        let (dk, dv) = (dk.narrow(2, p, t_new)?, dv.narrow(2, p, t_new)?);
        let q_pre = s.q_pre.as_ref().map(|p| (0, p));
        let dq = self.projection_grad(Q, merge(&dq, nh, true)?, q_pre)?;
        let k_pre = s.k_pre.as_ref().map(|p| (1, p));
        let dk = self.projection_grad(K, merge(&dk, nkv, true)?, k_pre)?;
        let dv = self.projection_grad(V, merge(&dv, nkv, false)?, None)?;
        let mut dh1 = blas::mm(&dq, &mix.weight(&w[Q])?)?;
        dh1 = (dh1 + blas::mm(&dk, &mix.weight(&w[K])?)?)?;
        dh1 = (dh1 + blas::mm(&dv, &mix.weight(&w[V])?)?)?;
        for (i, d) in [(Q, &dq), (K, &dk), (V, &dv)] {
            self.sink(i, blas::mm(&d.t()?, &s.h1_m)?)?;
        }
        let (dx, dw) = norm_grads(&x.detach(), &w[IN_NORM], &dh1, eps)?;
        self.sink(IN_NORM, dw)?;
        Ok(((dx + dx2)?, past))
    }
}

impl CustomOp1 for DecoderLayer {
    fn name(&self) -> &'static str {
        "rl-decoder-layer"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output()
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, gy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.backward(x, gy)?.0))
    }
}

/// With cached keys and values `(x, k_past, v_past)`: their gradients flow back to the pass
/// that cached them.
impl CustomOp3 for DecoderLayer {
    fn name(&self) -> &'static str {
        "rl-decoder-layer-cached"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        _s3: &CpuStorage,
        _l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output()
    }

    fn bwd(
        &self,
        x: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, past) = self.backward(x, gy)?;
        let (dk, dv) = past.unzip();
        Ok((Some(dx), dk, dv))
    }
}

/// What [`decoder_layer`] gives: the output `(B, S, H)` and, with cached positions, every
/// position's keys and values `(B, g, P + S, d)` without a graph (in the products' dtype).
pub(crate) type LayerOut = (Tensor, Option<(Tensor, Tensor)>);

/// The decoder layer of `w` on `x: (B, S, H)` as one graph node (see the module docs), with the
/// rotary tables `cos, sin: (B, S, d/2)`, the additive mask `(B, 1, S, P + S)` and, when `P > 0`,
/// the keys and values of the `P` cached positions `past: (B, g, P, d)` (tracked: their
/// gradients flow back to the pass that cached them). `None` (nothing computed) when the node
/// does not apply: `x` not a tracked CPU f32/f64 tensor, or a weight not held by a live
/// [`GradSink`]. In a bf16 [`autocast`](super::autocast) scope the products take bf16 operands
/// and accumulate in f32, as the per-op layer's.
///
/// # Errors
/// Shape or dtype mismatches.
pub(crate) fn decoder_layer(
    x: &Tensor,
    w: &LayerWeights<'_>,
    shape: LayerShape,
    rotary: (&Tensor, &Tensor),
    mask: &Tensor,
    past: Option<(&Tensor, &Tensor)>,
) -> Result<Option<LayerOut>> {
    let all = w.all();
    let dtype = x.dtype();
    let (cos, sin) = rotary;
    let extra: Vec<&Tensor> = w.bias.iter().chain(&w.qk_norm).flatten().copied().collect();
    let others = past.map_or(vec![], |(k, v)| vec![k, v]);
    let same = (all.iter().chain(&extra).chain(&others).chain([&cos, &sin, &mask]))
        .all(|t| t.dtype() == dtype);
    if !x.device().is_cpu() || !fused_available(x) || !x.track_op() || !same {
        return Ok(None);
    }
    // Every weight must be held by a sink (the node cannot hand candle their gradients).
    let Some(slots) = all.iter().chain(&extra).map(|w| sink::slot(w)).collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    // The nine weights' slots, then those of the biases and per-head norms in `extra`'s order.
    let (main, extra_slots) = slots.split_at(all.len());
    let slots: [Arc<sink::Slot>; 9] = std::array::from_fn(|i| main[i].clone());
    let mut extra_slots = extra_slots.iter().cloned();
    let mut hold = |t: Option<&Tensor>| Some((t?.clone(), extra_slots.next()?));
    let (bias, qk_norm) = (w.bias.map(&mut hold), w.qk_norm.map(&mut hold));
    let (b, t, h) = x.dims3()?;
    let m = b * t;
    let LayerShape { heads: nh, kv_heads: nkv, head_dim, eps } = shape;
    let mix = Mix(precision::bf16_for(x));
    let (cos, sin, mask) = (cos.contiguous()?, sin.contiguous()?, mask.contiguous()?);
    let xd = x.detach().contiguous()?;
    let norm = |x: &Tensor, w: &Tensor| x.apply_op2_no_bwd(&w.detach(), &Op(RmsNorm { eps }));
    // Projection `i` of `a` as `n` heads, through the per-head norm `j` when there is one
    // (its input kept for the backward pass).
    let project = |a: &Tensor, i: usize, n: usize, norm_j: Option<usize>, rotate: bool| {
        let p = mix.proj(a, all[i], w.bias[i])?.reshape((b, t, n, head_dim))?;
        let (p, pre) = match norm_j.and_then(|j| w.qk_norm[j]) {
            Some(nw) => (norm(&p, nw)?, Some(p)),
            None => (p, None),
        };
        let op = Heads { heads: n, groups: nkv, rotate, inverse: false };
        let p = mix.act(&heads(&p.reshape((b, t, ()))?, &cos, &sin, op)?)?;
        candle_core::Result::Ok((p, pre))
    };
    let with_past = |new: Tensor, old: Option<&Tensor>| -> candle_core::Result<Tensor> {
        match old {
            Some(old) => Tensor::cat(&[&mix.act(old)?, &new], 2),
            None => Ok(new),
        }
    };
    let h1_m = mix.act(&norm(&xd, w.input_norm)?)?.reshape((m, h))?;
    let (q, q_pre) = project(&h1_m, Q, nh, Some(0), true)?;
    let (k, k_pre) = project(&h1_m, K, nkv, Some(1), true)?;
    let k = with_past(k, past.map(|p| p.0))?;
    let v = with_past(project(&h1_m, V, nkv, None, false)?.0, past.map(|p| p.1))?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let probs = blas::mm(&q, &k.t()?)?.apply_op2_no_bwd(&mask, &Op(MaskedSoftmax { scale }))?;
    let ctx = blas::mm(&mix.act(&probs)?, &v)?;
    let merge = Heads { heads: nh, groups: nkv, rotate: false, inverse: true };
    let attn_m = mix.act(&heads(&ctx, &cos, &sin, merge)?)?.reshape((m, h))?;
    drop(ctx);
    let x2 = (&xd + mix.proj(&attn_m, w.o, w.bias[O])?.reshape((b, t, h))?)?;
    let h2_m = mix.act(&norm(&x2, w.post_norm)?)?.reshape((m, h))?;
    let gate = mix.proj(&h2_m, w.gate, w.bias[GATE])?;
    let up = mix.proj(&h2_m, w.up, w.bias[UP])?;
    let act = gate.apply_op2_no_bwd(&up, &Op(Swiglu))?;
    let y = (&x2 + mix.proj(&mix.act(&act)?, w.down, w.bias[DOWN])?.reshape((b, t, h))?)?;
    drop(act);
    let p = past.map(|(k, _)| k.dim(2)).transpose()?;
    let cached = past.map(|_| (k.clone(), v.clone()));
    let node = DecoderLayer {
        weights: all.map(|w| w.clone()),
        slots,
        bias,
        qk_norm,
        mix,
        shape,
        cos,
        sin,
        saved: Saved { h1_m, q, k, v, probs, attn_m, x2, h2_m, gate, up, q_pre, k_pre },
        past: p,
        out: Mutex::new(Some(y)),
    };
    let x = x.contiguous()?;
    let y = match past {
        None => x.apply_op1(node)?,
        Some((k, v)) => x.apply_op3(&k.contiguous()?, &v.contiguous()?, node)?,
    };
    Ok(Some((y, cached)))
}
