//! CPU matrix products of the fused ops: the `gemm` crate (candle's own CPU backend, the default)
//! or Intel MKL loaded at run time.
//!
//! Every matrix product of the differentiable decoder path on the CPU (the linear layers forward
//! and backward, the attention products, the output projection of
//! [`head_log_prob_entropy`](super::head_log_prob_entropy)) goes through this module. Unlike
//! candle's `matmul` it writes into an uninitialised output (no zero-filling pass) and runs
//! batched products one batch item per thread. Products of at most 32 rows against a transposed
//! row-major weight (decoding: one token per sequence) skip gemm's packing copy of the weight and
//! run in a streaming dot-product kernel (AVX-512 tiles with prefetch, portable fallback).
//!
//! With [`use_mkl`] (or `RLZ_BLAS=/path/to/libmkl_rt.so` and [`use_blas_from_env`], or
//! [`crate::runtime::init`]) the products run in MKL's `cblas_sgemm` / `cblas_dgemm` instead, the
//! same library PyTorch's CPU build uses. MKL is opened with `dlopen`, so building rl-zero never
//! needs it; it runs in MKL's sequential threading layer and rl-zero splits each product over its
//! own rayon threads (why: `docs/benchmarks.md`). `scripts/setup_mkl.sh` installs MKL from its
//! PyPI wheel. Results differ from the `gemm` crate's by float rounding only.
//!
//! Products with bf16 operands (mixed precision, [`super::precision`]) take the path
//! [`bf16_path`] names: MKL's bf16 GEMM on AMX, rl-zero's AVX-512 BF16 kernels, MKL without AMX,
//! or the operands widened to f32.

#![allow(unsafe_code)]

use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Tensor, WithDType};
use rayon::prelude::*;

use crate::{PolicyError, Result};

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;

/// `cblas_?gemm(layout, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`, LP64.
type Cblas<T> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    T,
    *const T,
    c_int,
    *const T,
    c_int,
    T,
    *mut T,
    c_int,
);

/// `cblas_gemm_bf16bf16f32(layout, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c,
/// ldc)`, LP64: bf16 (`MKL_BF16`, the raw bits) operands, f32 accumulation and output.
type CblasBf16 = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const u16,
    c_int,
    *const u16,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;
/// `MKL_Set_Threading_Layer` / `MKL_Set_Interface_Layer` arguments.
const MKL_THREADING_SEQUENTIAL: c_int = 1;
const MKL_INTERFACE_LP64: c_int = 0;

/// An opened MKL runtime library.
pub(crate) struct Mkl {
    path: PathBuf,
    sgemm: Cblas<f32>,
    dgemm: Cblas<f64>,
    /// `cblas_gemm_bf16bf16f32` (MKL 2020 and later; AMX tiles on CPUs that have them).
    gemm_bf16: Option<CblasBf16>,
    /// Keeps the symbols valid for the life of the process.
    _lib: libloading::Library,
}

/// The process-wide CPU matrix-product backend (the `gemm` crate until [`use_mkl`] succeeds).
static MKL: OnceLock<Mkl> = OnceLock::new();

/// Makes every CPU matrix product of [`crate::ops`] use Intel MKL's runtime library
/// `libmkl_rt.so` at `path` (sequential threading layer, LP64 interface). Process-wide and
/// permanent; calling it again with the same library is a no-op.
///
/// # Errors
/// [`PolicyError::Blas`] when the library cannot be opened, lacks `cblas_sgemm`,
/// `cblas_dgemm` or `MKL_Set_Threading_Layer`, or another library is already in use.
pub fn use_mkl(path: &Path) -> Result<()> {
    let err = |reason: String| PolicyError::Blas { path: path.to_path_buf(), reason };
    if let Some(m) = MKL.get() {
        return if m.path == path {
            Ok(())
        } else {
            Err(err(format!("{} is already in use", m.path.display())))
        };
    }
    // SAFETY: opening a shared library runs its initialisers; libmkl_rt's only set up MKL's
    // dispatch tables. The symbols are looked up with the C signatures MKL documents and are
    // kept valid by storing the library next to them for the life of the process.
    let mkl = unsafe {
        let lib = libloading::Library::new(path).map_err(|e| err(e.to_string()))?;
        let set_threading = *lib
            .get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Threading_Layer\0")
            .map_err(|e| err(e.to_string()))?;
        let set_interface = *lib
            .get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Interface_Layer\0")
            .map_err(|e| err(e.to_string()))?;
        let sgemm = *lib.get::<Cblas<f32>>(b"cblas_sgemm\0").map_err(|e| err(e.to_string()))?;
        let dgemm = *lib.get::<Cblas<f64>>(b"cblas_dgemm\0").map_err(|e| err(e.to_string()))?;
        let gemm_bf16 = lib.get::<CblasBf16>(b"cblas_gemm_bf16bf16f32\0").ok().map(|f| *f);
        if set_interface(MKL_INTERFACE_LP64) < 0 || set_threading(MKL_THREADING_SEQUENTIAL) < 0 {
            return Err(err("MKL refused the LP64 interface or the sequential layer".into()));
        }
        Mkl { path: path.to_path_buf(), sgemm, dgemm, gemm_bf16, _lib: lib }
    };
    match MKL.set(mkl) {
        Ok(()) => Ok(()),
        // Another thread won the race: fine if it opened the same library.
        Err(_) => use_mkl(path),
    }
}

/// Applies the environment variable `RLZ_BLAS`: unset, empty or `gemm` keeps the `gemm` crate;
/// anything else is the path of `libmkl_rt.so` for [`use_mkl`]. Returns the backend in use,
/// as [`cpu_backend`].
///
/// # Errors
/// As [`use_mkl`].
pub fn use_blas_from_env() -> Result<String> {
    match std::env::var("RLZ_BLAS") {
        Ok(v) if !v.is_empty() && v != "gemm" => use_mkl(Path::new(&v))?,
        _ => {}
    }
    Ok(cpu_backend())
}

/// The CPU matrix-product backend in use: `"gemm"` or `"mkl:<path>"`.
///
/// ```
/// // Nothing in this process called `use_mkl`.
/// assert_eq!(rl_policy::ops::blas::cpu_backend(), "gemm");
/// ```
pub fn cpu_backend() -> String {
    match MKL.get() {
        Some(m) => format!("mkl:{}", m.path.display()),
        None => "gemm".into(),
    }
}

/// Element types of the products (f32, f64).
pub(crate) trait Elem: WithDType + Copy + Send + Sync + 'static {
    /// MKL's gemm for this type.
    fn cblas(mkl: &Mkl) -> Cblas<Self>;

    /// `true` when [`Elem::dots`] has a kernel for this type.
    const DOTS: bool = false;

    /// The dot products `p` describes (a no-op unless [`Elem::DOTS`]).
    ///
    /// # Safety
    /// As [`Dots`].
    unsafe fn dots(_p: Dots<Self>) {}
}

/// `c[i·ldc + j] = x_i · w_j` (dot products of length `k`) for the `m` rows `x_i` at
/// `x + i·x_rs` and the `js` rows `w_j` at `w + j·w_rs`, all unit-stride.
///
/// Safety contract of the kernels taking it: the pointers address the rows described and `c`
/// `m` rows of `ldc >= js` writable elements that nothing else accesses meanwhile.
#[derive(Clone, Copy)]
pub(crate) struct Dots<T> {
    m: usize,
    js: usize,
    k: usize,
    x: *const T,
    x_rs: usize,
    w: *const T,
    w_rs: usize,
    c: *mut T,
    ldc: usize,
}

impl Elem for f32 {
    const DOTS: bool = true;

    fn cblas(mkl: &Mkl) -> Cblas<f32> {
        mkl.sgemm
    }

    unsafe fn dots(p: Dots<f32>) {
        // SAFETY: forwarded from the caller; `f32_dots` picks a variant the CPU runs.
        unsafe { f32_dots().1(p) }
    }
}

/// An f32 decode kernel ([`Dots`]).
type DotsF32 = unsafe fn(Dots<f32>);

/// The f32 decode kernel in use and its name, fixed on first use ([`use_decode_kernel`]).
static DECODE: OnceLock<(&'static str, DotsF32)> = OnceLock::new();

/// The f32 decode kernels this CPU runs, preferred first: AVX-512F where present, AVX2 + FMA
/// where present, and the portable code everywhere.
fn f32_kernels() -> Vec<(&'static str, DotsF32)> {
    let mut kernels: Vec<(&'static str, DotsF32)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            kernels.push(("avx512", dots_avx512));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            kernels.push(("avx2", dots_avx2));
        }
    }
    kernels.push(("portable", dots_f32));
    kernels
}

/// The f32 decode kernel in use and its name (the preferred one unless
/// [`use_decode_kernel`] chose another first).
fn f32_dots() -> (&'static str, DotsF32) {
    *DECODE.get_or_init(|| f32_kernels()[0])
}

/// The kernel of the few-row f32 products of decoding on this CPU (one token per sequence:
/// each weight row streamed once, no packing): `"avx512"`, `"avx2"` (x86-64 without AVX-512,
/// e.g. AMD Zen 1-3) or `"portable"`, with or without MKL ([`use_mkl`] runs the other f32
/// products). Reported by [`crate::runtime::init`] so a run's log says which path ran.
///
/// ```
/// let k = rl_policy::ops::blas::decode_kernel();
/// assert!(["avx512", "avx2", "portable"].contains(&k));
/// ```
pub fn decode_kernel() -> &'static str {
    f32_dots().0
}

