//! rl-policy: forward + backward of response log-probs, and KV-cache sampling, on a tiny random
//! Llama-style model (2 layers, hidden 64, 4/2 heads, vocab 512; batch 4, prompt 16, response 48).
//!
//! ```text
//! cargo bench --bench policy
//! ```
//!
//! With `RLZ_POLICY_BENCH_SMOLLM2=WHAT:RxC[:ITERS]` it first times SmolLM2-135M (GGUF → f32),
//! one workload per process so the reported peak RSS is that workload's:
//! * `fwdbwd:8x256`: forward + backward of the mean log-prob of 8 responses of 256 tokens after
//!   a 16-token prompt (the training path: `response_hidden` + `token_log_probs`, the gradients
//!   accumulated through a `GradSink` as the trainer does);
//! * `sample:16x128`: sampling 16 prompts of 16 tokens × 128 new tokens at temperature 1
//!   (KV cache, no EOS stop);
//! * `gemm:8x256`: only the matrix products of `fwdbwd:8x256` (same shapes, forward and
//!   backward), through `rl_policy::ops::matmul`: the floor under forward + backward.
//!
//! `RLZ_COMPUTE_DTYPE=bf16` runs the products in bf16 with f32 accumulation (mixed precision,
//! `ComputeDtype::Bf16`); each iteration then also reports the seconds spent converting weights
//! to bf16 (`convert_s`, included in `secs`).
//!
//! Each iteration prints a `RESULT side=rl-zero ...` line, the last one `peak_rss_mb`;
//! `scripts/bench/policy_vs_torch.py` measures the same workloads with PyTorch/transformers and
//! `scripts/bench/compare.sh` alternates the two. Results: `docs/benchmarks.md`.

// criterion_group!/criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use rl_core::SamplingConfig;
use rl_core::grad::GradSink;
use rl_policy::logprobs::{PromptResponse, token_log_probs};
use rl_policy::model::Mode;
use rl_policy::sampling::{StopRules, generate};
use rl_policy::{LanguageModel, ModelConfig};

const B: usize = 4;
const P: usize = 16;
const T: usize = 48;

