//! Times one AdamW step over `N` f32 parameters (default 135M, SmolLM2-135M's size) with the
//! fused in-place CPU kernels and with the tensor-op path.
//!
//! ```sh
//! cargo run --release -p rl-trainer --example adamw_speed -- 135000000
//! ```

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rl_trainer::{AdamW, AdamWConfig};

fn main() -> rl_trainer::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(135_000_000);
    let dev = Device::Cpu;
    // Split into matrices of 576 × 1536 (SmolLM2-135M's MLP shape) plus a remainder.
    let chunk = 576 * 1536;
    let sizes: Vec<usize> = (0..n / chunk)
        .map(|_| chunk)
        .chain((!n.is_multiple_of(chunk)).then_some(n % chunk))
        .collect();
    for fused in [true, false] {
        let vars = sizes
            .iter()
            .map(|&s| Var::from_tensor(&Tensor::ones(s, DType::F32, &dev)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut grads = GradStore::default();
        for v in &vars {
            grads.insert(v.as_tensor(), Tensor::full(0.01f32, v.dims(), &dev)?);
        }
        let mut opt = AdamW::new(vars, AdamWConfig::default())?.with_fused(fused);
        opt.step(&grads, 1e-3)?; // allocates the moments
        let t = Instant::now();
        for _ in 0..3 {
            opt.step(&grads, 1e-3)?;
        }
        println!("{n} params, fused={fused}: {:.3} s per step", t.elapsed().as_secs_f64() / 3.0);
    }
    Ok(())
}
