//! Models: the embedded tiny model (from the source tree or compiled into the binary), GGUF files,
//! Hugging Face directories, Hub ids and checkpoints, and the policy over them.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The workspace root (holds `assets/tiny-arith`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory of the embedded tiny arithmetic model: `assets/tiny-arith` of the source tree the
/// binary was built from when it is still there, else a copy of the files compiled into the
/// binary, written once under the system temp directory (an installed `rl-zero` or a moved
/// checkout keeps working; see [`embedded_tiny_model_dir`]).
pub fn tiny_model_dir() -> PathBuf {
    let source = workspace_root().join("assets/tiny-arith");
    if source.join("config.json").is_file() {
        return source;
    }
    // On failure the source path is returned: loading it then names the missing file.
    embedded_tiny_model_dir(&std::env::temp_dir()).unwrap_or(source)
}

/// The files of `assets/tiny-arith`, compiled into the binary (520 kB).
pub(super) const TINY_FILES: [(&str, &[u8]); 5] = [
    ("config.json", include_bytes!("../../assets/tiny-arith/config.json")),
    ("generation_config.json", include_bytes!("../../assets/tiny-arith/generation_config.json")),
    ("model.safetensors", include_bytes!("../../assets/tiny-arith/model.safetensors")),
    ("tokenizer.json", include_bytes!("../../assets/tiny-arith/tokenizer.json")),
    ("tokenizer_config.json", include_bytes!("../../assets/tiny-arith/tokenizer_config.json")),
];

