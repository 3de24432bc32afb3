//! Linear layers and matrix products without reshape/transpose nodes, and the projections
//! fused with their neighbour; in an [`autocast`](super::precision::autocast) scope their
//! products take bf16 operands and accumulate in f32.

use crate::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// `x: (..., in) · wᵀ` with `w: (out, in)`, one graph node (candle's `Linear` records a
/// transpose and two reshapes, each costing full-size gradient passes in the backward).
/// `sink`: where `w`'s gradient accumulates when a [`GradSink`] holds it; `w16`: `w`'s bf16
/// copy when the products run in bf16.
pub(super) struct LinearOp {
    pub(super) sink: Option<std::sync::Arc<sink::Slot>>,
    pub(super) w16: Option<Tensor>,
}

/// `x · wᵀ` on the CPU: `x: (..., in)` and `w: (out, in)`, both contiguous; with `w16` (the
/// bf16 copy of `w`) in bf16 with f32 accumulation, `x` rounded to bf16 on the way.
pub(super) fn linear_fwd(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    w16: Option<&Tensor>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    if let Some(w16) = w16 {
        if w16.dims() != l2.dims() {
            candle_core::bail!("rl-linear: bf16 weight {:?} vs w {:?}", w16.dims(), l2.dims());
        }
        let (s, l) = w16.storage_and_layout();
        let candle_core::Storage::Cpu(s) = &*s else {
            candle_core::bail!("rl-linear: the bf16 weight must be on the CPU");
        };
        return linear_fwd(s1, l1, s, l, None);
    }
    let (out, inp) = l2.shape().dims2()?;
    let dims = l1.dims();
    if dims.last() != Some(&inp) || !l1.is_contiguous() || !l2.is_contiguous() {
        candle_core::bail!("rl-linear: x {dims:?} and w {:?} (contiguous) do not fit", l2.dims());
    }
    let m = l1.shape().elem_count() / inp.max(1);
    let lhs = Layout::contiguous_with_offset((m, inp), l1.start_offset());
    let rhs = Layout::contiguous_with_offset((out, inp), l2.start_offset()).transpose(0, 1)?;
    let y = blas::matmul_storage(s1, &lhs, s2, &rhs, (1, m, out, inp))?;
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = out;
    Ok((y, Shape::from(shape)))
}

/// Gradients `(∂x, ∂w)` of `x · wᵀ` for the output gradient `grad` (f32 both; with `w16`, the
/// products take bf16 operands); `∂w` is `None` when `sink` took it.
pub(super) fn linear_grads(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    sink: &Option<std::sync::Arc<sink::Slot>>,
    w16: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (out, inp) = w.dims2()?;
    let g = grad.contiguous()?.reshape(((), out))?;
    let x2 = x.detach().reshape(((), inp))?;
    let (dx, dw) = match w16 {
        None => (blas::mm(&g, &w.detach())?, blas::mm(&g.t()?, &x2)?),
        Some(w16) => {
            let g = blas::to_bf16(&g)?;
            (blas::mm(&g, w16)?, blas::mm(&g.t()?, &blas::to_bf16(&x2)?)?)
        }
    };
    Ok((dx.reshape(x.shape())?, sunk(sink, dw)?))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "rl-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        linear_fwd(s1, l1, s2, l2, self.w16.as_ref())
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = linear_grads(x, w, grad, &self.sink, self.w16.as_ref())?;
        Ok((Some(dx), dw))
    }
}

/// A projection fused with its neighbour as one graph node of three inputs, so the graph keeps no
/// tensor between the two that no backward pass reads.
#[derive(Clone, Copy)]
pub(super) enum Fusion {
    /// `(x, w, r)` → `r + x · wᵀ` (a projection into the residual stream): no separate
    /// projection output is kept (576 floats per token and layer of SmolLM2).
    AddResidual,
    /// `(gate, up, w)` → `swiglu(gate, up) · wᵀ` (the Llama MLP's activation and down
    /// projection): the activation is not kept; the backward pass recomputes it from `gate` and
    /// `up` (which the graph holds anyway), `I` floats per token and layer (1536 for SmolLM2)
    /// for one more elementwise pass.
    SwigluInput,
}

/// A [`Fusion`] as a candle op; `sink`: where `w`'s gradient accumulates when a [`GradSink`]
/// holds it; `w16`: `w`'s bf16 copy when the products run in bf16.
pub(super) struct FusedLinearOp {
    pub(super) fusion: Fusion,
    pub(super) sink: Option<std::sync::Arc<sink::Slot>>,
    pub(super) w16: Option<Tensor>,
}

