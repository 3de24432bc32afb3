//! Fused CPU kernels with analytic backward passes for the differentiable decoder path.
//!
//! candle-nn's fused `rms_norm`, `softmax_last_dim` and `rope` have no backward pass (they detach
//! the graph), and composing the same formulas from primitive ops costs many full-size
//! temporaries in the forward pass and many more in the backward pass. Each function here is one
//! candle custom op whose forward and backward are single passes over the data (rows in parallel
//! with rayon), registered with `apply_op*` so gradients flow through it.
//!
//! The fused kernels run for CPU tensors of dtype f32 or f64 and, with the `cuda` feature, for
//! CUDA tensors of dtype f32, f64, bf16 or f16 (kernels in `kernels/ops.cu`, compiled to PTX by
//! nvcc at build time, tested against the CPU kernels where a GPU is present; [`linear`] uses
//! cuBLAS through candle there). On other devices and dtypes every function falls back to the
//! same formula composed from candle ops that have backward passes, so results agree everywhere
//! (tests compare both, values and gradients). The composed versions are public too
//! (`*_composed`), as the reference formulas and for benchmarks. The matrix products inside the
//! ops run in [`blas`] on the CPU (the `gemm` crate, or Intel MKL when enabled). A [`GradSink`]
//! makes [`linear`] and [`head_log_prob_entropy`] accumulate weight gradients in place across
//! backward passes (gradient accumulation without a second full set of gradients).
//!
//! | function | input | output |
//! |---|---|---|
//! | [`rms_norm`] | `x: (..., H)`, `w: (H)` | `(..., H)` |
//! | [`split_heads`] | `x: (B, S, n·d)`, optional `cos, sin: (B, S, d/2)` | `(B, g, (n/g)·S, d)` |
//! | [`merge_heads`] | `(B, g, (n/g)·S, d)` | `(B, S, n·d)` |
//! | [`linear`] | `x: (..., in)`, `w: (out, in)`, `bias: (out)` | `(..., out)` |
//! | [`matmul`] | `a: (..., m, k)`, `b: (..., k, n)` | `(..., m, n)` |
//! | [`masked_softmax`] | `scores: (B, G, R, K)`, `mask: (B, 1, S, K)`, `R = r·S` | `(B, G, R, K)` |
//! | [`attention_probs`] | `q: (B, G, R, d)`, `k: (B, G, K, d)`, `mask: (B, 1, S, K)` | `(B, G, R, K)` |
//! | [`swiglu`] | `gate, up: (..., I)` | `(..., I)` |
//! | [`log_prob_entropy`] | `logits: (N, V)`, `targets: (N)` u32 | `(N)`, `(N)` |
//! | [`head_log_prob_entropy`] | `x: (N, H)`, `w: (V, H)`, `targets: (N)` u32 | `(N)`, `(N)` |

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Shape, Tensor, WithDType,
};
use num_traits::Float;
use rayon::prelude::*;

use crate::Result;

pub mod blas;
#[cfg(feature = "cuda")]
mod cuda;
mod sink;
/// The device backends a [`Kernel`] must also implement: CUDA with the `cuda` feature.
#[cfg(feature = "cuda")]
use cuda::CudaKernel as Backends;
pub use sink::GradSink;
#[cfg(not(feature = "cuda"))]
trait Backends {}
#[cfg(not(feature = "cuda"))]
impl<K: Kernel> Backends for K {}

/// Rows handed to one rayon task at least (rows are short: one hidden vector or one head).
const MIN_ROWS: usize = 8;
/// Elements per rayon task of the elementwise kernels.
const ELEMS: usize = 4096;

/// Element types of the fused kernels.
trait Real: WithDType + num_traits::Float + Send + Sync + blas::Elem {
    /// `e^x` as the kernels compute it: [`exp_f32`] for f32 (branch-free, so loops over it
    /// vectorize), the standard library's for f64.
    fn exp_k(self) -> Self;
}
impl Real for f32 {
    #[inline(always)]
    fn exp_k(self) -> f32 {
        exp_f32(self)
    }
}
impl Real for f64 {
    #[inline(always)]
    fn exp_k(self) -> f64 {
        self.exp()
    }
}

/// `e^x` in f32 within 2 ulp of the correctly rounded value for `x` in `[-87.3, 88.3]`, exactly
/// 0 below (masked attention scores), `e^88.3` above, NaN for NaN. Written without branches or
/// library calls so the kernels' loops over it vectorize (glibc's scalar `expf` was 5 % of a
/// SmolLM2 forward + backward): `x = n·ln 2 + r` with `n` rounded to the nearest integer by the
/// 1.5·2²³ trick and `|r| ≤ ln 2 / 2`, `e^r` by its degree-7 Taylor polynomial (truncation error
/// below 1e-8 relative), `2ⁿ` built from the exponent bits.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2^11.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let c = x.clamp(-87.3, 88.3);
    let n = (c * LOG2E + ROUND) - ROUND;
    let r = (c - n * LN2_HI) - n * LN2_LO;
    // Horner form of Σ_{i ≤ 7} rⁱ / i!
    let p = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0]
        .iter()
        .fold(0.0, |acc, &c| acc * r + c);
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * scale;
    if x < -87.3 { 0.0 } else { y }
}

/// `true` when the fused kernels apply to `t`: CPU f32/f64, or (feature `cuda`) CUDA
/// f32/f64/bf16/f16.
pub fn fused_available(t: &Tensor) -> bool {
    let dtype = t.dtype();
    if t.device().is_cpu() {
        return matches!(dtype, DType::F32 | DType::F64);
    }
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16)
}

/// The elements of a contiguous CPU storage as `&[T]`.
fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// A fused CPU kernel over contiguous inputs of one dtype (f32 or f64); [`Op`] turns it into a
/// candle custom op of its arity.
trait Kernel {
    /// The op's name in candle errors.
    const NAME: &'static str;