/// Chooses the f32 decode kernel for the rest of the process by name (`"auto"` is the
/// preferred one for this CPU), for A/B measurements and to rule a kernel out when debugging.
/// Returns the kernel's name. Results agree across kernels to f32 rounding (summation order).
///
/// ```
/// use rl_policy::ops::blas::{decode_kernel, use_decode_kernel};
///
/// assert_eq!(use_decode_kernel("portable")?, "portable");
/// assert_eq!(decode_kernel(), "portable");
/// // The choice holds for the process: naming it again is fine, an unknown name is not.
/// assert_eq!(use_decode_kernel("portable")?, "portable");
/// assert!(use_decode_kernel("sse9").is_err());
/// # Ok::<(), rl_policy::PolicyError>(())
/// ```
///
/// # Errors
/// [`PolicyError::Config`] (field `decode_kernel`) for a name that is not a kernel this CPU
/// runs (the message lists those it does), or when another kernel already ran in this process.
pub fn use_decode_kernel(name: &str) -> Result<&'static str> {
    let kernels = f32_kernels();
    let pick = if name == "auto" {
        Some(kernels[0])
    } else {
        kernels.iter().copied().find(|(n, _)| *n == name)
    };
    let Some(pick) = pick else {
        let names: Vec<&str> = kernels.iter().map(|(n, _)| *n).collect();
        return Err(PolicyError::config(
            "decode_kernel",
            format!("`{name}` is not a decode kernel this CPU runs (auto, {})", names.join(", ")),
        ));
    };
    let in_use = *DECODE.get_or_init(|| pick);
    if in_use.0 == pick.0 {
        Ok(pick.0)
    } else {
        Err(PolicyError::config(
            "decode_kernel",
            format!(
                "`{}` is already in use in this process; choose before the first product",
                in_use.0
            ),
        ))
    }
}

/// Applies the environment variable `RLZ_DECODE_KERNEL` ([`use_decode_kernel`]; unset or empty
/// leaves the choice to the CPU) and returns the decode kernel in use, as [`decode_kernel`].
///
/// # Errors
/// As [`use_decode_kernel`].
pub fn use_decode_kernel_from_env() -> Result<&'static str> {
    match std::env::var("RLZ_DECODE_KERNEL") {
        Ok(v) if !v.is_empty() => use_decode_kernel(&v).map(|_| decode_kernel()),
        _ => Ok(decode_kernel()),
    }
}

impl Elem for f64 {
    fn cblas(mkl: &Mkl) -> Cblas<f64> {
        mkl.dgemm
    }
}

/// Weight rows per tile of the portable and AVX-512 decode kernels: each loaded chunk of an `x`
/// row feeds this many FMA chains.
const TILE_W: usize = 4;
/// `x` rows per tile of the portable and AVX-512 decode kernels: each loaded chunk of a weight
/// row feeds this many.
const TILE_X: usize = 4;
/// Weight rows and `x` rows per tile of the AVX2 kernel: AVX2 has 16 vector registers (AVX-512
/// has 32). `3 × 4` accumulators plus the 3 weight chunks and one `x` chunk use all 16: each
/// chunk of 8 costs 7 loads for 12 FMAs, where the `4 × 2` tile first used here (8 accumulators,
/// 5 operands) cost 6 loads for 8 FMAs, and `4 × 4` (21 registers) would spill on every chunk.
#[cfg(target_arch = "x86_64")]
const TILE_W_AVX2: usize = 3;
#[cfg(target_arch = "x86_64")]
const TILE_X_AVX2: usize = 4;

/// Runs `tile::<$tw or 1, $tx or 1>(p, i, j, (t, nt))` over the `m × js` outputs of `p`,
/// weight-row groups outermost (a group stays in L1 while every row of `x` passes over it);
/// `t` is the tile's place among the `nt` tiles of its group (for [`prefetch_rows`]). The weight
/// and `x` rows per tile, `$tw` and `$tx`, are [`TILE_W`] and [`TILE_X`] unless given.
macro_rules! tiles {
    ($p:expr, $tile:ident) => {
        tiles!($p, $tile, TILE_W, TILE_X)
    };
    ($p:expr, $tile:ident, $tw:expr, $tx:expr) => {{
        let Dots { m, js, .. } = $p;
        let nt = m / $tx + m % $tx;
        let mut j = 0;
        while j < js {
            let full = j + $tw <= js;
            let (mut i, mut t) = (0, 0);
            while i < m {
                let rows = i + $tx <= m;
                match (full, rows) {
                    (true, true) => $tile::<{ $tw }, { $tx }>($p, i, j, (t, nt)),
                    (true, false) => $tile::<{ $tw }, 1>($p, i, j, (t, nt)),
                    (false, true) => $tile::<1, { $tx }>($p, i, j, (t, nt)),
                    (false, false) => $tile::<1, 1>($p, i, j, (t, nt)),
                }
                i += if rows { $tx } else { 1 };
                t += 1;
            }
            j += if full { $tw } else { 1 };
        }
    }};
}

/// Weight-row groups between a group and the one its tiles prefetch ([`prefetch_rows`]).
#[cfg(target_arch = "x86_64")]
const PREFETCH_GROUPS: usize = 2;

/// The rows `lo..hi` (of `J`) of the weight-row group [`PREFETCH_GROUPS`] ahead that tile `t` of
/// the `nt` tiles of a group prefetches: the rows are dealt out over the tiles (row `q` to tile
/// `q·nt / J`), so the prefetches spread over the whole group's work instead of crowding into
/// its first tile; all three x86-64 decode kernels use it (AVX-512, AVX2, and
/// [`avx512_bf16::dots`]). On the AMD Zen 4 host of 2026-12-05, a C transcription of the
/// AVX-512 tile streamed a `49152 × 576` weight (SmolLM2's output projection, 16 rows of `x`) at
/// 82 GFLOP/s this way against 61 with the next group prefetched into L1 by the first tile (both
/// on huge pages; 56-58 without any prefetch; `docs/runs/decode_prefetch_zen4_2026-12-05.txt`);
/// sampling timings: `docs/benchmarks.md`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_rows<const J: usize>((t, nt): (usize, usize)) -> (usize, usize) {
    // Row `q` goes to tile `q·nt / J`, so tile `t` takes the `q` with `t·J ≤ q·nt < (t+1)·J`.
    ((t * J).div_ceil(nt), ((t + 1) * J).div_ceil(nt).min(J))
}

/// The `R × J` dot products of rows `i..i + R` of `x` with rows `j..j + J` of `w`, in portable
/// code: 16-wide partial sums, so the loop vectorizes without reassociation.
///
/// # Safety
/// As [`Dots`], with the tile inside its `m × js` outputs.
#[inline(always)]
unsafe fn tile_f32<const J: usize, const R: usize>(
    p: Dots<f32>,
    i: usize,
    j: usize,
    _: (usize, usize),
) {
    let Dots { k, x, x_rs, w, w_rs, c, ldc, .. } = p;
    // SAFETY: the caller guarantees rows `i..i + R` of `x` and `j..j + J` of `w`.
    let xs: [&[f32]; R] =
        std::array::from_fn(|r| unsafe { std::slice::from_raw_parts(x.add((i + r) * x_rs), k) });
    let ws: [&[f32]; J] =
        std::array::from_fn(|q| unsafe { std::slice::from_raw_parts(w.add((j + q) * w_rs), k) });
    let mut acc = [[[0f32; 16]; J]; R];
    let body = k / 16 * 16;
    for s in (0..body).step_by(16) {
        let wc: [&[f32; 16]; J] =
            std::array::from_fn(|q| ws[q][s..s + 16].try_into().expect("16 elements"));
        for (acc, x) in acc.iter_mut().zip(&xs) {
            let xc: &[f32; 16] = x[s..s + 16].try_into().expect("16 elements");
            for (acc, wc) in acc.iter_mut().zip(&wc) {
                for l in 0..16 {
                    acc[l] += xc[l] * wc[l];
                }
            }
        }
    }
    for (r, (acc, x)) in acc.iter().zip(&xs).enumerate() {
        for (q, (acc, w)) in acc.iter().zip(&ws).enumerate() {
            let tail: f32 = x[body..].iter().zip(&w[body..]).map(|(a, b)| a * b).sum();
            // SAFETY: output `(i + r, j + q)` is inside the caller's tile.
            unsafe { *c.add((i + r) * ldc + j + q) = acc.iter().sum::<f32>() + tail };
        }
    }
}

/// [`Dots`] in portable code.
///
/// # Safety
/// As [`Dots`].
unsafe fn dots_f32(p: Dots<f32>) {
    // SAFETY: every tile lies inside the outputs of `p`, which the caller guarantees.
    unsafe { tiles!(p, tile_f32) }
}

/// The `R × J` dot products of rows `i..i + R` of `x` with rows `j..j + J` of `w` with AVX-512
/// intrinsics: each 16-wide chunk of `x` is loaded once for `J` FMA chains and each chunk of `w`
/// once for `R`, so the `R·J` chains run on `R + J` loads; the remainder of `k` is a masked load.
/// Each tile also prefetches its share of a weight-row group ahead into L2 ([`prefetch_rows`]):
/// the weights stream from memory once each, and the hardware prefetcher stops at every 4 KiB
/// page, which left the kernel waiting on memory at a third of the bandwidth a plain read
/// reaches. Inlined into [`dots_avx512`], which enables AVX-512F.
///
/// # Safety
/// As [`Dots`], with the tile inside its `m × js` outputs, on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_avx512<const J: usize, const R: usize>(
    p: Dots<f32>,
    i: usize,
    j: usize,
    place: (usize, usize),
) {
    let rows = prefetch_rows::<J>(place);
    // SAFETY: forwarded from the caller.
    unsafe {
        if rows.0 < rows.1 {
            tile_avx512_body::<J, R, true>(p, i, j, rows)
        } else {
            tile_avx512_body::<J, R, false>(p, i, j, rows)
        }
    }
}