impl CustomOp3 for FusedLinearOp {
    fn name(&self) -> &'static str {
        match self.fusion {
            Fusion::AddResidual => "rl-linear-add",
            Fusion::SwigluInput => "rl-swiglu-linear",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if let Fusion::SwigluInput = self.fusion {
            let (act, shape) = run_kernel(&Swiglu, &[(s1, l1), (s2, l2)])?;
            return linear_fwd(&act, &Layout::contiguous(shape), s3, l3, self.w16.as_ref());
        }
        let (mut y, shape) = linear_fwd(s1, l1, s2, l2, self.w16.as_ref())?;
        if l3.dims() != shape.dims() {
            candle_core::bail!("rl-linear-add: residual {:?} vs output {shape:?}", l3.dims());
        }
        match &mut y {
            CpuStorage::F32(y) => add_into(y, slice::<f32>(s3, l3, "rl-linear-add")?),
            CpuStorage::F64(y) => add_into(y, slice::<f64>(s3, l3, "rl-linear-add")?),
            _ => candle_core::bail!("rl-linear-add: f32 or f64 only"),
        }
        Ok((y, shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match self.fusion {
            Fusion::AddResidual => {
                let (dx, dw) = linear_grads(a, b, grad, &self.sink, self.w16.as_ref())?;
                Ok((Some(dx), dw, Some(grad.clone())))
            }
            Fusion::SwigluInput => {
                let (gate, up) = (a.detach(), b.detach());
                let act = gate.apply_op2_no_bwd(&up, &Op(Swiglu))?;
                let (dact, dw) = linear_grads(&act, c, grad, &self.sink, self.w16.as_ref())?;
                drop(act);
                let mut g = Swiglu.grads(&[&gate, &up], &gate, &dact)?;
                Ok((nth(&mut g, 0), nth(&mut g, 1), dw))
            }
        }
    }
}

/// `y += r` (same lengths), in parallel blocks.
pub(super) fn add_into<T: Real>(y: &mut [T], r: &[T]) {
    y.par_chunks_mut(ELEMS).zip(r.par_chunks(ELEMS)).for_each(|(y, r)| {
        y.iter_mut().zip(r).for_each(|(y, &r)| *y += r);
    });
}

/// `x · wᵀ (+ bias)`: `x: (..., in)`, `w: (out, in)`, `bias: (out)` → `(..., out)`, as
/// `candle_nn::Linear` but recorded as a single graph node on CPU (elsewhere it is
/// `candle_nn::Linear`). Differentiable in all inputs. In a bf16
/// [`autocast`](super::precision::autocast) scope (f32 `x` and `w`) the products, forward and
/// backward, take bf16 operands and accumulate in f32; the output and the gradients are f32.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_in(x, w, bias, precision::bf16_for(x).as_deref())
}

/// [`linear`] with the bf16 weight cache `bf16` (`None`: in the inputs' dtype).
pub(super) fn linear_in(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    bf16: Option<&precision::Bf16Weights>,
) -> Result<Tensor> {
    let bf16 = bf16.filter(|_| w.dtype() == DType::F32 && x.dtype() == DType::F32);
    let y = if x.device().is_cpu() && fused_available(x) && x.dtype() == w.dtype() {
        let w16 = bf16.map(|c| c.get(w)).transpose()?;
        x.contiguous()?.apply_op2(&w.contiguous()?, LinearOp { sink: sink::slot(w), w16 })?
    } else if bf16.is_some() {
        // Elsewhere (CUDA): cast per product; candle's bf16 matmul accumulates in f32.
        let lin = candle_nn::Linear::new(w.to_dtype(DType::BF16)?, None);
        candle_nn::Module::forward(&lin, &x.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)?
    } else {
        candle_nn::Module::forward(&candle_nn::Linear::new(w.clone(), None), x)?
    };
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `r + x · wᵀ (+ bias)`: [`linear`] followed by a residual add, `r` of the output's shape. On
/// the CPU (no bias) one graph node that keeps no projection output for the backward pass;
/// elsewhere `linear(x, w, bias) + r`. Same values (bit for bit) and gradients.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn linear_add(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, r: &Tensor) -> Result<Tensor> {
    if bias.is_none() && x.device().is_cpu() && fused_available(x) && same_dtype(&[x, w, r]) {
        let w16 = precision::bf16_for(x).map(|c| c.get(w)).transpose()?;
        let op = FusedLinearOp { fusion: Fusion::AddResidual, sink: sink::slot(w), w16 };
        return Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &r.contiguous()?, op)?);
    }
    Ok((r + linear(x, w, bias)?)?)
}