    /// Output elements and shape from the inputs' elements `xs` and dims `dims`.
    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)>;

    /// Gradients of the inputs from the result and its gradient (`None`: not differentiable).
    fn grads(
        &self,
        _args: &[&Tensor],
        _res: &Tensor,
        _grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A [`Kernel`] as a candle custom op.
struct Op<K>(K);

fn run_typed<T: Real, K: Kernel>(
    k: &K,
    inputs: &[(&CpuStorage, &Layout)],
) -> candle_core::Result<(CpuStorage, Shape)> {
    let xs = inputs
        .iter()
        .map(|(s, l)| slice::<T>(s, l, K::NAME))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let dims: Vec<&[usize]> = inputs.iter().map(|(_, l)| l.dims()).collect();
    let (out, shape) = k.run::<T>(&xs, &dims)?;
    Ok((T::to_cpu_storage_owned(out), shape))
}

fn run_kernel<K: Kernel>(
    k: &K,
    inputs: &[(&CpuStorage, &Layout)],
) -> candle_core::Result<(CpuStorage, Shape)> {
    match inputs[0].0 {
        CpuStorage::F32(_) => run_typed::<f32, K>(k, inputs),
        CpuStorage::F64(_) => run_typed::<f64, K>(k, inputs),
        _ => candle_core::bail!("{}: f32 or f64 only", K::NAME),
    }
}

/// The `N` inputs of a kernel.
fn inputs<X: Copy, const N: usize>(xs: &[X], op: &str) -> candle_core::Result<[X; N]> {
    match <[X; N]>::try_from(xs) {
        Ok(a) => Ok(a),
        Err(_) => candle_core::bail!("{op}: {} inputs, expected {N}", xs.len()),
    }
}

/// The `i`-th gradient of [`Kernel::grads`].
fn nth(grads: &mut [Option<Tensor>], i: usize) -> Option<Tensor> {
    grads.get_mut(i).and_then(Option::take)
}

impl<K: Kernel + Backends> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        run_kernel(&self.0, &[(s, l)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::run(&self.0, &[(s, l)])
    }

    fn bwd(&self, a: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(nth(&mut self.0.grads(&[a], res, grad)?, 0))
    }
}

impl<K: Kernel + Backends> CustomOp2 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        run_kernel(&self.0, &[(s1, l1), (s2, l2)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::run(&self.0, &[(s1, l1), (s2, l2)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.0.grads(&[a, b], res, grad)?;
        Ok((nth(&mut g, 0), nth(&mut g, 1)))
    }
}

impl<K: Kernel + Backends> CustomOp3 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
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
        run_kernel(&self.0, &[(s1, l1), (s2, l2), (s3, l3)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::run(&self.0, &[(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.0.grads(&[a, b, c], res, grad)?;
        Ok((nth(&mut g, 0), nth(&mut g, 1), nth(&mut g, 2)))
    }
}

fn cast<T: Real>(v: f64) -> T {
    T::from_f64(v)
}

// ----------------------------------------------------------------------------------------------
// RMS norm

struct RmsNorm {
    eps: f64,
}

fn rms_scale<T: Real>(row: &[T], eps: f64) -> T {
    let ss = row.iter().fold(0f64, |a, &v| a + (v * v).to_f64());
    cast::<T>(1.0 / (ss / row.len() as f64 + eps).sqrt())
}

impl Kernel for RmsNorm {
    const NAME: &'static str = "rl-rms-norm";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let [x, w] = inputs(xs, Self::NAME)?;
        let h = w.len();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(h).zip(x.par_chunks(h)).with_min_len(MIN_ROWS).for_each(|(y, x)| {
            let r = rms_scale(x, self.eps);
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        });
        Ok((y, Shape::from(dims[0])))
    }

    fn grads(
        &self,
        args: &[&Tensor],
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let (x, w) = (args[0], args[1]);
        let h = w.elem_count();
        let n = x.elem_count() / h.max(1);
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &Op(RmsNormBwd { eps: self.eps }))?;
        let gx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let gw = both.narrow(0, n, 1)?.reshape(w.shape())?;
        Ok(vec![Some(gx), Some(gw)])
    }
}

/// Backward of [`RmsNorm`]: `(x, w, g)` → `(N + 1, H)`, rows `0..N` the gradient of `x`, row `N`
/// the gradient of `w`. With `r = 1/√(mean(x²) + eps)`:
/// `∂x_j = r·g_j·w_j − x_j·r³·Σ_k g_k w_k x_k / H`, `∂w_j = Σ_rows g_j·x_j·r`.
struct RmsNormBwd {
    eps: f64,
}

impl Kernel for RmsNormBwd {
    const NAME: &'static str = "rl-rms-norm-bwd";

    fn run<T: Real>(
        &self,
        xs: &[&[T]],
        _dims: &[&[usize]],
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let [x, w, g] = inputs(xs, Self::NAME)?;
        let h = w.len();
        let n = x.len() / h;
        let mut out = vec![T::zero(); x.len() + h];
        let (gx, _) = out.split_at_mut(x.len());
        let block = h * MIN_ROWS;
        let gw = gx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block).zip(g.par_chunks(block)))
            .map(|(gx, (x, g))| {
                let mut gw = vec![T::zero(); h];
                for ((gx, x), g) in gx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                    let r = rms_scale(x, self.eps);
                    let dot =
                        x.iter().zip(g).zip(w).fold(T::zero(), |a, ((&x, &g), &w)| a + g * w * x);
                    let c = r * r * r * dot / cast::<T>(h as f64);
                    for j in 0..h {
                        gx[j] = r * g[j] * w[j] - x[j] * c;
                        gw[j] += g[j] * x[j] * r;
                    }
                }
                gw
            })
            .reduce(
                || vec![T::zero(); h],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        out[n * h..].copy_from_slice(&gw);
        Ok((out, Shape::from((n + 1, h))))
    }
}

/// RMS normalisation over the last dimension, `x / √(mean(x²) + eps) · w`, as transformers'
/// `LlamaRMSNorm` (for f32/f64 inputs). `x: (..., H)`, `w: (H)`; same dtype. Differentiable in
/// `x` and `w`.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_available(x) && x.dtype() == w.dtype() && x.dim(D::Minus1)? == w.elem_count() {
        Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Op(RmsNorm { eps }))?)
    } else {
        rms_norm_composed(x, w, eps)
    }
}

/// [`rms_norm`] from primitive candle ops (any device and dtype; f32 statistics for half types).
pub fn rms_norm_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm_slow(x, w, eps as f32)?)
}

// ----------------------------------------------------------------------------------------------
// Head split / merge, with the rotary embedding folded in

/// Moves `d`-value rows between the token-major layout `(B, S, n·d)` and the head-major layout
/// `(B, n, S, d)` (declared as `(B, g, (n/g)·S, d)`: the `n/g` query heads that share one
/// key/value head stacked along the query axis), optionally applying the half-split rotary
/// embedding on the way. `inverse` goes head-major → token-major and rotates by `−θ`, which is the
/// backward pass of the forward direction (and vice versa).
struct Heads {
    heads: usize,
    groups: usize,
    rotate: bool,
    inverse: bool,
}

