//! The process-wide knobs of a training or sampling program, set once by [`init`]: the
//! allocator's reuse of freed memory, rayon's global thread pool, and the CPU BLAS backend.
//!
//! They live here, not in the model code, because each one is global and permanent: call
//! [`init`] once, first thing in `main`, on the thread that drives the work. The measurements
//! behind each setting are in `docs/benchmarks.md`.
//!
//! ```standalone_crate
//! use rl_policy::runtime::{self, Blas, RuntimeOptions};
//!
//! let done = runtime::init(RuntimeOptions { threads: Some(1), blas: Blas::Gemm, ..Default::default() })?;
//! assert_eq!(done.threads, 1);
//! assert_eq!(done.blas, "gemm");
//! assert_eq!(rayon::current_num_threads(), 1);
//! # Ok::<(), rl_policy::PolicyError>(())
//! ```

use std::path::PathBuf;

use crate::Result;

/// Which library runs the CPU matrix products.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Blas {
    /// The environment variable `RLZ_BLAS` decides ([`crate::ops::blas::use_blas_from_env`]):
    /// unset, empty or `gemm` is the `gemm` crate, anything else the path of `libmkl_rt.so`.
    #[default]
    FromEnv,
    /// The `gemm` crate (candle's CPU backend).
    Gemm,
    /// Intel MKL's `libmkl_rt.so` at this path, opened at run time
    /// ([`crate::ops::blas::use_mkl`]).
    Mkl(PathBuf),
}

/// What [`init`] should set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Threads of rayon's global pool, which runs every parallel CPU kernel. `None`: rayon's
    /// default (`RAYON_NUM_THREADS`, else every logical CPU). [`threads_from_env`] tells
    /// whether the user set a count.
    pub threads: Option<usize>,
    /// Make the calling thread worker 0 of the pool ([`join_global_pool`]); `RLZ_JOIN_POOL=0`
    /// turns it off. Default `true`.
    pub join_pool: bool,
    /// Keep freed memory in the process for reuse ([`retain_freed_memory`]);
    /// `RLZ_RETAIN_MEMORY=0` turns it off. Default `true`.
    pub retain_freed_memory: bool,
    /// The CPU BLAS backend. Default [`Blas::FromEnv`].
    pub blas: Blas,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self { threads: None, join_pool: true, retain_freed_memory: true, blas: Blas::FromEnv }
    }
}

/// What [`init`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeReport {
    /// The allocator keeps freed memory ([`retain_freed_memory`] applied).
    pub retained_freed_memory: bool,
    /// `true` when [`init`] built rayon's global pool (with the calling thread as worker 0 when
    /// [`RuntimeOptions::join_pool`]); `false` when the pool already existed.
    pub built_pool: bool,
    /// Threads of rayon's global pool now.
    pub threads: usize,
    /// The CPU matrix-product backend: `"gemm"` or `"mkl:<path>"`
    /// ([`crate::ops::blas::cpu_backend`]).
    pub blas: String,
    /// How bf16 matrix products run on the CPU now ([`crate::ops::blas::bf16_path`]).
    pub bf16: crate::ops::blas::Bf16Path,
    /// The decoding products' kernel (`"avx512"`, `"avx2"`, `"portable"` or `"mkl"`:
    /// [`crate::ops::blas::decode_kernel`]); `RLZ_DECODE_KERNEL` chooses another
    /// ([`crate::ops::blas::use_decode_kernel_from_env`]).
    pub decode_kernel: &'static str,
}

/// Sets the process-wide knobs of `opts`, in order: allocator, thread pool, BLAS backend,
/// decode kernel (`RLZ_DECODE_KERNEL`).
/// Call it once, first thing in `main`, on the thread that drives the work; a second call
/// leaves the pool as it is (reported in [`RuntimeReport::built_pool`]).
///
/// # Errors
/// [`crate::PolicyError::Blas`] when the MKL library cannot be used;
/// [`crate::PolicyError::Config`] for `threads: Some(0)` or a `RLZ_DECODE_KERNEL` this CPU
/// does not run.
pub fn init(opts: RuntimeOptions) -> Result<RuntimeReport> {
    if opts.threads == Some(0) {
        return Err(crate::PolicyError::config("runtime.threads", "must be at least 1"));
    }
    let retained = opts.retain_freed_memory && retain_freed_memory();
    let built_pool = build_pool(opts.threads, opts.join_pool);
    let blas = match &opts.blas {
        Blas::FromEnv => crate::ops::blas::use_blas_from_env()?,
        Blas::Gemm => crate::ops::blas::cpu_backend(),
        Blas::Mkl(path) => {
            crate::ops::blas::use_mkl(path)?;
            crate::ops::blas::cpu_backend()
        }
    };
    Ok(RuntimeReport {
        retained_freed_memory: retained,
        built_pool,
        threads: rayon::current_num_threads(),
        blas,
        bf16: crate::ops::blas::bf16_path(),
        decode_kernel: crate::ops::blas::use_decode_kernel_from_env()?,
    })
}

