//! Process-wide allocator tuning: moved to [`crate::runtime`] (this path is kept for one
//! release).

pub use crate::runtime::retain_freed_memory;