impl Heads {
    fn kernel<T: Real>(&self, x: &[T], rot: Option<(&[T], &[T])>, b: usize, d: usize) -> Vec<T> {
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
    fn check_rotary(&self, len: usize, cos: usize, sin: usize) -> candle_core::Result<()> {
        let want = len / (self.heads * 2).max(1);
        if self.rotate && (cos != want || sin != want) {
            candle_core::bail!("rl-heads: cos/sin hold {cos}/{sin} values, expected {want}");
        }
        Ok(())
    }

    /// `(B, S, n·d)` input dims → `(B, g, (n/g)·S, d)` output dims, or back when `inverse`.
    fn out_shape(&self, dims: &[usize]) -> candle_core::Result<(usize, usize, Shape)> {
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

fn rotate_half(x: &Tensor) -> Result<Tensor> {
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

// ----------------------------------------------------------------------------------------------
// Linear layer without reshape/transpose nodes

/// `x: (..., in) · wᵀ` with `w: (out, in)`, one graph node (candle's `Linear` records a
/// transpose and two reshapes, each costing full-size gradient passes in the backward).
/// `sink`: where `w`'s gradient accumulates when a [`GradSink`] holds it.
struct LinearOp {
    sink: Option<std::sync::Arc<sink::Slot>>,
}

/// `x · wᵀ` on the CPU: `x: (..., in)` and `w: (out, in)`, both contiguous.
fn linear_fwd(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
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

/// Gradients `(∂x, ∂w)` of `x · wᵀ` for the output gradient `grad`; `∂w` is `None` when `sink`
/// took it.
fn linear_grads(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    sink: &Option<std::sync::Arc<sink::Slot>>,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (out, inp) = w.dims2()?;
    let g = grad.contiguous()?.reshape(((), out))?;
    let x2 = x.detach().reshape(((), inp))?;
    let dx = blas::mm(&g, &w.detach())?.reshape(x.shape())?;
    let dw = blas::mm(&g.t()?, &x2)?;
    Ok((dx, sunk(sink, dw)?))
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
        linear_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = linear_grads(x, w, grad, &self.sink)?;
        Ok((Some(dx), dw))
    }
}

/// A projection fused with its neighbour as one graph node of three inputs, so the graph keeps no
/// tensor between the two that no backward pass reads.
#[derive(Clone, Copy)]
enum Fusion {
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
/// holds it.
struct FusedLinearOp {
    fusion: Fusion,
    sink: Option<std::sync::Arc<sink::Slot>>,
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
            return linear_fwd(&act, &Layout::contiguous(shape), s3, l3);
        }
        let (mut y, shape) = linear_fwd(s1, l1, s2, l2)?;
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
                let (dx, dw) = linear_grads(a, b, grad, &self.sink)?;
                Ok((Some(dx), dw, Some(grad.clone())))
            }
            Fusion::SwigluInput => {
                let (gate, up) = (a.detach(), b.detach());
                let act = gate.apply_op2_no_bwd(&up, &Op(Swiglu))?;
                let (dact, dw) = linear_grads(&act, c, grad, &self.sink)?;
                drop(act);
                let mut g = Swiglu.grads(&[&gate, &up], &gate, &dact)?;
                Ok((nth(&mut g, 0), nth(&mut g, 1), dw))
            }
        }
    }
}

/// `y += r` (same lengths), in parallel blocks.
fn add_into<T: Real>(y: &mut [T], r: &[T]) {
    y.par_chunks_mut(ELEMS).zip(r.par_chunks(ELEMS)).for_each(|(y, r)| {
        y.iter_mut().zip(r).for_each(|(y, &r)| *y += r);
    });
}

/// `x · wᵀ (+ bias)`: `x: (..., in)`, `w: (out, in)`, `bias: (out)` → `(..., out)`, as
/// `candle_nn::Linear` but recorded as a single graph node on CPU (elsewhere it is
/// `candle_nn::Linear`). Differentiable in all inputs.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = if x.device().is_cpu() && fused_available(x) && x.dtype() == w.dtype() {
        x.contiguous()?.apply_op2(&w.contiguous()?, LinearOp { sink: sink::slot(w) })?
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
        let op = FusedLinearOp { fusion: Fusion::AddResidual, sink: sink::slot(w) };
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
        let op = FusedLinearOp { fusion: Fusion::SwigluInput, sink: sink::slot(w) };
        return Ok(gate.contiguous()?.apply_op3(&up.contiguous()?, &w.contiguous()?, op)?);
    }
    linear(&swiglu(gate, up)?, w, bias)
}

/// `true` when every tensor has the dtype of the first.
fn same_dtype(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.dtype() == ts[0].dtype())
}

/// A weight gradient for candle: `None` when `sink` took it.
fn sunk(
    sink: &Option<std::sync::Arc<sink::Slot>>,
    grad: Tensor,
) -> candle_core::Result<Option<Tensor>> {
    match sink {
        Some(slot) => slot.add(grad),
        None => Ok(Some(grad)),
    }
}

/// `a · b` of batched matrices as one graph node whose forward and backward products run in
/// [`blas`] (candle's `matmul` zero-fills each output first).
struct MatMulOp;

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
        let out = blas::matmul_storage(s1, l1, s2, l2, (batch, m, n, k))?;
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
        let (a, b) = (a.detach(), b.detach());
        let da = blas::mm(grad, &b.transpose(r - 2, r - 1)?)?;
        let db = blas::mm(&a.transpose(r - 2, r - 1)?, grad)?;
        Ok((Some(da), Some(db)))
    }
}

/// `a · b` of `a: (..., m, k)` and `b: (..., k, n)` with equal leading dims → `(..., m, n)`, as
/// candle's `matmul`, differentiable in both. On the CPU in f32/f64 it is one graph node whose
/// products (forward and backward) run in [`blas`]; elsewhere it is candle's `matmul`.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let r = a.rank();
    let fits = r >= 2 && b.rank() == r && a.dims()[..r - 2] == b.dims()[..r - 2];
    if a.device().is_cpu() && fused_available(a) && a.dtype() == b.dtype() && fits {
        return Ok(blas::operand(a)?.apply_op2(&blas::operand(b)?, MatMulOp)?);
    }
    Ok(a.matmul(b)?)
}

// ----------------------------------------------------------------------------------------------
// Scaled, masked softmax over attention scores

/// `softmax(scale·scores + mask)` over the last dimension of `(B, G, R, K)` scores; `mask` is
/// `(B, 1, S, K)` and score row `r` uses mask row `r mod S` (grouped-query heads stacked along
/// `R`).
struct MaskedSoftmax {
    scale: f64,
}

impl MaskedSoftmax {
    /// `(B, G, R, S, K)` from the dims of `scores: (B, G, R, K)` and `mask: (B, 1, S, K)`.
    fn dims(dims: &[&[usize]]) -> candle_core::Result<(usize, usize, usize, usize, usize)> {
        let (b, g, r, k) = Shape::from(dims[0]).dims4()?;
        let (mb, _, s, mk) = Shape::from(dims[1]).dims4()?;
        if mb != b || mk != k || s == 0 || r % s != 0 {
            candle_core::bail!("rl-masked-softmax: scores {:?} vs mask {:?}", dims[0], dims[1]);
        }
        Ok((b, g, r, s, k))
    }
}

impl Kernel for MaskedSoftmax {
    const NAME: &'static str = "rl-masked-softmax";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let (_, g, r, s, k) = Self::dims(dims)?;
        let [x, m] = inputs(xs, Self::NAME)?;
        let scale = cast::<T>(self.scale);
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(k).enumerate().with_min_len(MIN_ROWS).for_each(|(row, y)| {
            let (bi, ri) = (row / (g * r), row % r);
            let mrow = &m[(bi * s + ri % s) * k..][..k];
            let xrow = &x[row * k..][..k];
            let mut max = T::neg_infinity();
            for ((y, &x), &m) in y.iter_mut().zip(xrow).zip(mrow) {
                *y = x * scale + m;
                max = Float::max(max, *y);
            }
            y.iter_mut().for_each(|y| *y = (*y - max).exp_k());
            let sum = y.iter().fold(T::zero(), |s, &y| s + y);
            let inv = T::one() / sum;
            y.iter_mut().for_each(|y| *y *= inv);
        });
        Ok((y, Shape::from(dims[0])))
    }

    fn grads(
        &self,
        _args: &[&Tensor],
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let op = Op(SoftmaxBwd { scale: self.scale });
        Ok(vec![Some(res.apply_op2_no_bwd(&grad.contiguous()?, &op)?)])
    }
}

/// Backward of [`MaskedSoftmax`]: `(y, g)` → `scale · y · (g − Σ_k g_k y_k)` per row.
struct SoftmaxBwd {
    scale: f64,
}

