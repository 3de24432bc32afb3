//! Process-wide allocator tuning for candle training workloads.
//!
//! candle allocates every tensor afresh and frees it when the last handle drops. glibc's malloc
//! serves each allocation above its mmap threshold (at most 32 MiB: every `(B, T, V)` logits or
//! gradient tensor, every `(B, T, I)` MLP activation) with a fresh `mmap` and returns it with
//! `munmap`, so the next tensor of that size page-faults all of its memory in again and the kernel
//! zeroes it. In a SmolLM2-135M forward + backward at 8 × 256 tokens that was 23 of 96 CPU-seconds
//! spent in the kernel (3 iterations, 2 threads). [`retain_freed_memory`] makes glibc keep freed
//! memory for reuse instead, as PyTorch's caching allocator does for its tensors: system time fell
//! to 5 s and the step got about 10 % faster (docs/benchmarks.md); peak RSS rose by about 2 %.

/// Makes glibc's malloc serve every allocation from its heap and keep freed memory in the
/// process (`M_MMAP_MAX = 0`, `M_TRIM_THRESHOLD = i32::MAX`, `M_TOP_PAD = 256 MiB`), so freed
/// tensors' pages are reused without page faults. Process-wide and permanent: call it once at the
/// start of a training program (the `rl-zero` binary, the examples and the benches do). Resident
/// memory then stays at its high-water mark rather than shrinking between steps.
///
/// Returns `true` when applied; `false` where it does not apply (not Linux with glibc), when the
/// environment variable `RLZ_RETAIN_MEMORY` is `0` (to measure or keep glibc's default), or when
/// glibc refused a setting. Allocations made before the call are unaffected.
///
/// ```
/// let applied = rl_policy::alloc::retain_freed_memory();
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