/// [`tile_avx512`] with whether it prefetches decided at compile time (`PREFETCH`; the rows are
/// `pf.0..pf.1` of the group ahead) and the full 16-wide chunks of `k` in a loop without masks,
/// so the `R·J` accumulators, the `J` weight chunks and the `x` chunk stay in the 32 vector
/// registers (with a run-time test and the mask inside one loop the compiler spilled
/// accumulators to the stack on every chunk).
///
/// # Safety
/// As [`tile_avx512`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_avx512_body<const J: usize, const R: usize, const PREFETCH: bool>(
    p: Dots<f32>,
    i: usize,
    j: usize,
    pf: (usize, usize),
) {
    use std::arch::x86_64::{
        __m512, _MM_HINT_T1, _mm_prefetch, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_maskz_loadu_ps,
        _mm512_reduce_add_ps, _mm512_setzero_ps,
    };
    let Dots { k, x, x_rs, w, w_rs, c, ldc, .. } = p;
    // SAFETY: the caller guarantees rows `i..i + R` of `x`, `j..j + J` of `w` (each `k` long)
    // and the outputs of the tile; full loads stay below `k`, the masked one touches only the
    // first `k` elements of a row. Prefetches never fault, and their addresses are computed
    // without `add`'s in-bounds rule.
    unsafe {
        let (x, w) = (x.add(i * x_rs), w.add(j * w_rs));
        let ahead = w.wrapping_add(PREFETCH_GROUPS * J * w_rs);
        let mut acc = [[_mm512_setzero_ps(); J]; R];
        let body = k / 16 * 16;
        let mut s = 0;
        while s < body {
            if PREFETCH {
                for q in pf.0..pf.1 {
                    _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(q * w_rs + s).cast());
                }
            }
            let wv: [__m512; J] = std::array::from_fn(|q| _mm512_loadu_ps(w.add(q * w_rs + s)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(r * x_rs + s));
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_fmadd_ps(xv, *wv, *acc);
                }
            }
            s += 16;
        }
        if body < k {
            // The tail's cache line of the group ahead is not prefetched (at most one per row).
            let mask = (1u16 << (k - body)) - 1;
            let wv: [__m512; J] =
                std::array::from_fn(|q| _mm512_maskz_loadu_ps(mask, w.add(q * w_rs + body)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, x.add(r * x_rs + body));
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_fmadd_ps(xv, *wv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (q, acc) in acc.iter().enumerate() {
                *c.add((i + r) * ldc + j + q) = _mm512_reduce_add_ps(*acc);
            }
        }
    }
}

/// [`Dots`] with AVX-512 intrinsics ([`tile_avx512`] tiles).
///
/// # Safety
/// As [`Dots`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_avx512(p: Dots<f32>) {
    // SAFETY: every tile lies inside the outputs of `p`, which the caller guarantees; AVX-512F
    // is enabled here.
    unsafe { tiles!(p, tile_avx512) }
}

/// The `R × J` dot products of rows `i..i + R` of `x` with rows `j..j + J` of `w` with AVX2 and
/// FMA intrinsics, for the x86-64 CPUs without AVX-512 (AMD Zen 1-3, Intel before Skylake-SP and
/// its client parts): [`tile_avx512`]'s scheme on 8-wide registers, the remainder of `k` a masked
/// load, and the tile's share of a weight-row group ahead prefetched into L2 ([`prefetch_rows`]),
/// one cache line (16 floats) at a time. Inlined into [`dots_avx2`], which enables AVX2 and FMA.
///
/// # Safety
/// As [`Dots`], with the tile inside its `m × js` outputs, on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_avx2<const J: usize, const R: usize>(
    p: Dots<f32>,
    i: usize,
    j: usize,
    place: (usize, usize),
) {
    let pf = prefetch_rows::<J>(place);
    use std::arch::x86_64::{
        __m256, __m256i, _MM_HINT_T1, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps,
        _mm_prefetch, _mm_shuffle_ps, _mm256_castps256_ps128, _mm256_extractf128_ps,
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_maskload_ps,
        _mm256_setzero_ps,
    };
    /// Lane masks of a partial chunk: the 8 lanes from `8 - n` on enable the first `n` lanes.
    const LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    let Dots { k, x, x_rs, w, w_rs, c, ldc, .. } = p;
    // SAFETY: the caller guarantees rows `i..i + R` of `x`, `j..j + J` of `w` (each `k` long)
    // and the outputs of the tile; full loads stay below `k`, the masked one touches only the
    // first `k` elements of a row. Prefetches never fault, and their addresses are computed
    // without `add`'s in-bounds rule.
    unsafe {
        let (x, w) = (x.add(i * x_rs), w.add(j * w_rs));
        let ahead = w.wrapping_add(PREFETCH_GROUPS * J * w_rs);
        let mut acc = [[_mm256_setzero_ps(); J]; R];
        let body = k / 8 * 8;
        let mut s = 0;
        while s < body {
            if s % 16 == 0 {
                for q in pf.0..pf.1 {
                    _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(q * w_rs + s).cast());
                }
            }
            let wv: [__m256; J] = std::array::from_fn(|q| _mm256_loadu_ps(w.add(q * w_rs + s)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(r * x_rs + s));
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm256_fmadd_ps(xv, *wv, *acc);
                }
            }
            s += 8;
        }
        if body < k {
            let mask = _mm256_loadu_si256(LANES.as_ptr().add(8 - (k - body)).cast::<__m256i>());
            let wv: [__m256; J] =
                std::array::from_fn(|q| _mm256_maskload_ps(w.add(q * w_rs + body), mask));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_maskload_ps(x.add(r * x_rs + body), mask);
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm256_fmadd_ps(xv, *wv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (q, acc) in acc.iter().enumerate() {
                let v = _mm_add_ps(_mm256_castps256_ps128(*acc), _mm256_extractf128_ps::<1>(*acc));
                let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
                let v = _mm_add_ss(v, _mm_shuffle_ps::<0b01>(v, v));
                *c.add((i + r) * ldc + j + q) = _mm_cvtss_f32(v);
            }
        }
    }
}

/// [`Dots`] with AVX2 and FMA intrinsics ([`tile_avx2`] tiles).
///
/// # Safety
/// As [`Dots`], on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(p: Dots<f32>) {
    // SAFETY: every tile lies inside the outputs of `p`, which the caller guarantees; AVX2 and
    // FMA are enabled here.
    unsafe { tiles!(p, tile_avx2, TILE_W_AVX2, TILE_X_AVX2) }
}

/// Output rows at most for which [`skinny`] streams the weights instead of calling gemm. On a
/// 2-core AMX Xeon (2026-12-05) sampling SmolLM2 64 × 64 with the limit at 64 instead took 0.91×
/// the time with 2 threads and 1.02× with 1; 128 × 32 with it at 128 took 1.17× (2 threads).
const SKINNY_ROWS: usize = 32;

/// `c = a · b` for few rows of `a` (decoding: one token per sequence) where `b = wᵀ` of a
/// row-major `w`: every output element is a dot product of two unit-stride rows, so each weight
/// row is read once from memory, where gemm would first copy (pack) all of `b`. Column blocks run
/// on all threads. `false` (nothing written) when it does not apply: layout, dtype. It runs with
/// MKL loaded too: on a 2-core AMX Xeon (2026-12-05, docs/benchmarks.md) sampling SmolLM2 16 × 128
/// took 15.8 s (1 thread) and 10.8 s (2) with MKL's sgemm on these products, 12.0 s and 8.3 s
/// here.
///
/// # Safety
/// As [`Product`] with `ldc = n`.
unsafe fn skinny<T: Elem>(m: usize, n: usize, k: usize, a: Mat<T>, b: Mat<T>, c: *mut T) -> bool {
    if !T::DOTS || m > SKINNY_ROWS || a.cs != 1 || b.rs != 1 {
        return false;
    }
    let out = Out(c);
    let block = 64;
    (0..n.div_ceil(block)).into_par_iter().for_each(|bi| {
        let (out, a, b) = (out, a, b);
        let (j0, j1) = (bi * block, ((bi + 1) * block).min(n));
        // SAFETY: block `bi` writes only its own output columns; rows stay inside the operands.
        unsafe {
            let (w, c) = (b.ptr.add(j0 * b.cs), out.0.add(j0));
            T::dots(Dots { m, js: j1 - j0, k, x: a.ptr, x_rs: a.rs, w, w_rs: b.cs, c, ldc: n });
        }
    });
    true
}

/// A strided matrix operand: element `(i, j)` is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat<T> {
    ptr: *const T,
    rs: usize,
    cs: usize,
}

/// A raw pointer that may cross threads: each task writes a disjoint block of the output.
#[derive(Clone, Copy)]
struct Out<T>(*mut T);

impl<T> Out<T> {
    /// The pointer (a method, so that a closure captures the whole `Out`, which is `Sync`).
    fn ptr(self) -> *mut T {
        self.0
    }
}
// SAFETY: the tasks given an `Out` write disjoint elements and the caller waits for all of them.
unsafe impl<T> Send for Out<T> {}
unsafe impl<T> Sync for Out<T> {}
// SAFETY: operands are only read while the borrowed slices they point into are alive.
unsafe impl<T> Send for Mat<T> {}
unsafe impl<T> Sync for Mat<T> {}

/// One product `c (m × n, row-major, row stride ldc) = a (m × k) · b (k × n)`.
///
/// Safety contract of the functions taking it: `a` and `b` address `m × k` and `k × n` valid
/// elements and `c` `m` rows of `n` writable elements (`ldc >= n`) that nothing else accesses
/// during the call.
#[derive(Clone, Copy)]
struct Product<T> {
    m: usize,
    n: usize,
    k: usize,
    a: Mat<T>,
    b: Mat<T>,
    c: *mut T,
    ldc: usize,
}

