//! A torchrun-style launcher: start `nproc_per_node` ranks of one command with the DP
//! environment, forward their output with a `[rank N]` prefix, and tear the group down when one
//! rank fails.
//!
//! What it guarantees: when a rank exits unsuccessfully (non-zero status or a signal), the
//! others get `SIGTERM`, then `SIGKILL` after [`Launcher::kill_grace`], and are reaped before
//! [`Launcher::run`] returns [`DistError::RankFailed`] naming the *first* failing rank and its
//! status. A rendezvous that times out makes the ranks exit non-zero (their
//! [`DistError::RendezvousTimeout`]), which triggers the same teardown. A rank that exits 0
//! while others still run is normal (ranks finish at slightly different times); if the others
//! then need it, their collectives fail and the group is torn down.
//!
//! Not covered: processes the ranks start themselves (only the direct children are
//! signalled), and a launcher killed with `SIGKILL` (its children are then orphaned, as with
//! torchrun). `Ctrl-C` reaches the ranks directly (same process group).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rl_core::dist::DistError;
use rl_core::{Error, Result};

use crate::env::{MAX_RUN_ID_BYTES, MAX_WORLD_SIZE};

/// Longest output line forwarded as one line (longer ones are split): 64 KiB.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// Which output stream a forwarded line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The rank's stdout.
    Stdout,
    /// The rank's stderr.
    Stderr,
}

/// How a successful launch ended.
#[derive(Clone, Debug)]
pub struct LaunchReport {
    /// Every rank's exit status, by rank (all successful).
    pub statuses: Vec<ExitStatus>,
    /// Wall time from the first spawn to the last exit.
    pub elapsed: Duration,
}

/// Starts the ranks of one node. Options follow torchrun's (`--nproc-per-node`, `--nnodes`,
/// `--node-rank`, `--master-addr`, `--master-port`).
///
/// Every rank gets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `GROUP_RANK`
/// (the node rank), `MASTER_ADDR`, `MASTER_PORT`, `RL_ZERO_RUN_ID` (and
/// `RL_ZERO_DIST_TIMEOUT_S` when [`timeout`](Self::timeout) is set), read back by
/// [`crate::DistEnv::from_env`].
///
/// ```no_run
/// use rl_dist::Launcher;
///
/// // two ranks of `my-trainer --steps 10`; output lines come out as `[rank 0] ...`
/// let report = Launcher::new(2).run(&["my-trainer", "--steps", "10"])?;
/// assert_eq!(report.statuses.len(), 2);
/// # Ok::<(), rl_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Launcher {
    nproc_per_node: usize,
    nnodes: usize,
    node_rank: usize,
    master_addr: String,
    master_port: Option<u16>,
    run_id: Option<String>,
    timeout: Option<Duration>,
    kill_grace: Duration,
    envs: Vec<(OsString, OsString)>,
}

impl Launcher {
    /// A single-node launch of `nproc_per_node` ranks on `127.0.0.1`, a free port, a fresh run
    /// id, and a 5 s grace between `SIGTERM` and `SIGKILL`.
    pub fn new(nproc_per_node: usize) -> Self {
        Self {
            nproc_per_node,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: None,
            run_id: None,
            timeout: None,
            kill_grace: Duration::from_secs(5),
            envs: Vec::new(),
        }
    }

    /// Multi-node: this is node `node_rank` of `nnodes` (ranks `node_rank·nproc ..`). Needs an
    /// explicit [`master_addr`](Self::master_addr) reachable from every node and a
    /// [`master_port`](Self::master_port).
    pub fn nodes(mut self, nnodes: usize, node_rank: usize) -> Self {
        self.nnodes = nnodes;
        self.node_rank = node_rank;
        self
    }

    /// Host of rank 0.
    pub fn master_addr(mut self, addr: impl Into<String>) -> Self {
        self.master_addr = addr.into();
        self
    }

    /// Port of rank 0 (default on one node: a free port picked by binding port 0).
    pub fn master_port(mut self, port: u16) -> Self {
        self.master_port = Some(port);
        self
    }

