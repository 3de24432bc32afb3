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

/// A letter codec for tests and examples of tiny random models: bytes `a..=z` ↔ ids `2..=27`
/// (other bytes wrap into that range), id 1 is EOS, vocabulary 32.
///
/// ```
/// use rl_policy::TextCodec;
/// let ids = rl_policy::testing_assets::Letters.encode("abz")?;
/// assert_eq!(ids, [2, 3, 27]);
/// assert_eq!(rl_policy::testing_assets::Letters.decode(&[2, 1, 27])?, "az");
/// # Ok::<(), rl_policy::PolicyError>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Letters;

impl crate::TextCodec for Letters {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(|b| (b.saturating_sub(b'a') % 26) as u32 + 2).collect())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids.iter().filter(|&&i| i >= 2).map(|&i| (b'a' + (i - 2) as u8 % 26) as char).collect())
    }
}

impl rl_core::TokenCodec for Letters {
    fn encode(&self, text: &str) -> rl_core::Result<Vec<u32>> {
        Ok(crate::TextCodec::encode(self, text)?)
    }

    fn decode(&self, ids: &[u32]) -> rl_core::Result<String> {
        Ok(crate::TextCodec::decode(self, ids)?)
    }

    fn eos_ids(&self) -> Vec<u32> {
        vec![1]
    }

    fn vocab_size(&self) -> usize {
        32
    }
}

/// The device a device test runs on: CUDA GPU 0 in a `cuda` build, else the CPU;
/// `RLZ_TEST_DEVICE=cpu` forces the CPU in a `cuda` build (to exercise a GPU build's test code
/// where there is no GPU).
///
/// # Panics
/// In a `cuda` build without a usable GPU (a device test there must not silently pass on CPU).
pub fn test_device() -> candle_core::Device {
    let forced_cpu = std::env::var("RLZ_TEST_DEVICE").is_ok_and(|d| d == "cpu");
    if cfg!(feature = "cuda") && !forced_cpu {
        candle_core::Device::new_cuda(0)
            .expect("built with `cuda`: this test needs a CUDA GPU and driver")
    } else {
        candle_core::Device::Cpu
    }
}
