//! Checkpoints: trainer state, optimizer moments and (through [`Checkpointable`]) the weights of
//! the policy and critic, written atomically.
//!
//! Layout of `root/step-000042/`: `trainer.json` ([`TrainerState`]), `actor_optim.safetensors`,
//! `critic_optim.safetensors` (PPO), `policy/` and `critic/` (whatever their
//! [`Checkpointable`] writes). A checkpoint is assembled in `root/.tmp-step-000042` and renamed
//! into place, then `root/latest` (holding the directory name) is replaced by a rename too: a run
//! killed during a save resumes from the previous checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainerError};
use rl_core::data::DataPosition;

pub use rl_core::checkpoint::{Checkpointable, load_vars, save_vars};

/// The trainer's own progress, saved as `trainer.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Completed training steps (rollout + update).
    pub step: u64,
    /// Actor optimizer steps taken (the LR schedule position).
    pub actor_updates: u64,
    /// Critic optimizer steps taken.
    pub critic_updates: u64,
    /// Updates skipped for a non-finite loss or gradient norm, over the whole run.
    pub skipped_updates: usize,
    /// Position of the prompt source after the last step, when it has one.
    pub data: Option<DataPosition>,
    /// The KL-in-reward controller (its adaptive `β`), when the run uses KL in the reward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_controller: Option<rl_loss::KlController>,
}

/// Name of the file in the checkpoint root that holds the latest checkpoint's directory name.
pub const LATEST: &str = "latest";

/// Directory name of the checkpoint of `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Builds a checkpoint directory `root/name` atomically: `fill` writes into a temporary directory
/// that is renamed into place, then `root/latest` is updated (by rename). Returns the directory.
///
/// # Errors
/// [`TrainerError::Checkpoint`] naming `root/name` when anything fails (a full disk, a read-only
/// directory, a failed `fill`): the temporary files are removed, and the previous checkpoints and
/// `latest` are left as they were (a same-step directory is replaced only once the new one is
/// complete).
pub fn write_atomic(
    root: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dst = root.join(name);
    let fail = |e: &dyn std::fmt::Display| {
        TrainerError::checkpoint(
            &dst,
            format!("not written ({e}); partial files removed, earlier checkpoints unchanged"),
        )
    };
    std::fs::create_dir_all(root).map_err(|e| fail(&e))?;
    let tmp = root.join(format!(".tmp-{name}"));
    let old = root.join(format!(".old-{name}"));
    let staged = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        fill(&tmp)?;
        if dst.exists() {
            std::fs::rename(&dst, &old)?;
        }
        std::fs::rename(&tmp, &dst)?;
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&tmp);
        if old.exists() && !dst.exists() {
            let _ = std::fs::rename(&old, &dst);
        }
        return Err(fail(&e));
    }
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    let latest_tmp = root.join(format!(".tmp-{LATEST}"));
    let pointed = std::fs::write(&latest_tmp, name)
        .and_then(|()| std::fs::rename(&latest_tmp, root.join(LATEST)));
    if let Err(e) = pointed {
        let _ = std::fs::remove_file(&latest_tmp);
        return Err(fail(&format!("updating {LATEST}: {e}")));
    }
    Ok(dst)
}

/// The directory of the latest complete checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    let file = root.join(LATEST);
    if !file.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&file)?;
    let dir = root.join(name.trim());
    if !dir.join("trainer.json").exists() {
        return Err(TrainerError::checkpoint(dir, "`latest` names an incomplete checkpoint"));
    }
    Ok(Some(dir))
}

/// Saves optimizer moments and the step count to `path` (safetensors; the count is stored as a
/// one-element u32 pair `[lo, hi]` named `steps`).
pub fn save_optimizer(path: &Path, steps: u64, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut all = tensors.clone();
    let words = [steps as u32, (steps >> 32) as u32];
    all.insert("steps".into(), Tensor::new(&words, &Device::Cpu)?);
    candle_core::safetensors::save(&all, path)?;
    Ok(())
}

/// Loads what [`save_optimizer`] wrote.
pub fn load_optimizer(path: &Path) -> Result<(u64, HashMap<String, Tensor>)> {
    let mut all = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| TrainerError::checkpoint(path, e.to_string()))?;
    let words = all
        .remove("steps")
        .ok_or_else(|| TrainerError::checkpoint(path, "no `steps` entry"))?
        .to_vec1::<u32>()?;
    let steps = match words.as_slice() {
        [lo, hi] => (*lo as u64) | ((*hi as u64) << 32),
        _ => return Err(TrainerError::checkpoint(path, "`steps` must hold 2 words")),
    };
    Ok((steps, all))
}

/// Deletes old checkpoints under `root`, keeping the newest `keep` (at least 1) complete
/// `step-NNNNNN` directories by step number, and never the one `root/latest` names. Also deletes
/// the `.tmp-step-*` directories that interrupted saves left behind. Call it after a save
/// succeeded. Returns the deleted checkpoint directories, oldest first.
///
/// ```
/// # fn main() -> rl_trainer::Result<()> {
/// use rl_trainer::checkpoint::{prune, write_atomic};
/// let root = tempfile::tempdir()?;
/// for step in ["step-000001", "step-000002", "step-000003"] {
///     write_atomic(root.path(), step, |d| Ok(std::fs::write(d.join("trainer.json"), "{}")?))?;
/// }
/// let deleted = prune(root.path(), 2)?;
/// assert_eq!(deleted, [root.path().join("step-000001")]);
/// assert!(root.path().join("step-000003").is_dir());
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`TrainerError::Checkpoint`] naming a directory that cannot be listed or deleted, or a
/// `latest` file naming an incomplete checkpoint.
pub fn prune(root: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let newest = latest(root)?;
    let io = |p: &Path, what: &str, e: std::io::Error| {
        TrainerError::checkpoint(p, format!("cannot {what}: {e}"))
    };
    let mut steps = Vec::new();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| io(root, "list", e))? {
        let entry = entry.map_err(|e| io(root, "list", e))?;
        if !entry.file_type().map_err(|e| io(&entry.path(), "stat", e))?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-step-") {
            stale.push(entry.path());
        } else if let Some(step) = name.strip_prefix("step-").and_then(|n| n.parse::<u64>().ok()) {
            steps.push((step, entry.path()));
        }
    }
    steps.sort();
    let excess = steps.len().saturating_sub(keep.max(1));
    let mut deleted = Vec::new();
    for (_, dir) in steps.into_iter().take(excess) {
        if newest.as_ref() == Some(&dir) {
            continue;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, "delete", e))?;
        deleted.push(dir);
    }
    for dir in stale {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, "delete", e))?;
    }
    Ok(deleted)
}
