//! Head split / merge, with the rotary embedding folded in.

use crate::Result;
use candle_core::{D, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// Moves `d`-value rows between the token-major layout `(B, S, n·d)` and the head-major layout
/// `(B, n, S, d)` (declared as `(B, g, (n/g)·S, d)`: the `n/g` query heads that share one
/// key/value head stacked along the query axis), optionally applying the half-split rotary
/// embedding on the way. `inverse` goes head-major → token-major and rotates by `−θ`, which is the
/// backward pass of the forward direction (and vice versa).
pub(super) struct Heads {
    pub(super) heads: usize,
    pub(super) groups: usize,
    pub(super) rotate: bool,
    pub(super) inverse: bool,
}

impl Heads {
    pub(super) fn kernel<T: Real>(
        &self,
        x: &[T],
        rot: Option<(&[T], &[T])>,
        b: usize,
        d: usize,
    ) -> Vec<T> {
        let n = self.heads;
        let s = x.len() / (b * n * d).max(1);
        let half = d / 2;
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(d).enumerate().with_min_len(MIN_ROWS).for_each(|(row, y)| {
            // `row` indexes the output layout
            let (bi, rest) = (row / (s * n), row % (s * n));
            let (si, src) = if self.inverse {
                let (si, hi) = (rest / n, rest % n);
                (si, ((bi * n + hi) * s + si) * d)
            } else {
                let (hi, si) = (rest / s, rest % s);
                (si, ((bi * s + si) * n + hi) * d)
            };
            let x = &x[src..src + d];
            match rot {
                None => y.copy_from_slice(x),
                Some((cos, sin)) => {
                    let t = (bi * s + si) * half;
                    let (c, sn) = (&cos[t..t + half], &sin[t..t + half]);
                    for i in 0..half {
                        let (x1, x2, c) = (x[i], x[i + half], c[i]);
                        let sn = if self.inverse { -sn[i] } else { sn[i] };
                        y[i] = x1 * c - x2 * sn;
                        y[i + half] = x2 * c + x1 * sn;
                    }
                }
            }
        });
        y
    }

    /// With `rotate`, `cos` and `sin` must hold `(B, S, d/2)` values for `len` inputs.
    pub(super) fn check_rotary(
        &self,
        len: usize,
        cos: usize,
        sin: usize,
    ) -> candle_core::Result<()> {
        let want = len / (self.heads * 2).max(1);
        if self.rotate && (cos != want || sin != want) {
            candle_core::bail!("rl-heads: cos/sin hold {cos}/{sin} values, expected {want}");
        }
        Ok(())
    }

    /// `(B, S, n·d)` input dims → `(B, g, (n/g)·S, d)` output dims, or back when `inverse`.
    pub(super) fn out_shape(&self, dims: &[usize]) -> candle_core::Result<(usize, usize, Shape)> {
        let (n, g) = (self.heads, self.groups);
        if n == 0 || g == 0 || n % g != 0 {
            candle_core::bail!("rl-heads: {n} heads in {g} groups");
        }
        match (self.inverse, dims) {
            (false, &[b, s, nd]) if nd % n == 0 => {
                Ok((b, nd / n, Shape::from((b, g, n / g * s, nd / n))))
            }
            (true, &[b, gg, rs, d]) if gg == g && rs % (n / g) == 0 => {
                Ok((b, d, Shape::from((b, rs / (n / g), n * d))))
            }
            _ => {
                candle_core::bail!("rl-heads: input {dims:?} does not fit {n} heads in {g} groups")
            }
        }
    }
}

impl Kernel for Heads {
    const NAME: &'static str = "rl-heads";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let (b, d, out) = self.out_shape(dims[0])?;
        let [x, cos, sin] = inputs(xs, Self::NAME)?;
        self.check_rotary(x.len(), cos.len(), sin.len())?;
        let rot = self.rotate.then_some((cos, sin));
        Ok((self.kernel(x, rot, b, d), out))
    }

    fn grads(
        &self,
        args: &[&Tensor],
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let inv = Op(Heads { inverse: !self.inverse, ..*self });
        Ok(vec![Some(grad.contiguous()?.apply_op3_no_bwd(args[1], args[2], &inv)?)])
    }
}

pub(super) fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

/// Splits `x: (B, S, n·d)` (or `(B, S, n, d)`) into heads, `(B, g, (n/g)·S, d)`: the `n/g` heads
/// that share key/value head `j < g` are stacked along axis 2 (so `g = n` gives `(B, n, S, d)`).
/// With `rotary = Some((cos, sin))`, `cos, sin: (B, S, d/2)`, applies the half-split
/// (Hugging Face / NeoX) rotary embedding `x·cos + rotate_half(x)·sin` on the way.
/// Differentiable in `x`.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn split_heads(
    x: &Tensor,
    heads: usize,
    groups: usize,
    rotary: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (b, s) = (x.dim(0)?, x.dim(1)?);
    let x = x.reshape((b, s, ()))?;
    let rot_ok = rotary.is_none_or(|(c, s)| c.dtype() == x.dtype() && s.dtype() == x.dtype());
    if fused_available(&x) && rot_ok {
        let op = Op(Heads { heads, groups, rotate: rotary.is_some(), inverse: false });
        let (cos, sin) = rotary.unwrap_or((&x, &x));
        return Ok(x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)?);
    }
    split_heads_composed(&x, heads, groups, rotary)
}

/// [`split_heads`] from primitive candle ops.
pub fn split_heads_composed(
    x: &Tensor,
    heads: usize,
    groups: usize,
    rotary: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (b, s, nd) = x.dims3()?;
    let d = nd / heads.max(1);
    let x = x.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()?;
    let x = match rotary {
        Some((cos, sin)) => {
            let full = |t: &Tensor| -> Result<Tensor> {
                Ok(Tensor::cat(&[t, t], D::Minus1)?.unsqueeze(1)?)
            };
            (x.broadcast_mul(&full(cos)?)? + rotate_half(&x)?.broadcast_mul(&full(sin)?)?)?
        }
        None => x,
    };
    Ok(x.reshape((b, groups, heads / groups.max(1) * s, d))?)
}

/// Merges heads back: `x: (B, g, (n/g)·S, d)` (as produced by [`split_heads`]) → `(B, S, n·d)`.
/// Differentiable in `x`.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn merge_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (_, g, _, _) = x.dims4()?;
    if fused_available(x) {
        let op = Op(Heads { heads, groups: g, rotate: false, inverse: true });
        let x = x.contiguous()?;
        return Ok(x.apply_op3(&x, &x, op)?);
    }
    merge_heads_composed(x, heads)
}

/// [`merge_heads`] from primitive candle ops.
pub fn merge_heads_composed(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, g, rs, d) = x.dims4()?;
    let s = rs * g / heads.max(1);
    Ok(x.reshape((b, heads, s, d))?.transpose(1, 2)?.reshape((b, s, heads * d))?)
}
