//! `rl-dp-worker <dr_grpo|ppo|orz> <steps> <out> [save-after <k> <dir> | resume <dir> | engine <url> <dir>]`: one rank of a data-parallel run of the tiny
//! decoder (a random 1-layer Llama, f32); every rank writes `{"rank", "world", "params",
//! "optim", "metrics"}` to `<out>.<rank>.json` (`optim`: the AdamW moments and step count its
//! checkpoint holds) (too long for one forwarded output line). Rollouts come from a sampler that draws each
//! prompt's responses with a seed of its own (prompt index, step), so a response does not
//! depend on which rank samples it: the comparison isolates the update.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use rl_core::data::FixedPrompts;
use rl_core::rng::mix_seed;
use rl_core::{Error, Prompt, Result, RolloutBatch, Sample, Sampler, SamplingConfig};
use rl_policy::{LmPolicy, ValueModel};
use rl_rollout::{Engine, RemoteSampler};
use rl_trainer::{AdamWConfig, OptimizerConfig, TrainStep, Trainer, TrainerConfig};
use rl_zero_dp_check::{Letters, model};
use serde_json::json;

/// The rollout call whose responses all read "zz" (no vowel, reward 0): a step where every
/// advantage is zero, so the trainer's skip of zero-advantage rows falls back to running the
/// mini-batch's first micro-batch, whose rows span ranks.
const FLAT_CALL: u64 = 2;

/// Samples each prompt on its own with seed `(prompt text, call)`; a handle on the trained
/// weights (an `LmPolicy` clone shares them).
struct PerPrompt {
    policy: LmPolicy,
    /// Rollouts drawn so far (set to the step when a run resumes).
    calls: Rc<Cell<u64>>,
}

impl Sampler for PerPrompt {
    fn sample(&mut self, prompts: &[Prompt], config: &SamplingConfig) -> Result<RolloutBatch> {
        self.calls.set(self.calls.get() + 1);
        let mut parts = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let key = p.text.bytes().fold(7u64, |h, b| mix_seed(h, &[u64::from(b)]));
            let cfg = SamplingConfig { seed: mix_seed(key, &[self.calls.get()]), ..config.clone() };
            let mut b = rl_core::Policy::generate(&mut self.policy, std::slice::from_ref(p), &cfg)?;
            b.group_ids.iter_mut().for_each(|g| *g = i);
            b.samples.iter_mut().for_each(|s| s.group_id = i);
            parts.push(b);
        }
        let mut batch = RolloutBatch::concat(&parts)?;
        if self.calls.get() == FLAT_CALL {
            // No response earns a reward: every advantage of the step is zero.
            batch.samples.iter_mut().for_each(|s| s.response = "zz".into());
        }
        Ok(batch)
    }
}