impl Kernel for SoftmaxBwd {
    const NAME: &'static str = "rl-softmax-bwd";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let k = dims[0].last().copied().unwrap_or(1).max(1);
        let [y, g] = inputs(xs, Self::NAME)?;
        let scale = cast::<T>(self.scale);
        let mut out = vec![T::zero(); y.len()];
        out.par_chunks_mut(k)
            .zip(y.par_chunks(k).zip(g.par_chunks(k)))
            .with_min_len(MIN_ROWS)
            .for_each(|(o, (y, g))| {
                let dot = y.iter().zip(g).fold(T::zero(), |a, (&y, &g)| a + y * g);
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = scale * y * (g - dot);
                }
            });
        Ok((out, Shape::from(dims[0])))
    }
}

/// `(q, k)` → `softmax(scale · q·kᵀ + mask)`: the attention scores exist only inside the forward
/// pass (the backward pass needs the probabilities, not the scores), so the graph does not keep
/// a `(B, G, R, K)` scores tensor alive per layer.
struct AttentionProbs {
    /// `(B, 1, S, K)` additive mask.
    mask: Tensor,
    scale: f64,
}

impl AttentionProbs {
    /// The product `(B·G, R, K, d)` and operand layouts of the scores `q·kᵀ` of contiguous
    /// `q: (B, G, R, d)` and `k: (B, G, K, d)`, and the scores' `(B, G, R, K)` layout.
    #[allow(clippy::type_complexity)]
    fn scores_layout(
        lq: &Layout,
        lk: &Layout,
    ) -> candle_core::Result<((usize, usize, usize, usize), Layout, Layout, Layout)> {
        let (b, g, r, d) = lq.shape().dims4()?;
        let (kb, kg, kk, kd) = lk.shape().dims4()?;
        if (kb, kg, kd) != (b, g, d) || !lq.is_contiguous() || !lk.is_contiguous() {
            candle_core::bail!("rl-attention: q {:?} and k {:?} do not fit", lq.dims(), lk.dims());
        }
        let lhs = Layout::contiguous_with_offset((b * g, r, d), lq.start_offset());
        let rhs =
            Layout::contiguous_with_offset((b * g, kk, d), lk.start_offset()).transpose(1, 2)?;
        Ok(((b * g, r, kk, d), lhs, rhs, Layout::contiguous((b, g, r, kk))))
    }
}

impl CustomOp2 for AttentionProbs {
    fn name(&self) -> &'static str {
        "rl-attention-probs"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (bmnk, lhs, rhs, ls) = Self::scores_layout(lq, lk)?;
        let scores = blas::matmul_storage(q, &lhs, k, &rhs, bmnk)?;
        let (mask, lm) = self.mask.storage_and_layout();
        let candle_core::Storage::Cpu(mask) = &*mask else {
            candle_core::bail!("rl-attention: the mask must be on the CPU");
        };
        run_kernel(&MaskedSoftmax { scale: self.scale }, &[(&scores, &ls), (mask, lm)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (bmnk, lhs, rhs, ls) = Self::scores_layout(lq, lk)?;
        let scores = q.matmul(k, bmnk, &lhs, &rhs)?;
        let (mask, lm) = self.mask.storage_and_layout();
        let candle_core::Storage::Cuda(mask) = &*mask else {
            candle_core::bail!("rl-attention: the mask must be on the queries' CUDA device");
        };
        cuda::run(&MaskedSoftmax { scale: self.scale }, &[(&scores, &ls), (mask, lm)])
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // d scores = scale · p · (g − Σ g p); dq = d scores · k, dk = d scoresᵀ · q
        let ds =
            res.apply_op2_no_bwd(&grad.contiguous()?, &Op(SoftmaxBwd { scale: self.scale }))?;
        let dq = blas::mm(&ds, &k.detach())?;
        let dk = blas::mm(&ds.transpose(2, 3)?, &q.detach())?;
        Ok((Some(dq), Some(dk)))
    }
}

/// Attention probabilities `softmax(scale · q·kᵀ + mask)` over the keys: `q: (B, G, R, d)`,
/// `k: (B, G, K, d)`, `mask: (B, 1, S, K)` additive with `R` a multiple of `S` (row `r` uses mask
/// row `r mod S`, as [`masked_softmax`]) → `(B, G, R, K)`. Differentiable in `q` and `k`.
///
/// Equals `masked_softmax(&q.matmul(&k.t()?)?, mask, scale)` (tests compare values and
/// gradients); with the fused kernels the scores are a temporary of the forward pass instead of
/// a graph tensor kept until the backward pass (for SmolLM2 at 8 × 272 tokens, 21 MiB per layer).
///
/// # Errors
/// Shape or dtype mismatches.
pub fn attention_probs(q: &Tensor, k: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if fused_available(q) && k.dtype() == q.dtype() && mask.dtype() == q.dtype() {
        let op = AttentionProbs { mask: mask.contiguous()?, scale };
        return Ok(q.contiguous()?.apply_op2(&k.contiguous()?, op)?);
    }
    masked_softmax(&q.matmul(&k.t()?)?, mask, scale)
}

/// `softmax(scale · scores + mask)` over the last dimension. `scores: (B, G, R, K)`,
/// `mask: (B, 1, S, K)` additive (0 or a large negative value) with `R` a multiple of `S`:
/// score row `r` uses mask row `r mod S`, so grouped-query heads can be stacked along `R`
/// without repeating keys. Differentiable in `scores`.
///
/// # Errors
/// Shape or dtype mismatches.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if fused_available(scores) && mask.dtype() == scores.dtype() {
        let op = Op(MaskedSoftmax { scale });
        return Ok(scores.contiguous()?.apply_op2(&mask.contiguous()?, op)?);
    }
    masked_softmax_composed(scores, mask, scale)
}

/// [`masked_softmax`] from primitive candle ops.
pub fn masked_softmax_composed(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, _, r, _) = scores.dims4()?;
    let (_, _, s, _) = mask.dims4()?;
    let reps = r / s.max(1);
    let mask = Tensor::cat(&vec![mask; reps], 2)?;
    let z = (scores * scale)?.broadcast_add(&mask)?;
    Ok(candle_nn::ops::softmax(&z, D::Minus1)?)
}

// ----------------------------------------------------------------------------------------------
// SwiGLU

struct Swiglu;

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp_k())
}

impl Swiglu {
    fn check_sizes(gate: usize, up: usize) -> candle_core::Result<()> {
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
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &Op(SwigluBwd))?;
        let dg = both.narrow(0, 0, n)?.reshape(gate.shape())?;
        let du = both.narrow(0, n, n)?.reshape(up.shape())?;
        Ok(vec![Some(dg), Some(du)])
    }
}

/// Backward of [`Swiglu`]: `(a, u, g)` → `[∂a; ∂u]` (flat, `2·N`) with `σ = sigmoid(a)`:
/// `∂a = g·u·σ·(1 + a·(1 − σ))`, `∂u = g·a·σ`.
struct SwigluBwd;

impl Kernel for SwigluBwd {
    const NAME: &'static str = "rl-swiglu-bwd";

