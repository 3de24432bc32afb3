//! The CPU thread pool, joined by the calling thread.
//!
//! Every parallel CPU kernel here (matrix products, norms, attention, token choice) runs on
//! rayon's global pool. By default the pool's workers are threads of their own, so each parallel
//! call from the main thread queues its work, wakes a worker through a futex and sleeps until the
//! work is done. Sampling makes about 200 such calls per decoded token: with
//! `RAYON_NUM_THREADS=1` (one worker, the main thread idle) those hand-offs took 17 % of the CPU
//! samples of SmolLM2-135M sampling, in the kernel's scheduler and futex paths
//! (docs/benchmarks.md). [`join_global_pool`] makes the calling thread worker 0 of the pool, as
//! PyTorch's OpenMP runtime does for its master thread: a parallel call from it splits its work
//! in place, runs one part itself and lets the other workers steal the rest, and with one thread
//! nothing is handed off at all.

/// Builds rayon's global pool with the calling thread as its worker 0
/// ([`rayon::ThreadPoolBuilder::use_current_thread`]) and `RAYON_NUM_THREADS` threads in all
/// (rayon's default: every logical CPU when it is unset). Call it once, first thing, on the
/// thread that drives the work (the `rl-zero` binary, the examples and the benches do, on their
/// main thread); the pool lives for the rest of the process.
///
/// The calling thread takes part in the pool's work only while it is inside a parallel call
/// itself; while it blocks elsewhere, work that other threads queue waits for the remaining
/// workers. Returns `true` when applied; `false` when the global pool already exists (it was
/// used or built before) or the environment variable `RLZ_JOIN_POOL` is `0` (to measure rayon's
/// default).
///
/// ```standalone_crate
/// use rayon::prelude::*;
///
/// let joined = rl_policy::threads::join_global_pool();
/// if std::env::var("RLZ_JOIN_POOL").as_deref() != Ok("0") {
///     assert!(joined);
///     // This (main) thread is now worker 0.
///     assert_eq!(rayon::current_thread_index(), Some(0));
/// }
/// // The global pool exists now: a second call changes nothing.
/// assert!(!rl_policy::threads::join_global_pool());
/// assert_eq!((1..=100u64).into_par_iter().sum::<u64>(), 5050);
/// ```
pub fn join_global_pool() -> bool {
    if std::env::var("RLZ_JOIN_POOL").is_ok_and(|v| v == "0") {
        return false;
    }
    rayon::ThreadPoolBuilder::new().use_current_thread().build_global().is_ok()
}
