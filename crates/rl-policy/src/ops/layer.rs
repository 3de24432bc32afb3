//! A whole decoder layer as one graph node, with a hand-written backward pass (training passes
//! on the CPU without a key/value cache).
//!
//! candle's backward pass gives every gradient a graph node receives a zero-filled accumulator
//! and adds it there (`GradStore::or_insert`, then `add`): with the ~16 nodes of a layer that is
//! a `memset` and an add pass over every activation, 15-20 % of a SmolLM2 forward + backward in
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

/// The weights of one Llama-style decoder layer without biases or per-head norms (the model's
/// own tensors: the gradient sink looks them up by identity). Shapes, with `H` hidden, `I`
/// intermediate, `n`/`g` query/key-value heads of size `d`: norms `(H)`, `q`/`o` `(n·d, H)` /
/// `(H, n·d)`, `k`/`v` `(g·d, H)`, `gate`/`up` `(I, H)`, `down` `(H, I)`.
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
const IN_NORM: usize = 0;
const Q: usize = 1;
const K: usize = 2;
const V: usize = 3;
const O: usize = 4;
const POST_NORM: usize = 5;
const GATE: usize = 6;
const UP: usize = 7;
const DOWN: usize = 8;

impl LayerWeights<'_> {
    fn all(&self) -> [&Tensor; 9] {
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

    /// `a: (M, in) · wᵀ` → `(M, out)`.
    fn proj(&self, a: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        blas::mm(a, &self.weight(w)?.t()?)
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
}

/// A decoder layer `y = x2 + down(swiglu(gate(h2), up(h2)))`, `x2 = x + o(attn(h1))`,
/// `h1 = norm(x)`, `h2 = norm(x2)`, as one custom op on `x: (B, S, H)`.
struct DecoderLayer {
    weights: [Tensor; 9],
    slots: [Arc<sink::Slot>; 9],
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

impl DecoderLayer {
    /// Adds weight `i`'s gradient to its sink's running sum.
    fn sink(&self, i: usize, g: Tensor) -> candle_core::Result<()> {
        match self.slots[i].add(g)? {
            None => Ok(()),
            Some(_) => candle_core::bail!(
                "rl-decoder-layer: the GradSink holding the layer's weights was dropped between \
                 the forward and the backward pass (keep it alive until backward returns)"
            ),
        }
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
        // MLP: y = x2 + swiglu(gate, up) · downᵀ
        let g_m = mix.act(&gy)?.reshape((m, h))?;
        let dact = blas::mm(&g_m, &mix.weight(&w[DOWN])?)?;
        // [∂gate; ∂up; activation] in one pass (one sigmoid per element for the three).
        let n = s.gate.elem_count();
        let all = cpu_kernel(&SwigluBwdAct, &[&s.gate, &s.up, &dact])?;
        drop(dact);
        let part = |i: usize| mix.act(&all.narrow(0, i * n, n)?.reshape(s.gate.shape())?);
        self.sink(DOWN, blas::mm(&g_m.t()?, &part(2)?)?)?;
        drop(g_m);
        let (dgate, dup) = (part(0)?, part(1)?);
        drop(all);
        let dh2 = blas::mm(&dgate, &mix.weight(&w[GATE])?)?;
        let dh2 = (dh2 + blas::mm(&dup, &mix.weight(&w[UP])?)?)?;
        self.sink(GATE, blas::mm(&dgate.t()?, &s.h2_m)?)?;
        self.sink(UP, blas::mm(&dup.t()?, &s.h2_m)?)?;
        drop((dgate, dup));
        let (dx2, dw) = norm_grads(&s.x2, &w[POST_NORM], &dh2, eps)?;
        self.sink(POST_NORM, dw)?;
        let dx2 = (dx2 + &gy)?;
        // Attention: x2 = x + merge(probs · v) · oᵀ
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
        let merge = |d: &Tensor, n: usize, rotate: bool| -> candle_core::Result<Tensor> {
            let d = heads(d, &self.cos, &self.sin, self.heads_op(n, rotate, true))?;
            mix.act(&d)?.reshape((m, ()))
        };
        // Keys and values of cached positions go back to the pass that cached them.
        let p = self.past.unwrap_or(0);
        let t_new = dk.dim(2)? - p;
        let past = match self.past {
            None => None,
            Some(_) => Some((dk.narrow(2, 0, p)?.contiguous()?, dv.narrow(2, 0, p)?.contiguous()?)),
        };
        let (dk, dv) = (dk.narrow(2, p, t_new)?, dv.narrow(2, p, t_new)?);
        let (dq, dk, dv) = (merge(&dq, nh, true)?, merge(&dk, nkv, true)?, merge(&dv, nkv, false)?);
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
    let others = past.map_or(vec![], |(k, v)| vec![k, v]);
    let same = all.iter().chain([&cos, &sin, &mask]).chain(&others).all(|t| t.dtype() == dtype);
    if !x.device().is_cpu() || !fused_available(x) || !x.track_op() || !same {
        return Ok(None);
    }
    let Some(slots) = all.iter().map(|w| sink::slot(w)).collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    let slots: [Arc<sink::Slot>; 9] = slots.try_into().expect("nine weights");
    let (b, t, h) = x.dims3()?;
    let m = b * t;
    let LayerShape { heads: nh, kv_heads: nkv, head_dim, eps } = shape;
    let mix = Mix(precision::bf16_for(x));
    let (cos, sin, mask) = (cos.contiguous()?, sin.contiguous()?, mask.contiguous()?);
    let xd = x.detach().contiguous()?;
    let norm = |x: &Tensor, w: &Tensor| x.apply_op2_no_bwd(&w.detach(), &Op(RmsNorm { eps }));
    let split = |p: Tensor, n: usize, rotate: bool| -> candle_core::Result<Tensor> {
        let op = Heads { heads: n, groups: nkv, rotate, inverse: false };
        mix.act(&heads(&p.reshape((b, t, ()))?, &cos, &sin, op)?)
    };
    let with_past = |new: Tensor, old: Option<&Tensor>| -> candle_core::Result<Tensor> {
        match old {
            Some(old) => Tensor::cat(&[&mix.act(old)?, &new], 2),
            None => Ok(new),
        }
    };
    let h1_m = mix.act(&norm(&xd, w.input_norm)?)?.reshape((m, h))?;
    let q = split(mix.proj(&h1_m, w.q)?, nh, true)?;
    let k = with_past(split(mix.proj(&h1_m, w.k)?, nkv, true)?, past.map(|p| p.0))?;
    let v = with_past(split(mix.proj(&h1_m, w.v)?, nkv, false)?, past.map(|p| p.1))?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let probs = blas::mm(&q, &k.t()?)?.apply_op2_no_bwd(&mask, &Op(MaskedSoftmax { scale }))?;
    let ctx = blas::mm(&mix.act(&probs)?, &v)?;
    let merge = Heads { heads: nh, groups: nkv, rotate: false, inverse: true };
    let attn_m = mix.act(&heads(&ctx, &cos, &sin, merge)?)?.reshape((m, h))?;
    drop(ctx);
    let x2 = (&xd + mix.proj(&attn_m, w.o)?.reshape((b, t, h))?)?;
    let h2_m = mix.act(&norm(&x2, w.post_norm)?)?.reshape((m, h))?;
    let (gate, up) = (mix.proj(&h2_m, w.gate)?, mix.proj(&h2_m, w.up)?);
    let act = gate.apply_op2_no_bwd(&up, &Op(Swiglu))?;
    let y = (&x2 + mix.proj(&mix.act(&act)?, w.down)?.reshape((b, t, h))?)?;
    drop(act);
    let p = past.map(|(k, _)| k.dim(2)).transpose()?;
    let cached = past.map(|_| (k.clone(), v.clone()));
    let node = DecoderLayer {
        weights: all.map(|w| w.clone()),
        slots,
        mix,
        shape,
        cos,
        sin,
        saved: Saved { h1_m, q, k, v, probs, attn_m, x2, h2_m, gate, up },
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