    fn run<T: Real>(
        &self,
        xs: &[&[T]],
        _dims: &[&[usize]],
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let [a, u, g] = inputs(xs, Self::NAME)?;
        let n = a.len();
        let mut out = vec![T::zero(); 2 * n];
        let (da, du) = out.split_at_mut(n);
        da.par_chunks_mut(ELEMS)
            .zip(du.par_chunks_mut(ELEMS))
            .zip(a.par_chunks(ELEMS).zip(u.par_chunks(ELEMS).zip(g.par_chunks(ELEMS))))
            .for_each(|((da, du), (a, (u, g)))| {
                for ((da, du), ((&a, &u), &g)) in da.iter_mut().zip(du).zip(a.iter().zip(u).zip(g))
                {
                    let s = sigmoid(a);
                    *da = g * u * s * (T::one() + a * (T::one() - s));
                    *du = g * a * s;
                }
            });
        Ok((out, Shape::from(2 * n)))
    }
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

// ----------------------------------------------------------------------------------------------
// log-softmax + gather + entropy

/// `(N, V)` logits → `(N, 2)`: `[log p(target), entropy]` per row.
struct LogProbEntropy {
    targets: Tensor,
}

/// The targets as host `u32`s (contiguous CPU u32 tensor).
fn host_targets(t: &Tensor) -> candle_core::Result<Vec<u32>> {
    t.flatten_all()?.to_vec1::<u32>()
}

/// `count` targets with largest value `max` must index `n` rows of `v` logits.
fn check_targets(count: usize, max: u32, n: usize, v: usize) -> candle_core::Result<()> {
    if count != n || (n > 0 && max as usize >= v) {
        candle_core::bail!("rl-log-prob-entropy: {count} targets (max {max}) for {n} rows of {v}");
    }
    Ok(())
}

impl Kernel for LogProbEntropy {
    const NAME: &'static str = "rl-log-prob-entropy";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let (n, v) = Shape::from(dims[0]).dims2()?;
        let targets = host_targets(&self.targets)?;
        check_targets(targets.len(), targets.iter().copied().max().unwrap_or(0), n, v)?;
        let [z] = inputs(xs, Self::NAME)?;
        let mut out = vec![T::zero(); 2 * n];
        out.par_chunks_mut(2).zip(z.par_chunks(v)).zip(&targets).for_each(|((o, z), &t)| {
            let max = z.iter().fold(T::neg_infinity(), |m, &x| Float::max(m, x));
            // Σ e^(z−m) and Σ e^(z−m)·(z−m), accumulated in f64 (V is large); the exponentials
            // of a block first, in a loop that vectorizes.
            let (mut sum, mut wsum) = (0f64, 0f64);
            let mut e = [T::zero(); 256];
            for block in z.chunks(e.len()) {
                let e = &mut e[..block.len()];
                e.iter_mut().zip(block).for_each(|(e, &x)| *e = (x - max).exp_k());
                for (&e, &x) in e.iter().zip(block) {
                    sum += e.to_f64();
                    wsum += (e * (x - max)).to_f64();
                }
            }
            let log_sum = sum.ln();
            o[0] = cast::<T>((z[t as usize] - max).to_f64() - log_sum);
            o[1] = cast::<T>(log_sum - wsum / sum);
        });
        Ok((out, Shape::from((n, 2))))
    }

    fn grads(
        &self,
        args: &[&Tensor],
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let op = Op(LogProbEntropyBwd { targets: self.targets.clone() });
        Ok(vec![Some(args[0].apply_op3_no_bwd(res, &grad.contiguous()?, &op)?)])
    }
}

/// Backward of [`LogProbEntropy`]: `(z, [lp, H], [g_lp, g_H])` → `(N, V)` with
/// `p = softmax(z)`: `∂z_v = g_lp·(1[v = t] − p_v) − g_H·p_v·(log p_v + H)`.
struct LogProbEntropyBwd {
    targets: Tensor,
}

impl Kernel for LogProbEntropyBwd {
    const NAME: &'static str = "rl-log-prob-entropy-bwd";

    fn run<T: Real>(&self, xs: &[&[T]], dims: &[&[usize]]) -> candle_core::Result<(Vec<T>, Shape)> {
        let (n, v) = Shape::from(dims[0]).dims2()?;
        let targets = host_targets(&self.targets)?;
        let [z, res, g] = inputs(xs, Self::NAME)?;
        let mut out = vec![T::zero(); n * v];
        out.par_chunks_mut(v).zip(z.par_chunks(v)).enumerate().for_each(|(i, (o, z))| {
            let t = targets[i] as usize;
            let (lp, h) = (res[2 * i], res[2 * i + 1]);
            let (g_lp, g_h) = (g[2 * i], g[2 * i + 1]);
            let lse = z[t] - lp;
            if g_h == T::zero() {
                for (o, &x) in o.iter_mut().zip(z) {
                    *o = -g_lp * (x - lse).exp_k();
                }
            } else {
                for (o, &x) in o.iter_mut().zip(z) {
                    let logp = x - lse;
                    let p = logp.exp_k();
                    *o = -g_lp * p - g_h * p * (logp + h);
                }
            }
            o[t] += g_lp;
        });
        Ok((out, Shape::from(dims[0])))
    }
}

/// Per-row log-probability of `targets` and entropy of `softmax(logits)`, without materialising
/// the `(N, V)` log-softmax: `logits: (N, V)` (f32/f64), `targets: (N)` u32 (each `< V`) →
/// `(log p(target), −Σ p log p)`, both `(N)` in the logits dtype. Differentiable in `logits`
/// (the backward pass builds one `(N, V)` gradient).
///
/// # Errors
/// Shape or dtype mismatches, a target `>= V`.
pub fn log_prob_entropy(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let targets = targets.to_dtype(DType::U32)?.flatten_all()?.to_device(logits.device())?;
    if fused_available(logits) {
        let out = logits.contiguous()?.apply_op1(Op(LogProbEntropy { targets }))?;
        return Ok((out.narrow(1, 0, 1)?.squeeze(1)?, out.narrow(1, 1, 1)?.squeeze(1)?));
    }
    log_prob_entropy_composed(logits, &targets)
}

// ----------------------------------------------------------------------------------------------
// Output projection + log-softmax + gather + entropy

/// `(x, w)` → `(N, 2)` = `[log p(target), entropy]` of the logits `x · wᵀ`, precomputed by
/// [`head_log_prob_entropy`] on detached inputs. The op keeps the logits chunk by chunk (the
/// backward pass needs them) outside the autograd graph, so the backward pass builds one
/// chunk-sized logits gradient at a time and never an `(N, V)` one, and the graph holds no
/// `(N, V)` node whose gradient candle would zero-fill and accumulate. The backward pass releases
/// each chunk's logits as soon as it has used them (the head is the first node a backward pass
/// reaches, so the logits do not stay alive beside the gradients of every layer below); a
/// second backward pass through the same graph recomputes them.
struct HeadLogProb {
    /// `(rows)` targets of consecutive row chunks.
    targets: Vec<Tensor>,
    /// The `(rows, V)` logits of each chunk, until a backward pass takes them.
    logits: std::sync::Mutex<Vec<Tensor>>,
    /// `(N, 2)` result.
    out: Tensor,
    /// Where `w`'s gradient accumulates when a [`GradSink`] holds it.
    sink: Option<std::sync::Arc<sink::Slot>>,
}

