//! What goes into a checkpoint: the [`Checkpointable`] trait that the trainer calls for the policy,
//! the critic and any stage with state, plus helpers to save plain [`Var`] lists.
//!
//! The trainer owns the layout and the atomic write (`rl-trainer`'s `checkpoint` module); a
//! `Checkpointable` only fills (or reads) the directory it is given.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};

use crate::{Error, Result};

/// Something whose state goes into a checkpoint directory (policy and critic weights; rl-policy
/// writes Hugging Face safetensors here; a stateful reward or prompt curriculum can too).
///
/// ```
/// use std::path::Path;
/// use rl_core::checkpoint::Checkpointable;
///
/// /// A counter that survives restarts.
/// struct Steps(u64);
/// impl Checkpointable for Steps {
///     fn save_checkpoint(&self, dir: &Path) -> rl_core::Result<()> {
///         Ok(std::fs::write(dir.join("steps.txt"), self.0.to_string())?)
///     }
///     fn load_checkpoint(&mut self, dir: &Path) -> rl_core::Result<()> {
///         let text = std::fs::read_to_string(dir.join("steps.txt"))?;
///         self.0 = text.trim().parse().map_err(rl_core::Error::wrap)?;
///         Ok(())
///     }
/// }
/// let dir = std::env::temp_dir().join(format!("rlz-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// Steps(41).save_checkpoint(&dir)?;
/// let mut s = Steps(0);
/// s.load_checkpoint(&dir)?;
/// assert_eq!(s.0, 41);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), rl_core::Error>(())
/// ```
pub trait Checkpointable {
    /// Writes the state into the (existing, empty) directory `dir`.
    fn save_checkpoint(&self, dir: &Path) -> Result<()>;

    /// Restores the state written by [`Checkpointable::save_checkpoint`] from `dir`.
    fn load_checkpoint(&mut self, dir: &Path) -> Result<()>;
}

/// Saves `vars` as `var.{i}` tensors in one safetensors file (for models without a named format).
///
/// # Errors
/// I/O and tensor errors.
pub fn save_vars(path: &Path, vars: &[Var]) -> Result<()> {
    let map: HashMap<String, Tensor> = vars
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("var.{i}"), v.as_tensor().detach()))
        .collect();
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

/// Loads what [`save_vars`] wrote into `vars` (same order, shapes and count).
///
/// # Errors
/// [`Error::File`] naming `path` for a wrong count, a missing entry or a wrong shape.
pub fn load_vars(path: &Path, vars: &[Var]) -> Result<()> {
    let bad = |reason: String| Error::File { path: path.to_path_buf(), reason };
    let map = candle_core::safetensors::load(path, &Device::Cpu)?;
    if map.len() != vars.len() {
        return Err(bad(format!("{} tensors for {} vars", map.len(), vars.len())));
    }
    for (i, var) in vars.iter().enumerate() {
        let t = map.get(&format!("var.{i}")).ok_or_else(|| bad(format!("no `var.{i}`")))?;
        set_var(var, t, &format!("var.{i}"), path)?;
    }
    Ok(())
}

/// `var ← t` (moved to the var's device and dtype) after a shape check; `name` and `path` name
/// the tensor and file in the error.
///
/// # Errors
/// [`Error::File`] for a shape mismatch.
pub fn set_var(var: &Var, t: &Tensor, name: &str, path: &Path) -> Result<()> {
    if t.dims() != var.dims() {
        return Err(Error::File {
            path: path.to_path_buf(),
            reason: format!("`{name}`: shape {:?}, the model has {:?}", t.dims(), var.dims()),
        });
    }
    var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    Ok(())
}
