//! `rl-dist-worker`: the rank program of rl-dist's multi-process tests and of its TCP
//! all-reduce benchmark. Not a user tool.
//!
//! Reads the DP environment ([`rl_dist::DistEnv`]), runs one scenario, prints `RESULT <json>`
//! lines on stdout; on failure prints `ERROR <json>` (a serialised
//! [`rl_core::dist::DistError`] when it is one) on stderr and exits 1.
//!
//! Scenarios (first argument):
//! * `collectives`: every collective once with rank-dependent inputs;
//! * `grad`: the summed gradients of a small f64 MLP over this rank's rows of a fixed batch
//!   (the whole batch when not launched);
//! * `die <rank> <code>`: rendezvous, then `<rank>` exits with `<code>` and the others run an
//!   all-reduce;
//! * `hang <rank> <secs>`: rendezvous, then `<rank>` sleeps while the others run an all-reduce;
//! * `exit <rank> <code> <after_ms>`: no rendezvous; `<rank>` exits with `<code>` after
//!   `<after_ms>`, the others sleep 120 s (launcher teardown);
//! * `rendezvous`: rendezvous and barrier only;
//! * `bench <MiB> <iters>`: f32 all-reduce throughput over TCP (a world of 1 also uses the TCP
//!   group, to measure its local copies).

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};
use rl_core::dist::{ProcessGroup, ReduceOp, SingleProcess, all_reduce_grads};
use rl_core::{Error, Result};
use rl_dist::{DistEnv, TcpGroup};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        let payload = match &e {
            Error::Dist(d) => serde_json::to_string(d).unwrap_or_default(),
            other => json!({ "type": "other", "message": other.to_string() }).to_string(),
        };
        eprintln!("ERROR {payload}");
        std::process::exit(1);
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T> {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::config(format!("argument {i}"), format!("expected {what}")))
}

fn group() -> Result<Box<dyn ProcessGroup>> {
    match DistEnv::from_env()? {
        Some(env) => Ok(Box::new(TcpGroup::init(&env)?)),
        None => Ok(Box::new(SingleProcess)),
    }
}

fn result(v: serde_json::Value) {
    println!("RESULT {v}");
}

fn run(args: &[String]) -> Result<()> {
    let scenario = args.first().map(String::as_str).unwrap_or("");
    match scenario {
        "collectives" => collectives(&mut *group()?),
        "grad" => grad(&mut *group()?),
        "rendezvous" => {
            let mut pg = group()?;
            pg.barrier()?;
            result(json!({ "rank": pg.rank(), "world": pg.world_size() }));
            Ok(())
        }
        "die" | "hang" => {
            let who: usize = arg(args, 1, "a rank")?;
            let n: u64 = arg(args, 2, "an exit code / seconds")?;
            let mut pg = group()?;
            if pg.rank() == who {
                if scenario == "die" {
                    std::process::exit(n as i32);
                }
                std::thread::sleep(Duration::from_secs(n));
                return Ok(());
            }
            let t = Tensor::new(&[1f64, 2.0], &Device::Cpu)?;
            pg.all_reduce_sum(&t)?;
            result(json!({ "rank": pg.rank(), "unexpected": "all-reduce succeeded" }));
            Ok(())
        }
        "exit" => {
            let who: usize = arg(args, 1, "a rank")?;
            let code: i32 = arg(args, 2, "an exit code")?;
            let after: u64 = arg(args, 3, "milliseconds")?;
            let env = DistEnv::from_env()?.ok_or_else(|| Error::msg("not launched"))?;
            println!("rank {} started", env.rank);
            if env.rank == who {
                std::thread::sleep(Duration::from_millis(after));
                eprintln!("rank {} exits with {code}", env.rank);
                std::process::exit(code);
            }
            std::thread::sleep(Duration::from_secs(120));
            Ok(())
        }
        "bench" => bench(arg(args, 1, "MiB")?, arg(args, 2, "iterations")?),
        other => Err(Error::config("scenario", format!("unknown `{other}`"))),
    }
}

/// Every collective once. Inputs depend on the rank so the expected results are easy to state.
fn collectives(pg: &mut dyn ProcessGroup) -> Result<()> {
    let (r, n) = (pg.rank(), pg.world_size());
    let rf = r as f64;
    let dev = Device::Cpu;
    // f64: exact sums (small integers and halves); a 2x3 tensor to check shapes survive.
    let t64 = Tensor::new(&[[rf + 1.0, 0.5 * rf, -3.0], [1e15 * (rf + 1.0), 0.25, rf * rf]], &dev)?;
    pg.all_reduce_sum(&t64)?;
    // f32 and bf16: exactly representable values.
    let t32 = Tensor::new(&[rf + 1.0, 2.0f64.powi(r as i32)], &dev)?.to_dtype(DType::F32)?;
    pg.all_reduce_sum(&t32)?;
    let tbf = Tensor::new(&[rf + 1.0, -0.5], &dev)?.to_dtype(DType::BF16)?;
    pg.all_reduce_sum(&tbf)?;
    // Broadcast from the last rank.
    let root = n - 1;
    let b = Tensor::new(&[rf * 10.0, rf * 10.0 + 1.0, rf * 10.0 + 2.0], &dev)?;
    pg.broadcast(&b, root)?;
    // All-gather of rank-dependent lengths (rank r sends r+1 bytes of value r).
    let gathered = pg.all_gather_bytes(&vec![r as u8; r + 1])?;
    let mut counts = [r as u64 + 1, 10 * r as u64];
    pg.all_reduce_u64(&mut counts, ReduceOp::Sum)?;
    let mut maxes = [r as u64, u64::from(r == 0)];
    pg.all_reduce_u64(&mut maxes, ReduceOp::Max)?;
    let mut f = [0.1 * (rf + 1.0), -rf];
    pg.all_reduce_f64(&mut f, ReduceOp::Sum)?;
    let mut fmin = [rf, -rf];
    pg.all_reduce_f64(&mut fmin, ReduceOp::Min)?;
    pg.barrier()?;
    result(json!({
        "rank": r,
        "world": n,
        "f64": t64.to_vec2::<f64>()?,
        "f32": t32.to_vec1::<f32>()?,
        "bf16": tbf.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        "broadcast": b.to_vec1::<f64>()?,
        "gathered": gathered,
        "u64_sum": counts,
        "u64_max": maxes,
        "f64_sum_bits": f.map(f64::to_bits),
        "f64_min": fmin,
    }));
    Ok(())
}

