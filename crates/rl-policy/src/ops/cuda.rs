//! CUDA versions of the fused kernels (feature `cuda`).
//!
//! The kernels live in `kernels/ops.cu` and are compiled to PTX by `build.rs` with nvcc; each one
//! computes the formula of the CPU kernel of the same name in `ops/*.rs`, which is its test oracle
//! (`tests::cuda_kernels_match_cpu_kernels`, run only where a GPU is present). Element types on
//! CUDA: f32, f64, bf16 and f16 (half types computed in f32). [`CudaKernel`] is the CUDA half of a
//! [`Kernel`]; [`run`] is what `Op<K>::cuda_fwd` calls.
//!
//! This module's `unsafe` code allocates uninitialised device buffers and launches the kernels
//! (FFI), each with its safety argument. (The crate's other `unsafe` code is the MKL FFI of
//! [`super::blas`] and the allocator setting of the runtime module.)
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, Storage, Tensor, WithDType};

use super::{
    Heads, Kernel, LogProbEntropy, LogProbEntropyBwd, MaskedSoftmax, RmsNorm, RmsNormBwd,
    SoftmaxBwd, Swiglu, SwigluBwd, check_targets, inputs,
};

/// The PTX of `kernels/ops.cu`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rl_ops.ptx"));
/// Name of the PTX module in candle's per-device module cache.
const MODULE: &str = "rl_policy_ops";
/// Threads per block (the row kernels' reductions assume a multiple of 32).
const BLOCK: u32 = 256;

/// Element types with CUDA kernels; `SUFFIX` names the kernel instance in `ops.cu`.
pub(super) trait Elem: DeviceRepr + CudaDType + WithDType {
    const SUFFIX: &'static str;
}
impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Elem for f64 {
    const SUFFIX: &'static str = "f64";
}
impl Elem for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}
impl Elem for half::f16 {
    const SUFFIX: &'static str = "f16";
}

/// The CUDA half of a [`Kernel`]: output and shape from contiguous device inputs of one dtype.
pub(super) trait CudaKernel: Kernel {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)>;
}

/// Runs kernel `k` on CUDA storages (dtype dispatch; contiguous inputs only).
pub(super) fn run<K: CudaKernel>(
    k: &K,
    inputs: &[(&CudaStorage, &Layout)],
) -> candle_core::Result<(CudaStorage, Shape)> {
    match inputs[0].0.dtype() {
        DType::F32 => run_typed::<f32, K>(k, inputs),
        DType::F64 => run_typed::<f64, K>(k, inputs),
        DType::BF16 => run_typed::<half::bf16, K>(k, inputs),
        DType::F16 => run_typed::<half::f16, K>(k, inputs),
        d => candle_core::bail!("{}: no CUDA kernel for {d:?}", K::NAME),
    }
}

fn run_typed<T: Elem, K: CudaKernel>(
    k: &K,
    inputs: &[(&CudaStorage, &Layout)],
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = inputs[0].0.device();
    let views = inputs
        .iter()
        .map(|(s, l)| match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
            None => candle_core::bail!("{}: input must be contiguous", K::NAME),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let refs: Vec<&CudaView<'_, T>> = views.iter().collect();
    let dims: Vec<&[usize]> = inputs.iter().map(|(_, l)| l.dims()).collect();
    let (out, shape) = k.cuda::<T>(&refs, &dims, dev)?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
}

/// An uninitialised device buffer of `len` elements.
fn alloc<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> candle_core::Result<CudaSlice<T>> {
    // SAFETY: every caller launches a kernel that writes all `len` elements before the buffer is
    // read.
    unsafe { dev.alloc::<T>(len) }
}

/// Blocks of [`BLOCK`] threads covering `n` elements.
fn blocks(n: usize) -> usize {
    n.div_ceil(BLOCK as usize)
}

/// `v` as a kernel `int` argument.
fn int(v: usize, op: &str) -> candle_core::Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{op}: size {v} exceeds i32")))
}

/// Launches `ops.cu` kernel `$name` (instance for element type `$t`) on a 1-D grid of `$grid`
/// blocks of `$block` threads with the argument references `$arg`, in the order of the kernel's
/// signature. An empty grid launches nothing.
macro_rules! launch {
    ($dev:expr, $t:ty, $name:literal, $grid:expr, $block:expr, [$($arg:expr),* $(,)?]) => {{
        let grid = u32::try_from($grid)
            .map_err(|_| candle_core::Error::Msg(format!("{}: grid too large", $name)))?;
        if grid > 0 {
            let name = format!("{}_{}", $name, <$t as Elem>::SUFFIX);
            let func = $dev.get_or_load_custom_func(&name, MODULE, PTX)?;
            let mut builder = func.builder();
            $( builder.arg($arg); )*
            let cfg = LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: ($block, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the kernel's signature in kernels/ops.cu, and the
            // buffers hold the element counts the kernel indexes (checked by the callers).
            unsafe { builder.launch(cfg) }.w()?;
        }
    }};
}

impl CudaKernel for RmsNorm {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        let [x, w] = inputs(xs, Self::NAME)?;
        let h = w.len().max(1);
        let y = alloc::<T>(dev, x.len())?;
        let (hi, eps) = (int(h, Self::NAME)?, self.eps);
        launch!(dev, T, "rl_rms_norm", x.len() / h, BLOCK, [x, w, &y, &hi, &eps]);
        Ok((y, Shape::from(dims[0])))
    }
}