/// The thread count the user asked for through `RAYON_NUM_THREADS` or `CANDLE_NUM_THREADS`
/// (a positive integer), if any. Lets a program choose its own default (one thread for a tiny
/// model, say) only when the user did not.
pub fn threads_from_env() -> Option<usize> {
    ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find_map(|v| v.trim().parse::<usize>().ok().filter(|&n| n > 0))
}

/// Builds rayon's global pool with `threads` threads (rayon's default when `None`), the calling
/// thread as worker 0 when `join` (unless `RLZ_JOIN_POOL=0`). `false` when the pool exists.
fn build_pool(threads: Option<usize>, join: bool) -> bool {
    let join = join && !std::env::var("RLZ_JOIN_POOL").is_ok_and(|v| v == "0");
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads.or_else(threads_from_env) {
        b = b.num_threads(n);
    }
    if join {
        b = b.use_current_thread();
    }
    b.build_global().is_ok()
}

/// Makes glibc's malloc serve every allocation from its heap and keep freed memory in the
/// process (`M_MMAP_MAX = 0`, `M_TRIM_THRESHOLD = i32::MAX`, `M_TOP_PAD = 256 MiB`), so freed
/// tensors' pages are reused without page faults (candle allocates every tensor afresh; glibc
/// would `mmap`/`munmap` each large one). Process-wide and permanent; resident memory then
/// stays at its high-water mark rather than shrinking between steps. [`init`] calls it.
///
/// Returns `true` when applied; `false` where it does not apply (not Linux with glibc), when the
/// environment variable `RLZ_RETAIN_MEMORY` is `0` (to measure or keep glibc's default), or when
/// glibc refused a setting. Allocations made before the call are unaffected.
///
/// ```
/// let applied = rl_policy::runtime::retain_freed_memory();
/// let off = std::env::var("RLZ_RETAIN_MEMORY").is_ok_and(|v| v == "0");
/// assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")) && !off);
/// ```
pub fn retain_freed_memory() -> bool {
    if std::env::var("RLZ_RETAIN_MEMORY").is_ok_and(|v| v == "0") {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    {
        // SAFETY: `mallopt` only changes glibc's allocation parameters (under its own arena lock);
        // it is sound to call at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Builds rayon's global pool with the calling thread as its worker 0
/// ([`rayon::ThreadPoolBuilder::use_current_thread`]) and rayon's default thread count
/// (`RAYON_NUM_THREADS`, else every logical CPU), so a parallel call from this thread splits
/// its work in place instead of handing it to a sleeping worker. [`init`] does this with an
/// explicit thread count.
///
/// Returns `true` when applied; `false` when the global pool already exists (it was used or
/// built before) or the environment variable `RLZ_JOIN_POOL` is `0` (to measure rayon's
/// default).
///
/// ```standalone_crate
/// use rayon::prelude::*;
///
/// let joined = rl_policy::runtime::join_global_pool();
/// if std::env::var("RLZ_JOIN_POOL").as_deref() != Ok("0") {
///     assert!(joined);
///     // This (main) thread is now worker 0.
///     assert_eq!(rayon::current_thread_index(), Some(0));
/// }
/// // The global pool exists now: a second call changes nothing.
/// assert!(!rl_policy::runtime::join_global_pool());
/// assert_eq!((1..=100u64).into_par_iter().sum::<u64>(), 5050);
/// ```
pub fn join_global_pool() -> bool {
    if std::env::var("RLZ_JOIN_POOL").is_ok_and(|v| v == "0") {
        return false;
    }
    rayon::ThreadPoolBuilder::new().use_current_thread().build_global().is_ok()
}