fn model() -> LanguageModel {
    let cfg = ModelConfig::from_hf_json(serde_json::json!({
        "model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    }))
    .expect("config");
    LanguageModel::random(cfg, 0, DType::F32, &Device::Cpu).expect("model")
}

fn ids(rows: usize, cols: usize, seed: u32) -> Tensor {
    let v: Vec<u32> =
        (0..rows * cols).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 512).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("ids")
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

/// One-off SmolLM2 timings (not a criterion benchmark: one iteration takes seconds).
fn smollm2(spec: &str) {
    let mut parts = spec.split(':');
    let what = parts.next().unwrap_or_default().to_owned();
    let (r, c) = parts.next().and_then(|s| s.split_once('x')).expect("WHAT:RxC[:ITERS]");
    let (r, c): (usize, usize) = (r.parse().expect("rows"), c.parse().expect("columns"));
    let iters: usize = parts.next().map_or(2, |s| s.parse().expect("iterations"));
    // As the examples and the CLI do; `RLZ_RETAIN_MEMORY=0` measures glibc's default behaviour,
    // `RLZ_BLAS=<libmkl_rt.so>` runs the CPU matrix products in MKL (scripts/setup_mkl.sh).
    let rt = rl_policy::runtime::init(rl_policy::runtime::RuntimeOptions::default()).expect("init");
    let (retain, joined) = (rt.retained_freed_memory, rt.built_pool);
    let (side, blas) = if rt.blas == "gemm" { ("rl-zero", "gemm") } else { ("rl-zero-mkl", "mkl") };
    // A decode kernel chosen with `RLZ_DECODE_KERNEL` (other than `auto`) is a side of its own.
    let side = match std::env::var("RLZ_DECODE_KERNEL") {
        Ok(k) if !k.is_empty() && k != "auto" => format!("{side}-{}", rt.decode_kernel),
        _ => side.to_string(),
    };
    let precision = std::env::var("RLZ_COMPUTE_DTYPE").unwrap_or_else(|_| "f32".into());
    let compute: rl_policy::ComputeDtype = precision.parse().expect("RLZ_COMPUTE_DTYPE");
    println!("runtime: {rt:?}");
    let path = rl_policy::testing_assets::smollm2_gguf().expect("SmolLM2 GGUF");
    let clock = std::time::Instant::now();
    let model = LanguageModel::from_gguf(&path, DType::F32, &Device::Cpu)
        .expect("load")
        .with_compute_dtype(compute)
        .expect("compute dtype");
    println!("smollm2 load: {:.2} s", clock.elapsed().as_secs_f64());
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let report = |iter: usize, secs: f64, tokens: usize, convert: f64| {
        println!(
            "RESULT side={side} what={what} shape={r}x{c} threads={threads} iter={iter} \
             secs={secs:.3} tok_s={:.1} peak_rss_mb={:.0} retain={} joined={} blas={blas} \
             precision={precision} bf16_path={} convert_s={convert:.3} decode={}",
            tokens as f64 / secs,
            peak_rss_mb(),
            u8::from(retain),
            u8::from(joined),
            rt.bf16.to_string().split_whitespace().next().unwrap_or("?"),
            rt.decode_kernel,
        );
    };
    match what.as_str() {
        "fwdbwd" => {
            let (prompt_ids, response_ids) = (ids(r, 16, 3), ids(r, c, 4));
            let prompt_mask = Tensor::ones((r, 16), DType::F32, &Device::Cpu).expect("mask");
            let response_mask = Tensor::ones((r, c), DType::F32, &Device::Cpu).expect("mask");
            let view = PromptResponse {
                prompt_ids: &prompt_ids,
                prompt_mask: &prompt_mask,
                response_ids: &response_ids,
                response_mask: &response_mask,
            };
            // As the trainer accumulates gradients: a sink holds every weight (which lets each
            // decoder layer run as one graph node, `rl_policy::ops` docs).
            let vars = model.vars();
            for iter in 0..iters {
                let clock = std::time::Instant::now();
                let sink = GradSink::new(&vars).expect("sink");
                let m = model.trainable().expect("model");
                let hidden = view.response_hidden(&m, Mode::Diff).expect("hidden");
                let (lp, _) = token_log_probs(&m, &hidden, &response_ids, &response_mask, 0, false)
                    .expect("lp");
                let mut grads = lp.mean_all().expect("mean").backward().expect("backward");
                sink.drain_into(&mut grads).expect("drain");
                let secs = clock.elapsed().as_secs_f64();
                drop(grads);
                report(iter, secs, r * (c + 16), m.bf16_conversion_stats().1);
            }
        }
        "sample" => {
            let prompts: Vec<Vec<u32>> = (0..r as u32)
                .map(|i| (0..16u32).map(|t| (t * 131 + i * 17 + 5) % 49152).collect())
                .collect();
            for iter in 0..iters {
                let cfg = SamplingConfig {
                    max_new_tokens: c,
                    seed: iter as u64,
                    ..SamplingConfig::default()
                };
                let clock = std::time::Instant::now();
                // A new decoder per call, as `LmPolicy::generate` builds one (with bf16 products
                // it converts the weights once per call).
                let fast = model.detached().expect("model");
                let out =
                    generate(&fast, &prompts, &cfg, StopRules { eos_ids: &[], stop: None }, 0)
                        .expect("generate");
                let secs = clock.elapsed().as_secs_f64();
                assert!(out.tokens.iter().all(|t| t.len() == c), "every row runs {c} tokens");
                report(iter, secs, r * c, fast.bf16_conversion_stats().1);
            }
        }
        "gemm" => {
            // The matrix products of `fwdbwd:RxC` alone, same shapes, through the same
            // `ops::matmul` path (the `gemm` crate or MKL): the floor forward + backward stands on.
            let cfg = model.config();
            let (d, f, hd, v) =
                (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.vocab_size);
            let (nh, nkv, t) = (cfg.num_heads, cfg.num_kv_heads, c + 16);
            let n = r * t;
            let rnd =
                |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &Device::Cpu).expect("randn");
            let lin =
                [(nh * hd, d), (nkv * hd, d), (nkv * hd, d), (d, nh * hd), (f, d), (f, d), (d, f)];
            let lin: Vec<_> =
                lin.iter().map(|&(o, i)| (rnd(&[n, i]), rnd(&[o, i]), rnd(&[n, o]))).collect();
            let reps = nh / nkv;
            let (q, k, vv) =
                (rnd(&[r, nkv, reps * t, hd]), rnd(&[r, nkv, t, hd]), rnd(&[r, nkv, t, hd]));
            let (p, gctx) = (rnd(&[r, nkv, reps * t, t]), rnd(&[r, nkv, reps * t, hd]));
            let (hx, hw, hg) = (rnd(&[r * c, d]), rnd(&[v, d]), rnd(&[r * c, v]));
            let mm = |a: &Tensor, b: &Tensor| rl_policy::ops::matmul(a, b).expect("matmul");
            let bf16 = compute == rl_policy::ComputeDtype::Bf16;
            let _scope = rl_policy::ops::autocast(
                bf16.then(|| std::sync::Arc::new(rl_policy::ops::precision::Bf16Weights::new())),
            );
            for iter in 0..iters {
                let clock = std::time::Instant::now();
                for _ in 0..cfg.num_layers {
                    for (x, w, g) in &lin {
                        mm(x, &w.t().expect("t"));
                        mm(g, w);
                        mm(&g.t().expect("t"), x);
                    }
                    mm(&q, &k.t().expect("t"));
                    mm(&p, &vv);
                    mm(&gctx, &vv.t().expect("t"));
                    mm(&p.t().expect("t"), &gctx);
                    mm(&p, &k);
                    mm(&p.t().expect("t"), &q);
                }
                mm(&hx, &hw.t().expect("t"));
                mm(&hg, &hw);
                mm(&hg.t().expect("t"), &hx);
                report(iter, clock.elapsed().as_secs_f64(), n, 0.0);
            }
        }
        other => panic!("unknown workload `{other}` (fwdbwd, sample or gemm)"),
    }
}

fn bench(c: &mut Criterion) {
    if let Ok(shape) = std::env::var("RLZ_POLICY_BENCH_SMOLLM2") {
        smollm2(&shape);
    }
    let model = model();
    let (prompt_ids, response_ids) = (ids(B, P, 1), ids(B, T, 2));
    let prompt_mask = Tensor::ones((B, P), DType::F32, &Device::Cpu).expect("mask");
    let response_mask = Tensor::ones((B, T), DType::F32, &Device::Cpu).expect("mask");
    let view = PromptResponse {
        prompt_ids: &prompt_ids,
        prompt_mask: &prompt_mask,
        response_ids: &response_ids,
        response_mask: &response_mask,
    };
    c.bench_function("policy/log_probs_fwd_bwd_4x64", |b| {
        b.iter(|| {
            let m = model.trainable().expect("model");
            let hidden = view.response_hidden(&m, Mode::Diff).expect("hidden");
            let (lp, _) =
                token_log_probs(&m, &hidden, &response_ids, &response_mask, 0, false).expect("lp");
            lp.sum_all().expect("sum").backward().expect("backward")
        })
    });
    let fast = model.detached().expect("model");
    let prompts: Vec<Vec<u32>> =
        (0..B).map(|i| (0..P as u32).map(|t| (t * 7 + i as u32) % 512).collect()).collect();
    let cfg = SamplingConfig { max_new_tokens: 32, seed: 1, ..SamplingConfig::default() };
    c.bench_function("policy/sample_4x32_kv_cache", |b| {
        b.iter(|| {
            generate(&fast, &prompts, &cfg, StopRules { eos_ids: &[], stop: None }, 0)
                .expect("generate")
        })
    });
}

/// `(rows, cols)` f32 values in `[-2, 2)`, as a trainable variable.
fn var(shape: &[usize], seed: u64) -> candle_core::Var {
    let mut rng = rl_core::rng::SplitMix64::new(seed);
    let v: Vec<f32> =
        (0..shape.iter().product()).map(|_| rng.next_f64() as f32 * 4.0 - 2.0).collect();
    candle_core::Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).expect("values"))
        .expect("var")
}