fn vowel(s: &Sample) -> Result<f32> {
    Ok(f32::from(u8::from(s.response.contains(['a', 'e', 'i', 'o', 'u']))))
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

/// The optimizer state a checkpoint of `t` holds: for `actor_optim` (and `critic_optim` with a
/// critic), the step count and every AdamW moment tensor by name, flattened.
fn optimizer_state(t: &dyn TrainStep, dir: &Path) -> Result<serde_json::Value> {
    let ckpt = t.save_checkpoint(dir).map_err(Error::wrap)?;
    let mut out = serde_json::Map::new();
    for name in ["actor_optim", "critic_optim"] {
        let path = ckpt.join(format!("{name}.safetensors"));
        if !path.exists() {
            continue;
        }
        let (steps, tensors) =
            rl_trainer::checkpoint::load_optimizer(&path).map_err(Error::wrap)?;
        let mut moments = serde_json::Map::new();
        for (k, v) in tensors {
            moments.insert(k, json!(v.flatten_all()?.to_vec1::<f32>()?));
        }
        out.insert(name.into(), json!({"steps": steps, "moments": moments}));
    }
    Ok(serde_json::Value::Object(out))
}

fn report(
    out: &str,
    rank: usize,
    world: usize,
    params: Vec<f32>,
    optim: serde_json::Value,
    metrics: Vec<rl_core::Metrics>,
) -> Result<()> {
    let keep = |m: &rl_core::Metrics| -> serde_json::Map<String, serde_json::Value> {
        m.iter()
            .filter(|(k, _)| {
                ["actor/", "critic/", "reward/", "response/", "rollout/", "sync/"]
                    .iter()
                    .any(|p| k.starts_with(p))
                    || *k == "train/zero_adv_rows_skipped"
            })
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect()
    };
    let metrics: Vec<_> = metrics.iter().map(keep).collect();
    let v =
        json!({"rank": rank, "world": world, "params": params, "optim": optim, "metrics": metrics});
    std::fs::write(format!("{out}.{rank}.json"), v.to_string())?;
    Ok(())
}

/// How a run starts and ends.
enum Mode {
    /// From the initial weights to `steps`.
    Fresh,
    /// Stop after step `.0`, rank 0 saving a checkpoint under `.1` (an interrupted run).
    SaveAfter(u64, PathBuf),
    /// Resume every rank from the latest checkpoint under `.0`, then continue to `steps`.
    Resume(PathBuf),
    /// Sample from the engine at URL `.0`; publish under `.1` (rank 0).
    Engine(String, PathBuf),
}

fn run(algo: &str, steps: usize, out: &str, mode: &Mode) -> Result<()> {
    let group = rl_dist::init()?;
    let (rank, world) = (group.rank(), group.world_size());
    let m = model()?;
    let policy = rl_zero_dp_check::policy(m.deep_copy()?);
    let calls = Rc::new(Cell::new(0));
    // Handles on the trained weights (a `Var` clone shares its storage).
    let mut vars = rl_core::Policy::trainable_vars(&policy);
    let builder = match mode {
        // Rollouts from the engine at `url`; rank 0 publishes the weights under `dir` after
        // every step, the other ranks record the version.
        Mode::Engine(url, dir) => {
            let cfg = rl_rollout::EngineConfig {
                model: Some("tiny".into()),
                probe_text: "abc".into(),
                probe_tolerance: 1e-3,
                backoff_ms: 10,
                ..rl_rollout::EngineConfig::new([url.as_str()])
            };
            let sampler = RemoteSampler::connect(Engine::Vllm, cfg, Arc::new(Letters), None)
                .map_err(|e| Error::msg(e.to_string()))?
                .with_pad_id(policy.pad_id());
            let sync = sampler
                .disk_sync(rl_rollout::DiskSyncConfig::new(dir.join(format!("rank{rank}"))))
                .map_err(|e| Error::msg(e.to_string()))?;
            Trainer::builder(policy, vowel).sampler(sampler).weight_sync(sync, 1)
        }
        _ => {
            let sampler = PerPrompt { policy: policy.clone(), calls: calls.clone() };
            Trainer::builder(policy, vowel).sampler(sampler)
        }
    }
    .config(config());
    let builder = if world > 1 { builder.process_group(group) } else { builder };
    let wrap = Error::wrap;
    let mut t: Box<dyn TrainStep> = match algo {
        "dr_grpo" => Box::new(
            builder
                .estimator(rl_advantage::DrGrpo::default())
                .policy_loss(rl_loss::PpoLoss::dr_grpo(5))
                .build()
                .map_err(wrap)?,
        ),
        "ppo" | "orz" => {
            let critic = ValueModel::from_model(&m, 1).map_err(rl_core::Error::from)?;
            vars.extend(rl_core::Critic::trainable_vars(&critic));
            // `orz`: Open-Reasoner-Zero's GAE, whitened over the whole batch (population
            // variance): the whitening statistics are merged over the ranks.
            let whiten = if algo == "orz" {
                rl_advantage::Whiten::Population
            } else {
                rl_advantage::Whiten::None
            };
            let gae = rl_advantage::Gae { whiten, ..Default::default() };
            Box::new(
                builder
                    .critic(critic, rl_loss::ClippedValueLoss::open_reasoner_zero())
                    .estimator(gae)
                    .policy_loss(rl_loss::PpoLoss::open_reasoner_zero())
                    .build()
                    .map_err(wrap)?,
            )
        }
        other => return Err(Error::config("algorithm", format!("unknown {other:?}"))),
    };
    if let Mode::Resume(dir) = mode {
        let state = t.resume(dir).map_err(wrap)?.ok_or_else(|| Error::msg("no checkpoint"))?;
        calls.set(state.step);
    }
    let mut metrics = Vec::new();
    while (t.state().step as usize) < steps {
        let report = t.step_from(&mut FixedPrompts(&prompts()), prompts().len()).map_err(wrap)?;
        metrics.push(report.metrics);
        if let Mode::SaveAfter(k, dir) = mode
            && t.state().step == *k
        {
            if rank == 0 {
                t.save_checkpoint(dir).map_err(wrap)?;
            }
            break;
        }
    }
    // Every rank checkpoints its own optimizer (the moments are replicated, not sharded).
    let optim = optimizer_state(t.as_ref(), Path::new(&format!("{out}.{rank}.ckpt")))?;
    report(out, rank, world, params(&vars)?, optim, metrics)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let algo = args.first().map_or("dr_grpo", String::as_str);
    let steps = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let out = args.get(2).map_or("rl-dp-worker", String::as_str);
    let mode = match args.get(3).map(String::as_str) {
        Some("save-after") => Mode::SaveAfter(
            args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1),
            PathBuf::from(args.get(5).map_or("ckpt", String::as_str)),
        ),
        Some("resume") => Mode::Resume(PathBuf::from(args.get(4).map_or("ckpt", String::as_str))),
        Some("engine") => Mode::Engine(
            args.get(4).cloned().unwrap_or_default(),
            PathBuf::from(args.get(5).map_or("sync", String::as_str)),
        ),
        _ => Mode::Fresh,
    };
    if let Err(e) = run(algo, steps, out, &mode) {
        eprintln!("ERROR {e}");
        std::process::exit(1);
    }
}
