//! Multi-process tests: real ranks (`rl-dist-worker`) over the TCP backend, started by the
//! launcher or by hand. Ports are picked free (bind port 0), never fixed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rl_core::Error;
use rl_core::dist::DistError;
use rl_dist::{Launcher, Stream};
use serde_json::Value;

const WORKER: &str = env!("CARGO_BIN_EXE_rl-dist-worker");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Launches `n` ranks of the worker; returns the launch result and every forwarded line.
fn launch(
    n: usize,
    args: &[&str],
) -> (rl_core::Result<rl_dist::LaunchReport>, Vec<(Stream, String)>) {
    let mut lines = Vec::new();
    let mut cmd = vec![WORKER];
    cmd.extend_from_slice(args);
    let r = Launcher::new(n)
        .timeout(Duration::from_secs(60))
        .kill_grace(Duration::from_secs(2))
        .run_with(&cmd, &mut |s, l| lines.push((s, l.to_string())));
    (r, lines)
}

/// The `RESULT` JSON of each rank, by rank.
fn results(n: usize, lines: &[(Stream, String)]) -> Vec<Value> {
    let mut out = vec![Value::Null; n];
    for (_, l) in lines {
        let Some(rest) = l.strip_prefix("[rank ") else { continue };
        let (rank, rest) = rest.split_once("] ").unwrap();
        if let Some(json) = rest.strip_prefix("RESULT ") {
            out[rank.parse::<usize>().unwrap()] = serde_json::from_str(json).unwrap();
        }
    }
    assert!(out.iter().all(|v| !v.is_null()), "missing results in {lines:#?}");
    out
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
fn collectives_over_two_and_three_processes_give_exact_values() {
    for n in [2usize, 3] {
        let (r, lines) = launch(n, &["collectives"]);
        r.unwrap_or_else(|e| panic!("{n} ranks: {e}\n{lines:#?}"));
        let res = results(n, &lines);
        let ranks: Vec<f64> = (0..n).map(|r| r as f64).collect();
        let s1: f64 = ranks.iter().map(|r| r + 1.0).sum();
        let sr: f64 = ranks.iter().sum();
        let sq: f64 = ranks.iter().map(|r| r * r).sum();
        let nf = n as f64;
        // The f64 sums in rank order, bit for bit.
        let f_sum = ranks.iter().skip(1).fold(0.1 * 1.0, |acc, r| acc + 0.1 * (r + 1.0));
        for (rank, v) in res.iter().enumerate() {
            assert_eq!(v["rank"], rank);
            let t = v["f64"].as_array().unwrap();
            assert_eq!(f64s(&t[0]), [s1, 0.5 * sr, -3.0 * nf], "rank {rank}");
            assert_eq!(f64s(&t[1]), [1e15 * s1, 0.25 * nf, sq], "rank {rank}");
            let pow: f64 = (0..n).map(|r| 2f64.powi(r as i32)).sum();
            assert_eq!(f64s(&v["f32"]), [s1, pow], "rank {rank}");
            assert_eq!(f64s(&v["bf16"]), [s1, -0.5 * nf], "rank {rank}");
            let root = (n - 1) as f64 * 10.0;
            assert_eq!(f64s(&v["broadcast"]), [root, root + 1.0, root + 2.0], "rank {rank}");
            let want: Vec<Vec<u8>> = (0..n).map(|r| vec![r as u8; r + 1]).collect();
            let got: Vec<Vec<u8>> = v["gathered"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| u64s(b).into_iter().map(|x| x as u8).collect())
                .collect();
            assert_eq!(got, want, "rank {rank}");
            assert_eq!(u64s(&v["u64_sum"]), [s1 as u64, 10 * sr as u64], "rank {rank}");
            assert_eq!(u64s(&v["u64_max"]), [n as u64 - 1, 1], "rank {rank}");
            assert_eq!(u64s(&v["f64_sum_bits"]), [f_sum.to_bits(), (-sr).to_bits()], "rank {rank}");
            assert_eq!(f64s(&v["f64_min"]), [0.0, -(nf - 1.0)], "rank {rank}");
        }
        // Output is forwarded with the rank prefix, on the right stream.
        assert!(
            lines.iter().all(|(s, l)| *s == Stream::Stdout && l.starts_with("[rank ")),
            "{lines:#?}"
        );
    }
}

#[test]
fn gradient_all_reduce_over_ranks_equals_the_single_process_full_batch_gradient() {
    // One process, whole batch (no DP environment: the worker uses SingleProcess).
    let out = Command::new(WORKER)
        .arg("grad")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("SLURM_NTASKS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let single: Value =
        serde_json::from_str(stdout.trim().strip_prefix("RESULT ").unwrap()).unwrap();
    assert_eq!(single["global_rows"], 12);
    for n in [2usize, 3] {
        let (r, lines) = launch(n, &["grad"]);
        r.unwrap_or_else(|e| panic!("{n} ranks: {e}\n{lines:#?}"));
        let res = results(n, &lines);
        for (rank, v) in res.iter().enumerate() {
            assert_eq!(v["global_rows"], 12);
            for key in ["w1", "b1", "w2"] {
                let (a, b) = (f64s(&v[key]), f64s(&single[key]));
                assert_eq!(a.len(), b.len());
                let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                assert!(worst <= 1e-12, "{n} ranks, rank {rank}, {key}: max |diff| {worst:e}");
                // Every rank holds bitwise the same reduced gradient.
                assert_eq!(a, f64s(&res[0][key]), "rank {rank} {key} differs from rank 0");
            }
            // The gradient is not trivially small: a wrong reduction would show.
            assert!(f64s(&v["w2"]).iter().any(|x| x.abs() > 1e-3));
        }
    }
}

#[test]
fn launcher_kills_the_others_when_a_rank_exits_3_and_names_it() {
    let start = Instant::now();
    // Rank 1 exits with 3 after 300 ms; ranks 0 and 2 would sleep for 120 s.
    let (r, lines) = launch(3, &["exit", "1", "3", "300"]);
    let took = start.elapsed();
    match r {
        Err(Error::Dist(DistError::RankFailed { rank, status })) => {
            assert_eq!(rank, 1);
            assert!(status.contains('3'), "{status}");
        }
        other => panic!("expected RankFailed, got {other:?}"),
    }
    assert!(took < Duration::from_secs(15), "teardown took {took:?}");
    assert!(lines.iter().any(|(_, l)| l == "[rank 0] rank 0 started"), "{lines:#?}");
    assert!(lines.iter().any(|(s, l)| *s == Stream::Stderr && l == "[rank 1] rank 1 exits with 3"));
}

#[test]
fn launcher_reports_success_of_every_rank() {
    let (r, lines) = launch(2, &["rendezvous"]);
    let report = r.unwrap_or_else(|e| panic!("{e}\n{lines:#?}"));
    assert_eq!(report.statuses.len(), 2);
    assert!(report.statuses.iter().all(|s| s.success()));
    let res = results(2, &lines);
    assert_eq!(res[1]["world"], 2);
}

/// Starts ranks `ranks` of a group of `world` by hand (no launcher: nobody kills the
/// survivors, so they must notice the failure themselves).
fn spawn(world: usize, ranks: &[usize], timeout_s: &str, args: &[&str]) -> Vec<(usize, Child)> {
    let port = free_port().to_string();
    ranks
        .iter()
        .map(|&r| {
            let child = Command::new(WORKER)
                .args(args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("RL_ZERO_RUN_ID", "test")
                .env("RL_ZERO_DIST_TIMEOUT_S", timeout_s)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (r, child)
        })
        .collect()
}

/// Waits for the given ranks (killing everything after `limit`: the test then fails); returns
/// each one's exit code and parsed `ERROR` payload.
fn wait(
    children: Vec<(usize, Child)>,
    expect_done: &[usize],
    limit: Duration,
) -> Vec<(usize, i32, Option<DistError>)> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for (r, mut c) in children {
        if !expect_done.contains(&r) {
            rest.push(c);
            continue;
        }
        let status = loop {
            if let Some(s) = c.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                for mut o in rest.drain(..) {
                    let _ = o.kill();
                }
                panic!("rank {r} still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let o = c.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        let err = stderr
            .lines()
            .find_map(|l| l.strip_prefix("ERROR "))
            .and_then(|j| serde_json::from_str::<DistError>(j).ok());
        out.push((r, status.code().unwrap_or(-1), err));
    }
    for mut c in rest {
        let _ = c.kill();
        let _ = c.wait();
    }
    out
}

#[test]
fn a_rank_that_dies_makes_the_others_fail_naming_it() {
    for dead in [2usize, 0] {
        let start = Instant::now();
        // 60 s collective timeout: the failure must be detected, not timed out.
        let kids = spawn(3, &[0, 1, 2], "60", &["die", &dead.to_string(), "7"]);
        let done = wait(kids, &[0, 1, 2], Duration::from_secs(30));
        assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
        for (r, code, err) in done {
            if r == dead {
                assert_eq!(code, 7);
                continue;
            }
            assert_eq!(code, 1, "rank {r}");
            match err {
                Some(DistError::PeerFailed { rank, .. }) => assert_eq!(rank, dead, "rank {r}"),
                other => panic!("rank {r}: expected PeerFailed naming {dead}, got {other:?}"),
            }
        }
    }
}

#[test]
fn a_silent_rank_times_out_on_every_other_rank() {
    let start = Instant::now();
    // Rank 1 sleeps 30 s instead of joining the all-reduce; the timeout is 2 s.
    let kids = spawn(3, &[0, 1, 2], "2", &["hang", "1", "30"]);
    let done = wait(kids, &[0, 2], Duration::from_secs(20));
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
    for (r, code, err) in done {
        assert_eq!(code, 1, "rank {r}");
        match err {
            Some(DistError::Timeout { rank, .. }) => assert_eq!(rank, 1, "rank {r}"),
            other => panic!("rank {r}: expected Timeout naming rank 1, got {other:?}"),
        }
    }
}

#[test]
fn a_rendezvous_with_a_missing_peer_times_out_with_a_typed_error() {
    let start = Instant::now();
    // World of 3, rank 2 never starts; 2 s rendezvous timeout.
    let kids = spawn(3, &[0, 1], "2", &["rendezvous"]);
    let done = wait(kids, &[0, 1], Duration::from_secs(20));
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
    for (r, code, err) in done {
        assert_eq!(code, 1, "rank {r}");
        match err {
            Some(DistError::RendezvousTimeout { missing, .. }) => {
                assert_eq!(missing, [2], "rank {r}")
            }
            other => panic!("rank {r}: expected RendezvousTimeout, got {other:?}"),
        }
    }
}
