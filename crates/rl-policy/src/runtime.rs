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
    /// The decoding products' kernel (`"avx512"`, `"avx2"` or `"portable"`:
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

/// Backs the CPU storage of `t` with transparent huge pages (2 MiB on x86-64) where the kernel
/// can: `madvise(MADV_COLLAPSE)` (Linux 6.1+) on the 2 MiB pages the tensor's buffer touches
/// (the whole pages inside it when those are not all one mapping). No contents change, neither
/// the tensor's nor those of other allocations sharing its first and last huge page (most weight
/// matrices of a small model are under 2 MiB and sit next to each other in the heap, so rounding
/// the range inwards would leave them on small pages); free heap memory in those pages becomes
/// resident.
///
/// Meant for long-lived weights that are streamed from memory again and again (every decoding
/// step reads all of them): with 4 KiB pages each page is a TLB miss and a stop for the hardware
/// prefetcher. Sampling SmolLM2-135M (16 × 128 tokens, 1 thread, AMD Zen 4) took 9.7 s with its
/// weights on huge pages against 13.2 s without (median, `docs/benchmarks.md`, 2026-12-05). The
/// model loaders call it once per load, and [`crate::ops::precision::Bf16Buffers`] once per
/// buffer; a program may call it on tensors of its own. Not for buffers remade often:
/// collapsing copies the pages (collapsing a fresh bf16 copy of the weights after every update
/// made a forward + backward 4-30 % slower).
///
/// Returns the bytes that the kernel moved to huge pages (whole huge pages): 0 for an empty
/// tensor, one not on the CPU, where the kernel refuses (transparent huge pages `never`, an older
/// kernel, no free huge page), off Linux, or when the environment variable `RLZ_HUGE_PAGES` is
/// `0` (to measure without).
///
/// ```
/// use candle_core::{Device, Tensor};
///
/// let w = Tensor::arange(0f32, (4 << 20) as f32, &Device::Cpu)?;
/// let moved = rl_policy::runtime::huge_pages_for(&w);
/// assert!(moved <= 16 << 20);
/// // Values are untouched.
/// assert_eq!(w.get(12345)?.to_scalar::<f32>()?, 12345.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn huge_pages_for(t: &candle_core::Tensor) -> usize {
    use candle_core::{CpuStorage, Storage};
    if std::env::var("RLZ_HUGE_PAGES").is_ok_and(|v| v == "0") {
        return 0;
    }
    let (storage, _) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return 0;
    };
    fn span<T>(v: &[T]) -> (usize, usize) {
        (v.as_ptr() as usize, std::mem::size_of_val(v))
    }
    let (ptr, bytes) = match cpu {
        CpuStorage::U8(v) => span(v),
        CpuStorage::U32(v) => span(v),
        CpuStorage::I64(v) => span(v),
        CpuStorage::BF16(v) => span(v),
        CpuStorage::F16(v) => span(v),
        CpuStorage::F32(v) => span(v),
        CpuStorage::F64(v) => span(v),
        _ => return 0,
    };
    advise_huge_pages(ptr, bytes)
}

/// [`huge_pages_for`] on the bytes `ptr..ptr + bytes` of a live allocation.
#[allow(unsafe_code)]
fn advise_huge_pages(ptr: usize, bytes: usize) -> usize {
    #[cfg(target_os = "linux")]
    {
        /// `MADV_COLLAPSE` of Linux's `mman-common.h` (6.1+), not in every libc target yet.
        const MADV_COLLAPSE: libc::c_int = 25;
        const HUGE: usize = 2 << 20;
        if bytes == 0 {
            return 0;
        }
        // The huge pages the buffer touches (shared with its neighbours in the heap), else, when
        // that range is not all one anonymous mapping (a buffer `mmap`ed on its own), the huge
        // pages inside it.
        let outward = (ptr / HUGE * HUGE, (ptr + bytes).next_multiple_of(HUGE));
        let inward = (ptr.next_multiple_of(HUGE), (ptr + bytes) / HUGE * HUGE);
        for (start, end) in [outward, inward] {
            if end <= start {
                continue;
            }
            // SAFETY: `start..end` covers (or lies inside) an allocation the caller holds alive,
            // plus at most one huge page on each side; `MADV_COLLAPSE` changes no page's
            // contents (it copies the data into the huge page it builds, and fails on a range
            // that is not mapped), and a refusal only returns an error code.
            if unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_COLLAPSE) } == 0
            {
                return end - start;
            }
        }
        0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (ptr, bytes);
        0
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// The anonymous huge pages of the mapping holding `addr`, from `/proc/self/smaps` (kB).
    fn anon_huge_kb(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = head.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
            } else if inside && let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
        None
    }

    /// What `huge_pages_for` reports moved is backed by huge pages afterwards (per the kernel's
    /// own accounting), and the values are unchanged; where the kernel refuses it reports 0.
    #[test]
    fn huge_pages_for_reports_what_the_kernel_did() {
        if std::env::var("RLZ_HUGE_PAGES").is_ok_and(|v| v == "0") {
            return;
        }
        let n: usize = 3 << 20;
        let w = Tensor::arange(0u32, n as u32, &Device::Cpu).unwrap();
        let moved = super::huge_pages_for(&w);
        let values = w.to_vec1::<u32>().unwrap();
        assert!(values.iter().enumerate().all(|(i, &v)| v as usize == i));
        let (s, _) = w.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::U32(v)) = &*s else {
            panic!("a CPU u32 tensor");
        };
        let addr = v.as_ptr() as usize + (4 << 20);
        assert!(moved <= (4 * n).next_multiple_of(2 << 20) + (2 << 20), "moved {moved}");
        if moved > 0 {
            let huge = anon_huge_kb(addr).expect("the buffer's mapping in /proc/self/smaps");
            assert!(huge * 1024 >= moved as u64, "{huge} kB of huge pages after {moved} B");
        }
        eprintln!("huge_pages_for: {moved} bytes moved to huge pages");
        assert_eq!(
            super::huge_pages_for(
                &Tensor::zeros(0, candle_core::DType::F32, &Device::Cpu).unwrap()
            ),
            0
        );
    }
}
