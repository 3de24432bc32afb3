//! Loss + backward at `B = 512, T = 4096` (2M tokens), rl-loss vs PyTorch in the same run.
//!
//! ```text
//! cargo bench --bench loss                    # table vs PyTorch, then criterion
//! cargo bench --bench loss -- compare         # the table only
//! RL_LOSS_BENCH_ROUNDS=5 cargo bench --bench loss -- compare   # 5 alternating rounds
//! TORCH_THREADS=1 cargo bench --bench loss -- compare          # vs 1-thread PyTorch
//! RL_LOSS_BENCH_SHAPE=64x512 cargo bench --bench loss   # a smaller shape
//! ```
//! The PyTorch side is `scripts/reference/loss_reference.py --bench B T iters`, run with
//! `scripts/.venv/bin/python` when present (skipped otherwise). Both sides time the same
//! formulas: the loss from `(B, T)` log-probs and its gradient w.r.t. them. Each round runs
//! PyTorch (median of 5) then rl-loss (median of 5); with several rounds the sides alternate,
//! so that both see the same load on a shared machine, and the table shows the median over
//! rounds of each side (and of the per-round ratios).
#![allow(missing_docs)] // criterion's generated entry points

use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use rl_core::{PolicyLoss, PolicyLossInput, ValueLoss, ValueLossInput};
use rl_loss::{CispoLoss, ClippedValueLoss, GspoLoss, KlLoss, PpoLoss};

struct Inputs {
    lp: Var,
    old: Tensor,
    adv: Tensor,
    mask: Tensor,
}

fn shape() -> (usize, usize) {
    std::env::var("RL_LOSS_BENCH_SHAPE")
        .ok()
        .and_then(|s| {
            let (b, t) = s.split_once('x')?;
            Some((b.parse().ok()?, t.parse().ok()?))
        })
        .unwrap_or((512, 4096))
}

/// Deterministic inputs; row `i` has `T − (7i mod T/2)` valid tokens, as the Python side.
fn inputs(b: usize, t: usize) -> Inputs {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut u = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let n = b * t;
    let lp: Vec<f32> = (0..n).map(|_| (u() * 0.95 + 0.02).ln()).collect();
    let old: Vec<f32> = lp.iter().map(|l| l + (u() - 0.5) * 0.8).collect();
    let adv: Vec<f32> = (0..b).flat_map(|_| std::iter::repeat_n(u() * 2.0 - 1.0, t)).collect();
    let mask: Vec<f32> =
        (0..n).map(|i| if i % t < t - (i / t * 7) % (t / 2).max(1) { 1.0 } else { 0.0 }).collect();
    let d = Device::Cpu;
    let tensor = |v: Vec<f32>| Tensor::from_vec(v, (b, t), &d).unwrap();
    Inputs {
        lp: Var::from_tensor(&tensor(lp)).unwrap(),
        old: tensor(old),
        adv: tensor(adv),
        mask: tensor(mask),
    }
}

type Case = (&'static str, Box<dyn Fn(&Inputs) -> Tensor>);

fn cases() -> Vec<Case> {
    let policy = |l: Box<dyn PolicyLoss>| {
        move |x: &Inputs| {
            l.compute(&PolicyLossInput::new(&x.lp, &x.old, &x.adv, &x.mask)).unwrap().loss
        }
    };
    vec![
        ("ppo_token_mean", Box::new(policy(Box::new(PpoLoss::verl())))),
        ("gspo", Box::new(policy(Box::<GspoLoss>::default()))),
        ("cispo", Box::new(policy(Box::<CispoLoss>::default()))),
        (
            "value",
            Box::new(|x: &Inputs| {
                let input = ValueLossInput {
                    values: &x.lp,
                    old_values: &x.old,
                    returns: &x.adv,
                    response_mask: &x.mask,
                    counts: None,
                };
                ClippedValueLoss::default().compute(&input).unwrap().loss
            }),
        ),
        (
            "kl_k3",
            Box::new(|x: &Inputs| {
                let kl = KlLoss { coef: 1.0, ..KlLoss::default() };
                kl.compute(&x.lp, &x.old, &x.mask, None, None).unwrap().loss
            }),
        ),
    ]
}

fn step(f: &dyn Fn(&Inputs) -> Tensor, x: &Inputs) {
    let grads = f(x).backward().unwrap();
    assert!(grads.get(&x.lp).is_some());
}

fn torch(b: usize, t: usize) -> Option<serde_json::Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let py = format!("{root}/scripts/.venv/bin/python");
    let script = format!("{root}/scripts/reference/loss_reference.py");
    let out = Command::new(py)
        .args([&script, "--bench", &b.to_string(), &t.to_string(), "5"])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).lines().last()?.to_string();
    serde_json::from_str(&line).ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Median of 5 timed runs (after one warm-up) per loss, in ms, against PyTorch's median, for
/// `RL_LOSS_BENCH_ROUNDS` (default 1) alternating rounds.
fn compare(_c: &mut Criterion) {
    let (b, t) = shape();
    let x = inputs(b, t);
    let rounds: usize =
        std::env::var("RL_LOSS_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cases = cases();
    // Per loss: (rl-loss ms, torch ms) of every round.
    let mut runs: Vec<Vec<(f64, Option<f64>)>> = vec![Vec::new(); cases.len()];
    let mut torch_threads = None;
    for _ in 0..rounds {
        let torch = torch(b, t);
        if let Some(v) = &torch {
            torch_threads = Some(v["torch_threads"].clone());
        }
        for ((name, f), r) in cases.iter().zip(&mut runs) {
            step(&**f, &x);
            let ms: Vec<f64> = (0..5)
                .map(|_| {
                    let s = Instant::now();
                    step(&**f, &x);
                    s.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            r.push((median(ms), torch.as_ref().and_then(|v| v["median_ms"][name].as_f64())));
        }
    }
    println!(
        "\nloss + backward, B = {b}, T = {t}, cores (rayon threads) {threads}, rounds {rounds}"
    );
    if let Some(n) = torch_threads {
        println!("torch threads {n}");
    }
    println!(
        "{:<16} {:>12} {:>12} {:>14} {:>14}",
        "loss", "rl-loss ms", "torch ms", "torch/rl-loss", "median ratio"
    );
    for ((name, _), r) in cases.iter().zip(runs) {
        let ours = median(r.iter().map(|x| x.0).collect());
        let theirs: Vec<f64> = r.iter().filter_map(|x| x.1).collect();
        if theirs.is_empty() {
            println!("{name:<16} {ours:>12.1} {:>12} {:>14} {:>14}", "-", "-", "-");
            continue;
        }
        let ratio = median(r.iter().filter_map(|x| Some(x.1? / x.0)).collect());
        let p = median(theirs);
        println!("{name:<16} {ours:>12.1} {p:>12.1} {:>13.2}x {ratio:>13.2}x", p / ours);
    }
}

fn bench(c: &mut Criterion) {
    let (b, t) = shape();
    let x = inputs(b, t);
    let mut g = c.benchmark_group(format!("loss_backward_{b}x{t}"));
    g.sample_size(10).warm_up_time(std::time::Duration::from_millis(500));
    g.measurement_time(std::time::Duration::from_secs(2));
    for (name, f) in cases() {
        g.bench_function(name, |bench| bench.iter(|| step(&*f, &x)));
    }
    g.finish();
}

criterion_group!(benches, compare, bench);
criterion_main!(benches);
