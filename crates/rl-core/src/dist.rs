//! Data-parallel collectives: the [`ProcessGroup`] trait, its single-process implementation
//! and the gradient / count helpers a trainer needs under data parallelism.
//!
//! A data-parallel (DP) run starts `N` processes ("ranks", `0..N`), each with a full copy of the
//! model, each on a different part of the global batch. After the backward pass the ranks
//! **sum** their gradients ([`all_reduce_grads`]) and every rank applies the same optimizer
//! step, so the replicas stay identical. When every loss is normalised by *global* counts
//! ([`all_reduce_counts`]), the summed gradient is the gradient of the whole global batch: no
//! `1/N` factor appears anywhere.
//!
//! Backends live elsewhere (`rl-dist`: a TCP backend for CPU development and tests, NCCL for
//! CUDA); this module only defines the contract and [`SingleProcess`], the trivial group of one
//! rank, so single-process code can call the same functions unconditionally.
//!
//! ## Failure contract (every backend)
//!
//! Collectives are *blocking* and must be called by every rank in the same order with
//! compatible arguments (same shape and dtype for tensors, same length for scalar slices, same
//! root). When a peer dies, closes its connection, sends something incompatible or does not
//! answer within the backend's timeout, the call returns an [`Error::Dist`] whose
//! [`DistError`] names that peer's rank ([`DistError::PeerFailed`], [`DistError::Timeout`],
//! [`DistError::Mismatch`]); it never hangs past the timeout. After any such error the group is
//! *poisoned*: later calls return [`DistError::Poisoned`] at once. A DP run cannot continue with
//! a missing replica, so the right reaction is to return the error and exit non-zero (the
//! launcher then tears the other ranks down). On error, the data passed in is unspecified for
//! device backends (NCCL) and unchanged for the TCP backend.
//!
//! ```
//! use rl_core::dist::{ProcessGroup, ReduceOp, SingleProcess};
//! use rl_core::{Device, Tensor};
//!
//! let mut pg = SingleProcess;
//! let t = Tensor::new(&[1.5f64, -2.0], &Device::Cpu)?;
//! pg.all_reduce_sum(&t)?; // the sum over one rank: unchanged
//! assert_eq!(t.to_vec1::<f64>()?, [1.5, -2.0]);
//! let mut tokens = [7u64];
//! pg.all_reduce_u64(&mut tokens, ReduceOp::Sum)?;
//! assert_eq!(tokens, [7]);
//! assert_eq!(pg.all_gather_bytes(b"hi")?, vec![b"hi".to_vec()]);
//! # Ok::<(), rl_core::Error>(())
//! ```

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::{Error, GlobalCounts, Result};

/// Largest byte buffer one rank may contribute to [`ProcessGroup::all_gather_bytes`] (1 MiB).
/// The collective is meant for small things (metrics, data positions, ids); a larger buffer is
/// a [`DistError::TooLarge`].
pub const MAX_GATHER_BYTES: usize = 1 << 20;

/// Largest number of values in one scalar all-reduce ([`ProcessGroup::all_reduce_u64`],
/// [`ProcessGroup::all_reduce_f64`]): 65 536. Scalars are counts and flags, not tensors.
pub const MAX_SCALARS: usize = 1 << 16;

/// Default size of one flat gradient bucket in [`all_reduce_grads`]: 64 MiB.
pub const DEFAULT_BUCKET_BYTES: usize = 64 << 20;

/// How the values of the ranks are combined by a scalar all-reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// The sum over ranks (for `u64`: an overflow is a [`DistError::Overflow`]).
    Sum,
    /// The maximum over ranks (for `f64`: NaN wins, so a NaN on any rank is seen by all).
    Max,
    /// The minimum over ranks (for `f64`: NaN wins).
    Min,
}

impl ReduceOp {
    /// `a ∘ b` for `u64`, `None` on overflow.
    pub fn apply_u64(self, a: u64, b: u64) -> Option<u64> {
        match self {
            Self::Sum => a.checked_add(b),
            Self::Max => Some(a.max(b)),
            Self::Min => Some(a.min(b)),
        }
    }