/// `swiglu(gate, up) · wᵀ (+ bias)`: [`swiglu`] followed by [`linear`]. On the CPU (no bias,
/// same shapes) one graph node that recomputes the activation in its backward pass instead of
/// keeping it; elsewhere `linear(&swiglu(gate, up)?, w, bias)`. Same values (bit for bit) and
/// gradients.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn swiglu_linear(
    gate: &Tensor,
    up: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let fits = gate.dims() == up.dims() && same_dtype(&[gate, up, w]);
    if bias.is_none() && gate.device().is_cpu() && fused_available(gate) && fits {
        let w16 = precision::bf16_for(gate).map(|c| c.get(w)).transpose()?;
        let op = FusedLinearOp { fusion: Fusion::SwigluInput, sink: sink::slot(w), w16 };
        return Ok(gate.contiguous()?.apply_op3(&up.contiguous()?, &w.contiguous()?, op)?);
    }
    linear(&swiglu(gate, up)?, w, bias)
}

/// `true` when every tensor has the dtype of the first.
pub(super) fn same_dtype(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.dtype() == ts[0].dtype())
}

/// A weight gradient for candle: `None` when `sink` took it.
pub(super) fn sunk(
    sink: &Option<std::sync::Arc<sink::Slot>>,
    grad: Tensor,
) -> candle_core::Result<Option<Tensor>> {
    match sink {
        Some(slot) => slot.add(grad),
        None => Ok(Some(grad)),
    }
}

/// `a · b` of batched matrices as one graph node whose forward and backward products run in
/// [`blas`] (candle's `matmul` zero-fills each output first); `bf16`: with bf16 operands and
/// f32 accumulation.
pub(super) struct MatMulOp {
    pub(super) bf16: bool,
}

impl CustomOp2 for MatMulOp {
    fn name(&self) -> &'static str {
        "rl-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (d1, d2) = (l1.dims(), l2.dims());
        let r = d1.len();
        if r < 2 || d2.len() != r || d1[..r - 2] != d2[..r - 2] || d1[r - 1] != d2[r - 2] {
            candle_core::bail!("rl-matmul: {d1:?} and {d2:?} do not fit");
        }
        let (m, k, n) = (d1[r - 2], d1[r - 1], d2[r - 1]);
        let batch = d1[..r - 2].iter().product();
        let out = match self.bf16 {
            true => blas::matmul_bf16_storage(s1, l1, s2, l2, (batch, m, n, k))?,
            false => blas::matmul_storage(s1, l1, s2, l2, (batch, m, n, k))?,
        };
        let mut dims = d1.to_vec();
        dims[r - 1] = n;
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let r = a.rank();
        // A bf16 `b` is a cache without a graph (see [`matmul`]): it gets no gradient.
        let cache = precision::is_bf16_cache(b);
        let (a, b, grad) = match self.bf16 {
            true => (blas::to_bf16(a)?, blas::to_bf16(b)?, blas::to_bf16(grad)?),
            false => (a.detach(), b.detach(), grad.clone()),
        };
        let da = blas::mm(&grad, &b.transpose(r - 2, r - 1)?)?;
        let db = match cache {
            true => None,
            false => Some(blas::mm(&a.transpose(r - 2, r - 1)?, &grad)?),
        };
        Ok((Some(da), db))
    }
}

/// `a · b` of `a: (..., m, k)` and `b: (..., k, n)` with equal leading dims → `(..., m, n)`, as
/// candle's `matmul`, differentiable in both. On the CPU in f32/f64 it is one graph node whose
/// products (forward and backward) run in [`blas`]; elsewhere it is candle's `matmul`. In a
/// bf16 [`autocast`](super::precision::autocast) scope (f32 inputs) the products take bf16
/// operands and accumulate in f32; the output and gradients are f32. There, on the CPU, `b` may
/// also be a bf16 tensor without a graph (a bf16 key/value cache): the same product as with its
/// f32 values, without rounding them again.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let r = a.rank();
    let fits = r >= 2 && b.rank() == r && a.dims()[..r - 2] == b.dims()[..r - 2];
    let scope = precision::bf16_for(a).is_some();
    let bf16 = scope && b.dtype() == DType::F32;
    let bf16_b = scope && precision::is_bf16_cache(b);
    if a.device().is_cpu() && fused_available(a) && (a.dtype() == b.dtype() || bf16_b) && fits {
        let op = MatMulOp { bf16: bf16 || bf16_b };
        return Ok(blas::operand(a)?.apply_op2(&blas::operand(b)?, op)?);
    }
    if bf16 {
        let (a, b) = (a.to_dtype(DType::BF16)?, b.to_dtype(DType::BF16)?);
        return Ok(a.matmul(&b)?.to_dtype(DType::F32)?);
    }
    Ok(a.matmul(b)?)
}
