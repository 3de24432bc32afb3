//! Locating the real test model (SmolLM2-135M-Instruct, Q4_1 GGUF) for tests and benches.

use std::path::PathBuf;
use std::process::Command;

use crate::{PolicyError, Result};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Path of `SmolLM2-135M-Instruct.Q4_1.gguf`: `$RLZ_SMOLLM2_GGUF` if set, else
/// `<workspace>/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf`, fetched once with
/// `scripts/fetch_smollm2.sh` when missing.
///
/// # Errors
/// [`PolicyError::MissingFile`] when the file is absent and the fetch script fails.
pub fn smollm2_gguf() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("RLZ_SMOLLM2_GGUF") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(PolicyError::MissingFile { path: p }) };
    }
    let root = workspace_root();
    let path = root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        let status = Command::new("bash")
            .arg(root.join("scripts/fetch_smollm2.sh"))
            .current_dir(&root)
            .status();
        if !matches!(status, Ok(s) if s.success()) || !path.is_file() {
            return Err(PolicyError::MissingFile { path });
        }
    }
    Ok(path)
}