/// `p` on the calling thread.
///
/// # Safety
/// As [`Product`].
unsafe fn gemm_one<T: Elem>(p: Product<T>) {
    let Product { m, n, k, a, b, c, ldc } = p;
    if m == 0 || n == 0 {
        return;
    }
    if let Some(mkl) = MKL.get() {
        // BLAS needs unit stride along one axis of each operand (any candle matmul layout has it).
        let trans = |x: Mat<T>, cols: usize, rows: usize| -> Option<(c_int, usize)> {
            if x.rs == 0 || x.cs == 0 {
                None
            } else if x.cs == 1 || cols <= 1 {
                Some((NO_TRANS, x.rs.max(cols).max(1)))
            } else if x.rs == 1 || rows <= 1 {
                Some((TRANS, x.cs.max(rows).max(1)))
            } else {
                None
            }
        };
        let fits = |v: usize| c_int::try_from(v).is_ok();
        if let (Some((ta, lda)), Some((tb, ldb))) = (trans(a, k, m), trans(b, n, k))
            && [m, n, k, ldc, lda, ldb].into_iter().all(fits)
        {
            let f = T::cblas(mkl);
            let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
            // SAFETY: dimensions and leading dimensions describe the caller's valid buffers.
            unsafe {
                f(
                    ROW_MAJOR,
                    ta,
                    tb,
                    m as c_int,
                    n as c_int,
                    k as c_int,
                    one,
                    a.ptr,
                    lda as c_int,
                    b.ptr,
                    ldb as c_int,
                    zero,
                    c,
                    ldc as c_int,
                );
            }
            return;
        }
    }
    // SAFETY: as above.
    unsafe { gemm_crate(p, gemm::Parallelism::None) }
}

/// [`Product`] `p` in the `gemm` crate with the given parallelism.
///
/// # Safety
/// As [`Product`]; `read_dst = false` never reads the (uninitialised) output.
unsafe fn gemm_crate<T: Elem>(p: Product<T>, par: gemm::Parallelism) {
    let Product { m, n, k, a, b, c, ldc } = p;
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    let (ars, acs, brs, bcs) = (a.rs as isize, a.cs as isize, b.rs as isize, b.cs as isize);
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            false,
            a.ptr,
            acs,
            ars,
            b.ptr,
            bcs,
            brs,
            zero,
            one,
            false,
            false,
            false,
            par,
        );
    }
}

/// Rows (or columns) of the output in one block of a split product at least.
const MIN_SPLIT: usize = 64;
/// Blocks per thread of a split product.
const BLOCKS_PER_THREAD: usize = 4;

/// `c = a · b` (`m × n`, row-major, contiguous) using every rayon thread: few rows stream the
/// weights ([`skinny`]), the `gemm` crate parallelises itself, and MKL's sequential products
/// run on blocks of output rows (or columns, when there are few rows), several per thread.
///
/// # Safety
/// As [`Product`] with `ldc = n`.
unsafe fn gemm_par<T: Elem>(m: usize, n: usize, k: usize, a: Mat<T>, b: Mat<T>, c: *mut T) {
    // SAFETY: forwarded from the caller.
    if unsafe { skinny(m, n, k, a, b, c) } {
        return;
    }
    let threads = rayon::current_num_threads();
    let flops = m.saturating_mul(n).saturating_mul(k);
    if threads <= 1 || flops < 1 << 21 {
        // SAFETY: forwarded from the caller.
        return unsafe { gemm_one(Product { m, n, k, a, b, c, ldc: n }) };
    }
    if MKL.get().is_none() {
        // The gemm crate has its own rayon parallelism (what candle uses).
        let p = Product { m, n, k, a, b, c, ldc: n };
        // SAFETY: forwarded from the caller.
        return unsafe { gemm_crate(p, gemm::Parallelism::Rayon(threads)) };
    }
    let out = Out(c);
    let by_rows = m >= n.min(MIN_SPLIT * threads);
    let len = if by_rows { m } else { n };
    // Several blocks per thread, so work stealing evens out a core that is slowed down (on a
    // shared machine one half of a two-way split often finished far later than the other).
    let block = len.div_ceil(threads * BLOCKS_PER_THREAD).max(MIN_SPLIT.min(len));
    (0..len.div_ceil(block)).into_par_iter().for_each(|i| {
        let (s, e) = (i * block, ((i + 1) * block).min(len));
        let (out, a, b) = (out, a, b);
        // SAFETY: block `i` of the output is written by this task only; the offsets stay inside
        // the operands the caller guarantees.
        unsafe {
            if by_rows {
                let a = Mat { ptr: a.ptr.add(s * a.rs), ..a };
                gemm_one(Product { m: e - s, n, k, a, b, c: out.0.add(s * n), ldc: n });
            } else {
                let b = Mat { ptr: b.ptr.add(s * b.cs), ..b };
                gemm_one(Product { m, n: e - s, k, a, b, c: out.0.add(s), ldc: n });
            }
        }
    });
}

/// Strides of a matrix operand of a batched product: batch, row, column.
#[derive(Clone, Copy, Debug)]
struct Strides {
    batch: usize,
    rs: usize,
    cs: usize,
}

/// The strides of `l` as `batch` matrices of `rows × cols` (leading dims collapse into one batch
/// dim), or `None` when they do not collapse.
fn strides(l: &Layout, rows: usize, cols: usize) -> Option<Strides> {
    let (dims, st) = (l.dims(), l.stride());
    let r = dims.len();
    if r < 2 || dims[r - 2] != rows || dims[r - 1] != cols {
        return None;
    }
    let (rs, cs) = (st[r - 2], st[r - 1]);
    if r == 2 {
        return Some(Strides { batch: 0, rs, cs });
    }
    // Batch dims of size 1 carry no stride; the others must be nested.
    let mut bstride = None::<usize>;
    let mut expect = None::<usize>;
    for i in (0..r - 2).rev() {
        if dims[i] == 1 {
            continue;
        }
        if let Some(e) = expect
            && st[i] != e
        {
            return None;
        }
        bstride.get_or_insert(st[i]);
        expect = Some(st[i] * dims[i]);
    }
    Some(Strides { batch: bstride.unwrap_or(0), rs, cs })
}

/// `batch` products `(m × k) · (k × n)` of strided operands into a new contiguous
/// `batch × m × n` vector: one product on all threads, several one per thread.
fn batched<T: Elem>(
    (batch, m, n, k): (usize, usize, usize, usize),
    a: &[T],
    sa: Strides,
    b: &[T],
    sb: Strides,
) -> Vec<T> {
    let len = batch * m * n;
    if k == 0 || len == 0 {
        // An empty sum: BLAS kernels may leave the output untouched.
        return vec![T::from_f64(0.0); len];
    }
    let mut out = Vec::<T>::with_capacity(len);
    let c = Out(out.as_mut_ptr());
    let (pa, pb) = (
        Mat { ptr: a.as_ptr(), rs: sa.rs, cs: sa.cs },
        Mat { ptr: b.as_ptr(), rs: sb.rs, cs: sb.cs },
    );
    if batch == 1 {
        // SAFETY: the caller checked that the layouts address elements inside `a` and `b`; the
        // output has capacity for `m × n` elements.
        unsafe { gemm_par(m, n, k, pa, pb, c.0) };
    } else {
        (0..batch).into_par_iter().for_each(|i| {
            let (c, pa, pb) = (c, pa, pb);
            // SAFETY: as above, item `i` writes only its own `m × n` block.
            unsafe {
                let a = Mat { ptr: pa.ptr.add(i * sa.batch), ..pa };
                let b = Mat { ptr: pb.ptr.add(i * sb.batch), ..pb };
                gemm_one(Product { m, n, k, a, b, c: c.0.add(i * m * n), ldc: n });
            }
        });
    }
    // SAFETY: the products above wrote all `len` elements (`m, n, k > 0`).
    unsafe { out.set_len(len) };
    out
}

/// The largest element offset `l` addresses, plus one.
fn extent(l: &Layout) -> usize {
    if l.shape().elem_count() == 0 {
        return l.start_offset();
    }
    l.start_offset()
        + l.dims().iter().zip(l.stride()).map(|(&d, &s)| (d - 1) * s).sum::<usize>()
        + 1
}

/// candle's `BackendStorage::matmul` for CPU storages: `bmnk = (batch, m, n, k)`, operands of any
/// matmul-compatible layout, contiguous `(batch·m, n)` result. f32/f64 run here, other dtypes
/// (and layouts whose batch dims do not collapse) in candle; a bf16 operand makes it a bf16
/// product with f32 result ([`matmul_bf16_storage`]).
pub(crate) fn matmul_storage(
    lhs: &CpuStorage,
    l1: &Layout,
    rhs: &CpuStorage,
    l2: &Layout,
    bmnk: (usize, usize, usize, usize),
) -> candle_core::Result<CpuStorage> {
    use candle_core::backend::BackendStorage;
    let (_, m, n, k) = bmnk;
    if matches!(lhs, CpuStorage::BF16(_)) || matches!(rhs, CpuStorage::BF16(_)) {
        return matmul_bf16_storage(lhs, l1, rhs, l2, bmnk);
    }
    let typed = |sa: Strides, sb: Strides| -> candle_core::Result<Option<CpuStorage>> {
        Ok(Some(match (lhs, rhs) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32(run(bmnk, a, l1, sa, b, l2, sb)?)
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                CpuStorage::F64(run(bmnk, a, l1, sa, b, l2, sb)?)
            }
            _ => return Ok(None),
        }))
    };
    if let (Some(sa), Some(sb)) = (strides(l1, m, k), strides(l2, k, n))
        && let Some(out) = typed(sa, sb)?
    {
        return Ok(out);
    }
    lhs.matmul(rhs, bmnk, l1, l2)
}

fn run<T: Elem>(
    bmnk: (usize, usize, usize, usize),
    a: &[T],
    la: &Layout,
    sa: Strides,
    b: &[T],
    lb: &Layout,
    sb: Strides,
) -> candle_core::Result<Vec<T>> {
    if extent(la) > a.len() || extent(lb) > b.len() {
        candle_core::bail!("rl-matmul: operand layouts exceed their storage");
    }
    Ok(batched(bmnk, &a[la.start_offset()..], sa, &b[lb.start_offset()..], sb))
}

/// `t`, or a contiguous copy when its batch dims do not collapse into one stride (a narrowed
/// head axis), which no matmul kernel takes.
pub(crate) fn operand(t: &Tensor) -> candle_core::Result<Tensor> {
    let r = t.rank();
    match r >= 2 && strides(t.layout(), t.dims()[r - 2], t.dims()[r - 1]).is_some() {
        true => Ok(t.clone()),
        false => t.contiguous(),
    }
}