/// The fused ops with analytic backward passes against the same formulas composed from candle
/// ops, forward + backward, at SmolLM2-135M sizes (`H = 576`, `V = 49152`).
fn ops(c: &mut Criterion) {
    use rl_policy::ops;
    let mut g = c.benchmark_group("policy/ops");
    g.sample_size(10);
    let (n, v, h) = (256, 49152, 576);
    let logits = var(&[n, v], 1);
    let targets = Tensor::from_iter((0..n as u32).map(|i| i * 191 % v as u32), &Device::Cpu)
        .expect("targets");
    type LpFn = fn(&Tensor, &Tensor) -> rl_policy::Result<(Tensor, Tensor)>;
    for (name, f) in [
        ("log_prob_entropy_256x49152/fused", ops::log_prob_entropy as LpFn),
        ("log_prob_entropy_256x49152/composed", ops::log_prob_entropy_composed as LpFn),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let (lp, ent) = f(logits.as_tensor(), &targets).expect("op");
                (lp.sum_all().expect("sum") + ent.sum_all().expect("sum"))
                    .expect("add")
                    .backward()
                    .expect("backward")
            })
        });
    }
    let (x, w) = (var(&[2048, h], 2), var(&[h], 3));
    type NormFn = fn(&Tensor, &Tensor, f64) -> rl_policy::Result<Tensor>;
    for (name, f) in [
        ("rms_norm_2048x576/fused", ops::rms_norm as NormFn),
        ("rms_norm_2048x576/composed", ops::rms_norm_composed as NormFn),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let y = f(x.as_tensor(), w.as_tensor(), 1e-5).expect("op");
                (y.sqr().expect("sqr")).sum_all().expect("sum").backward().expect("backward")
            })
        });
    }
    // one SmolLM2-sized decoder layer (vocabulary cut to 512), forward + backward, 4 x 256
    let cfg = ModelConfig::from_hf_json(serde_json::json!({
        "model_type": "llama", "vocab_size": 512, "hidden_size": h, "intermediate_size": 1536,
        "num_hidden_layers": 1, "num_attention_heads": 9, "num_key_value_heads": 3,
    }))
    .expect("config");
    let layer = LanguageModel::random(cfg, 0, DType::F32, &Device::Cpu).expect("model");
    let ids = ids(4, 256, 5);
    let valid = vec![vec![true; 256]; 4];
    g.bench_function("decoder_layer_4x256_fwd_bwd", |b| {
        b.iter(|| {
            let m = layer.trainable().expect("model");
            let y = m.forward(&ids, &valid, Mode::Diff).expect("forward");
            y.mean_all().expect("mean").backward().expect("backward")
        })
    });
    g.finish();
}

criterion_group!(benches, bench, ops);
criterion_main!(benches);