    /// `a ∘ b` for `f64` (NaN-propagating for `Max` / `Min`).
    pub fn apply_f64(self, a: f64, b: f64) -> f64 {
        match self {
            Self::Sum => a + b,
            _ if a.is_nan() || b.is_nan() => f64::NAN,
            Self::Max => a.max(b),
            Self::Min => a.min(b),
        }
    }
}

/// What can go wrong in a collective, a rendezvous or a launch. Carried by [`Error::Dist`].
///
/// Every variant that involves a peer names its rank, so a failing DP run says *which* process
/// to look at.
///
/// Serialisable, so a backend can forward the exact error one rank saw to the others (the TCP
/// backend's rank 0 does: every survivor reports the same failed rank).
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum DistError {
    /// A launch environment variable is missing or malformed.
    #[error("environment variable `{var}`: {reason}")]
    Env {
        /// The variable (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, ...).
        var: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The rendezvous did not complete in time.
    #[error(
        "rendezvous on {addr} timed out after {waited_s:.1} s; missing ranks {missing:?}{detail}"
    )]
    RendezvousTimeout {
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// Seconds waited.
        waited_s: f64,
        /// Ranks that never joined (for a non-zero rank that could not reach rank 0: `[0]`).
        missing: Vec<usize>,
        /// Extra context (rejected peers, last connection error), starting with `"; "` or empty.
        detail: String,
    },
    /// The rendezvous could not start (rank 0 cannot listen on the address, a bad address).
    #[error("rendezvous on {addr}: {reason}")]
    Rendezvous {
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// A peer was rejected at the rendezvous (or rejected us): wrong world size, run id,
    /// protocol version or a duplicate rank.
    #[error("rendezvous handshake{}: {reason}", rank.map(|r| format!(" with rank {r}")).unwrap_or_default())]
    Handshake {
        /// The peer's rank, when known.
        rank: Option<usize>,
        /// What did not match.
        reason: String,
    },
    /// A peer closed its connection, died or reported its own failure during a collective.
    #[error("rank {rank} failed during `{op}`: {reason}")]
    PeerFailed {
        /// The failed peer.
        rank: usize,
        /// The collective in progress (`"all_reduce_sum"`, ...).
        op: String,
        /// What was observed (connection reset, end of stream, the peer's own error).
        reason: String,
    },
    /// A peer did not answer within the timeout.
    #[error("rank {rank} did not answer `{op}` within {waited_s:.1} s")]
    Timeout {
        /// The silent peer.
        rank: usize,
        /// The collective in progress.
        op: String,
        /// Seconds waited.
        waited_s: f64,
    },
    /// A peer called a different collective, or the same one with an incompatible shape, dtype,
    /// length or root (the ranks are out of step: a bug in the caller).
    #[error("rank {rank} is out of step in `{op}`: {what}")]
    Mismatch {
        /// The peer whose message did not match.
        rank: usize,
        /// The collective this rank was running.
        op: String,
        /// What differed.
        what: String,
    },
    /// A buffer exceeds a bound ([`MAX_GATHER_BYTES`], [`MAX_SCALARS`], a frame limit).
    #[error("`{what}` has {size} elements/bytes, more than the maximum {max}")]
    TooLarge {
        /// Which buffer.
        what: String,
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// A tensor this backend cannot reduce in place (dtype, device or layout).
    #[error("`{op}` does not support {what}")]
    Unsupported {
        /// The collective.
        op: String,
        /// What is unsupported (e.g. `"dtype u8"`, `"a non-contiguous tensor"`).
        what: String,
    },
    /// A `u64` sum overflowed.
    #[error("`{op}`: u64 sum overflows")]
    Overflow {
        /// The collective.
        op: String,
    },
    /// A root or rank argument outside `0..world_size`.
    #[error("{what} {rank} is not a rank of a group of {world_size}")]
    RankOutOfRange {
        /// Which argument (`"root"`, `"RANK"`).
        what: String,
        /// The value given.
        rank: usize,
        /// The group size.
        world_size: usize,
    },
    /// An earlier collective failed; the group cannot be used any more.
    #[error("process group unusable after an earlier failure: {first}")]
    Poisoned {
        /// The first failure.
        first: String,
    },
    /// A launched rank exited unsuccessfully (the launcher's error).
    #[error("rank {rank} exited with {status}")]
    RankFailed {
        /// The first rank that failed.
        rank: usize,
        /// Its exit status (`"exit status: 3"`, `"signal: 9 (SIGKILL)"`).
        status: String,
    },
    /// The launcher could not start or supervise the ranks.
    #[error("launch: {reason}")]
    Launch {
        /// What failed.
        reason: String,
    },
    /// The communication library (NCCL, ...) reported an error.
    #[error("{backend}: {reason}")]
    Backend {
        /// The backend (`"nccl"`).
        backend: String,
        /// Its error.
        reason: String,
    },
}

/// A group of cooperating processes that run collectives together (one per GPU, or several CPU
/// processes for tests).
///
/// Methods take `&mut self`: a group is driven by one thread (NCCL communicators are not
/// thread-safe), and every rank must call the same collectives in the same order. Errors follow
/// the [module's failure contract](self#failure-contract-every-backend).
pub trait ProcessGroup: std::fmt::Debug {
    /// This process's rank, in `0..world_size()`.
    fn rank(&self) -> usize;

    /// Number of ranks (≥ 1).
    fn world_size(&self) -> usize;

    /// Short backend name for logs (`"single"`, `"tcp"`, `"nccl"`).
    fn backend(&self) -> &'static str;

    /// Replaces `tensor`'s elements, **in place**, by their element-wise sum over all ranks.
    ///
    /// Any shape; the same shape and dtype on every rank. Every backend supports f32 and f64
    /// (the TCP backend also bf16 and f16, accumulated in f32 and rounded once); the tensor
    /// must be contiguous and on the backend's device (CPU for TCP, the communicator's GPU for
    /// NCCL). The write goes to the tensor's storage, so other tensors sharing that storage
    /// (views) see it too. Whether the sum is bitwise reproducible, and in which order it is
    /// taken, is documented per backend.
    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<()>;

    /// Overwrites `tensor`, in place, on every rank with its value on rank `root`.
    ///
    /// Same shape and dtype on every rank; the same dtype / layout / device rules as
    /// [`all_reduce_sum`](Self::all_reduce_sum). `root ≥ world_size()` is a
    /// [`DistError::RankOutOfRange`].
    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<()>;

    /// Returns once every rank has called `barrier`.
    fn barrier(&mut self) -> Result<()>;

    /// Every rank's `mine`, indexed by rank (`out[self.rank()] == mine`).
    ///
    /// The buffers may differ in length across ranks; each is at most [`MAX_GATHER_BYTES`]
    /// (else [`DistError::TooLarge`]).
    fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// Combines `values` element-wise over all ranks with `op`, in place (global token and
    /// sequence counts). Same length on every rank, at most [`MAX_SCALARS`].
    fn all_reduce_u64(&mut self, values: &mut [u64], op: ReduceOp) -> Result<()>;

    /// Combines `values` element-wise over all ranks with `op`, in place. Same length on every
    /// rank, at most [`MAX_SCALARS`]. Sums are taken in rank order (`((v₀ + v₁) + v₂) + …`), so
    /// every rank gets the same bits.
    fn all_reduce_f64(&mut self, values: &mut [f64], op: ReduceOp) -> Result<()>;
}

/// The group of one process: every collective returns its input unchanged (after the same
/// argument checks as a real backend, so single-process runs catch misuse too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SingleProcess;

impl ProcessGroup for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn backend(&self) -> &'static str {
        "single"
    }

    fn all_reduce_sum(&mut self, _tensor: &Tensor) -> Result<()> {
        Ok(())
    }

    fn broadcast(&mut self, _tensor: &Tensor, root: usize) -> Result<()> {
        check_root(root, 1)
    }

    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }

    fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        check_len("all_gather_bytes", mine.len(), MAX_GATHER_BYTES)?;
        Ok(vec![mine.to_vec()])
    }

    fn all_reduce_u64(&mut self, values: &mut [u64], _op: ReduceOp) -> Result<()> {
        check_len("all_reduce_u64", values.len(), MAX_SCALARS)
    }

    fn all_reduce_f64(&mut self, values: &mut [f64], _op: ReduceOp) -> Result<()> {
        check_len("all_reduce_f64", values.len(), MAX_SCALARS)
    }
}

