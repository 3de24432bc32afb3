//! Times rl-policy on one device (CPU, or CUDA with the `cuda` feature) on a random-weight model
//! built from a Hugging Face `config.json`, printing one JSON object per iteration on stdout:
//!
//! * `fwdbwd:BxT`: forward + backward of the mean log-prob of B responses of T tokens after a
//!   16-token prompt (the training path: `response_hidden` + `token_log_probs`, `Mode::Diff`);
//! * `shared:RxC` / `joint:RxC`: as `fwdbwd`, the rows in groups of 8 that share a prompt (GRPO
//!   groups), through `response_hidden` (one prompt pass per group) or `response_hidden_joint`
//!   (every row's prompt and response in one pass), with 48-token prompts: what sharing saves;
//! * `sample:RxN`: sampling R prompts of 16 tokens × N new tokens at temperature 1 with the KV
//!   cache, no EOS stop (`generate` on the detached weights, `Mode::Fused`).
//!
//! `--precision bf16` runs the matrix products in bf16 with f32 accumulation over f32 weights
//! (`ComputeDtype::Bf16`, as `torch.autocast(dtype=torch.bfloat16)`). The same workloads, inputs
//! and configs are timed on the PyTorch side by `scripts/bench/policy_vs_torch.py --config`;
//! `scripts/gpu/run.sh` (the GPU bundle, `docs/gpu.md`) runs both and compares them.
//!
//! ```text
//! cargo run --release -p rl-policy --example device_bench -- \
//!     --config scripts/gpu/configs/tiny.json --device cpu fwdbwd:2x32:2 sample:2x8:2
//! cargo build --release -p rl-policy --features cuda --example device_bench   # for --device cuda
//! ```
//!
//! Each line: `side` (`rl-zero`), `device`, `model` (the config's file stem), `params`,
//! `precision`, `what`, `shape`, `iter` (0 is warm-up), `secs`, `tok_s`, `peak_rss_mb` and, on
//! CUDA, `gpu_used_mb`: the device memory in use (`total - free` from `cuMemGetInfo`, this
//! process's context included) sampled after the forward pass, after the backward pass / each
//! sampling call, the maximum since the start (candle's allocator keeps no peak counter).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rl_core::SamplingConfig;
use rl_policy::logprobs::{PromptResponse, token_log_probs};
use rl_policy::model::Mode;
use rl_policy::sampling::{StopRules, generate};
use rl_policy::{ComputeDtype, LanguageModel, ModelConfig};
use serde_json::json;

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const PROMPT: usize = 16;

/// Prompt tokens of the `shared` / `joint` workloads (SmolLM2's chat-templated addition prompt
/// has about 48).
const GROUP_PROMPT: usize = 48;

/// The same pseudo-random ids as `ids()` in benches/policy.rs and policy_vs_torch.py.
fn ids(rows: usize, cols: usize, seed: u32, dev: &Device) -> R<Tensor> {
    let v: Vec<u32> =
        (0..rows * cols).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 512).collect();
    Ok(Tensor::from_vec(v, (rows, cols), dev)?)
}

/// Peak resident set size of this process in MiB (`VmHWM`), 0 where unknown.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Device memory in use in MiB (`total - free`), `None` off CUDA.
fn gpu_used_mb(dev: &Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some((total - free) as f64 / (1024.0 * 1024.0));
    }
    let _ = dev;
    None
}

/// The running maximum of [`gpu_used_mb`].
struct GpuPeak(Option<f64>);

impl GpuPeak {
    fn sample(&mut self, dev: &Device) {
        if let Some(now) = gpu_used_mb(dev) {
            self.0 = Some(self.0.map_or(now, |p: f64| p.max(now)));
        }
    }
}

struct Args {
    config: PathBuf,
    device: String,
    precision: String,
    workloads: Vec<String>,
}

fn args() -> R<Args> {
    let mut a = Args {
        config: PathBuf::new(),
        device: "cpu".into(),
        precision: "f32".into(),
        workloads: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--config" => a.config = it.next().ok_or("--config FILE")?.into(),
            "--device" => a.device = it.next().ok_or("--device cpu|cuda")?,
            "--precision" => a.precision = it.next().ok_or("--precision f32|bf16")?,
            "-h" | "--help" => {
                println!(
                    "usage: device_bench --config CONFIG.json [--device cpu|cuda] \
                     [--precision f32|bf16] WHAT:RxC[:ITERS]..."
                );
                std::process::exit(0);
            }
            w => a.workloads.push(w.to_owned()),
        }
    }
    if a.config.as_os_str().is_empty() || a.workloads.is_empty() {
        return Err("usage: device_bench --config CONFIG.json [--device cpu|cuda] \
                    [--precision f32|bf16] WHAT:RxC[:ITERS]..."
            .into());
    }
    Ok(a)
}

