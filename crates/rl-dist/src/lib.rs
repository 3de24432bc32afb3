//! # rl-dist
//!
//! Data-parallel plumbing for rl-zero: how ranks find each other, talk, and get started.
//!
//! * [`DistEnv`]: the launch environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//!   `MASTER_PORT`, with Slurm fallbacks), so `torchrun --no-python`, `srun` and [`Launcher`]
//!   all work.
//! * [`TcpGroup`]: a TCP rendezvous on `MASTER_ADDR:MASTER_PORT` and a CPU implementation of
//!   [`rl_core::dist::ProcessGroup`] on top of it. **For development and tests only**, not a
//!   performance path (rank 0 is a hub; see the [`tcp`] module for the reduction order).
//! * [`Launcher`] / [`launch()`]: start `N` local ranks, prefix their output with `[rank N]`, tear
//!   the group down when one fails.
//! * `NcclGroup` (feature `nccl`): NCCL collectives on candle's CUDA stream, with the unique id
//!   handed out by the TCP rendezvous. **Compiled, never run** in rl-zero's CI (no GPU): treat
//!   it as untested until it has run on GPUs.
//! * [`init`]: the process group the environment asks for ([`SingleProcess`] when none).
//!
//! The trait, the failure contract and the gradient helpers live in [`rl_core::dist`].
//!
//! ```
//! use rl_core::dist::ProcessGroup;
//!
//! // Not launched (no RANK / WORLD_SIZE): a group of one.
//! let pg = rl_dist::init_from(|_| None)?;
//! assert_eq!((pg.rank(), pg.world_size(), pg.backend()), (0, 1, "single"));
//! # Ok::<(), rl_core::Error>(())
//! ```

pub mod env;
pub mod launch;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod tcp;
mod wire;

pub use env::DistEnv;
pub use launch::{LaunchReport, Launcher, Stream, launch};
#[cfg(feature = "nccl")]
pub use nccl::{NcclGroup, NcclRoot};
pub use rl_core::dist::{DistError, ProcessGroup, ReduceOp, SingleProcess};
pub use tcp::TcpGroup;
pub use wire::PROTOCOL_VERSION;

/// The CPU process group the process environment describes: a [`TcpGroup`] when `RANK` /
/// `WORLD_SIZE` (or Slurm's) say `WORLD_SIZE > 1`, else [`SingleProcess`]. (The NCCL group
/// needs a CUDA device: build it with `NcclGroup::init`.)
pub fn init() -> rl_core::Result<Box<dyn ProcessGroup>> {
    init_from(|k| std::env::var(k).ok())
}

/// [`init`] over any variable lookup.
pub fn init_from(get: impl Fn(&str) -> Option<String>) -> rl_core::Result<Box<dyn ProcessGroup>> {
    match DistEnv::from_lookup(get)? {
        Some(env) if env.world_size > 1 => Ok(Box::new(TcpGroup::init(&env)?)),
        _ => Ok(Box::new(SingleProcess)),
    }
}