/// [`DistError::RankOutOfRange`] unless `root < world_size`.
pub fn check_root(root: usize, world_size: usize) -> Result<()> {
    if root < world_size {
        Ok(())
    } else {
        Err(DistError::RankOutOfRange { what: "root".into(), rank: root, world_size }.into())
    }
}

/// [`DistError::TooLarge`] unless `len ≤ max`.
pub fn check_len(what: &str, len: usize, max: usize) -> Result<()> {
    if len <= max {
        Ok(())
    } else {
        Err(DistError::TooLarge { what: what.into(), size: len, max }.into())
    }
}

/// Sums the gradients of `vars` in `grads` over all ranks, in place in the store: after the
/// call every rank holds the same `Σ_ranks grad` for every var.
///
/// * Which vars take part is agreed first (one `u64` all-reduce of presence flags): a var with
///   a gradient on some rank but not on this one gets zeros here; a var with no gradient on any
///   rank stays absent (so an optimizer that skips absent gradients behaves as in one
///   process). `vars` must be the same list, in the same order, on every rank.
/// * The gradients are copied into flat buckets of one dtype and at most `bucket_bytes` bytes
///   each (a gradient larger than that is a bucket of its own), each bucket is all-reduced with
///   [`ProcessGroup::all_reduce_sum`], and the store's entries are replaced by views of the
///   reduced buckets (same shapes and dtypes as before). `bucket_bytes = 0` means
///   [`DEFAULT_BUCKET_BYTES`].
/// * A gradient whose shape differs from its var's is an [`Error::ShapeMismatch`].
///
/// With loss terms normalised by global counts, the result is the gradient of the global batch
/// (up to the backend's summation order).
///
/// ```
/// use candle_core::backprop::GradStore;
/// use rl_core::dist::{SingleProcess, all_reduce_grads};
/// use rl_core::{Device, Tensor, Var};
///
/// let w = Var::new(&[1f64, 2.0], &Device::Cpu)?;
/// let loss = (w.as_tensor() * 3.0)?.sum_all()?;
/// let mut grads: GradStore = loss.backward()?;
/// all_reduce_grads(&mut SingleProcess, &mut grads, &[w.clone()], 0)?;
/// assert_eq!(grads.get(w.as_tensor()).unwrap().to_vec1::<f64>()?, [3.0, 3.0]);
/// # Ok::<(), rl_core::Error>(())
/// ```
pub fn all_reduce_grads(
    pg: &mut dyn ProcessGroup,
    grads: &mut GradStore,
    vars: &[Var],
    bucket_bytes: usize,
) -> Result<()> {
    check_len("all_reduce_grads vars", vars.len(), MAX_SCALARS)?;
    let bucket_bytes = if bucket_bytes == 0 { DEFAULT_BUCKET_BYTES } else { bucket_bytes };
    let mut present: Vec<u64> =
        vars.iter().map(|v| u64::from(grads.get(v.as_tensor()).is_some())).collect();
    pg.all_reduce_u64(&mut present, ReduceOp::Sum)?;

    // Participating vars, their flat gradients, grouped by dtype in first-seen order.
    let mut by_dtype: Vec<(DType, Vec<(usize, Tensor)>)> = Vec::new();
    for (i, var) in vars.iter().enumerate() {
        if present[i] == 0 {
            continue;
        }
        let t = var.as_tensor();
        let g = match grads.get(t) {
            Some(g) => {
                if g.dims() != t.dims() {
                    return Err(Error::shape(format!("gradient of var {i}"), t.dims(), g.dims()));
                }
                g.detach()
            }
            None => t.zeros_like()?,
        };
        let flat = g.flatten_all()?;
        match by_dtype.iter_mut().find(|(d, _)| *d == g.dtype()) {
            Some((_, list)) => list.push((i, flat)),
            None => by_dtype.push((g.dtype(), vec![(i, flat)])),
        }
    }

    for (dtype, list) in by_dtype {
        let mut start = 0;
        while start < list.len() {
            // Greedy bucket: at least one gradient, then as many as fit in `bucket_bytes`.
            let mut end = start + 1;
            let mut bytes = list[start].1.elem_count() * dtype.size_in_bytes();
            while end < list.len() {
                let more = list[end].1.elem_count() * dtype.size_in_bytes();
                if bytes + more > bucket_bytes {
                    break;
                }
                bytes += more;
                end += 1;
            }
            let parts: Vec<&Tensor> = list[start..end].iter().map(|(_, t)| t).collect();
            // `cat` of one tensor may return it as is: copy so the store's old tensor (which may
            // share storage with something else) is never written to.
            let bucket = if parts.len() == 1 { parts[0].copy()? } else { Tensor::cat(&parts, 0)? };
            pg.all_reduce_sum(&bucket)?;
            let mut offset = 0;
            for (i, flat) in &list[start..end] {
                let n = flat.elem_count();
                let var = vars[*i].as_tensor();
                grads.insert(var, bucket.narrow(0, offset, n)?.reshape(var.dims())?);
                offset += n;
            }
            start = end;
        }
    }
    Ok(())
}