fn main() -> R {
    let a = args()?;
    let dev = match a.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => return Err(format!("--device {other}: cpu or cuda").into()),
    };
    rl_policy::runtime::init(rl_policy::runtime::RuntimeOptions::default())?;
    let compute: ComputeDtype = serde_json::from_value(json!(a.precision))?;
    let name = a.config.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_owned();
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&a.config)?)?;
    let cfg = ModelConfig::from_hf_json(raw)?;
    let clock = Instant::now();
    // Random weights drawn on the device itself (cuRAND on a GPU: `LanguageModel::random` draws
    // on the host, ~1 s per 10 M parameters on one core, which the short GPU sessions cannot
    // spare): matrices N(0, 0.02²) as transformers' `initializer_range`, norm weights 1.
    let mut tensors = std::collections::HashMap::new();
    for (name, shape) in cfg.tensor_shapes() {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, &dev)?
        } else {
            Tensor::randn(0f32, 0.02, shape.as_slice(), &dev)?
        };
        tensors.insert(name, t);
    }
    let source = std::path::Path::new("<random>");
    let model = LanguageModel::from_tensors(cfg, tensors, source, DType::F32, &dev)?
        .with_compute_dtype(compute)?;
    dev.synchronize()?;
    eprintln!(
        "device_bench: {name} ({} params) on {} built in {:.2} s",
        model.num_params(),
        a.device,
        clock.elapsed().as_secs_f64()
    );
    let mut peak = GpuPeak(None);
    peak.sample(&dev);
    for spec in &a.workloads {
        let mut parts = spec.split(':');
        let what = parts.next().unwrap_or_default();
        let (r, c) = parts.next().and_then(|s| s.split_once('x')).ok_or("WHAT:RxC[:ITERS]")?;
        let (r, c): (usize, usize) = (r.parse()?, c.parse()?);
        let iters: usize = parts.next().map_or(Ok(3), str::parse)?;
        let report = |iter: usize, secs: f64, tokens: usize, peak: &GpuPeak| {
            let line = json!({
                "side": "rl-zero", "device": a.device, "model": name,
                "params": model.num_params(), "precision": a.precision, "what": what,
                "shape": format!("{r}x{c}"), "iter": iter, "secs": secs,
                "tok_s": tokens as f64 / secs, "peak_rss_mb": peak_rss_mb(),
                "gpu_used_mb": peak.0,
            });
            println!("{line}");
        };
        match what {
            "fwdbwd" | "shared" | "joint" => {
                let (prompt_ids, plen) = if what == "fwdbwd" {
                    (ids(r, PROMPT, 3, &dev)?, PROMPT)
                } else {
                    // Groups of 8 rows with one prompt each.
                    let distinct = ids(r.div_ceil(8), GROUP_PROMPT, 3, &dev)?;
                    let rows: Vec<u32> = (0..r as u32).map(|i| i / 8).collect();
                    (distinct.index_select(&Tensor::new(rows.as_slice(), &dev)?, 0)?, GROUP_PROMPT)
                };
                let response_ids = ids(r, c, 4, &dev)?;
                let prompt_mask = Tensor::ones((r, plen), DType::F32, &dev)?;
                let response_mask = Tensor::ones((r, c), DType::F32, &dev)?;
                let view = PromptResponse {
                    prompt_ids: &prompt_ids,
                    prompt_mask: &prompt_mask,
                    response_ids: &response_ids,
                    response_mask: &response_mask,
                };
                for iter in 0..iters {
                    dev.synchronize()?;
                    let clock = Instant::now();
                    let m = model.trainable()?;
                    let hidden = if what == "joint" {
                        view.response_hidden_joint(&m, Mode::Diff)?
                    } else {
                        view.response_hidden(&m, Mode::Diff)?
                    };
                    let (lp, _) =
                        token_log_probs(&m, &hidden, &response_ids, &response_mask, 0, false)?;
                    let loss = lp.mean_all()?;
                    peak.sample(&dev);
                    let grads = loss.backward()?;
                    dev.synchronize()?;
                    let secs = clock.elapsed().as_secs_f64();
                    peak.sample(&dev);
                    drop(grads);
                    report(iter, secs, r * (c + plen), &peak);
                }
            }
            "sample" => {
                // 49152: SmolLM2's vocabulary, as benches/policy.rs and policy_vs_torch.py.
                let vocab = model.config().vocab_size.min(49152) as u32;
                let prompts: Vec<Vec<u32>> = (0..r as u32)
                    .map(|i| (0..PROMPT as u32).map(|t| (t * 131 + i * 17 + 5) % vocab).collect())
                    .collect();
                for iter in 0..iters {
                    let cfg = SamplingConfig {
                        max_new_tokens: c,
                        seed: iter as u64,
                        ..SamplingConfig::default()
                    };
                    dev.synchronize()?;
                    let clock = Instant::now();
                    let fast = model.detached()?;
                    let out =
                        generate(&fast, &prompts, &cfg, StopRules { eos_ids: &[], stop: None }, 0)?;
                    dev.synchronize()?;
                    let secs = clock.elapsed().as_secs_f64();
                    peak.sample(&dev);
                    if !out.tokens.iter().all(|t| t.len() == c) {
                        return Err(format!("sample: a row stopped before {c} tokens").into());
                    }
                    report(iter, secs, r * c, &peak);
                }
            }
            other => return Err(format!("unknown workload `{other}` (fwdbwd or sample)").into()),
        }
    }
    Ok(())
}
