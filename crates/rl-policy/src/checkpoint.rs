//! [`Checkpointable`] for the policy and the critic: what the trainer's checkpoints hold of them.

use std::path::Path;

use candle_core::Device;
use rl_core::checkpoint::{Checkpointable, load_vars, save_vars, set_var};

use crate::{LmPolicy, ValueModel};

/// The policy as a Hugging Face directory (`config.json`, `model.safetensors`), loadable by
/// `LanguageModel::from_hf_dir` and by transformers.
impl Checkpointable for LmPolicy {
    fn save_checkpoint(&self, dir: &Path) -> rl_core::Result<()> {
        Ok(self.model().save(dir)?)
    }

    fn load_checkpoint(&mut self, dir: &Path) -> rl_core::Result<()> {
        let path = dir.join("model.safetensors");
        let map = candle_core::safetensors::load(&path, &Device::Cpu)?;
        for (name, var) in self.model().named_vars() {
            match map.get(&name) {
                Some(t) => set_var(&var, t, &name, &path)?,
                // A tied `lm_head` is not written (as transformers); it shares the embedding.
                None if name == "lm_head.weight" => {}
                None => {
                    return Err(rl_core::Error::File {
                        path,
                        reason: format!("no tensor `{name}`"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The critic's trainable vars (backbone and value head) in `critic.safetensors`.
impl Checkpointable for ValueModel {
    fn save_checkpoint(&self, dir: &Path) -> rl_core::Result<()> {
        save_vars(&dir.join("critic.safetensors"), &rl_core::Critic::trainable_vars(self))
    }

    fn load_checkpoint(&mut self, dir: &Path) -> rl_core::Result<()> {
        load_vars(&dir.join("critic.safetensors"), &rl_core::Critic::trainable_vars(self))
    }
}
