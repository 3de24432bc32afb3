//! `rl-dp-worker <dr_grpo|ppo> <steps> <out>`: one rank of a data-parallel run of the tiny
//! decoder (a random 1-layer Llama, f32); every rank writes `{"rank", "world", "params",
//! "metrics"}` to `<out>.<rank>.json` (too long for one forwarded output line). Rollouts come from a sampler that draws each
//! prompt's responses with a seed of its own (prompt index, step), so a response does not
//! depend on which rank samples it: the comparison isolates the update.

use std::sync::Arc;

use rl_core::rng::mix_seed;
use rl_core::{Device, Error, Prompt, Result, RolloutBatch, Sample, Sampler, SamplingConfig};
use rl_policy::{LanguageModel, LmPolicy, ModelConfig, TextCodec, ValueModel};
use rl_trainer::{AdamWConfig, OptimizerConfig, Trainer, TrainerConfig};
use serde_json::json;

/// Bytes `a..=z` ↔ ids `2..=27`; id 1 is EOS.
struct Letters;

impl TextCodec for Letters {
    fn encode(&self, text: &str) -> rl_policy::Result<Vec<u32>> {
        Ok(text.bytes().map(|b| (b.saturating_sub(b'a') % 26) as u32 + 2).collect())
    }

    fn decode(&self, ids: &[u32]) -> rl_policy::Result<String> {
        Ok(ids.iter().filter(|&&i| i >= 2).map(|&i| (b'a' + (i - 2) as u8 % 26) as char).collect())
    }
}

/// Samples each prompt on its own with seed `(prompt text, call)`; a handle on the trained
/// weights (an `LmPolicy` clone shares them).
struct PerPrompt {
    policy: LmPolicy,
    calls: u64,
}

impl Sampler for PerPrompt {
    fn sample(&mut self, prompts: &[Prompt], config: &SamplingConfig) -> Result<RolloutBatch> {
        self.calls += 1;
        let mut parts = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let key = p.text.bytes().fold(7u64, |h, b| mix_seed(h, &[u64::from(b)]));
            let cfg = SamplingConfig { seed: mix_seed(key, &[self.calls]), ..config.clone() };
            let mut b = rl_core::Policy::generate(&mut self.policy, std::slice::from_ref(p), &cfg)?;
            b.group_ids.iter_mut().for_each(|g| *g = i);
            b.samples.iter_mut().for_each(|s| s.group_id = i);
            parts.push(b);
        }
        RolloutBatch::concat(&parts)
    }
}

fn vowel(s: &Sample) -> Result<f32> {
    Ok(f32::from(u8::from(s.response.contains(['a', 'e', 'i', 'o', 'u']))))
}

fn model() -> Result<LanguageModel> {
    let cfg = ModelConfig::from_hf_json(json!({
        "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
    }))?;
    Ok(LanguageModel::random(cfg, 0, rl_core::DType::F32, &Device::Cpu)?)
}

fn prompts() -> Vec<Prompt> {
    ["ab", "cd", "efg", "hij", "kl", "mnop"].iter().map(|t| Prompt::new(*t, "x")).collect()
}

fn config() -> TrainerConfig {
    // ε = 1e-4: a weight whose true gradient is 0 but whose summed f32 gradient is rounding
    // noise (different summation orders across rank counts) must not get a full Adam step.
    let opt = OptimizerConfig {
        lr: 1e-2,
        adam: AdamWConfig { eps: 1e-4, ..AdamWConfig::default() },
        ..OptimizerConfig::default()
    };
    TrainerConfig {
        sampling: SamplingConfig { n: 3, max_new_tokens: 5, ..SamplingConfig::default() },
        micro_batch_size: 4,
        mini_batch_groups: Some(4),
        actor: opt.clone(),
        critic: opt,
        ..TrainerConfig::default()
    }
}

fn params(vars: &[rl_core::Var]) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for v in vars {
        out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

fn report(
    out: &str,
    rank: usize,
    world: usize,
    params: Vec<f32>,
    metrics: Vec<rl_core::Metrics>,
) -> Result<()> {
    let keep = |m: &rl_core::Metrics| -> serde_json::Map<String, serde_json::Value> {
        m.iter()
            .filter(|(k, _)| {
                ["actor/", "critic/", "reward/", "response/"].iter().any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect()
    };
    let metrics: Vec<_> = metrics.iter().map(keep).collect();
    let v = json!({"rank": rank, "world": world, "params": params, "metrics": metrics});
    std::fs::write(format!("{out}.{rank}.json"), v.to_string())?;
    Ok(())
}

fn run(algo: &str, steps: usize, out: &str) -> Result<()> {
    let group = rl_dist::init()?;
    let m = model()?;
    let policy = LmPolicy::new(m.deep_copy()?).with_codec(Arc::new(Letters)).with_eos_ids(vec![1]);
    let sampler = PerPrompt { policy: policy.clone(), calls: 0 };
    let wrap = rl_core::Error::from;
    match algo {
        "dr_grpo" => {
            let mut t = Trainer::builder(policy, vowel)
                .estimator(rl_advantage::DrGrpo::default())
                .policy_loss(rl_loss::PpoLoss::dr_grpo(5))
                .sampler(sampler)
                .process_group(group)
                .config(config())
                .build()
                .map_err(Error::wrap)?;
            let metrics = (0..steps)
                .map(|_| t.step(&prompts()).map(|r| r.metrics))
                .collect::<rl_trainer::Result<Vec<_>>>()
                .map_err(Error::wrap)?;
            let p = params(&rl_core::Policy::trainable_vars(t.policy()))?;
            report(out, t.rank(), t.world_size(), p, metrics)?;
        }
        "ppo" => {
            let critic = ValueModel::from_model(&m, 1).map_err(wrap)?;
            let gae =
                rl_advantage::Gae { whiten: rl_advantage::Whiten::None, ..Default::default() };
            let mut t = Trainer::builder(policy, vowel)
                .critic(critic, rl_loss::ClippedValueLoss::open_reasoner_zero())
                .estimator(gae)
                .policy_loss(rl_loss::PpoLoss::open_reasoner_zero())
                .sampler(sampler)
                .process_group(group)
                .config(config())
                .build()
                .map_err(Error::wrap)?;
            let metrics = (0..steps)
                .map(|_| t.step(&prompts()).map(|r| r.metrics))
                .collect::<rl_trainer::Result<Vec<_>>>()
                .map_err(Error::wrap)?;
            let mut p = params(&rl_core::Policy::trainable_vars(t.policy()))?;
            let critic = t.critic().ok_or_else(|| Error::msg("no critic"))?;
            p.extend(params(&rl_core::Critic::trainable_vars(critic))?);
            report(out, t.rank(), t.world_size(), p, metrics)?;
        }
        other => return Err(Error::config("algorithm", format!("unknown {other:?}"))),
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let algo = args.first().map_or("dr_grpo", String::as_str);
    let steps = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let out = args.get(2).map_or("rl-dp-worker", String::as_str);
    if let Err(e) = run(algo, steps, out) {
        eprintln!("ERROR {e}");
        std::process::exit(1);
    }
}