impl CudaKernel for RmsNormBwd {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        _dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        let [x, w, g] = inputs(xs, Self::NAME)?;
        let h = w.len().max(1);
        let n = x.len() / h;
        let out = alloc::<T>(dev, x.len() + h)?;
        let scale = alloc::<f64>(dev, n.max(1))?;
        let (ni, hi, eps) = (int(n, Self::NAME)?, int(h, Self::NAME)?, self.eps);
        launch!(dev, T, "rl_rms_norm_bwd_rows", n, BLOCK, [x, w, g, &out, &scale, &hi, &eps]);
        launch!(dev, T, "rl_rms_norm_bwd_weight", blocks(h), BLOCK, [x, g, &scale, &out, &ni, &hi]);
        Ok((out, Shape::from((n + 1, h))))
    }
}

impl CudaKernel for Heads {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        let (b, d, out) = self.out_shape(dims[0])?;
        let [x, cos, sin] = inputs(xs, Self::NAME)?;
        self.check_rotary(x.len(), cos.len(), sin.len())?;
        let s = x.len() / (b * self.heads * d).max(1);
        let y = alloc::<T>(dev, x.len())?;
        let name = Self::NAME;
        let (bi, si, ni, di) =
            (int(b, name)?, int(s, name)?, int(self.heads, name)?, int(d, name)?);
        let (rotate, inverse) = (i32::from(self.rotate), i32::from(self.inverse));
        launch!(
            dev,
            T,
            "rl_heads",
            blocks(x.len()),
            BLOCK,
            [x, cos, sin, &y, &bi, &si, &ni, &di, &rotate, &inverse]
        );
        Ok((y, out))
    }
}

impl CudaKernel for MaskedSoftmax {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        let (b, g, r, s, k) = Self::dims(dims)?;
        let [x, m] = inputs(xs, Self::NAME)?;
        let y = alloc::<T>(dev, x.len())?;
        let name = Self::NAME;
        let (gi, ri, si, ki) = (int(g, name)?, int(r, name)?, int(s, name)?, int(k, name)?);
        let scale = self.scale;
        launch!(
            dev,
            T,
            "rl_masked_softmax",
            b * g * r,
            BLOCK,
            [x, m, &y, &gi, &ri, &si, &ki, &scale]
        );
        Ok((y, Shape::from(dims[0])))
    }
}

impl CudaKernel for SoftmaxBwd {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        let k = dims[0].last().copied().unwrap_or(1).max(1);
        let [y, g] = inputs(xs, Self::NAME)?;
        let out = alloc::<T>(dev, y.len())?;
        let (ki, scale) = (int(k, Self::NAME)?, self.scale);
        launch!(dev, T, "rl_softmax_bwd", y.len() / k, BLOCK, [y, g, &out, &ki, &scale]);
        Ok((out, Shape::from(dims[0])))
    }
}

impl CudaKernel for Swiglu {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        let [a, u] = inputs(xs, Self::NAME)?;
        Self::check_sizes(a.len(), u.len())?;
        let n = a.len();
        let y = alloc::<T>(dev, n)?;
        launch!(dev, T, "rl_swiglu", blocks(n), BLOCK, [a, u, &y, &n]);
        Ok((y, Shape::from(dims[0])))
    }
}

impl CudaKernel for SwigluBwd {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        _dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        if self.with_act {
            candle_core::bail!("{}: the activation output is CPU only", Self::NAME);
        }
        let [a, u, g] = inputs(xs, Self::NAME)?;
        let n = a.len();
        let out = alloc::<T>(dev, 2 * n)?;
        launch!(dev, T, "rl_swiglu_bwd", blocks(n), BLOCK, [a, u, g, &out, &n]);
        Ok((out, Shape::from(2 * n)))
    }
}

/// The `(N)` u32 targets of a log-prob op as a device view, after checking them against the
/// `(N, V)` logits.
fn with_targets<R>(
    targets: &Tensor,
    n: usize,
    v: usize,
    f: impl FnOnce(&CudaView<'_, u32>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let max = if targets.elem_count() == 0 { 0 } else { targets.max(0)?.to_scalar::<u32>()? };
    check_targets(targets.elem_count(), max, n, v)?;
    let (storage, layout) = targets.storage_and_layout();
    let Storage::Cuda(storage) = &*storage else {
        candle_core::bail!("rl-log-prob-entropy: targets must be on the logits' CUDA device")
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("rl-log-prob-entropy: targets must be contiguous")
    };
    f(&storage.as_cuda_slice::<u32>()?.slice(a..b))
}

impl CudaKernel for LogProbEntropy {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        let (n, v) = Shape::from(dims[0]).dims2()?;
        let [z] = inputs(xs, Self::NAME)?;
        let out = alloc::<T>(dev, 2 * n)?;
        let vi = int(v, Self::NAME)?;
        with_targets(&self.targets, n, v, |t| {
            launch!(dev, T, "rl_log_prob_entropy", n, BLOCK, [z, t, &out, &vi]);
            Ok(())
        })?;
        Ok((out, Shape::from((n, 2))))
    }
}

impl CudaKernel for LogProbEntropyBwd {
    fn cuda<T: Elem>(
        &self,
        xs: &[&CudaView<'_, T>],
        dims: &[&[usize]],
        dev: &CudaDevice,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        let (n, v) = Shape::from(dims[0]).dims2()?;
        let [z, res, g] = inputs(xs, Self::NAME)?;
        let out = alloc::<T>(dev, n * v)?;
        let vi = int(v, Self::NAME)?;
        with_targets(&self.targets, n, v, |t| {
            launch!(dev, T, "rl_log_prob_entropy_bwd", n, BLOCK, [z, t, res, g, &out, &vi]);
            Ok(())
        })?;
        Ok((out, Shape::from(dims[0])))
    }
}