/// Sums the batch-wide counts of `counts` over all ranks (one `f64` all-reduce, in rank order):
/// `tokens`, `sequences` and `groups`. `group_tokens` is left as is: under DP every group lives
/// on one rank (ranks keep whole groups), so per-group counts are already global. Each `None`
/// must be `None` on every rank (it is sent as NaN and comes back `None` if any rank had it
/// unset, so a mismatch cannot go unnoticed into a loss: it becomes `None`).
///
/// ```
/// use rl_core::GlobalCounts;
/// use rl_core::dist::{SingleProcess, all_reduce_counts};
///
/// let mut c = GlobalCounts { tokens: Some(12.0), ..Default::default() };
/// all_reduce_counts(&mut SingleProcess, &mut c)?;
/// assert_eq!(c.tokens, Some(12.0));
/// assert_eq!(c.groups, None);
/// # Ok::<(), rl_core::Error>(())
/// ```
pub fn all_reduce_counts(pg: &mut dyn ProcessGroup, counts: &mut GlobalCounts) -> Result<()> {
    let mut v = [counts.tokens, counts.sequences, counts.groups].map(|c| c.unwrap_or(f64::NAN));
    pg.all_reduce_f64(&mut v, ReduceOp::Sum)?;
    let back = |x: f64| if x.is_nan() { None } else { Some(x) };
    counts.tokens = back(v[0]);
    counts.sequences = back(v[1]);
    counts.groups = back(v[2]);
    Ok(())
}

