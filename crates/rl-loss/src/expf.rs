//! An inlinable `expf` that returns what `f32::exp` returns.
//!
//! `f32::exp` is a call into libm, and around a call every live floating-point register is
//! spilled: in the per-token loops of this crate the call and its spills cost more than the
//! rest of the token. [`exp_small`] is the algorithm of glibc's (and musl's) `expf` (ARM
//! optimized-routines `e_expf.c`: its 32-entry `exp2f` table and degree-3 polynomial, in f64)
//! written out so that it inlines, with no call and no branch. On `|x| < 32` its result is
//! bit-identical to glibc's `f32::exp` (checked over every such f32 by the ignored test
//! `matches_libm_on_every_input`; the first inputs where glibc's FMA build rounds differently
//! are `x ≈ 32.56` and `x ≈ −63.10`). [`exp`] uses it on `|x| < 32` and libm elsewhere, so it is
//! `f32::exp` on glibc for every input, and within glibc's 0.502 ulp of `e^x` on other libms.

/// `tab[i] = bits(2^(i/32)) − (i << 47)` (glibc `__exp2f_data.tab`).
const TAB: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// `0x1.8p52`: adding it rounds to an integer (ties to even) in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// `32 / ln 2` (`0x1.71547652b82fep0 · 32`).
const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
/// `poly_scaled`: `0x1.c6af84b912394p-5 / 32³`, `0x1.ebfce50fac4f3p-3 / 32²`,
/// `0x1.62e42ff0c52d6p-1 / 32`.
const C0: f64 = f64::from_bits(0x3ebc6af84b912394);
const C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
const C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);

/// `e^x` for `|x| < 32` (e.g. after `clamp(±20)`), without a call; NaN gives NaN. Outside that
/// range the result is still within 1 ulp up to `|x| < 88`, but use [`exp`].
#[inline(always)]
pub(crate) fn exp_small(x: f32) -> f32 {
    // x·32/ln2 = k + r with integer k and |r| <= 1/2; e^x = 2^(k/32)·2^(r/32).
    let z = INV_LN2_N * x as f64;
    let kd = z + SHIFT;
    let ki = kd.to_bits();
    let r = z - (kd - SHIFT);
    let s = f64::from_bits(TAB[(ki % 32) as usize].wrapping_add(ki << 47));
    (((C0 * r + C1) * (r * r) + (C2 * r + 1.0)) * s) as f32
}

/// `e^x` as `f32::exp` computes it: [`exp_small`] on `|x| < 32`, libm elsewhere (and on NaN).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    if x.abs() < 32.0 { exp_small(x) } else { x.exp() }
}

#[cfg(test)]
mod tests {
    use super::{exp, exp_small};

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn agrees_with_libm() {
        // Every 251st f32 with |x| < 88, plus special cases: within 1 ulp on any libm
        // (bit-identical on glibc, see the ignored exhaustive test).
        let hi = 88f32.to_bits();
        for bits in (0..hi).step_by(251) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                assert!(ulps(exp(x), x.exp()) <= 1, "x = {x:e}: {} vs {}", exp(x), x.exp());
                if x.abs() < 32.0 {
                    assert!(ulps(exp_small(x), x.exp()) <= 1, "x = {x:e}");
                }
            }
        }
        for x in [0.0f32, -0.0, 1.0, -20.0, 20.0, 32.0, 88.0, 88.8, -104.0, -1e30, f32::INFINITY] {
            assert_eq!(exp(x).to_bits(), x.exp().to_bits(), "x = {x}");
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan() && exp_small(f32::NAN).is_nan());
    }

    #[test]
    #[ignore = "exhaustive (2^31 inputs, ~30 s in release); holds where libm is glibc's expf"]
    fn matches_libm_on_every_input() {
        use rayon::prelude::*;
        let hi = 88f32.to_bits();
        let bad: u64 = (0..hi)
            .into_par_iter()
            .map(|bits| {
                let x = f32::from_bits(bits);
                let small = x < 32.0;
                [x, -x]
                    .into_iter()
                    .map(|x| {
                        let libm = x.exp().to_bits();
                        u64::from(exp(x).to_bits() != libm)
                            + u64::from(small && exp_small(x).to_bits() != libm)
                    })
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(bad, 0);
    }
}
