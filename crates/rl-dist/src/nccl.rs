//! The NCCL process group (feature `nccl`): collectives on candle CUDA tensors, on candle's own
//! CUDA stream.
//!
//! **Status: compiled (`scripts/check_nccl.sh`), never run.** rl-zero's development machine has
//! no GPU; nothing here has executed. Treat it as untested until a multi-GPU run has checked
//! it against [`crate::TcpGroup`] (same inputs, same sums up to NCCL's reduction order).
//!
//! Design:
//! * rank 0 creates the NCCL unique id (`ncclGetUniqueId`, 128 bytes) and the TCP rendezvous
//!   ([`TcpGroup::init_with_blob`]) hands it to every rank;
//! * the communicator is built with `Comm::from_rank` on the CUDA device's own stream
//!   (`CudaDevice::cuda_stream`), so an all-reduce is ordered after the backward kernels that
//!   wrote the gradients and before the optimizer kernels that read them, with no extra
//!   synchronisation;
//! * `all_reduce_sum` / `broadcast` are candle in-place ops (`InplaceOp1::cuda_fwd`) on f32,
//!   f64, bf16 and f16 tensors (contiguous, possibly at an offset in their storage);
//! * the small collectives (barrier, byte all-gather, scalar counts) stay on the TCP group: they
//!   carry host values, and NCCL would need device buffers for them.
//!
//! Failure behaviour differs from the TCP backend: NCCL collectives are asynchronous, and a peer
//! that dies mid-collective can leave this rank blocked in NCCL (at the next synchronisation)
//! until NCCL's own timeout. The launcher ([`crate::Launcher`]) covers that case: the dead
//! rank's non-zero exit makes it kill the survivors. Errors NCCL *returns* become
//! [`DistError::Backend`] and poison the group. The communicator is not thread-safe: use the
//! group from the thread that created it.

use std::ffi::c_char;

use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp as NcclOp};
use candle_core::{CpuStorage, CudaStorage, Device, InplaceOp1, Layout, Tensor};
use rl_core::dist::{DistError, ProcessGroup, ReduceOp, check_root};
use rl_core::{Error, Result};

use crate::{DistEnv, TcpGroup};

/// Size of an NCCL unique id (`NCCL_UNIQUE_ID_BYTES`).
const ID_BYTES: usize = 128;

/// A process group whose tensor collectives run on NCCL (see the [module docs](self); compiled,
/// never run).
#[derive(Debug)]
pub struct NcclGroup {
    comm: Comm,
    tcp: TcpGroup,
    poisoned: Option<DistError>,
}

impl NcclGroup {
    /// Rendezvous over TCP (see [`TcpGroup::init_with_blob`]), then one NCCL communicator for
    /// `device`, which must be this rank's CUDA device (usually `Device::new_cuda(env.local_rank)`).
    ///
    /// # Errors
    /// The rendezvous' errors; [`DistError::Unsupported`] for a non-CUDA device;
    /// [`DistError::Backend`] when NCCL cannot create the id or the communicator (e.g.
    /// `libnccl.so.2` missing).
    pub fn init(env: &DistEnv, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(DistError::Unsupported {
                op: "NcclGroup::init".into(),
                what: format!("device {device:?} (NCCL needs a CUDA device)"),
            }
            .into());
        };
        let mine: Vec<u8> =
            if env.rank == 0 { NcclRoot::unique_id()?.to_vec() } else { Vec::new() };
        let (tcp, blob) = TcpGroup::init_with_blob(env, &mine)?;
        if blob.len() != ID_BYTES {
            return Err(DistError::Mismatch {
                rank: 0,
                op: "rendezvous".into(),
                what: format!("NCCL id of {} bytes, expected {ID_BYTES}", blob.len()),
            }
            .into());
        }
        let mut internal = [0 as c_char; ID_BYTES];
        for (d, s) in internal.iter_mut().zip(&blob) {
            *d = *s as c_char;
        }
        let comm =
            Comm::from_rank(cuda.cuda_stream(), env.rank, env.world_size, Id::uninit(internal))
                .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Self { comm, tcp, poisoned: None })
    }

    fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(first) => Err(DistError::Poisoned { first: first.to_string() }.into()),
            None => Ok(()),
        }
    }

    fn run(&mut self, t: &Tensor, op: Collective) -> Result<()> {
        self.check()?;
        run_collective(&self.comm, t, op, &mut self.poisoned)
    }
}