/// Writes the embedded tiny model's files to `parent/rl-zero-tiny-arith-<content hash>/` (once:
/// an existing complete copy is reused; a new one is written to a temporary sibling and renamed
/// into place, so concurrent processes never see half a model) and returns that directory.
pub fn embedded_tiny_model_dir(parent: &Path) -> Result<PathBuf> {
    // FNV-1a over every file: the directory name changes whenever the model does.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in TINY_FILES {
        for b in name.as_bytes().iter().chain(bytes.iter()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let dir = parent.join(format!("rl-zero-tiny-arith-{h:016x}"));
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let tmp = tempfile::Builder::new()
        .prefix("rl-zero-tiny-arith-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory under {}", parent.display()))?;
    for (name, bytes) in TINY_FILES {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match std::fs::rename(tmp.path(), &dir) {
        Ok(()) => {
            let _ = tmp.keep();
            Ok(dir)
        }
        // Another process renamed its copy first: use it.
        Err(_) if dir.join("config.json").is_file() => Ok(dir),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
}

/// `true` when `s` has the shape of a Hugging Face Hub repo id `owner/name`: two non-empty
/// parts of ASCII letters, digits, `-`, `_` and `.`, neither starting with `.` or `-`, and not
/// a `.gguf` file name.
///
/// ```
/// use rl_zero::run::is_hub_id;
/// assert!(is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
/// assert!(!is_hub_id("./x") && !is_hub_id("/nonexistent/dir") && !is_hub_id("../a/b"));
/// assert!(!is_hub_id("gpt2") && !is_hub_id("owner/model.gguf"));
/// ```
pub fn is_hub_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match s.split_once('/') {
        Some((owner, name)) => part(owner) && part(name) && !s.ends_with(".gguf"),
        None => false,
    }
}

/// Sets up the process for a run with [`rl_policy::runtime::init`] (allocator, thread pool with
/// the calling thread as worker 0, BLAS backend from `RLZ_BLAS`), pinning one thread for the
/// embedded model.
///
/// The embedded model is so small that a second thread costs more than it gains (measured: a
/// training step takes 2× longer with 2 threads than with 1 on a 2-core machine). When `model`
/// is `None` (the embedded model) and the user set neither `RAYON_NUM_THREADS` nor
/// `CANDLE_NUM_THREADS`, the pool gets one thread; otherwise the user's count or rayon's default.
///
/// Call it first thing in `main`, before any parallel work. Errors: `RLZ_BLAS` names a library
/// that cannot be loaded.
pub fn init_runtime(model: Option<&str>) -> Result<RuntimeReport> {
    let threads = (model.is_none() && runtime::threads_from_env().is_none()).then_some(1);
    let report = runtime::init(RuntimeOptions { threads, ..Default::default() })?;
    tracing::debug!(?report, "runtime");
    Ok(report)
}

/// A loaded model, and how its prompts must be written.
#[derive(Debug)]
pub struct Loaded {
    /// The base model (f32, CPU; the critic is initialised from it).
    pub model: LanguageModel,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// `true` for the embedded tiny model (plain prompts after `<bos>`, no chat template).
    pub tiny: bool,
}

/// Loads `model` in f32 on the CPU: `None` is the embedded tiny model, then an existing `.gguf`
/// file or Hugging Face directory, or (only when no such path exists and the string is shaped
/// `owner/name`, [`is_hub_id`]) a Hub repo id at `revision`.
///
/// Errors: [`RunError::ModelNotFound`] naming the path for any other string that is not an
/// existing path (`/nonexistent/dir`, `./x`, `x.gguf`): a local path never becomes a Hub
/// request; an existing file that is not `.gguf`; the loaders' errors.
pub fn load_model(model: Option<&str>, revision: &str) -> Result<Loaded> {
    let dev = Device::Cpu;
    let Some(m) = model else {
        let dir = tiny_model_dir();
        return Ok(Loaded {
            model: LanguageModel::from_hf_dir(&dir, DType::F32, &dev)
                .with_context(|| format!("loading {}", dir.display()))?,
            tokenizer: Tokenizer::from_hf_dir(&dir)?,
            tiny: true,
        });
    };
    let path = Path::new(m);
    if path.is_dir() {
        return Ok(Loaded {
            model: LanguageModel::from_hf_dir(path, DType::F32, &dev)
                .with_context(|| format!("loading {m}"))?,
            tokenizer: Tokenizer::from_hf_dir(m)?,
            tiny: false,
        });
    }
    if path.is_file() {
        if !m.ends_with(".gguf") {
            bail!(
                "model {m}: a file that is not `.gguf` (give a .gguf file, a Hugging Face directory or a Hub id)"
            );
        }
        return Ok(Loaded {
            model: LanguageModel::from_gguf(path, DType::F32, &dev)
                .with_context(|| format!("loading {m}"))?,
            tokenizer: Tokenizer::from_gguf_file(path)?,
            tiny: false,
        });
    }
    if !is_hub_id(m) {
        return Err(RunError::ModelNotFound { path: path.to_path_buf() }.into());
    }
    let (model, dir) =
        LanguageModel::from_hub(m, revision, DType::F32, &dev).with_context(|| {
            format!("model {m}: not a local path; loading it as a Hugging Face Hub id")
        })?;
    Ok(Loaded { model, tokenizer: Tokenizer::from_hf_dir(&dir)?, tiny: false })
}

/// The policy directory of a checkpoint: `dir` itself when it holds `config.json`, else
/// `dir/policy` (a `step-NNNNNN` directory), else the latest checkpoint under `dir` (a
/// checkpoint root). `None` when `dir` is none of these.
pub fn checkpoint_policy_dir(dir: &Path) -> Result<Option<PathBuf>> {
    if dir.join("config.json").is_file() {
        return Ok(Some(dir.to_path_buf()));
    }
    if dir.join("policy/config.json").is_file() {
        return Ok(Some(dir.join("policy")));
    }
    match checkpoint::latest(dir)? {
        Some(step) if step.join("policy/config.json").is_file() => Ok(Some(step.join("policy"))),
        _ => Ok(None),
    }
}

/// Loads a model for evaluation: `model` may be a checkpoint (see [`checkpoint_policy_dir`])
/// of a run on `base`, whose tokenizer and prompt style are used unless the checkpoint
/// directory holds its own `tokenizer.json`; otherwise as [`load_model`].
pub fn load_for_eval(model: Option<&str>, base: Option<&str>, revision: &str) -> Result<Loaded> {
    let Some(m) = model else { return load_model(base, revision) };
    let Some(dir) = checkpoint_policy_dir(Path::new(m))? else {
        return load_model(Some(m), revision);
    };
    let weights = LanguageModel::from_hf_dir(&dir, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading checkpoint {}", dir.display()))?;
    if dir.join("tokenizer.json").is_file() {
        return Ok(Loaded {
            model: weights,
            tokenizer: Tokenizer::from_hf_dir(&dir)?,
            tiny: false,
        });
    }
    let base = load_model(base, revision)?;
    Ok(Loaded { model: weights, tokenizer: base.tokenizer, tiny: base.tiny })
}

/// A policy over `model` that decodes with `tokenizer` and stops on its EOS ids.
pub fn policy(model: LanguageModel, tokenizer: Tokenizer) -> LmPolicy {
    let eos = tokenizer.eos_ids().to_vec();
    let mut p = LmPolicy::new(model).with_tokenizer(tokenizer);
    if !eos.is_empty() {
        p = p.with_eos_ids(eos);
    }
    p
}

/// Writes `model` (as [`load_model`] resolves it) as a Hugging Face directory an inference engine
/// serves: `config.json`, `model.safetensors` in `dtype`, `generation_config.json` and the
/// tokenizer files. `out` must not exist or be empty. Returns the bytes of weights written.
/// This is how a GGUF model (dequantized) or the embedded model reaches vLLM or SGLang
/// (`docs/rollout.md`).
pub fn export_model(model: Option<&str>, revision: &str, out: &Path, dtype: DType) -> Result<u64> {
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        bail!("export: {} is not empty", out.display());
    }
    let loaded = load_model(model, revision)?;
    let context = loaded.model.config().max_position_embeddings;
    let tokenizer = loaded.tokenizer.clone();
    let policy = policy(loaded.model, loaded.tokenizer);
    let bytes = rl_core::WeightSource::export_hf(&policy, out, dtype)
        .with_context(|| format!("export: writing {}", out.display()))?;
    rl_policy::rollout::export_tokenizer(&tokenizer, out, context)
        .with_context(|| format!("export: writing the tokenizer to {}", out.display()))?;
    Ok(bytes)
}
