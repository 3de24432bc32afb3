//! The output directory: one run per directory, what `--overwrite` deletes, what `--resume` checks.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The run files a training run writes into its output directory `dir`: `run.toml`, the metrics
/// file (`metrics`, default `dir/metrics.jsonl`), `curves.svg` next to it, `checkpoints/` and
/// `eval/` (every evaluation's responses).
pub fn run_files(dir: &Path, metrics: Option<&Path>) -> Vec<PathBuf> {
    let metrics = metrics.map_or_else(|| dir.join("metrics.jsonl"), Path::to_path_buf);
    let curves = rl_trainer::plot::curves_path(&metrics);
    vec![dir.join("run.toml"), metrics, curves, dir.join("checkpoints"), dir.join("eval")]
}

/// Refuses a fresh run into `dir` when it is a non-empty directory, or when the metrics file
/// `metrics` (which would be appended to) already holds data: [`RunError::OutDirNotEmpty`]
/// (`resumable` picks the advice: `--resume` or `--overwrite`). A missing or empty `dir` is fine.
pub fn check_out_dir(dir: &Path, metrics: Option<&Path>, resumable: bool) -> Result<()> {
    let mut entries = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
                entries.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    }
    if let Some(m) = metrics.filter(|m| !m.starts_with(dir))
        && std::fs::metadata(m).is_ok_and(|md| md.len() > 0)
    {
        entries.push(m.display().to_string());
    }
    if entries.is_empty() {
        return Ok(());
    }
    entries.sort();
    entries.truncate(8);
    Err(RunError::OutDirNotEmpty { dir: dir.to_path_buf(), entries, resumable }.into())
}

/// Deletes the run files of `dir` ([`run_files`]) that exist; everything else in `dir` is kept.
/// Returns what was deleted.
pub fn clear_run_files(dir: &Path, metrics: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for p in run_files(dir, metrics) {
        let r = match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) => continue,
        };
        r.with_context(|| format!("--overwrite: cannot delete {}", p.display()))?;
        removed.push(p);
    }
    Ok(removed)
}

/// Before a resume: the run file must equal the saved `run.toml` (unless `allow`, which logs the
/// changes), and the latest checkpoint must fit the recipe (a critic for a value-based
/// estimator). Reads only.
pub(super) fn check_resume(
    file: &RunFile,
    root: &Path,
    allow: bool,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let saved_path = file.run.out.join("run.toml");
    if saved_path.is_file() {
        match RunFile::from_toml_file(&saved_path) {
            Ok(saved) => {
                let changes = config_changes(&saved, file)?;
                if !changes.is_empty() && !allow {
                    return Err(RunError::ConfigChanged { saved: saved_path, changes }.into());
                }
                for c in changes {
                    log(&format!("resuming with a changed setting: {c}"));
                }
            }
            Err(e) if allow => log(&format!(
                "cannot compare with the saved run file ({e:#}): resuming with the given one"
            )),
            Err(e) => {
                return Err(e.context(format!(
                    "cannot compare the run file with the saved {} (pass --allow-config-change \
                     to resume anyway)",
                    saved_path.display()
                )));
            }
        }
    } else if checkpoint::latest(root)?.is_some() {
        log(&format!(
            "no {} to compare the run file with: resuming with the given one",
            saved_path.display()
        ));
    }
    if let Some(dir) = checkpoint::latest(root)? {
        let has_critic = dir.join("critic_optim.safetensors").is_file();
        if file.algorithm.advantage.requires_values() && !has_critic {
            return Err(RunError::Checkpoint {
                path: dir,
                reason: "has no critic (the run trained without one), but the recipe's \
                         estimator needs critic values"
                    .into(),
            }
            .into());
        }
    }
    Ok(())
}
