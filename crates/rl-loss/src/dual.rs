//! Forward-mode dual numbers: a value and its derivative with respect to one token's log-prob.
//!
//! Every per-token loss in this crate is written with these, op for op like the PyTorch
//! reference, so that the derivative follows torch's autograd conventions exactly:
//! `detach()` zeroes the derivative, `clamp` passes the gradient on the closed interval
//! `[lo, hi]`, `maximum`/`minimum` split it evenly on ties, `abs` has derivative 0 at 0.
//! Values are computed in f32 (as the reference does); only sums are accumulated in f64.

/// `v + d·ε`: a value and its derivative with respect to the token's current log-prob.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Dual {
    /// The value.
    pub v: f32,
    /// `∂v/∂logπθ`.
    pub d: f32,
}

impl Dual {
    /// The differentiation variable itself (`d = 1`).
    pub fn var(v: f32) -> Self {
        Self { v, d: 1.0 }
    }

    /// A constant (derivative 0).
    pub fn c(v: f32) -> Self {
        Self { v, d: 0.0 }
    }

    /// Stop-gradient: same value, derivative 0 (torch `.detach()`).
    pub fn detach(self) -> Self {
        Self::c(self.v)
    }

    pub fn add(self, o: Self) -> Self {
        Self { v: self.v + o.v, d: self.d + o.d }
    }

    pub fn sub(self, o: Self) -> Self {
        Self { v: self.v - o.v, d: self.d - o.d }
    }

    pub fn mul(self, o: Self) -> Self {
        Self { v: self.v * o.v, d: self.d * o.v + self.v * o.d }
    }

    /// Multiplication by a constant.
    pub fn scale(self, c: f32) -> Self {
        Self { v: self.v * c, d: self.d * c }
    }

    pub fn neg(self) -> Self {
        Self { v: -self.v, d: -self.d }
    }

    /// `e^x` (the value is exactly `f32::exp`'s, see [`crate::expf`]).
    pub fn exp(self) -> Self {
        let e = crate::expf::exp(self.v);
        Self { v: e, d: self.d * e }
    }

    /// [`Dual::exp`] of a value known to lie in `(−32, 32)` (after a `clamp(±20)`): the same
    /// result, with no libm fallback in the generated code.
    pub fn exp_small(self) -> Self {
        let e = crate::expf::exp_small(self.v);
        Self { v: e, d: self.d * e }
    }

    pub fn square(self) -> Self {
        Self { v: self.v * self.v, d: 2.0 * self.v * self.d }
    }

    /// `|x|`, derivative `sign(x)` (0 at 0, as torch).
    pub fn abs(self) -> Self {
        let s = if self.v > 0.0 {
            1.0
        } else if self.v < 0.0 {
            -1.0
        } else {
            0.0
        };
        Self { v: self.v.abs(), d: self.d * s }
    }

    /// `σ(x)`, derivative `σ(1 − σ)`.
    pub fn sigmoid(self) -> Self {
        let s = 1.0 / (1.0 + crate::expf::exp(-self.v));
        Self { v: s, d: self.d * s * (1.0 - s) }
    }

    /// torch `clamp(x, lo, hi)`: gradient passes where `lo <= x <= hi`.
    ///
    /// (Branch-free, here and in [`Dual::max`], see [`sel`]: with random ratios a branch per
    /// clip mispredicts on half the tokens.)
    pub fn clamp(self, lo: f32, hi: f32) -> Self {
        let (below, above) = (self.v < lo, self.v > hi);
        Self { v: sel(below, lo, sel(above, hi, self.v)), d: sel(below | above, 0.0, self.d) }
    }

    /// torch `clamp(x, max=hi)`.
    pub fn clamp_max(self, hi: f32) -> Self {
        self.clamp(f32::NEG_INFINITY, hi)
    }

    /// torch `maximum(a, b)`: on a tie the gradient is split evenly.
    pub fn max(self, o: Self) -> Self {
        let (gt, lt) = (self.v > o.v, o.v > self.v);
        Self { v: sel(lt, o.v, self.v), d: sel(gt, self.d, sel(lt, o.d, 0.5 * (self.d + o.d))) }
    }

    /// torch `minimum(a, b)`: on a tie the gradient is split evenly.
    pub fn min(self, o: Self) -> Self {
        self.neg().max(o.neg()).neg()
    }
}

/// `if c { a } else { b }` on the bits, so that it compiles to masks, never to a branch (LLVM
/// turns a plain `if` on floats back into a branch, e.g. on the tie case of `max`).
#[inline(always)]
pub(crate) fn sel(c: bool, a: f32, b: f32) -> f32 {
    let m = u32::from(c).wrapping_neg();
    f32::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central finite difference of `f` at `x`, in f64 through an f32 function.
    fn fd(f: impl Fn(Dual) -> Dual, x: f32) -> f32 {
        let h = 1e-3f32;
        (f(Dual::c(x + h)).v - f(Dual::c(x - h)).v) / (2.0 * h)
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let fs: Vec<Box<dyn Fn(Dual) -> Dual>> = vec![
            Box::new(|x| x.exp().scale(-0.7)),
            Box::new(|x| x.sub(Dual::c(0.3)).square()),
            Box::new(|x| x.exp().sub(Dual::c(1.0)).scale(2.0).sigmoid()),
            Box::new(|x| x.mul(x.exp()).abs()),
            Box::new(|x| x.exp().clamp(0.8, 1.2)),
            Box::new(|x| x.exp().max(x.scale(2.0)).min(Dual::c(3.0))),
        ];
        for f in &fs {
            for x in [-1.3f32, -0.1, 0.05, 0.15, 0.4, 1.1] {
                let a = f(Dual::var(x)).d;
                let n = fd(f, x);
                assert!((a - n).abs() < 2e-2 * n.abs().max(1.0), "x={x}: {a} vs {n}");
            }
        }
    }

    #[test]
    fn torch_conventions_at_kinks() {
        // clamp is inclusive at the bounds, max/min split ties, detach stops the gradient.
        assert_eq!(Dual::var(1.2).clamp(0.8, 1.2).d, 1.0);
        assert_eq!(Dual::var(1.3).clamp(0.8, 1.2).d, 0.0);
        assert_eq!(Dual::var(2.0).max(Dual::c(2.0)).d, 0.5);
        assert_eq!(Dual::var(2.0).min(Dual::c(2.0)).d, 0.5);
        assert_eq!(Dual::var(0.0).abs().d, 0.0);
        assert_eq!(Dual::var(3.0).detach().d, 0.0);
    }
}