/// Rows of the fixed batch, inputs per row, hidden width.
const ROWS: usize = 12;
const IN: usize = 4;
const HIDDEN: usize = 8;

/// A deterministic value in about [-1, 1] for index `i` of stream `s`.
fn val(s: usize, i: usize) -> f64 {
    ((i as f64 + 1.0) * 0.7548776662 + s as f64 * 0.5698402910).sin()
}

/// Summed-gradient scenario: a 2-layer tanh MLP, squared error, loss = Σ_rows err² / ROWS
/// (normalised by the *global* row count, all-reduced), then [`all_reduce_grads`].
fn grad(pg: &mut dyn ProcessGroup) -> Result<()> {
    let dev = Device::Cpu;
    let (r, n) = (pg.rank(), pg.world_size());
    if !ROWS.is_multiple_of(n) {
        return Err(Error::config("WORLD_SIZE", format!("must divide {ROWS}")));
    }
    let w1 = Var::from_tensor(&Tensor::from_vec(
        (0..IN * HIDDEN).map(|i| val(1, i)).collect(),
        (IN, HIDDEN),
        &dev,
    )?)?;
    let b1 = Var::from_tensor(&Tensor::from_vec(
        (0..HIDDEN).map(|i| 0.1 * val(2, i)).collect(),
        HIDDEN,
        &dev,
    )?)?;
    let w2 = Var::from_tensor(&Tensor::from_vec(
        (0..HIDDEN).map(|i| val(3, i)).collect(),
        (HIDDEN, 1),
        &dev,
    )?)?;
    let rows = ROWS / n;
    let first = r * rows;
    let x = Tensor::from_vec(
        (first * IN..(first + rows) * IN).map(|i| val(4, i)).collect(),
        (rows, IN),
        &dev,
    )?;
    let y = Tensor::from_vec((first..first + rows).map(|i| val(5, i)).collect(), (rows, 1), &dev)?;
    let mut global = [rows as u64];
    pg.all_reduce_u64(&mut global, ReduceOp::Sum)?;
    let h = x.matmul(w1.as_tensor())?.broadcast_add(b1.as_tensor())?.tanh()?;
    let pred = h.matmul(w2.as_tensor())?;
    let loss = ((pred - y)?.sqr()?.sum_all()? / global[0] as f64)?;
    let mut grads = loss.backward()?;
    let vars = [w1.clone(), b1.clone(), w2.clone()];
    all_reduce_grads(pg, &mut grads, &vars, 64)?;
    let get = |v: &Var| -> Result<Vec<f64>> {
        let g = grads.get(v.as_tensor()).ok_or_else(|| Error::msg("missing gradient"))?;
        Ok(g.flatten_all()?.to_vec1::<f64>()?)
    };
    result(json!({
        "rank": r,
        "global_rows": global[0],
        "w1": get(&w1)?,
        "b1": get(&b1)?,
        "w2": get(&w2)?,
    }));
    Ok(())
}

/// f32 all-reduce throughput: `mib` MiB per call, `iters` timed calls after one warm-up.
fn bench(mib: usize, iters: usize) -> Result<()> {
    if mib == 0 || mib > 4096 || iters == 0 || iters > 10_000 {
        return Err(Error::config("bench", "MiB in 1..=4096, iterations in 1..=10000"));
    }
    let env = DistEnv::from_env()?.ok_or_else(|| Error::msg("bench needs the DP environment"))?;
    let mut pg = TcpGroup::init(&env)?;
    let n = mib * (1 << 20) / 4;
    let t = Tensor::ones(n, DType::F32, &Device::Cpu)?;
    pg.all_reduce_sum(&t)?;
    pg.barrier()?;
    let start = Instant::now();
    for _ in 0..iters {
        pg.all_reduce_sum(&t)?;
    }
    let s = start.elapsed().as_secs_f64() / iters as f64;
    let bytes = (n * 4) as f64;
    result(json!({
        "rank": pg.rank(),
        "world": pg.world_size(),
        "mib": mib,
        "seconds_per_all_reduce": s,
        "algbw_gb_s": bytes / s / 1e9,
    }));
    Ok(())
}