impl HeadLogProb {
    fn result<S: candle_core::backend::BackendStorage>(
        &self,
        pick: impl Fn(&candle_core::Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let (storage, layout) = self.out.storage_and_layout();
        match pick(&storage) {
            Some(s) => Ok((s.try_clone(layout)?, self.out.shape().clone())),
            None => candle_core::bail!("rl-head-log-prob: result on another device"),
        }
    }
}

impl CustomOp2 for HeadLogProb {
    fn name(&self) -> &'static str {
        "rl-head-log-prob"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result(|s| match s {
            candle_core::Storage::Cpu(s) => Some(s),
            _ => None,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.result(|s| match s {
            candle_core::Storage::Cuda(s) => Some(s),
            _ => None,
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.detach(), w.detach(), grad.contiguous()?);
        let kept = std::mem::take(&mut *self.logits.lock().unwrap_or_else(|e| e.into_inner()));
        let mut kept = kept.into_iter();
        let (mut dx, mut dw, mut start) = (Vec::new(), None::<Tensor>, 0);
        for targets in &self.targets {
            let rows = targets.dim(0)?;
            let xs = x.narrow(0, start, rows)?;
            let logits = match kept.next() {
                Some(logits) => logits,
                None => {
                    linear(&xs, &w, None).map_err(|e| candle_core::Error::Msg(e.to_string()))?
                }
            };
            let res = self.out.narrow(0, start, rows)?;
            let op = Op(LogProbEntropyBwd { targets: targets.clone() });
            let g = logits.apply_op3_no_bwd(&res, &grad.narrow(0, start, rows)?, &op)?;
            drop(logits);
            dx.push(blas::mm(&g, &w)?);
            let part = blas::mm(&g.t()?, &xs)?;
            dw = Some(match dw {
                Some(acc) => (acc + part)?,
                None => part,
            });
            start += rows;
        }
        let dw = match dw {
            Some(dw) => dw,
            None => w.zeros_like()?,
        };
        Ok((Some(Tensor::cat(&dx, 0)?), sunk(&self.sink, dw)?))
    }
}

/// [`log_prob_entropy`] of the logits `x · wᵀ` (an output projection without bias), computed
/// `chunk_rows` rows at a time: `x: (N, H)`, `w: (V, H)`, `targets: (N)` u32 (each `< V`) →
/// `(log p(target), entropy)`, both `(N)`. Differentiable in `x` and `w`.
///
/// Same values and gradients as `log_prob_entropy(&linear(x, w, None)?, targets)` (tests compare
/// them), but where the fused kernels apply no `(N, V)` tensor enters the autograd graph: the
/// logits are kept per chunk for the backward pass, which turns each chunk's logits gradient into
/// the gradients of `x` and `w` before building the next. That saves the `(N, V)` gradient and
/// candle's zero-filled accumulator for it (≈ 1.3 GiB of transient memory for SmolLM2 at
/// 8 × 256 tokens) and the graph nodes of per-chunk reshapes.
///
/// # Errors
/// Shape or dtype mismatches, a target `>= V`.
pub fn head_log_prob_entropy(
    x: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    chunk_rows: usize,
) -> Result<(Tensor, Tensor)> {
    let (n, _) = x.dims2()?;
    let targets = targets.to_dtype(DType::U32)?.flatten_all()?.to_device(x.device())?;
    if !(fused_available(x) && x.dtype() == w.dtype()) || n == 0 {
        return log_prob_entropy(&linear(x, w, None)?, &targets);
    }
    let (xd, wd) = (x.detach(), w.detach());
    // Without a graph to record into (no-grad passes such as old-log-prob recomputation) each
    // chunk's logits are dropped as soon as they are reduced.
    let keep = x.track_op() || w.track_op();
    let chunk_rows = chunk_rows.max(1);
    let (mut logits_kept, mut chunk_targets, mut outs, mut start) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    while start < n {
        let rows = chunk_rows.min(n - start);
        let logits = linear(&xd.narrow(0, start, rows)?, &wd, None)?;
        let t = targets.narrow(0, start, rows)?;
        outs.push(logits.apply_op1_no_bwd(&Op(LogProbEntropy { targets: t.clone() }))?);
        if keep {
            logits_kept.push(logits);
            chunk_targets.push(t);
        }
        start += rows;
    }
    let out = Tensor::cat(&outs, 0)?;
    if !keep {
        return Ok((out.narrow(1, 0, 1)?.squeeze(1)?, out.narrow(1, 1, 1)?.squeeze(1)?));
    }
    let op = HeadLogProb {
        targets: chunk_targets,
        logits: std::sync::Mutex::new(logits_kept),
        out,
        sink: sink::slot(w),
    };
    let res = x.apply_op2(w, op)?;
    Ok((res.narrow(1, 0, 1)?.squeeze(1)?, res.narrow(1, 1, 1)?.squeeze(1)?))
}

/// [`log_prob_entropy`] from primitive candle ops (`targets: (N)` u32).
pub fn log_prob_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, _) = logits.dims2()?;
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let lp = lsm.gather(&targets.reshape((n, 1))?, 1)?.squeeze(1)?;
    let ent = (lsm.exp()? * &lsm)?.sum(D::Minus1)?.neg()?;
    Ok((lp, ent))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp_and_zero_for_masked_scores() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.3 + (88.3 + 87.3) * f64::from(i) / 2e6;
            let x = x as f32;
            let exact = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * exact;
            worst = worst.max((f64::from(exp_f32(x)) - exact).abs() / ulp);
        }
        assert!(worst <= 2.0, "max error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-1e9), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(1e9).is_finite());
    }