    /// Run id (default: derived from the launcher's pid and the time).
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        self.run_id = Some(id.into());
        self
    }

    /// Rendezvous / collective timeout passed to the ranks (`RL_ZERO_DIST_TIMEOUT_S`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Time between `SIGTERM` and `SIGKILL` in a teardown.
    pub fn kill_grace(mut self, t: Duration) -> Self {
        self.kill_grace = t;
        self
    }

    /// An extra environment variable for every rank.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Runs `command` (program then arguments) as every rank, forwarding output to this
    /// process's stdout / stderr. See [`run_with`](Self::run_with).
    pub fn run(&self, command: &[impl AsRef<OsStr>]) -> Result<LaunchReport> {
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        self.run_with(command, &mut |stream, line| {
            let w: &mut dyn Write = match stream {
                Stream::Stdout => &mut out,
                Stream::Stderr => &mut err,
            };
            let _ = w.write_all(line.as_bytes());
            let _ = w.write_all(b"\n");
        })
    }

    /// Runs `command` as every rank; each output line goes to `sink` as `[rank N] line`
    /// (lines of one rank and stream stay in order).
    ///
    /// # Errors
    /// [`DistError::RankFailed`] for the first rank that failed (after tearing the others
    /// down), [`DistError::Launch`] when a rank cannot be started, [`Error::Config`] for bad
    /// options.
    pub fn run_with(
        &self,
        command: &[impl AsRef<OsStr>],
        sink: &mut dyn FnMut(Stream, &str),
    ) -> Result<LaunchReport> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Error::config("command", "empty: nothing to launch"))?;
        let world = self.world_size()?;
        let port = match self.master_port {
            Some(0) => return Err(Error::config("master_port", "must be in 1..=65535")),
            Some(p) => p,
            None if self.nnodes == 1 => free_port(&self.master_addr)?,
            None => return Err(Error::config("master_port", "required with more than one node")),
        };
        let run_id = self.run_id.clone().unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("rlz-{}-{t:x}", std::process::id())
        });
        if run_id.len() > MAX_RUN_ID_BYTES {
            return Err(Error::config("run_id", format!("longer than {MAX_RUN_ID_BYTES} bytes")));
        }

        let start = Instant::now();
        let (tx, rx) = mpsc::channel::<Msg>();
        let mut children: Vec<Option<Child>> = Vec::with_capacity(self.nproc_per_node);
        let mut readers = 0usize;
        for local in 0..self.nproc_per_node {
            let rank = self.node_rank * self.nproc_per_node + local;
            let mut cmd = Command::new(program);
            cmd.args(args)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", local.to_string())
                .env("LOCAL_WORLD_SIZE", self.nproc_per_node.to_string())
                .env("GROUP_RANK", self.node_rank.to_string())
                .env("MASTER_ADDR", &self.master_addr)
                .env("MASTER_PORT", port.to_string())
                .env("RL_ZERO_RUN_ID", &run_id)
                .envs(self.envs.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(t) = self.timeout {
                cmd.env("RL_ZERO_DIST_TIMEOUT_S", t.as_secs_f64().to_string());
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    if let Some(o) = child.stdout.take() {
                        spawn_reader(rank, Stream::Stdout, o, tx.clone());
                        readers += 1;
                    }
                    if let Some(e) = child.stderr.take() {
                        spawn_reader(rank, Stream::Stderr, e, tx.clone());
                        readers += 1;
                    }
                    children.push(Some(child));
                }
                Err(e) => {
                    let reason = format!(
                        "cannot start rank {rank} (`{}`): {e}",
                        program.as_ref().to_string_lossy()
                    );
                    terminate(&mut children, self.kill_grace);
                    return Err(DistError::Launch { reason }.into());
                }
            }
        }
        drop(tx);

        let base = self.node_rank * self.nproc_per_node;
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
        let mut failure: Option<(usize, ExitStatus)> = None;
        let mut open_readers = readers;
        loop {
            // Forward what is there, wait a little for more.
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(m) => forward(m, sink, &mut open_readers),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open_readers = 0,
            }
            while let Ok(m) = rx.try_recv() {
                forward(m, sink, &mut open_readers);
            }
            for (i, slot) in children.iter_mut().enumerate() {
                if let Some(child) = slot {
                    match child.try_wait() {
                        Ok(Some(status)) => {
                            statuses[i] = Some(status);
                            *slot = None;
                            if !status.success() && failure.is_none() {
                                failure = Some((base + i, status));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            *slot = None;
                            if failure.is_none() {
                                return Err(DistError::Launch {
                                    reason: format!("cannot wait for rank {}: {e}", base + i),
                                }
                                .into());
                            }
                        }
                    }
                }
            }
            if failure.is_some() {
                terminate(&mut children, self.kill_grace);
            }
            if children.iter().all(Option::is_none) {
                break;
            }
        }
        // The children are gone; collect their last lines (bounded wait: a grandchild may still
        // hold a pipe open).
        let until = Instant::now() + Duration::from_secs(1);
        while open_readers > 0 {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => forward(m, sink, &mut open_readers),
                Err(_) => break,
            }
        }
        if let Some((rank, status)) = failure {
            return Err(DistError::RankFailed { rank, status: status.to_string() }.into());
        }
        Ok(LaunchReport {
            statuses: statuses.into_iter().flatten().collect(),
            elapsed: start.elapsed(),
        })
    }

    fn world_size(&self) -> Result<usize> {
        if self.nproc_per_node == 0 {
            return Err(Error::config("nproc_per_node", "must be at least 1"));
        }
        if self.nnodes == 0 || self.node_rank >= self.nnodes {
            return Err(Error::config(
                "node_rank",
                format!("{} is not below nnodes = {}", self.node_rank, self.nnodes),
            ));
        }
        match self.nproc_per_node.checked_mul(self.nnodes) {
            Some(w) if w <= MAX_WORLD_SIZE => Ok(w),
            _ => Err(Error::config("nproc_per_node", format!("world size above {MAX_WORLD_SIZE}"))),
        }
    }
}

