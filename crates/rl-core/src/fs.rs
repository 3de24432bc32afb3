//! File writes that never leave a partial file, shared by every crate that writes checkpoints,
//! model exports and reports.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The temporary sibling [`write_atomic`] fills for `path`: `.<file name>.tmp<pid>` in the same
/// directory (same file system, so the rename is atomic; hidden, and unique per process).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `path` through [`temp_sibling`]: `write` fills the temporary file, which is renamed
/// over `path` once `write` succeeded. Readers never see a partial file; when `write` or the
/// rename fails, the temporary file is removed and an existing `path` is left as it was.
///
/// ```
/// use rl_core::fs::write_atomic;
/// let path = std::env::temp_dir().join(format!("rlz-doc-{}.txt", std::process::id()));
/// write_atomic(&path, |tmp| std::fs::write(tmp, "v1"))?;
/// let failed: std::io::Result<()> = write_atomic(&path, |tmp| {
///     std::fs::write(tmp, "half of v2")?;
///     Err(std::io::Error::other("disk full"))
/// });
/// assert!(failed.is_err());
/// assert_eq!(std::fs::read_to_string(&path)?, "v1"); // the old file, whole
/// assert!(!rl_core::fs::temp_sibling(&path).exists()); // no leftover
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// `write`'s error, or the rename's (converted with `From<std::io::Error>`).
pub fn write_atomic<T, E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let tmp = temp_sibling(path);
    let out = write(&tmp).and_then(|v| {
        std::fs::rename(&tmp, path)?;
        Ok(v)
    });
    if out.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    out
}