/// candle's `matmul` of `a` and `b`, with an f32 result for bf16 operands (the precision policy:
/// bf16 products return f32).
fn mm_elsewhere(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    match a.dtype() {
        DType::BF16 => a.matmul(b)?.to_dtype(DType::F32),
        _ => a.matmul(b),
    }
}

/// `a · b` of CPU tensors `a: (..., m, k)`, `b: (..., k, n)` with equal leading dims (or `b` of
/// rank 2 when `a` is) without recording a graph node: f32/f64 run here, bf16 operands give an
/// f32 result (f32 accumulation), everything else runs in candle's `matmul`. The inputs need not
/// be contiguous.
pub(crate) fn mm(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let same_batch =
        ra == rb && a.dims()[..ra.saturating_sub(2)] == b.dims()[..rb.saturating_sub(2)];
    let real = matches!(a.dtype(), DType::F32 | DType::F64 | DType::BF16);
    if !a.device().is_cpu() || ra < 2 || !same_batch || a.dtype() != b.dtype() || !real {
        return mm_elsewhere(a, b);
    }
    let (m, k) = (a.dims()[ra - 2], a.dims()[ra - 1]);
    let (k2, n) = (b.dims()[rb - 2], b.dims()[rb - 1]);
    if k != k2 {
        return mm_elsewhere(a, b);
    }
    let batch = a.dims()[..ra - 2].iter().product::<usize>();
    let (a, b) = (&operand(a)?, &operand(b)?);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (candle_core::Storage::Cpu(sa), candle_core::Storage::Cpu(sb)) = (&*sa, &*sb) else {
        return mm_elsewhere(a, b);
    };
    let out = matmul_storage(sa, la, sb, lb, (batch, m, n, k))?;
    let mut dims = a.dims().to_vec();
    dims[ra - 1] = n;
    let dev = a.device();
    Ok(match out {
        CpuStorage::F32(v) => Tensor::from_vec(v, dims, dev)?,
        CpuStorage::F64(v) => Tensor::from_vec(v, dims, dev)?,
        _ => a.matmul(b)?,
    })
}

// ----------------------------------------------------------------------------------------------
// bf16 operands, f32 accumulation

/// How the CPU runs matrix products with bf16 operands ([`super::precision`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    /// rl-zero's own kernels on the AMX-BF16 tiles (`tdpbf16ps`; Intel Sapphire Rapids and
    /// later), no MKL needed, for products with at least 32 rows and 32 columns and for the
    /// decoding steps of sampling (at most 16 rows against a transposed weight of whole tiles);
    /// other small products take [`Bf16Path::MklAmx`] when MKL is loaded, else
    /// [`Bf16Path::Avx512Bf16`]. Set `RLZ_NO_AMX=1` to leave the tiles to MKL (or unused).
    Amx,
    /// MKL's `cblas_gemm_bf16bf16f32` on a CPU with AMX-BF16 tiles.
    MklAmx,
    /// rl-zero's own kernels on the AVX-512 BF16 dot-product instruction (`vdpbf16ps`; AMD Zen 4
    /// and later, Intel Cooper Lake / Sapphire Rapids and later), chosen over MKL unless the CPU
    /// has AMX.
    Avx512Bf16,
    /// MKL's `cblas_gemm_bf16bf16f32` on a CPU without AMX or AVX-512 BF16 (MKL's emulation).
    Mkl,
    /// No bf16 GEMM (MKL not loaded, or too old): the bf16 operands are widened to f32 and
    /// multiplied by the f32 backend. Same rounding of the inputs, f32 accumulation, no speed-up.
    F32Fallback,
}

impl std::fmt::Display for Bf16Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Amx => "amx (rl-zero's tdpbf16ps kernels)",
            Self::MklAmx => "mkl-bf16 (AMX)",
            Self::Avx512Bf16 => "avx512-bf16 (vdpbf16ps)",
            Self::Mkl => "mkl-bf16 (no AMX)",
            Self::F32Fallback => "f32 fallback (bf16-rounded operands, f32 products)",
        })
    }
}

/// `true` when the CPU has AMX-BF16 tiles and the OS enabled them, detected at run time from
/// the flags Linux lists in `/proc/cpuinfo` (`amx_bf16`, `amx_tile`; the kernel lists them
/// only when it supports the tile state). `false` elsewhere. (Rust's
/// `is_x86_feature_detected!("amx-bf16")` is not stable yet.)
pub fn cpu_has_amx_bf16() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return false };
        info.lines().find(|l| l.starts_with("flags")).is_some_and(|l| {
            let flags: Vec<&str> = l.split_whitespace().collect();
            flags.contains(&"amx_bf16") && flags.contains(&"amx_tile")
        })
    })
}

/// Which path the CPU's bf16 products take now (it changes when [`use_mkl`] succeeds).
///
/// ```
/// use rl_policy::ops::blas::{Bf16Path, bf16_path, cpu_backend, cpu_has_amx_bf16, cpu_has_avx512_bf16};
///
/// let path = bf16_path();
/// if path == Bf16Path::Amx {
///     assert!(cpu_has_amx_bf16());
/// } else if cpu_backend() == "gemm" {
///     let expected =
///         if cpu_has_avx512_bf16() { Bf16Path::Avx512Bf16 } else { Bf16Path::F32Fallback };
///     assert_eq!(path, expected);
/// }
/// ```
pub fn bf16_path() -> Bf16Path {
    #[cfg(target_arch = "x86_64")]
    if amx::available() {
        return Bf16Path::Amx;
    }
    small_bf16_path()
}

/// The path of bf16 products without rl-zero's AMX kernels: those too small for them
/// ([`Bf16Path::Amx`]), or all of them on a CPU without the tiles.
fn small_bf16_path() -> Bf16Path {
    match MKL.get().and_then(|m| m.gemm_bf16) {
        Some(_) if cpu_has_amx_bf16() => Bf16Path::MklAmx,
        _ if cpu_has_avx512_bf16() => Bf16Path::Avx512Bf16,
        Some(_) => Bf16Path::Mkl,
        None => Bf16Path::F32Fallback,
    }
}

/// Why the bf16 products leave this CPU's AMX tiles unused, when they do: `Some` (a message
/// naming the fix) on a CPU with AMX-BF16 ([`cpu_has_amx_bf16`]) whose bf16 products take
/// neither [`Bf16Path::Amx`] nor [`Bf16Path::MklAmx`], `None` elsewhere. On a 2-core Xeon with AMX
/// (2026-12-05, docs/benchmarks.md) MKL's AMX path ran a bf16 forward + backward of SmolLM2
/// 2.5x (1 thread) and 2.1x (2 threads) faster than rl-zero's AVX-512 BF16 kernels, which on
/// that CPU are slower than its f32 products. `LanguageModel::set_compute_dtype` logs it once
/// per process (a `tracing` warning) when bf16 products are asked for.
///
/// ```
/// use rl_policy::ops::blas::{Bf16Path, amx_unused, bf16_path, cpu_has_amx_bf16};
///
/// let tiles = matches!(bf16_path(), Bf16Path::Amx | Bf16Path::MklAmx);
/// assert_eq!(amx_unused().is_some(), cpu_has_amx_bf16() && !tiles);
/// if let Some(why) = amx_unused() {
///     assert!(why.contains("RLZ_BLAS"));
/// }
/// ```
pub fn amx_unused() -> Option<&'static str> {
    if !cpu_has_amx_bf16() || matches!(bf16_path(), Bf16Path::Amx | Bf16Path::MklAmx) {
        return None;
    }
    Some(if MKL.get().is_some() {
        "this CPU has AMX-BF16 tiles, but bf16 products run without them: rl-zero's AMX kernels \
         are off (RLZ_NO_AMX is set, or Linux refused the tile state) and the MKL library \
         RLZ_BLAS names has no cblas_gemm_bf16bf16f32 (MKL 2020 or later has it); unset \
         RLZ_NO_AMX, or set RLZ_BLAS=$(bash scripts/setup_mkl.sh) (without the tiles, bf16 is \
         slower than f32 there: docs/benchmarks.md)"
    } else {
        "this CPU has AMX-BF16 tiles, but bf16 products run without them: rl-zero's AMX kernels \
         are off (RLZ_NO_AMX is set, or Linux refused the tile state) and MKL is not loaded; \
         unset RLZ_NO_AMX, or set RLZ_BLAS=$(bash scripts/setup_mkl.sh) to run them on the tiles \
         through MKL (without the tiles, bf16 is slower than f32 there: docs/benchmarks.md)"
    })
}

/// `true` when the CPU runs AVX-512 F and AVX-512 BF16 (`vdpbf16ps`), detected at run time;
/// `false` on other CPUs and architectures. Set `RLZ_NO_AVX512_BF16=1` to report `false` (and so
/// take another [`Bf16Path`]), e.g. to compare the paths.
pub fn cpu_has_avx512_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let has = avx512_bf16::available();
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        has && std::env::var_os("RLZ_NO_AVX512_BF16").is_none_or(|v| v.is_empty() || v == "0")
    })
}

/// `x` rounded to the nearest bf16 (ties to even), NaN kept NaN (quiet).
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() { ((b >> 16) as u16) | 0x40 } else { rounded }
}

/// Elements per rayon task of the conversions.
const CONVERT: usize = 1 << 15;

/// `x` rounded to bf16, in parallel, into a new vector (not zeroed first).
fn f32_to_bf16(x: &[f32]) -> Vec<half::bf16> {
    f32_to_bf16_from(x, false).0
}

/// `x` rounded to bf16, in parallel, into a new vector, and the index its values start at: 0, or
/// with `aligned` after up to 31 zeros, so that they start at a 64-byte boundary (a cache line;
/// the AMX kernels read such a left operand in place, [`amx::gemm`]).
fn f32_to_bf16_from(x: &[f32], aligned: bool) -> (Vec<half::bf16>, usize) {
    let n = x.len();
    let mut out = Vec::with_capacity(if aligned { n + 31 } else { n });
    let at = if aligned { (64 - out.as_ptr() as usize % 64) % 64 / 2 } else { 0 };
    let spare = out.spare_capacity_mut();
    spare[..at].fill(std::mem::MaybeUninit::new(half::bf16::ZERO));
    round_into(x, &mut spare[at..at + n]);
    // SAFETY: the two lines above wrote the first `at + n` elements.
    unsafe { out.set_len(at + n) };
    (out, at)
}