/// Launches `command` as `nproc_per_node` local ranks with the defaults of [`Launcher::new`].
pub fn launch(nproc_per_node: usize, command: &[impl AsRef<OsStr>]) -> Result<LaunchReport> {
    Launcher::new(nproc_per_node).run(command)
}

enum Msg {
    Line(usize, Stream, String),
    Done,
}

fn forward(m: Msg, sink: &mut dyn FnMut(Stream, &str), open: &mut usize) {
    match m {
        Msg::Line(rank, stream, line) => sink(stream, &format!("[rank {rank}] {line}")),
        Msg::Done => *open = open.saturating_sub(1),
    }
}

fn spawn_reader(
    rank: usize,
    stream: Stream,
    pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<Msg>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match read_line_bounded(&mut r, &mut line, MAX_LINE_BYTES) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        line.pop();
                    }
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if tx.send(Msg::Line(rank, stream, text)).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Msg::Done);
    });
}

/// Reads up to and including the next `\n`, or `max` bytes, whichever comes first.
fn read_line_bounded(
    r: &mut impl BufRead,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < max {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let room = max - n;
        let (take, done) = match buf.iter().take(room).position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len().min(room), false),
        };
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        n += take;
        if done {
            break;
        }
    }
    Ok(n)
}

/// Picks a free TCP port on `addr` (bind port 0, read it, release it).
fn free_port(addr: &str) -> Result<u16> {
    let l = TcpListener::bind((addr, 0)).map_err(|e| DistError::Rendezvous {
        addr: format!("{addr}:0"),
        reason: format!("cannot pick a free port: {e}"),
    })?;
    Ok(l.local_addr()?.port())
}

/// Stops every running child: `SIGTERM`, up to `grace` for them to exit, then `SIGKILL`;
/// reaps them all.
fn terminate(children: &mut [Option<Child>], grace: Duration) {
    for child in children.iter_mut().flatten() {
        signal::term(child);
    }
    let until = Instant::now() + grace;
    while Instant::now() < until
        && children.iter_mut().flatten().any(|c| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for slot in children.iter_mut() {
        if let Some(child) = slot {
            let _ = child.kill();
            let _ = child.wait();
            *slot = None;
        }
    }
}

#[cfg(unix)]
#[allow(unsafe_code)]
mod signal {
    /// Sends `SIGTERM` to a child that has not been reaped.
    pub(super) fn term(child: &mut std::process::Child) {
        if let Ok(None) = child.try_wait() {
            let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
            // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, not yet
            // reaped (checked just above), so the pid cannot have been reused by another process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

#[cfg(not(unix))]
mod signal {
    /// No `SIGTERM` here: the teardown's `kill` does the job.
    pub(super) fn term(_child: &mut std::process::Child) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_split_at_the_bound() {
        let data = b"abcdef\nxy".to_vec();
        let mut r = BufReader::with_capacity(2, &data[..]);
        let mut out = Vec::new();
        assert_eq!(read_line_bounded(&mut r, &mut out, 4).unwrap(), 4);
        assert_eq!(out, b"abcd");
        out.clear();
        assert_eq!(read_line_bounded(&mut r, &mut out, 4).unwrap(), 3);
        assert_eq!(out, b"ef\n");
        out.clear();
        assert_eq!(read_line_bounded(&mut r, &mut out, 4).unwrap(), 2);
        out.clear();
        assert_eq!(read_line_bounded(&mut r, &mut out, 4).unwrap(), 0);
    }

    #[test]
    fn bad_options_are_config_errors() {
        let e = Launcher::new(0).run(&["true"]).unwrap_err();
        assert!(matches!(e, Error::Config { ref field, .. } if field == "nproc_per_node"), "{e}");
        let e = Launcher::new(1).nodes(2, 0).run(&["true"]).unwrap_err();
        assert!(matches!(e, Error::Config { ref field, .. } if field == "master_port"), "{e}");
        let e = Launcher::new(1).run(&[] as &[&str]).unwrap_err();
        assert!(matches!(e, Error::Config { ref field, .. } if field == "command"), "{e}");
    }

    #[test]
    fn missing_program_is_a_launch_error() {
        let e = Launcher::new(2).run(&["/nonexistent/rl-zero-no-such-binary"]).unwrap_err();
        assert!(matches!(e, Error::Dist(DistError::Launch { .. })), "{e}");
    }
}
