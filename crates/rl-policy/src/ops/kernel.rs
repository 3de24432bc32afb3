//! The fused-kernel machinery: the [`Kernel`] trait, its candle custom-op wrapper [`Op`], the
//! element types and the vectorizing `exp`.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType,
};

use super::blas;

/// The device backends a [`Kernel`] must also implement: CUDA with the `cuda` feature.
#[cfg(feature = "cuda")]
use super::cuda::{self, CudaKernel as Backends};
#[cfg(not(feature = "cuda"))]
pub(super) trait Backends {}
#[cfg(not(feature = "cuda"))]
impl<K: Kernel> Backends for K {}

/// Rows handed to one rayon task at least (rows are short: one hidden vector or one head).
pub(super) const MIN_ROWS: usize = 8;
/// Elements per rayon task of the elementwise kernels.
pub(super) const ELEMS: usize = 4096;

/// Element types of the fused kernels.
pub(super) trait Real: WithDType + num_traits::Float + Send + Sync + blas::Elem {
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

/// Independent partial results a row reduction keeps, so its loop vectorizes (a sequential
/// float fold does not: each step waits for the previous one, and LLVM may not reorder it).
const LANES: usize = 16;

/// `Σ_i f(i)` over `0..n` in [`LANES`] partial sums of `A` (the order differs from a sequential
/// sum by rounding only).
#[inline(always)]
pub(super) fn sum_lanes<A: num_traits::Float>(n: usize, f: impl Fn(usize) -> A) -> A {
    let mut acc = [A::zero(); LANES];
    let full = n - n % LANES;
    for base in (0..full).step_by(LANES) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = *a + f(base + j);
        }
    }
    let tail = (full..n).fold(A::zero(), |s, i| s + f(i));
    acc.iter().fold(tail, |s, &a| s + a)
}

/// The largest of `x` (`-∞` when empty; NaNs are skipped, as `f32::max` skips them), in
/// [`LANES`] partial maxima.
#[inline(always)]
pub(super) fn max_lanes<T: Real>(x: &[T]) -> T {
    // A select rather than `Float::max`, whose NaN rule keeps the loop from vectorizing.
    let max = |m: T, v: T| if v > m { v } else { m };
    let mut acc = [T::neg_infinity(); LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = max(*a, v);
        }
    }
    let tail = chunks.remainder().iter().fold(T::neg_infinity(), |m, &v| max(m, v));
    acc.iter().fold(tail, |m, &v| max(m, v))
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
pub(super) fn slice<'a, T: WithDType>(
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
pub(super) trait Kernel {
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
pub(super) struct Op<K>(pub(super) K);

pub(super) fn run_typed<T: Real, K: Kernel>(
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

pub(super) fn run_kernel<K: Kernel>(
    k: &K,
    inputs: &[(&CpuStorage, &Layout)],
) -> candle_core::Result<(CpuStorage, Shape)> {
    match inputs[0].0 {
        CpuStorage::F32(_) => run_typed::<f32, K>(k, inputs),
        CpuStorage::F64(_) => run_typed::<f64, K>(k, inputs),
        _ => candle_core::bail!("{}: f32 or f64 only", K::NAME),
    }
}

/// A [`Kernel`] run on CPU tensors without a graph node, for kernels that have no other backend
/// (`Op` needs one with the `cuda` feature).
pub(super) fn cpu_kernel<K: Kernel>(k: &K, ts: &[&Tensor]) -> candle_core::Result<Tensor> {
    let ts = ts.iter().map(|t| t.contiguous()).collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut inputs = Vec::with_capacity(ts.len());
    for (s, l) in &guards {
        let candle_core::Storage::Cpu(s) = &**s else {
            candle_core::bail!("{}: CPU tensors only", K::NAME);
        };
        inputs.push((s, *l));
    }
    let (out, shape) = run_kernel(k, &inputs)?;
    let dev = &candle_core::Device::Cpu;
    match out {
        CpuStorage::F32(v) => Tensor::from_vec(v, shape, dev),
        CpuStorage::F64(v) => Tensor::from_vec(v, shape, dev),
        _ => candle_core::bail!("{}: f32 or f64 only", K::NAME),
    }
}

/// The `N` inputs of a kernel.
pub(super) fn inputs<X: Copy, const N: usize>(xs: &[X], op: &str) -> candle_core::Result<[X; N]> {
    match <[X; N]>::try_from(xs) {
        Ok(a) => Ok(a),
        Err(_) => candle_core::bail!("{op}: {} inputs, expected {N}", xs.len()),
    }
}

/// The `i`-th gradient of [`Kernel::grads`].
pub(super) fn nth(grads: &mut [Option<Tensor>], i: usize) -> Option<Tensor> {
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

pub(super) fn cast<T: Real>(v: f64) -> T {
    T::from_f64(v)
}