/// `x` rounded to bf16 into `out` (of `x`'s length), in parallel.
fn f32_to_bf16_into(x: &[f32], out: &mut [half::bf16]) {
    let n = out.len();
    // SAFETY: the same memory seen as possibly uninitialised; `round_into` writes only
    // initialised values into it.
    let out = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast(), n) };
    round_into(x, out);
}

/// `x` rounded to bf16 into `out` (of `x`'s length), in parallel; 16 values per instruction
/// on a CPU with AVX-512 F (the same bits as [`bf16_bits`]: ties to even, subnormals kept,
/// NaN quiet), else scalar code the compiler vectorises for SSE2.
fn round_into(x: &[f32], out: &mut [std::mem::MaybeUninit<half::bf16>]) {
    #[cfg(target_arch = "x86_64")]
    let wide = std::arch::is_x86_feature_detected!("avx512f");
    out.par_chunks_mut(CONVERT).zip(x.par_chunks(CONVERT)).for_each(|(o, x)| {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: AVX-512 F was detected; `o` and `x` have the same length.
            unsafe { f32_to_bf16_avx512(x, o) };
            return;
        }
        o.iter_mut().zip(x).for_each(|(o, &x)| {
            o.write(half::bf16::from_bits(bf16_bits(x)));
        });
    });
}

