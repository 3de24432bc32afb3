//! Data-parallel training equals one process: 1, 2 and 3 real ranks (`rl-dp-worker`, TCP group,
//! started by `rl_dist::Launcher`) of Dr. GRPO and of PPO with a critic, compared parameter by
//! parameter, AdamW moment by moment and metric by metric.

use std::time::Duration;

use rl_dist::{Launcher, Stream};
use serde_json::Value;

const WORKER: &str = env!("CARGO_BIN_EXE_rl-dp-worker");

/// Runs `n` ranks (1: one plain process) of `algo` for `steps`; every rank's result, by rank.
fn run(n: usize, algo: &str, steps: &str) -> Vec<Value> {
    run_mode(n, algo, steps, &[])
}

/// [`run`] with the worker's mode arguments (`save-after K DIR`, `resume DIR`).
fn run_mode(n: usize, algo: &str, steps: &str, mode: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("result");
    let out = out.to_str().unwrap();
    let mut args = vec![algo, steps, out];
    args.extend_from_slice(mode);
    if n == 1 {
        let o = std::process::Command::new(WORKER).args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    } else {
        let mut lines = Vec::new();
        let mut cmd = vec![WORKER];
        cmd.extend_from_slice(&args);
        Launcher::new(n)
            .timeout(Duration::from_secs(120))
            .kill_grace(Duration::from_secs(2))
            .run_with(&cmd, &mut |_: Stream, l: &str| lines.push(l.to_string()))
            .unwrap_or_else(|e| panic!("{n} ranks: {e}\n{lines:#?}"));
    }
    (0..n)
        .map(|r| {
            let text = std::fs::read_to_string(format!("{out}.{r}.json")).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Max |a − b| over two parameter vectors.
fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// f32 bound: the ranks sum the same per-token terms in another order (micro-batches split
/// differently, a rank-ordered sum of the partial gradients), about 1e-7 relative per step;
/// three steps of Adam at lr 1e-2 turn that into ≤ 1e-6 absolute on the weights.
const PARAM_TOL: f64 = 2e-5;

/// Compares the optimizer state of `res` (a rank of a multi-rank run) with the one-process
/// `base`: the same optimizers, step counts and moment names; every moment within `OPTIM_TOL`
/// relative to the largest entry of its tensor. Returns the largest relative difference.
fn check_optim(base: &Value, res: &Value, what: &str) -> f64 {
    let (b, r) = (base.as_object().unwrap(), res.as_object().unwrap());
    assert_eq!(b.keys().collect::<Vec<_>>(), r.keys().collect::<Vec<_>>(), "{what}: optimizers");
    assert!(b.contains_key("actor_optim"), "{what}: no actor optimizer state");
    let mut worst = 0.0f64;
    for (name, bo) in b {
        assert_eq!(bo["steps"], r[name]["steps"], "{what}: {name} step count");
        assert!(bo["steps"].as_u64().unwrap() > 0, "{what}: {name} took no step");
        let (bm, rm) =
            (bo["moments"].as_object().unwrap(), r[name]["moments"].as_object().unwrap());
        assert_eq!(bm.keys().collect::<Vec<_>>(), rm.keys().collect::<Vec<_>>(), "{what}: {name}");
        for (k, bv) in bm {
            let (x, y) = (floats(bv), floats(&rm[k]));
            let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{what}: {name}.{k} is all zeros (no gradient reached it)");
            let rel = max_diff(&x, &y) / scale;
            assert!(rel <= OPTIM_TOL, "{what}: {name}.{k}: max |Δ| / max |m| = {rel:e}");
            worst = worst.max(rel);
        }
    }
    worst
}

/// Relative bound on the AdamW moments: the first moment is a sum of gradients whose f32 sums
/// differ by summation order (~1e-7 relative per step, see `PARAM_TOL`), the second a sum of their
/// squares; three steps keep both well inside 1e-4 of the tensor's largest entry.
const OPTIM_TOL: f64 = 1e-4;

fn check(algo: &str) {
    let steps = "3";
    let one = run(1, algo, steps);
    let base = floats(&one[0]["params"]);
    let base_metrics = one[0]["metrics"].as_array().unwrap().clone();
    for n in [2usize, 3] {
        let ranks = run(n, algo, steps);
        for (r, res) in ranks.iter().enumerate() {
            assert_eq!(res["world"], n, "{algo}: rank {r}");
            let d = max_diff(&base, &floats(&res["params"]));
            eprintln!("{algo}: {n} ranks, rank {r}: max |Δparam| = {d:e}");
            assert!(d <= PARAM_TOL, "{algo}: {n} ranks, rank {r}: {d}");
            // The replicas stay identical to each other (same reduced gradients, same steps).
            assert_eq!(res["params"], ranks[0]["params"], "{algo}: rank {r} vs rank 0");
            assert_eq!(res["optim"], ranks[0]["optim"], "{algo}: rank {r} optimizer vs rank 0");
            let o = check_optim(&one[0]["optim"], &res["optim"], &format!("{algo}, {n} ranks"));
            eprintln!("{algo}: {n} ranks, rank {r}: max relative |Δmoment| = {o:e}");
            let metrics = res["metrics"].as_array().unwrap();
            assert_eq!(metrics.len(), base_metrics.len());
            for (step, (m, b)) in metrics.iter().zip(&base_metrics).enumerate() {
                let (m, b) = (m.as_object().unwrap(), b.as_object().unwrap());
                assert_eq!(
                    m.keys().collect::<Vec<_>>(),
                    b.keys().collect::<Vec<_>>(),
                    "{algo}: step {step}"
                );
                for (k, v) in b {
                    let (x, y) = (v.as_f64().unwrap(), m[k].as_f64().unwrap());
                    let tol = 1e-4 * x.abs().max(1e-2);
                    assert!(
                        (x - y).abs() <= tol,
                        "{algo}: {n} ranks, step {step}, {k}: {x} vs {y}"
                    );
                }
            }
        }
    }
    // The update moved the weights (the comparison is not between untouched models).
    let init = run(1, algo, "0");
    assert!(max_diff(&base, &floats(&init[0]["params"])) > 1e-3, "{algo}: training moved nothing");
}

#[test]
fn dr_grpo_over_two_and_three_ranks_equals_one_process() {
    check("dr_grpo");
}

#[test]
fn ppo_with_a_critic_over_two_and_three_ranks_equals_one_process() {
    check("ppo");
}

/// Open-Reasoner-Zero's PPO: GAE whitened over the whole batch. Each rank holds part of the
/// batch, so the whitening moments are merged over the ranks (`AdvantageInput::batch_reduce`);
/// the result equals one process whitening the whole batch.
#[test]
fn orz_whitened_gae_over_two_and_three_ranks_equals_one_process() {
    check("orz");
}

/// A 2-rank run interrupted after step 1 (rank 0 checkpoints, every rank exits) and resumed on
/// 2 ranks from that checkpoint ends with exactly the weights and AdamW moments of an
/// uninterrupted 2-rank run.
#[test]
fn resume_under_data_parallelism_equals_an_uninterrupted_run() {
    for algo in ["dr_grpo", "ppo"] {
        let ckpt = tempfile::tempdir().unwrap();
        let dir = ckpt.path().to_str().unwrap();
        let whole = run(2, algo, "3");
        let first = run_mode(2, algo, "3", &["save-after", "1", dir]);
        assert_eq!(first[0]["metrics"].as_array().unwrap().len(), 1, "{algo}: stopped after 1");
        let resumed = run_mode(2, algo, "3", &["resume", dir]);
        assert_eq!(resumed[0]["metrics"].as_array().unwrap().len(), 2, "{algo}: steps 2 and 3");
        for r in 0..2 {
            assert_eq!(resumed[r]["params"], whole[r]["params"], "{algo}: rank {r}");
            assert_eq!(resumed[r]["optim"], whole[r]["optim"], "{algo}: rank {r} optimizer");
        }
        let (a, b) = (&resumed[0]["metrics"][1], &whole[0]["metrics"][2]);
        assert_eq!(a, b, "{algo}: step 3 metrics");
    }
}

/// Two ranks sampling from one (mock vLLM) engine: rank 0 alone publishes the weights (before
/// the first rollout and after every step), the other rank records each version and checks the
/// engine reports it before its next rollout; on both ranks every rollout comes from the
/// trainer's current weights (engine/trainer log-prob mismatch at f32 noise).
#[test]
fn under_data_parallelism_rank_0_alone_publishes_to_the_engine() {
    use rl_rollout::Engine;
    use rl_rollout::testing::MockServer;
    use rl_zero_dp_check::{EngineModel, model, policy};

    let engine = EngineModel(policy(model().unwrap()));
    let server = MockServer::start(Engine::Vllm, Box::new(engine), "tiny", 64).unwrap();
    let sync = tempfile::tempdir().unwrap();
    let url = server.url();
    let ranks = run_mode(2, "dr_grpo", "2", &["engine", &url, sync.path().to_str().unwrap()]);
    let reloads = server.calls().iter().filter(|c| c.contains("/collective_rpc")).count();
    assert_eq!(reloads, 3, "versions 0, 1, 2 from rank 0 only: {:?}", server.calls());
    assert_eq!(server.weight_version(), "2");
    assert!(!sync.path().join("rank1").exists(), "rank 1 wrote weights");
    for (r, res) in ranks.iter().enumerate() {
        let metrics = res["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 2);
        for (step, m) in metrics.iter().enumerate() {
            let diff = m["rollout/log_prob_abs_diff"].as_f64().unwrap();
            eprintln!("rank {r}, step {}: mismatch {diff:e}", step + 1);
            assert!(diff < 1e-5, "rank {r}, step {}: {diff}", step + 1);
            assert_eq!(m.get("sync/version").is_some(), r == 0, "rank {r} step {}", step + 1);
        }
    }
    assert_eq!(ranks[0]["params"], ranks[1]["params"], "replicas identical");
}