/// Runs `op` in place on `t` through `comm`; a failure NCCL returns poisons (`poisoned`).
fn run_collective(
    comm: &Comm,
    t: &Tensor,
    op: Collective,
    poisoned: &mut Option<DistError>,
) -> Result<()> {
    let name = op.name();
    if !t.device().is_cuda() {
        return Err(DistError::Unsupported {
            op: name.into(),
            what: format!("a tensor on {:?} (NCCL needs CUDA tensors)", t.device()),
        }
        .into());
    }
    if !t.is_contiguous() {
        return Err(DistError::Unsupported {
            op: name.into(),
            what: "a non-contiguous tensor".into(),
        }
        .into());
    }
    match t.inplace_op1(&NcclInPlace { comm, op }) {
        Ok(()) => Ok(()),
        Err(e) => {
            let d = DistError::Backend { backend: "nccl".into(), reason: format!("{name}: {e}") };
            *poisoned = Some(d.clone());
            Err(d.into())
        }
    }
}

/// Rank 0 of an NCCL communicator whose other ranks live in another program — an inference
/// engine's workers receiving trained weights (`rl-rollout`'s NCCL weight sync, with
/// `scripts/vllm/rlz_vllm_ext.py` on the vLLM side). **Compiled, never run** (see the
/// [module docs](self)).
///
/// The other program learns the 128-byte id from [`NcclRoot::unique_id`] out of band (over
/// HTTP for vLLM), and [`NcclRoot::connect`] must run while its ranks call
/// `ncclCommInitRank` with the same id and world size: the call blocks until every rank joined.
#[derive(Debug)]
pub struct NcclRoot {
    comm: Comm,
    world_size: usize,
    poisoned: Option<DistError>,
}

impl NcclRoot {
    /// A fresh NCCL unique id (`ncclGetUniqueId`), as the bytes the other ranks need.
    ///
    /// # Errors
    /// [`DistError::Backend`] when NCCL cannot create it (e.g. `libnccl.so.2` missing).
    pub fn unique_id() -> Result<[u8; ID_BYTES]> {
        let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        let mut out = [0u8; ID_BYTES];
        for (d, s) in out.iter_mut().zip(id.internal()) {
            *d = *s as u8;
        }
        Ok(out)
    }