    /// Deterministic values in `[-2, 2)` of the given shape (f64).
    fn values(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rl_core::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.next_f64() * 4.0 - 2.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Outputs and input gradients of one run, as f64 CPU tensors.
    type Run = (Vec<Tensor>, Vec<Option<Tensor>>);

    /// Runs `f` on fresh vars of `inputs` (cast to `dtype`, moved to `dev`) with the loss
    /// `Σ out · weights`.
    fn run_with_grads(
        inputs: &[Tensor],
        dev: &Device,
        dtype: DType,
        f: &dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>,
    ) -> Run {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        let mut loss = Tensor::new(0f64, dev).unwrap().to_dtype(dtype).unwrap();
        for (i, o) in out.iter().enumerate() {
            let w =
                values(o.dims(), 100 + i as u64).to_dtype(dtype).unwrap().to_device(dev).unwrap();
            loss = (loss + (o * w).unwrap().sum_all().unwrap()).unwrap();
        }
        let store = loss.backward().unwrap();
        let host = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        (out.iter().map(host).collect(), vars.iter().map(|v| store.get(v).map(host)).collect())
    }

    /// Asserts equal outputs and equal gradients (both present or both absent) within `tol`.
    fn assert_same(a: &Run, b: &Run, tol: f64) {
        for (a, b) in a.0.iter().zip(&b.0) {
            assert!(max_diff(a, b) < tol, "outputs differ by {}", max_diff(a, b));
        }
        for (i, (a, b)) in a.1.iter().zip(&b.1).enumerate() {
            match (a, b) {
                (Some(a), Some(b)) => {
                    assert!(max_diff(a, b) < tol, "gradient {i} differs by {}", max_diff(a, b))
                }
                (None, None) => {}
                _ => panic!("gradient {i} present on one side only"),
            }
        }
    }

    /// Runs `f` (fused) and `g` (composed) in f64 on the CPU and asserts equal outputs and
    /// gradients.
    fn check(
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>,
        g: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>,
        tol: f64,
    ) {
        let cpu = Device::Cpu;
        assert_same(
            &run_with_grads(inputs, &cpu, DType::F64, &f),
            &run_with_grads(inputs, &cpu, DType::F64, &g),
            tol,
        );
    }

    #[test]
    fn rms_norm_matches_composed_values_and_gradients() {
        let inputs = [values(&[3, 5, 16], 1), values(&[16], 2)];
        check(
            &inputs,
            |t| Ok(vec![rms_norm(&t[0], &t[1], 1e-6)?]),
            |t| Ok(vec![rms_norm_composed(&t[0], &t[1], 1e-6)?]),
            1e-12,
        );
    }

    #[test]
    fn fused_residual_and_mlp_projections_match_composed_values_and_gradients() {
        // x: (B, S, in), w: (out, in), r: (B, S, out); gate/up: (B, S, I), w_down: (out, I).
        let inputs = [values(&[2, 3, 6], 40), values(&[5, 6], 41), values(&[2, 3, 5], 42)];
        check(
            &inputs,
            |t| Ok(vec![linear_add(&t[0], &t[1], None, &t[2])?]),
            |t| Ok(vec![(&t[2] + t[0].broadcast_matmul(&t[1].t()?)?)?]),
            1e-12,
        );
        let inputs = [values(&[2, 3, 7], 43), values(&[2, 3, 7], 44), values(&[4, 7], 45)];
        check(
            &inputs,
            |t| Ok(vec![swiglu_linear(&t[0], &t[1], &t[2], None)?]),
            |t| Ok(vec![swiglu_composed(&t[0], &t[1])?.broadcast_matmul(&t[2].t()?)?]),
            1e-12,
        );
        // Bit for bit against the unfused ops in f32 (the model's outputs must not move).
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let d = |a: &Tensor, b: &Tensor| {
            max_diff(&a.to_dtype(DType::F64).unwrap(), &b.to_dtype(DType::F64).unwrap())
        };
        let (x, w, r) = (f(&values(&[4, 6], 46)), f(&values(&[5, 6], 47)), f(&values(&[4, 5], 48)));
        let fused = linear_add(&x, &w, None, &r).unwrap();
        assert_eq!(d(&fused, &(&r + linear(&x, &w, None).unwrap()).unwrap()), 0.0);
        let (a, u) = (f(&values(&[4, 7], 49)), f(&values(&[4, 7], 50)));
        let w = f(&values(&[3, 7], 51));
        let fused = swiglu_linear(&a, &u, &w, None).unwrap();
        let plain = linear(&swiglu(&a, &u).unwrap(), &w, None).unwrap();
        assert_eq!(d(&fused, &plain), 0.0);
        // Mismatched shapes are errors, not panics.
        assert!(linear_add(&x, &w, None, &r.narrow(1, 0, 4).unwrap()).is_err());
        assert!(swiglu_linear(&a, &u.narrow(1, 0, 6).unwrap(), &w, None).is_err());
    }

    #[test]
    fn split_and_merge_heads_match_composed_values_and_gradients() {
        let (b, s, n, g, d) = (2, 5, 6, 2, 8);
        let angles = values(&[b, s, d / 2], 3);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let inputs = [values(&[b, s, n * d], 4)];
        for (groups, rot) in [(g, Some((&cos, &sin))), (n, Some((&cos, &sin))), (g, None)] {
            check(
                &inputs,
                |t| Ok(vec![split_heads(&t[0], n, groups, rot)?]),
                |t| Ok(vec![split_heads_composed(&t[0], n, groups, rot)?]),
                1e-12,
            );
        }
        let inputs = [values(&[b, g, n / g * s, d], 5)];
        check(
            &inputs,
            |t| Ok(vec![merge_heads(&t[0], n)?]),
            |t| Ok(vec![merge_heads_composed(&t[0], n)?]),
            1e-12,
        );
        // merge undoes split
        let x = values(&[b, s, n * d], 6);
        let back = merge_heads(&split_heads(&x, n, g, None).unwrap(), n).unwrap();
        assert_eq!(max_diff(&x, &back), 0.0);
    }

    #[test]
    fn linear_matches_composed_values_and_gradients() {
        let inputs = [values(&[3, 4, 7], 16), values(&[5, 7], 17), values(&[5], 18)];
        check(
            &inputs,
            |t| Ok(vec![linear(&t[0], &t[1], Some(&t[2]))?]),
            |t| {
                let lin = candle_nn::Linear::new(t[1].clone(), Some(t[2].clone()));
                Ok(vec![candle_nn::Module::forward(&lin, &t[0])?])
            },
            1e-12,
        );
    }

    #[test]
    fn masked_softmax_matches_composed_values_and_gradients() {
        // 2 key/value groups x 3 stacked query heads x S = 4 queries, K = 6 keys
        let (b, g, reps, s, k) = (2, 2, 3, 4, 6);
        let mask: Vec<f64> = (0..b * s * k)
            .map(|i| if (i % k) <= (i / k) % s + 2 && i % 7 != 3 { 0.0 } else { -1e9 })
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, s, k), &Device::Cpu).unwrap();
        let inputs = [values(&[b, g, reps * s, k], 5)];
        check(
            &inputs,
            |t| Ok(vec![masked_softmax(&t[0], &mask, 0.35)?]),
            |t| Ok(vec![masked_softmax_composed(&t[0], &mask, 0.35)?]),
            1e-12,
        );
    }

    #[test]
    fn attention_probs_match_composed_values_and_gradients() {
        let (b, g, reps, s, k, d) = (2, 2, 3, 4, 6, 5);
        let mask: Vec<f64> =
            (0..b * s * k).map(|i| if (i % k) <= (i / k) % s + 2 { 0.0 } else { -1e9 }).collect();
        let mask = Tensor::from_vec(mask, (b, 1, s, k), &Device::Cpu).unwrap();
        let inputs = [values(&[b, g, reps * s, d], 30), values(&[b, g, k, d], 31)];
        check(
            &inputs,
            |t| Ok(vec![attention_probs(&t[0], &t[1], &mask, 0.4)?]),
            |t| Ok(vec![masked_softmax_composed(&t[0].matmul(&t[1].t()?)?, &mask, 0.4)?]),
            1e-12,
        );
        let wrong = values(&[b, g, k, d + 1], 32); // head sizes differ
        assert!(attention_probs(&inputs[0], &wrong, &mask, 0.4).is_err());
    }

    #[test]
    fn swiglu_matches_composed_values_and_gradients() {
        let inputs = [values(&[4, 7, 9], 6), values(&[4, 7, 9], 7)];
        check(
            &inputs,
            |t| Ok(vec![swiglu(&t[0], &t[1])?]),
            |t| Ok(vec![swiglu_composed(&t[0], &t[1])?]),
            1e-12,
        );
    }

    #[test]
    fn log_prob_entropy_matches_composed_values_and_gradients() {
        let (n, v) = (6, 11);
        let targets = Tensor::from_vec(vec![0u32, 10, 3, 3, 7, 5], n, &Device::Cpu).unwrap();
        let inputs = [(values(&[n, v], 8) * 3.0).unwrap()];
        check(
            &inputs,
            |t| {
                let (a, b) = log_prob_entropy(&t[0], &targets)?;
                Ok(vec![a, b])
            },
            |t| {
                let (a, b) = log_prob_entropy_composed(&t[0], &targets)?;
                Ok(vec![a, b])
            },
            1e-12,
        );
        // the log-prob alone (entropy unused: its gradient is zero)
        check(
            &inputs,
            |t| Ok(vec![log_prob_entropy(&t[0], &targets)?.0]),
            |t| Ok(vec![log_prob_entropy_composed(&t[0], &targets)?.0]),
            1e-12,
        );
    }

    #[test]
    fn head_log_prob_entropy_matches_linear_then_log_prob_entropy() {
        let (n, h, v) = (7, 5, 13);
        let targets = Tensor::from_vec(vec![0u32, 12, 3, 3, 7, 5, 11], n, &Device::Cpu).unwrap();
        let inputs = [values(&[n, h], 20), values(&[v, h], 21)];
        for chunk in [1, 3, 7, 100] {
            check(
                &inputs,
                |t| {
                    let (a, b) = head_log_prob_entropy(&t[0], &t[1], &targets, chunk)?;
                    Ok(vec![a, b])
                },
                |t| {
                    let logits = (t[0].matmul(&t[1].t()?))?;
                    let (a, b) = log_prob_entropy_composed(&logits, &targets)?;
                    Ok(vec![a, b])
                },
                1e-12,
            );
        }
        let bad = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 13], &Device::Cpu).unwrap(); // 13 >= V
        assert!(head_log_prob_entropy(&inputs[0], &inputs[1], &bad, 3).is_err());
    }

    #[test]
    fn head_backward_twice_recomputes_the_released_logits() {
        // The first backward pass releases the kept logits; a second one through the same graph
        // must recompute them and give the same gradients.
        let (n, h, v) = (7, 5, 13);
        let targets = Tensor::from_vec(vec![0u32, 12, 3, 3, 7, 5, 11], n, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&values(&[n, h], 30)).unwrap();
        let w = Var::from_tensor(&values(&[v, h], 31)).unwrap();
        let (lp, ent) = head_log_prob_entropy(&x, &w, &targets, 3).unwrap();
        let loss = (lp.sum_all().unwrap() + (ent * 0.5).unwrap().sum_all().unwrap()).unwrap();
        let first = loss.backward().unwrap();
        let second = loss.backward().unwrap();
        for var in [&x, &w] {
            let (a, b) = (first.get(var).unwrap(), second.get(var).unwrap());
            assert!(max_diff(a, b) == 0.0, "gradients differ: {}", max_diff(a, b));
            assert!(max_diff(a, &a.zeros_like().unwrap()) > 0.0);
        }
    }

    #[test]
    fn f32_kernels_agree_with_f64() {
        let x = values(&[4, 32], 9);
        let w = values(&[32], 10);
        let y64 = rms_norm(&x, &w, 1e-5).unwrap();
        let y32 =
            rms_norm(&x.to_dtype(DType::F32).unwrap(), &w.to_dtype(DType::F32).unwrap(), 1e-5)
                .unwrap();
        assert!(max_diff(&y64, &y32.to_dtype(DType::F64).unwrap()) < 1e-5);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let x = values(&[2, 3, 4 * 8], 11);
        let cos = values(&[2, 3, 3], 12); // wrong half-size
        assert!(split_heads(&x, 4, 2, Some((&cos, &cos))).is_err());
        assert!(split_heads(&x, 4, 3, None).is_err()); // 4 heads in 3 groups
        let logits = values(&[2, 5], 13);
        let targets = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap(); // 5 >= V
        assert!(log_prob_entropy(&logits, &targets).is_err());
        let scores = values(&[1, 1, 3, 4], 14);
        let mask = values(&[1, 1, 2, 4], 15); // 3 rows not a multiple of 2
        assert!(masked_softmax(&scores, &mask, 1.0).is_err());
    }

    /// Every fused op on the GPU against the CPU kernels (the oracle), values and gradients, in
    /// f64 and f32 (and half types against f32 CPU, loosely). Needs a CUDA GPU: compiled by
    /// `scripts/check_cuda.sh`, run with `cargo test -p rl-policy --features cuda` on a GPU machine.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_kernels_match_cpu_kernels() {
        type Case = (&'static str, Vec<Tensor>, Box<dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>>);
        let gpu = Device::new_cuda(0).expect("this test needs a CUDA GPU");
        let (b, s, n, g, d) = (2, 5, 6, 2, 8);
        let angles = values(&[b, s, d / 2], 3);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let mask: Vec<f64> =
            (0..b * 4 * 6).map(|i| if (i % 6) <= (i / 6) % 4 + 2 { 0.0 } else { -1e9 }).collect();
        let mask = Tensor::from_vec(mask, (b, 1, 4, 6), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(vec![0u32, 300, 3, 3, 7, 511], 6, &Device::Cpu).unwrap();
        let head_targets = targets.clone();
        let cases: Vec<Case> = vec![
            (
                "rms_norm",
                vec![values(&[3, 5, 600], 1), values(&[600], 2)],
                Box::new(|t: &[Tensor]| Ok(vec![rms_norm(&t[0], &t[1], 1e-6)?])),
            ),
            (
                "split_heads",
                vec![values(&[b, s, n * d], 4), cos, sin],
                Box::new(move |t: &[Tensor]| {
                    let rot = Some((&t[1], &t[2]));
                    Ok(vec![split_heads(&t[0], n, g, rot)?, split_heads(&t[0], n, n, None)?])
                }),
            ),
            (
                "merge_heads",
                vec![values(&[b, g, n / g * s, d], 5)],
                Box::new(move |t: &[Tensor]| Ok(vec![merge_heads(&t[0], n)?])),
            ),
            (
                "masked_softmax",
                vec![values(&[b, 2, 3 * 4, 6], 5), mask.clone()],
                Box::new(|t: &[Tensor]| Ok(vec![masked_softmax(&t[0], &t[1].detach(), 0.35)?])),
            ),
            (
                "attention_probs",
                vec![values(&[b, 2, 3 * 4, 8], 9), values(&[b, 2, 6, 8], 10), mask.clone()],
                Box::new(|t: &[Tensor]| {
                    Ok(vec![attention_probs(&t[0], &t[1], &t[2].detach(), 0.3)?])
                }),
            ),
            (
                "head_log_prob_entropy",
                vec![values(&[6, 16], 11), values(&[512, 16], 12)],
                Box::new(move |t: &[Tensor]| {
                    let (lp, h) = head_log_prob_entropy(&t[0], &t[1], &head_targets, 4)?;
                    Ok(vec![lp, h])
                }),
            ),
            (
                "swiglu",
                vec![values(&[4, 7, 300], 6), values(&[4, 7, 300], 7)],
                Box::new(|t: &[Tensor]| Ok(vec![swiglu(&t[0], &t[1])?])),
            ),
            (
                "log_prob_entropy",
                vec![(values(&[6, 512], 8) * 3.0).unwrap()],
                Box::new(move |t: &[Tensor]| {
                    let (lp, h) = log_prob_entropy(&t[0], &targets)?;
                    Ok(vec![lp, h])
                }),
            ),
        ];
        let cpu = Device::Cpu;
        for (name, inputs, f) in &cases {
            for (dtype, oracle, tol) in [
                (DType::F64, DType::F64, 1e-10),
                (DType::F32, DType::F32, 1e-4),
                (DType::F16, DType::F32, 2e-2),
                (DType::BF16, DType::F32, 1e-1),
            ] {
                eprintln!("{name} {dtype:?}");
                let want = run_with_grads(inputs, &cpu, oracle, f.as_ref());
                let got = run_with_grads(inputs, &gpu, dtype, f.as_ref());
                assert_same(&want, &got, tol);
            }
        }
    }
}
