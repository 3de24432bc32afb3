//! `testing::EngineProcess`, the guard the real-engine tests start servers with: it waits for
//! `/health`, reports a server that dies or never becomes healthy with its log, and kills the
//! server's whole process group when dropped.

use std::process::Command;
use std::time::{Duration, Instant};

use rl_rollout::testing::EngineProcess;

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn alive(pid: &str) -> bool {
    let quiet = std::process::Stdio::null;
    let status = Command::new("kill").args(["-0", pid]).stderr(quiet()).status();
    status.is_ok_and(|s| s.success())
}

#[test]
fn a_server_that_exits_is_reported_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo 'model not found: /nowhere' >&2; exit 3"]);
    let url = format!("http://127.0.0.1:{}", port());
    let t0 = Instant::now();
    let err = EngineProcess::spawn(cmd, &url, &dir.path().join("log"), Duration::from_secs(60))
        .unwrap_err();
    assert!(err.contains("exited") && err.contains("model not found: /nowhere"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "waited for the timeout");
}

#[test]
fn a_healthy_server_is_returned_and_its_process_group_killed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let p = port();
    // A server answering /health, plus a child of it (engines start worker processes) whose pid
    // it writes down: both must be gone after the drop.
    let script = format!(
        "sleep 300 & echo $! > {pids}; exec python3 -c \"
import http.server as h
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == '/health' else 404); self.end_headers()
h.HTTPServer(('127.0.0.1', {p}), H).serve_forever()\"",
        pids = dir.path().join("worker.pid").display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let url = format!("http://127.0.0.1:{p}");
    let server = EngineProcess::spawn(cmd, &url, &dir.path().join("log"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server.url, url);
    let worker = std::fs::read_to_string(dir.path().join("worker.pid")).unwrap();
    let worker = worker.trim().to_string();
    assert!(alive(&worker), "the worker should run while the server does");
    drop(server);
    let t0 = Instant::now();
    while alive(&worker) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(&worker), "the server's worker outlived the guard");
    assert!(ureq::get(&format!("{url}/health")).call().is_err(), "the server still answers");
}