/// `true` on every rank when `flag` is `true` on at least one rank (e.g. "my loss or gradient
/// norm is non-finite: skip this step", decided together so the replicas stay identical).
///
/// ```
/// use rl_core::dist::{SingleProcess, any_rank};
/// assert!(any_rank(&mut SingleProcess, true)?);
/// assert!(!any_rank(&mut SingleProcess, false)?);
/// # Ok::<(), rl_core::Error>(())
/// ```
pub fn any_rank(pg: &mut dyn ProcessGroup, flag: bool) -> Result<bool> {
    let mut v = [u64::from(flag)];
    pg.all_reduce_u64(&mut v, ReduceOp::Max)?;
    Ok(v[0] > 0)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// A fake two-rank group in one process: the "other rank" contributes fixed values, so
    /// the helpers' bookkeeping (presence, zeros, buckets, write-back) can be checked.
    #[derive(Debug)]
    struct FakePeer {
        /// Added to every tensor element by `all_reduce_sum`.
        add: f64,
        /// The other rank's presence flags.
        peer_present: Vec<u64>,
        reduces: usize,
    }

    impl ProcessGroup for FakePeer {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn backend(&self) -> &'static str {
            "fake"
        }
        fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<()> {
            // Leaves the bucket as is: these tests check the bookkeeping around it.
            assert_eq!(tensor.rank(), 1, "buckets are flat");
            self.reduces += 1;
            Ok(())
        }
        fn broadcast(&mut self, _: &Tensor, root: usize) -> Result<()> {
            check_root(root, 2)
        }
        fn barrier(&mut self) -> Result<()> {
            Ok(())
        }
        fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
            Ok(vec![mine.to_vec(), mine.to_vec()])
        }
        fn all_reduce_u64(&mut self, values: &mut [u64], _: ReduceOp) -> Result<()> {
            for (v, p) in values.iter_mut().zip(&self.peer_present) {
                *v += p;
            }
            Ok(())
        }
        fn all_reduce_f64(&mut self, values: &mut [f64], _: ReduceOp) -> Result<()> {
            for v in values {
                *v += self.add;
            }
            Ok(())
        }
    }

    #[test]
    fn grads_get_zeros_when_only_a_peer_has_them_and_buckets_split() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1f64, 2.0, 3.0], &dev)?;
        let b = Var::new(&[[1f64, 2.0], [3.0, 4.0]], &dev)?;
        let c = Var::new(&[5f32], &dev)?;
        let d = Var::new(&[6f64], &dev)?;
        let loss = (a.as_tensor().sum_all()? * 2.0)?;
        let mut grads = loss.backward()?;
        let mut pg = FakePeer { add: 0.0, peer_present: vec![1, 1, 0, 0], reduces: 0 };
        // 16-byte buckets: a (24 B) alone, then b (32 B) alone.
        all_reduce_grads(&mut pg, &mut grads, &[a.clone(), b.clone(), c.clone(), d.clone()], 16)?;
        assert_eq!(grads.get(a.as_tensor()).unwrap().to_vec1::<f64>()?, [2.0, 2.0, 2.0]);
        assert_eq!(grads.get(b.as_tensor()).unwrap().to_vec2::<f64>()?, [[0.0, 0.0], [0.0, 0.0]]);
        assert!(grads.get(c.as_tensor()).is_none());
        assert!(grads.get(d.as_tensor()).is_none());
        assert_eq!(pg.reduces, 2);
        // One big bucket for both.
        let mut pg = FakePeer { add: 0.0, peer_present: vec![1, 1, 0, 0], reduces: 0 };
        all_reduce_grads(&mut pg, &mut grads, &[a.clone(), b.clone(), c, d], 0)?;
        assert_eq!(pg.reduces, 1);
        assert_eq!(grads.get(b.as_tensor()).unwrap().dims(), &[2, 2]);
        Ok(())
    }

    #[test]
    fn wrong_gradient_shape_is_a_shape_error() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1f64, 2.0], &dev)?;
        let mut grads = GradStore::default();
        grads.insert(a.as_tensor(), Tensor::new(&[1f64, 2.0, 3.0], &dev)?);
        let err = all_reduce_grads(&mut SingleProcess, &mut grads, &[a], 0).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn counts_sum_and_unset_stays_unset() -> Result<()> {
        let mut c = GlobalCounts { tokens: Some(3.0), sequences: Some(1.0), ..Default::default() };
        let mut pg = FakePeer { add: 4.0, peer_present: vec![], reduces: 0 };
        all_reduce_counts(&mut pg, &mut c)?;
        assert_eq!((c.tokens, c.sequences, c.groups), (Some(7.0), Some(5.0), None));
        Ok(())
    }

    #[test]
    fn single_process_checks_bounds_and_root() {
        let mut pg = SingleProcess;
        let big = vec![0u8; MAX_GATHER_BYTES + 1];
        let e = pg.all_gather_bytes(&big).unwrap_err();
        assert!(matches!(e, Error::Dist(DistError::TooLarge { .. })), "{e}");
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let e = pg.broadcast(&t, 1).unwrap_err();
        assert!(
            matches!(e, Error::Dist(DistError::RankOutOfRange { rank: 1, world_size: 1, .. })),
            "{e}"
        );
    }

    #[test]
    fn reduce_ops() {
        assert_eq!(ReduceOp::Sum.apply_u64(u64::MAX, 1), None);
        assert_eq!(ReduceOp::Max.apply_u64(3, 9), Some(9));
        assert_eq!(ReduceOp::Min.apply_u64(3, 9), Some(3));
        assert!(ReduceOp::Max.apply_f64(1.0, f64::NAN).is_nan());
        assert_eq!(ReduceOp::Min.apply_f64(1.0, -2.0), -2.0);
    }
}