/// [`bf16_bits`] of each of `x` into `out` (same length), 16 at a time.
///
/// # Safety
/// On a CPU with AVX-512 F only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn f32_to_bf16_avx512(x: &[f32], out: &mut [std::mem::MaybeUninit<half::bf16>]) {
    use std::arch::x86_64::*;
    let n = x.len().min(out.len());
    let (one, bias, quiet) =
        (_mm512_set1_epi32(1), _mm512_set1_epi32(0x7FFF), _mm512_set1_epi32(0x40));
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n` and both slices hold `n` elements; unaligned loads and stores.
        unsafe {
            let v = _mm512_loadu_ps(x.as_ptr().add(i));
            let b = _mm512_castps_si512(v);
            let high = _mm512_srli_epi32::<16>(b);
            let round = _mm512_add_epi32(bias, _mm512_and_si512(high, one));
            let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, round));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            let bits = _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(high, quiet));
            _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi16(bits));
        }
        i += 16;
    }
    for (o, &x) in out[i..n].iter_mut().zip(&x[i..n]) {
        o.write(half::bf16::from_bits(bf16_bits(x)));
    }
}

/// Rounds a contiguous CPU f32 tensor (the source) into a contiguous CPU bf16 tensor of the same
/// element count, in place (`dst.inplace_op2(&src, &IntoBf16)`): the bf16 weight buffers reused
/// across updates ([`super::precision::Bf16Buffers`]).
pub(crate) struct IntoBf16;

impl candle_core::InplaceOp2 for IntoBf16 {
    fn name(&self) -> &'static str {
        "rl-into-bf16"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::BF16(d), CpuStorage::F32(s)) = (dst, src) else {
            candle_core::bail!("rl-into-bf16: expected a bf16 destination and an f32 source");
        };
        let (Some((d0, d1)), Some((s0, s1))) = (dl.contiguous_offsets(), sl.contiguous_offsets())
        else {
            candle_core::bail!("rl-into-bf16: both tensors must be contiguous");
        };
        if d1 - d0 != s1 - s0 || d1 > d.len() || s1 > s.len() {
            candle_core::bail!("rl-into-bf16: {} bf16 slots for {} values", d1 - d0, s1 - s0);
        }
        f32_to_bf16_into(&s[s0..s1], &mut d[d0..d1]);
        Ok(())
    }
}

/// `x` widened to f32 (exact), in parallel, into a new vector (not zeroed first).
fn bf16_to_f32(x: &[half::bf16]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    let spare = &mut out.spare_capacity_mut()[..x.len()];
    spare.par_chunks_mut(CONVERT).zip(x.par_chunks(CONVERT)).for_each(|(o, x)| {
        o.iter_mut().zip(x).for_each(|(o, x)| {
            o.write(f32::from_bits(u32::from(x.to_bits()) << 16));
        });
    });
    // SAFETY: the loop above wrote all `x.len()` elements.
    unsafe { out.set_len(x.len()) };
    out
}

/// `t` (any layout) as a contiguous bf16 tensor of the same shape, without a graph node: CPU
/// f32 is rounded in parallel here, anything else by candle's `to_dtype`.
pub(crate) fn to_bf16(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.dtype() == DType::BF16 {
        return Ok(t.detach());
    }
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return t.detach().to_dtype(DType::BF16);
    }
    let t = t.detach().contiguous()?;
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &*s else {
        candle_core::bail!("to_bf16: expected a CPU f32 tensor");
    };
    let (a, b) = l.contiguous_offsets().expect("contiguous");
    // The values start on a cache line; the zeros before them are not part of the tensor.
    let (out, at) = f32_to_bf16_from(&v[a..b], true);
    drop(s);
    let len = out.len();
    Tensor::from_vec(out, len, t.device())?.narrow(0, at, len - at)?.reshape(t.shape())
}

/// The elements `l` addresses in `s` (from its start offset on) as bf16: borrowed when `s` is
/// bf16, rounded from f32 otherwise.
fn bf16_elems<'a>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<std::borrow::Cow<'a, [half::bf16]>> {
    let (a, b) = (l.start_offset(), extent(l));
    let bad = || candle_core::Error::Msg("rl-matmul-bf16: layout exceeds its storage".into());
    Ok(match s {
        CpuStorage::BF16(v) => std::borrow::Cow::Borrowed(v.get(a..b).ok_or_else(bad)?),
        CpuStorage::F32(v) => std::borrow::Cow::Owned(f32_to_bf16(v.get(a..b).ok_or_else(bad)?)),
        _ => candle_core::bail!("rl-matmul-bf16: f32 or bf16 operands only"),
    })
}

/// [`matmul_storage`] with bf16 operands (f32 operands are rounded first) and f32 accumulation
/// and result: `bmnk = (batch, m, n, k)`, contiguous `(batch·m, n)` f32 output.
pub(crate) fn matmul_bf16_storage(
    lhs: &CpuStorage,
    l1: &Layout,
    rhs: &CpuStorage,
    l2: &Layout,
    bmnk: (usize, usize, usize, usize),
) -> candle_core::Result<CpuStorage> {
    let (_, m, n, k) = bmnk;
    let (Some(sa), Some(sb)) = (strides(l1, m, k), strides(l2, k, n)) else {
        candle_core::bail!("rl-matmul-bf16: layouts {:?} / {:?} do not collapse", l1, l2);
    };
    let (a, b) = (bf16_elems(lhs, l1)?, bf16_elems(rhs, l2)?);
    Ok(CpuStorage::F32(batched_bf16(bmnk, &a, sa, &b, sb)))
}

/// BLAS transpose flag and leading dimension of a `rows × cols` operand, when it has unit
/// stride along one axis.
fn blas_ld(s: Strides, rows: usize, cols: usize) -> Option<(c_int, usize)> {
    if s.rs == 0 || s.cs == 0 {
        None
    } else if s.cs == 1 || cols <= 1 {
        Some((NO_TRANS, s.rs.max(cols).max(1)))
    } else if s.rs == 1 || rows <= 1 {
        Some((TRANS, s.cs.max(rows).max(1)))
    } else {
        None
    }
}

/// `batch` products `(m × k) · (k × n)` of bf16 operands into a new contiguous `batch × m × n`
/// f32 vector: MKL's `cblas_gemm_bf16bf16f32` on blocks of the output spread over the rayon
/// threads (as [`gemm_par`]), or, without it, the operands widened to f32 and [`batched`].
fn batched_bf16(
    (batch, m, n, k): (usize, usize, usize, usize),
    a: &[half::bf16],
    sa: Strides,
    b: &[half::bf16],
    sb: Strides,
) -> Vec<f32> {
    let len = batch * m * n;
    if k == 0 || len == 0 {
        return vec![0.0; len];
    }
    #[cfg(target_arch = "x86_64")]
    {
        // The AMX kernels read operands with contiguous rows or columns (any candle matmul
        // layout has one).
        let unit = |s: Strides| s.rs == 1 || s.cs == 1;
        let shape = (m >= amx::MIN_DIM && n >= amx::MIN_DIM) || amx::decode_fits((m, n, k), sb.rs);
        let amx = shape && unit(sa) && unit(sb) && bf16_path() == Bf16Path::Amx;
        if amx {
            return batched_own((batch, m, n, k), a, sa, b, sb, OwnKernel::Amx);
        }
        if small_bf16_path() == Bf16Path::Avx512Bf16 {
            return batched_own((batch, m, n, k), a, sa, b, sb, OwnKernel::Avx512Bf16);
        }
    }
    let fits = |v: usize| c_int::try_from(v).is_ok();
    let f = MKL.get().and_then(|mkl| mkl.gemm_bf16);
    let (Some(f), Some((ta, lda)), Some((tb, ldb))) = (f, blas_ld(sa, m, k), blas_ld(sb, k, n))
    else {
        return batched((batch, m, n, k), &bf16_to_f32(a), sa, &bf16_to_f32(b), sb);
    };
    if ![m, n, k, lda, ldb].into_iter().all(fits) {
        return batched((batch, m, n, k), &bf16_to_f32(a), sa, &bf16_to_f32(b), sb);
    }
    let mut out = Vec::<f32>::with_capacity(len);
    let c = Out(out.as_mut_ptr());
    let (pa, pb) = (a.as_ptr().cast::<u16>(), b.as_ptr().cast::<u16>());
    let (pa, pb) = (Mat { ptr: pa, rs: sa.rs, cs: sa.cs }, Mat { ptr: pb, rs: sb.rs, cs: sb.cs });
    // One call: `m × n` outputs at `c` (row stride `n`) from operands at `a` and `b`.
    // SAFETY (of every call below): the operands' strides and leading dimensions describe
    // elements inside `a` and `b` (checked by the caller through `extent`), each call writes
    // only its own block of `out`, which has capacity for `len` elements.
    let call = move |m: usize, n_blk: usize, a: *const u16, b: *const u16, c: *mut f32| unsafe {
        f(
            ROW_MAJOR,
            ta,
            tb,
            m as c_int,
            n_blk as c_int,
            k as c_int,
            1.0,
            a,
            lda as c_int,
            b,
            ldb as c_int,
            0.0,
            c,
            n as c_int,
        );
    };
    let threads = rayon::current_num_threads();
    if batch > 1 {
        (0..batch).into_par_iter().for_each(|i| {
            let (c, pa, pb) = (c, pa, pb);
            // SAFETY: item `i`'s operands and output block, as above.
            unsafe {
                call(m, n, pa.ptr.add(i * sa.batch), pb.ptr.add(i * sb.batch), c.0.add(i * m * n))
            };
        });
    } else if threads <= 1 || m.saturating_mul(n).saturating_mul(k) < 1 << 21 {
        call(m, n, pa.ptr, pb.ptr, c.0);
    } else {
        let by_rows = m >= n.min(MIN_SPLIT * threads);
        let extent = if by_rows { m } else { n };
        let block = extent.div_ceil(threads * BLOCKS_PER_THREAD).max(MIN_SPLIT.min(extent));
        (0..extent.div_ceil(block)).into_par_iter().for_each(|i| {
            let (s, e) = (i * block, ((i + 1) * block).min(extent));
            let (c, pa, pb) = (c, pa, pb);
            // SAFETY: block `i` of the output and the operand rows / columns it reads.
            unsafe {
                if by_rows {
                    call(e - s, n, pa.ptr.add(s * pa.rs), pb.ptr, c.0.add(s * n));
                } else {
                    call(m, e - s, pa.ptr, pb.ptr.add(s * pb.cs), c.0.add(s));
                }
            }
        });
    }
    // SAFETY: the calls above wrote all `len` elements (`m, n, k > 0`).
    unsafe { out.set_len(len) };
    out
}

/// rl-zero's own bf16 product kernels ([`batched_own`]).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum OwnKernel {
    /// The AVX-512 BF16 kernels: few rows against a transposed weight stream it
    /// ([`avx512_bf16::dots`]), everything else is packed ([`avx512_bf16::gemm`]).
    Avx512Bf16,
    /// The AMX tiles: [`amx::decode`] for a few rows against a transposed weight (the decoding
    /// step: the weight streamed once, unpacked), else [`amx::gemm`].
    Amx,
}

/// Zero `m × n` outputs at `c` (row stride `ldc`) when `k` is 0; `true` when the product is
/// empty (`m`, `n` or `k` is 0) and so done.
///
/// # Safety
/// `c` addresses `m` rows of `n` writable elements at stride `ldc`.
#[cfg(target_arch = "x86_64")]
unsafe fn empty_product((m, n, k): (usize, usize, usize), c: *mut f32, ldc: usize) -> bool {
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row `i` of `c`.
            unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
        }
    }
    k == 0
}

#[cfg(target_arch = "x86_64")]
impl OwnKernel {
    /// `c (m × n, row stride ldc) = a · b`, spread over the rayon threads when `parallel`.
    ///
    /// # Safety
    /// As [`avx512_bf16::gemm`] / [`amx::gemm`], with the kernel's CPU features available.
    unsafe fn product(
        self,
        mnk: (usize, usize, usize),
        (a, b): (Mat<u16>, Mat<u16>),
        c: *mut f32,
        ldc: usize,
        parallel: bool,
    ) {
        // SAFETY: the caller's contract; `decode_fits` checks `decode`'s further conditions.
        unsafe {
            match self {
                Self::Avx512Bf16 => {
                    if !avx512_bf16::dots(mnk, a, b, c, ldc, parallel) {
                        avx512_bf16::gemm(mnk, a, b, c, ldc, parallel);
                    }
                }
                Self::Amx if amx::decode_fits(mnk, b.rs) => {
                    amx::decode(mnk, a, b, c, ldc, parallel)
                }
                Self::Amx => amx::gemm(mnk, a, b, c, ldc, parallel),
            }
        }
    }
}

/// [`batched_bf16`] on one of rl-zero's own kernels: batch items one per thread, a single product
/// split over the threads when it is large.
#[cfg(target_arch = "x86_64")]
fn batched_own(
    (batch, m, n, k): (usize, usize, usize, usize),
    a: &[half::bf16],
    sa: Strides,
    b: &[half::bf16],
    sb: Strides,
    kernel: OwnKernel,
) -> Vec<f32> {
    let len = batch * m * n;
    let mut out = Vec::<f32>::with_capacity(len);
    let c = Out(out.as_mut_ptr());
    let ma = Mat { ptr: a.as_ptr().cast::<u16>(), rs: sa.rs, cs: sa.cs };
    let mb = Mat { ptr: b.as_ptr().cast::<u16>(), rs: sb.rs, cs: sb.cs };
    let one = move |i: usize, parallel: bool| {
        let (c, ma, mb) = (c, ma, mb);
        // SAFETY: item `i`'s operands lie inside `a` and `b` (the caller checked their extents);
        // its output block `i·m·n..(i+1)·m·n` of `out` is written by this call only; the caller
        // chose `kernel` for a CPU that runs it (`bf16_path`).
        unsafe {
            let ai = Mat { ptr: ma.ptr.add(i * sa.batch), ..ma };
            let bi = Mat { ptr: mb.ptr.add(i * sb.batch), ..mb };
            kernel.product((m, n, k), (ai, bi), c.0.add(i * m * n), n, parallel);
        }
    };
    if batch > 1 {
        (0..batch).into_par_iter().for_each(|i| one(i, false));
    } else {
        one(
            0,
            rayon::current_num_threads() > 1 && m.saturating_mul(n).saturating_mul(k) >= 1 << 18,
        );
    }
    // SAFETY: every item's `m × n` outputs were written above (`m, n, k > 0`).
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp, Tensor, Var};

    use super::*;

    fn values(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
        let mut rng = rl_core::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
        d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Every operand layout the decoder produces (contiguous, transposed, narrowed, batched,
    /// single rows, empty sums), single- and multi-threaded sizes, against candle's `matmul`.
    #[test]
    fn products_match_candle_for_every_layout() {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
            let mut cases: Vec<(Tensor, Tensor)> = Vec::new();
            // Few rows (the streaming decode kernel, with and without a 16-wide remainder) and many.
            for (m, k, n) in [
                (3, 5, 4),
                (1, 7, 9),
                (9, 7, 1),
                (16, 600, 300),
                (13, 37, 70),
                (300, 96, 200),
                (130, 700, 64),
            ] {
                let a = values(&[m, k], 1, dtype);
                let b = values(&[k, n], 2, dtype);
                let at = values(&[k, m], 3, dtype).t().unwrap();
                let bt = values(&[n, k], 4, dtype).t().unwrap();
                cases.extend([(a.clone(), b.clone()), (at.clone(), b), (a, bt.clone()), (at, bt)]);
            }
            // Batched (B, G, R, K) · (B, G, K, d), with a transposed lhs as in the attention
            // backward pass, and narrowed operands with offsets.
            let p = values(&[2, 3, 6, 5], 5, dtype);
            let v = values(&[2, 3, 5, 4], 6, dtype);
            let q = values(&[2, 3, 6, 4], 7, dtype);
            cases.push((p.clone(), v.clone()));
            cases.push((p.transpose(2, 3).unwrap(), q));
            cases.push((p.i((.., 1..3)).unwrap(), v.i((.., 1..3)).unwrap()));
            let big = values(&[40, 30], 8, dtype);
            cases.push((
                big.narrow(0, 3, 20).unwrap(),
                big.narrow(0, 1, 30).unwrap().narrow(1, 2, 9).unwrap(),
            ));
            // Empty sums and empty outputs.
            cases.push((values(&[4, 0], 9, dtype), values(&[0, 3], 10, dtype)));
            cases.push((values(&[0, 5], 9, dtype), values(&[5, 3], 10, dtype)));
            for (i, (a, b)) in cases.iter().enumerate() {
                let ours = mm(a, b).unwrap();
                let reference = a.contiguous().unwrap().matmul(&b.contiguous().unwrap()).unwrap();
                let d = if ours.elem_count() == 0 { 0.0 } else { max_diff(&ours, &reference) };
                assert!(
                    d <= tol,
                    "case {i} ({dtype:?}): {:?}·{:?} differs by {d}",
                    a.dims(),
                    b.dims()
                );
                assert!(ours.is_contiguous());
            }
        }
    }

    /// The parallel (and, with AVX-512 F, vectorised) rounding to bf16 gives the bits of the
    /// scalar rule for every kind of value: ties both ways, subnormals, infinities, NaNs with
    /// payloads, the largest finite values (which round to infinity), at lengths that are not
    /// multiples of the vector width or of the rayon chunk.
    #[test]
    fn bf16_rounding_matches_the_scalar_rule_bit_for_bit() {
        let mut rng = rl_core::rng::SplitMix64::new(5);
        let special = [
            0.0f32,
            -0.0,
            1.0,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-41,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFFC0_1234),
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::from_bits(0x3F80_7FFF),
            f32::from_bits(0x7F7F_FFFF),
        ];
        for n in [0, 1, 15, 16, 17, 33, CONVERT - 1, CONVERT + 19, 3 * CONVERT + 5] {
            let x: Vec<f32> = (0..n)
                .map(|i| match i % 3 {
                    0 => special[(i / 3) % special.len()],
                    _ => f32::from_bits(rng.next_u64() as u32),
                })
                .collect();
            let got = f32_to_bf16(&x);
            for (i, (g, &v)) in got.iter().zip(&x).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    bf16_bits(v),
                    "n {n}, index {i}, value bits {:#x}",
                    v.to_bits()
                );
                if !v.is_nan() {
                    assert_eq!(g.to_bits(), half::bf16::from_f32(v).to_bits(), "{v:e}");
                }
            }
        }
    }

    /// bf16 products on the active [`Bf16Path`] (on a CPU with AMX: rl-zero's tile kernels, the
    /// packed one and the decoding one that streams a transposed weight; with AVX-512 BF16:
    /// rl-zero's kernels, both the packed and the streaming one) against the f64 product of the
    /// same bf16-rounded operands, for every layout the decoder produces, tile remainders (rows,
    /// columns and `k` not multiples of the tiles, odd `k`), multi-threaded sizes and batches.
    #[test]
    fn bf16_products_match_the_product_of_rounded_operands() {
        let mut cases: Vec<(Tensor, Tensor)> = Vec::new();
        for (m, k, n) in [
            (3, 5, 4),
            (1, 7, 9),
            (9, 7, 1),
            (1, 64, 5),
            (5, 96, 67),
            (16, 576, 300),
            (32, 64, 130),
            (33, 64, 130),
            (13, 37, 70),
            (300, 96, 200),
            (130, 700, 64),
            (70, 513, 290),
            (1, 32, 16),
            (3, 96, 80),
            (16, 64, 1040),
        ] {
            let a = values(&[m, k], 1, DType::F32);
            let b = values(&[k, n], 2, DType::F32);
            let at = values(&[k, m], 3, DType::F32).t().unwrap();
            let bt = values(&[n, k], 4, DType::F32).t().unwrap();
            cases.extend([(a.clone(), b.clone()), (at.clone(), b), (a, bt.clone()), (at, bt)]);
        }
        let p = values(&[2, 3, 6, 64], 5, DType::F32);
        let v = values(&[2, 3, 64, 4], 6, DType::F32);
        let q = values(&[2, 3, 6, 4], 7, DType::F32);
        cases.push((p.clone(), v.clone()));
        cases.push((p.transpose(2, 3).unwrap(), q));
        let big = values(&[40, 70], 9, DType::F32);
        cases.push((
            big.narrow(0, 3, 20).unwrap().narrow(1, 0, 35).unwrap(),
            big.narrow(0, 1, 33).unwrap().narrow(1, 2, 35).unwrap().t().unwrap(),
        ));
        let kt = values(&[2, 3, 5, 64], 8, DType::F32).transpose(2, 3).unwrap();
        cases.push((p.clone(), kt));
        // Batches, and a row stride wider than `k` (the AMX path packs such a left operand).
        let wide = values(&[2, 70, 100], 10, DType::F32);
        cases.push((wide.narrow(2, 3, 90).unwrap(), values(&[2, 90, 50], 11, DType::F32)));
        cases.push((
            values(&[2, 3, 40, 64], 12, DType::F32),
            values(&[2, 3, 64, 48], 13, DType::F32),
        ));
        // A bf16 left operand at a 64-byte boundary, which the AMX path reads in place.
        let (m, k) = (64, 96);
        let flat = values(&[m * k + 32], 14, DType::BF16);
        let at = {
            let (s, _) = flat.storage_and_layout();
            let candle_core::Storage::Cpu(CpuStorage::BF16(v)) = &*s else { unreachable!() };
            (64 - v.as_ptr() as usize % 64) % 64 / 2
        };
        let aligned = flat.narrow(0, at, m * k).unwrap().reshape((m, k)).unwrap();
        cases.push((aligned, values(&[k, 48], 15, DType::F32)));
        for (i, (a, b)) in cases.iter().enumerate() {
            let rank = a.rank();
            let (m, k, n) = (a.dims()[rank - 2], a.dims()[rank - 1], b.dims()[rank - 1]);
            let batch = a.elem_count() / (m * k);
            let (sa, la) = a.storage_and_layout();
            let (sb, lb) = b.storage_and_layout();
            let (candle_core::Storage::Cpu(sa), candle_core::Storage::Cpu(sb)) = (&*sa, &*sb)
            else {
                unreachable!()
            };
            let CpuStorage::F32(ours) =
                matmul_bf16_storage(sa, la, sb, lb, (batch, m, n, k)).unwrap()
            else {
                unreachable!()
            };
            let mut dims = a.dims().to_vec();
            dims[rank - 1] = n;
            let ours = Tensor::from_vec(ours, dims, &Device::Cpu).unwrap();
            let round = |t: &Tensor| to_bf16(t).unwrap().to_dtype(DType::F64).unwrap();
            let reference = round(a).matmul(&round(b)).unwrap();
            let d = max_diff(&ours, &reference);
            assert!(
                d <= 1e-4,
                "case {i} ({}): {:?}·{:?} differs by {d}",
                bf16_path(),
                a.dims(),
                b.dims()
            );
        }
    }

    /// `to_bf16` rounds as the scalar rule does and starts its values on a cache line (where the
    /// AMX kernels read a left operand in place), whatever the source's layout.
    #[test]
    fn to_bf16_starts_on_a_cache_line() {
        // Many sizes: any one allocation may land on a cache line by chance.
        let shapes = (1..40).map(|n| (vec![n, 3 * n + 1], false));
        for (shape, transposed) in shapes.chain([(vec![1usize], false), (vec![64, 96], true)]) {
            let t = values(&shape, 16, DType::F32);
            let t = if transposed { t.t().unwrap() } else { t };
            let r = to_bf16(&t).unwrap();
            assert_eq!(r.dims(), t.dims());
            let (s, l) = r.storage_and_layout();
            let candle_core::Storage::Cpu(CpuStorage::BF16(v)) = &*s else { unreachable!() };
            assert!(l.is_contiguous());
            let start = v[l.start_offset()..].as_ptr() as usize;
            assert_eq!(
                start % 64,
                0,
                "{shape:?}: values start {} bytes past a cache line",
                start % 64
            );
            let want: Vec<u16> = t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&x| bf16_bits(x))
                .collect();
            let got: Vec<u16> =
                v[l.start_offset()..][..want.len()].iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want, "{shape:?}");
        }
    }

    /// The decode kernels (portable and, where the CPU has them, AVX-512 and AVX2) against f64 dot
    /// products, for every tile remainder (rows and weight rows not multiples of the tile, `k`
    /// not a multiple of 16) and an output row stride wider than the block, whose padding stays
    /// untouched.
    #[test]
    fn decode_kernels_match_plain_dot_products() {
        let kernels = f32_kernels();
        let val = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 1000) as f32 * 2e-3 - 1.0;
        for (m, js, k) in
            [(1, 1, 1), (3, 5, 17), (4, 4, 16), (5, 9, 33), (16, 64, 576), (13, 7, 100)]
        {
            let x: Vec<f32> = (0..m * k).map(|i| val(i, 1)).collect();
            let w: Vec<f32> = (0..js * k).map(|i| val(i, 2)).collect();
            let ldc = js + 3;
            for (name, kernel) in &kernels {
                let mut c = vec![f32::NAN; m * ldc];
                let p = Dots {
                    m,
                    js,
                    k,
                    x: x.as_ptr(),
                    x_rs: k,
                    w: w.as_ptr(),
                    w_rs: k,
                    c: c.as_mut_ptr(),
                    ldc,
                };
                // SAFETY: `x`, `w` hold `m` and `js` rows of `k`; `c` holds `m` rows of `ldc`.
                unsafe { kernel(p) };
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j >= js {
                            assert!(got.is_nan(), "{name}: padding ({i}, {j}) written");
                            continue;
                        }
                        let want: f64 =
                            (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum();
                        let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                        assert!(
                            (got as f64 - want).abs() <= tol,
                            "{name} m={m} js={js} k={k} ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// `prefetch_rows` deals every row of the group ahead to exactly one tile of a group, for
    /// any tile count (fewer tiles than rows, as many, more).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn prefetch_rows_deal_each_row_to_one_tile() {
        fn check<const J: usize>() {
            for nt in 1..=20 {
                let mut seen = [0usize; J];
                let mut last = 0;
                for t in 0..nt {
                    let (lo, hi) = prefetch_rows::<J>((t, nt));
                    assert!(lo <= hi && hi <= J, "J={J} nt={nt} t={t}: {lo}..{hi}");
                    assert_eq!(lo.max(last), lo, "J={J} nt={nt} t={t}: ranges out of order");
                    last = last.max(hi);
                    seen[lo..hi].iter_mut().for_each(|s| *s += 1);
                }
                assert!(seen.iter().all(|&s| s == 1), "J={J} nt={nt}: rows dealt {seen:?}");
            }
        }
        check::<1>();
        check::<3>();
        check::<4>();
    }

    /// The graph op's gradients equal candle's `matmul` backward.
    #[test]
    fn matmul_op_gradients_match_candle() {
        let a = Var::from_tensor(&values(&[2, 3, 5, 4], 11, DType::F64)).unwrap();
        let b = Var::from_tensor(&values(&[2, 3, 4, 6], 12, DType::F64)).unwrap();
        let w = values(&[2, 3, 5, 6], 13, DType::F64);
        let ours = (super::super::matmul(&a, &b).unwrap() * &w).unwrap().sum_all().unwrap();
        let theirs = (a.matmul(&b).unwrap() * &w).unwrap().sum_all().unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-12);
        let (g1, g2) = (ours.backward().unwrap(), theirs.backward().unwrap());
        for v in [&a, &b] {
            let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-12, "gradient differs by {d}");
        }
    }

    #[test]
    fn missing_library_is_a_typed_error() {
        let err = use_mkl(Path::new("/nonexistent/libmkl_rt.so")).unwrap_err();
        assert!(matches!(err, PolicyError::Blas { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/libmkl_rt.so"));
        assert_eq!(cpu_backend(), "gemm");
    }
}