    /// Joins the communicator `id` of `world_size` ranks as rank 0 on `device` (a CUDA device;
    /// collectives run on its stream). Blocks until every rank joined.
    ///
    /// # Errors
    /// [`DistError::Unsupported`] for a non-CUDA device or a world of one rank;
    /// [`DistError::Backend`] when `ncclCommInitRank` fails.
    pub fn connect(device: &Device, id: &[u8; ID_BYTES], world_size: usize) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(DistError::Unsupported {
                op: "NcclRoot::connect".into(),
                what: format!("device {device:?} (NCCL needs a CUDA device)"),
            }
            .into());
        };
        if world_size < 2 {
            return Err(DistError::Unsupported {
                op: "NcclRoot::connect".into(),
                what: format!("a world of {world_size} rank (nobody to broadcast to)"),
            }
            .into());
        }
        let mut internal = [0 as c_char; ID_BYTES];
        for (d, s) in internal.iter_mut().zip(id) {
            *d = *s as c_char;
        }
        let comm = Comm::from_rank(cuda.cuda_stream(), 0, world_size, Id::uninit(internal))
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Self { comm, world_size, poisoned: None })
    }

    /// Ranks in the communicator (this one included).
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Sends `tensor` (contiguous, f32 / f64 / bf16 / f16, on this root's device) to every
    /// other rank: `ncclBroadcast` with root 0, queued on candle's stream.
    ///
    /// # Errors
    /// [`DistError::Unsupported`] for a CPU or non-contiguous tensor; [`DistError::Backend`]
    /// when NCCL fails (the communicator is then poisoned: later calls return
    /// [`DistError::Poisoned`]).
    pub fn broadcast(&mut self, tensor: &Tensor) -> Result<()> {
        if let Some(first) = &self.poisoned {
            return Err(DistError::Poisoned { first: first.to_string() }.into());
        }
        run_collective(&self.comm, tensor, Collective::Broadcast(0), &mut self.poisoned)
    }
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> Error {
    DistError::Backend { backend: "nccl".into(), reason: format!("{what}: {e:?}") }.into()
}

#[derive(Clone, Copy, Debug)]
enum Collective {
    AllReduceSum,
    Broadcast(i32),
}

impl Collective {
    fn name(self) -> &'static str {
        match self {
            Self::AllReduceSum => "all_reduce_sum",
            Self::Broadcast(_) => "broadcast",
        }
    }
}

/// The in-place NCCL collective as a candle op, so it sees the tensor's device buffer.
struct NcclInPlace<'a> {
    comm: &'a Comm,
    op: Collective,
}

impl InplaceOp1 for NcclInPlace<'_> {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("NCCL collective on a CPU tensor")
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL collective on a non-contiguous tensor")
        };
        macro_rules! go {
            ($slice:expr) => {{
                let mut view = $slice.slice_mut(a..b);
                let r = match self.op {
                    Collective::AllReduceSum => {
                        self.comm.all_reduce_in_place(&mut view, &NcclOp::Sum)
                    }
                    Collective::Broadcast(root) => self.comm.broadcast_in_place(&mut view, root),
                };
                r.map(|_| ()).map_err(|e| candle_core::Error::msg(format!("NCCL: {e:?}")))
            }};
        }
        match &mut s.slice {
            CudaStorageSlice::F32(x) => go!(x),
            CudaStorageSlice::F64(x) => go!(x),
            CudaStorageSlice::BF16(x) => go!(x),
            CudaStorageSlice::F16(x) => go!(x),
            _ => candle_core::bail!("NCCL collective: only f32, f64, bf16 and f16 tensors"),
        }
    }
}

impl ProcessGroup for NcclGroup {
    fn rank(&self) -> usize {
        self.tcp.rank()
    }

    fn world_size(&self) -> usize {
        self.tcp.world_size()
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    /// NCCL `ncclAllReduce(ncclSum)` in place on candle's stream (asynchronous: ordered with the
    /// stream's other kernels; NCCL's ring / tree order, deterministic for a fixed topology and
    /// NCCL version, not equal to the TCP backend's rank order).
    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<()> {
        self.run(tensor, Collective::AllReduceSum)
    }

    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<()> {
        check_root(root, self.world_size())?;
        let root = i32::try_from(root).map_err(|_| DistError::RankOutOfRange {
            what: "root".into(),
            rank: root,
            world_size: self.world_size(),
        })?;
        self.run(tensor, Collective::Broadcast(root))
    }

    /// A host-side barrier over TCP (it does not wait for queued GPU work).
    fn barrier(&mut self) -> Result<()> {
        self.check()?;
        self.tcp.barrier()
    }

    fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.check()?;
        self.tcp.all_gather_bytes(mine)
    }

    fn all_reduce_u64(&mut self, values: &mut [u64], op: ReduceOp) -> Result<()> {
        self.check()?;
        self.tcp.all_reduce_u64(values, op)
    }

    fn all_reduce_f64(&mut self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        self.check()?;
        self.tcp.all_reduce_f64(values, op)
    }
}
