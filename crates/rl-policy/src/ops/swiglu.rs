//! SwiGLU (the Llama MLP activation).

use crate::Result;
use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use super::*;

pub(super) struct Swiglu;

pub(super) fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp_k())
}

impl Swiglu {
    pub(super) fn check_sizes(gate: usize, up: usize) -> candle_core::Result<()> {
        if gate != up {
            candle_core::bail!("rl-swiglu: gate ({gate}) and up ({up}) differ in size");
        }
        Ok(())
    }
}

impl Kernel for Swiglu {
    const NAME: &'static str = "rl-swiglu";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let [a, u] = inputs(xs, Self::NAME)?;
        Self::check_sizes(a.len(), u.len())?;
        let mut y = vec![T::zero(); a.len()];
        y.par_chunks_mut(ELEMS).zip(a.par_chunks(ELEMS).zip(u.par_chunks(ELEMS))).for_each(
            |(y, (a, u))| {
                for ((y, &a), &u) in y.iter_mut().zip(a).zip(u) {
                    *y = a * sigmoid(a) * u;
                }
            },
        );
        Ok((y, Shape::from(dims[0])))
    }

    fn grads(
        &self,
        args: &[&Tensor],
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let (gate, up) = (args[0], args[1]);
        let n = gate.elem_count();
        let both =
            gate.apply_op3_no_bwd(up, &grad.contiguous()?, &Op(SwigluBwd { with_act: false }))?;
        let dg = both.narrow(0, 0, n)?.reshape(gate.shape())?;
        let du = both.narrow(0, n, n)?.reshape(up.shape())?;
        Ok(vec![Some(dg), Some(du)])
    }
}

/// Backward of [`Swiglu`]: `(a, u, g)` → `[∂a; ∂u]` (flat, `2·N`) with `σ = sigmoid(a)`:
/// `∂a = g·u·σ·(1 + a·(1 − σ))`, `∂u = g·a·σ`; with `with_act` also the activation,
/// `[∂a; ∂u; silu(a)·u]` (`3·N`, one sigmoid per element for all three; CPU only, run by
/// [`cpu_kernel`]: the fused decoder layer's backward pass needs the activation for the down
/// projection's weight gradient).
pub(super) struct SwigluBwd {
    pub(super) with_act: bool,
}

impl Kernel for SwigluBwd {
    const NAME: &'static str = "rl-swiglu-bwd";

    fn run<T: Real>(
        &self,
        xs: &[&[T]],
        _dims: &[&[usize]],
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let [a, u, g] = inputs(xs, Self::NAME)?;
        let out = swiglu_grads(a, u, g, self.with_act)?;
        let len = out.len();
        Ok((out, Shape::from(len)))
    }
}

/// `[∂a; ∂u]` of `silu(a)·u` for the output gradient `g` (see [`SwigluBwd`]), followed by the
/// activation itself when `with_act`: flat, in parallel blocks, one sigmoid per element.
fn swiglu_grads<T: Real>(a: &[T], u: &[T], g: &[T], with_act: bool) -> candle_core::Result<Vec<T>> {
    let n = a.len();
    Swiglu::check_sizes(n, u.len())?;
    Swiglu::check_sizes(n, g.len())?;
    let mut out = vec![T::zero(); if with_act { 3 * n } else { 2 * n }];
    let (da, rest) = out.split_at_mut(n);
    let (du, act) = rest.split_at_mut(n);
    let acts: Vec<Option<&mut [T]>> = match with_act {
        true => act.chunks_mut(ELEMS).map(Some).collect(),
        false => (0..n.div_ceil(ELEMS)).map(|_| None).collect(),
    };
    da.par_chunks_mut(ELEMS)
        .zip(du.par_chunks_mut(ELEMS))
        .zip(acts)
        .zip(a.par_chunks(ELEMS).zip(u.par_chunks(ELEMS).zip(g.par_chunks(ELEMS))))
        .for_each(|(((da, du), mut act), (a, (u, g)))| {
            for i in 0..da.len() {
                let (a, u, g) = (a[i], u[i], g[i]);
                let s = sigmoid(a);
                da[i] = g * u * s * (T::one() + a * (T::one() - s));
                du[i] = g * a * s;
                if let Some(act) = act.as_deref_mut() {
                    act[i] = a * s * u;
                }
            }
        });
    Ok(out)
}

/// `silu(gate) · up` (the Llama MLP activation). `gate, up: (..., I)`, same shape and dtype.
/// Differentiable in both.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused_available(gate) && gate.dtype() == up.dtype() && gate.dims() == up.dims() {
        return Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, Op(Swiglu))?);
    }
    swiglu_composed(gate, up)
}

/// [`swiglu`] from primitive candle ops.
pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(gate)? * up)?)
}
