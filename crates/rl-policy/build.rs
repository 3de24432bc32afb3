//! With the `cuda` feature, compiles `kernels/ops.cu` (the CUDA versions of the fused ops in
//! `src/ops.rs`) to PTX in `OUT_DIR/rl_ops.ptx` with `nvcc`, which `src/ops/cuda.rs` embeds.
//!
//! Environment: `NVCC` (default `nvcc` on `PATH`), `CUDA_COMPUTE_CAP` (default 75, the oldest
//! architecture CUDA 13 targets; the driver JIT-compiles the PTX for newer GPUs).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels/ops.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("rl_ops.ptx");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".into());
    let cap = cap.trim().replace('.', "");
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch=compute_{cap}"),
            "kernels/ops.cu",
            "-o",
        ])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            panic!("rl-policy: `{nvcc} --ptx kernels/ops.cu` failed ({s}); see its output above")
        }
        Err(e) => panic!(
            "rl-policy: the `cuda` feature needs nvcc to compile kernels/ops.cu, but `{nvcc}` could not \
             be run ({e}); put the CUDA toolkit's bin/ on PATH or set NVCC (scripts/check_cuda.sh \
             installs one from PyPI)"
        ),
    }
}
