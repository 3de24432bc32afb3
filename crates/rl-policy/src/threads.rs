//! The CPU thread pool: moved to [`crate::runtime`] (this path is kept for one release).

pub use crate::runtime::join_global_pool;
