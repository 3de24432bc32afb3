//! The launch environment: torchrun / Slurm variables read into a [`DistEnv`].

use std::time::Duration;

use rl_core::dist::DistError;
use rl_core::{Error, Result};

/// Largest group accepted from the environment (ranks are processes; 65 536 is far beyond any
/// DP run and keeps every per-rank allocation bounded).
pub const MAX_WORLD_SIZE: usize = 1 << 16;

/// Longest run id accepted (bytes).
pub const MAX_RUN_ID_BYTES: usize = 256;

/// Default collective and rendezvous timeout: 30 minutes (torch's gloo default; a rank may
/// legitimately spend minutes in a rollout between two collectives).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Longest timeout accepted from `RL_ZERO_DIST_TIMEOUT_S`: one day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Where this process sits in a data-parallel group, as torchrun (`--no-python`), `srun` or
/// [`crate::Launcher`] describe it in the environment.
///
/// | variable | meaning | fallback |
/// |---|---|---|
/// | `RANK` | global rank, `0..WORLD_SIZE` | `SLURM_PROCID` |
/// | `WORLD_SIZE` | number of ranks | `SLURM_NTASKS` |
/// | `LOCAL_RANK` | rank on this node (the GPU index) | `SLURM_LOCALID`, else `RANK` |
/// | `MASTER_ADDR` | host of rank 0 (rendezvous) | none: required |
/// | `MASTER_PORT` | port of rank 0 (rendezvous) | none: required |
/// | `RL_ZERO_RUN_ID` | id all ranks must agree on | `TORCHELASTIC_RUN_ID`, else `"default"` |
/// | `RL_ZERO_DIST_TIMEOUT_S` | rendezvous / collective timeout, seconds | 1800 |
///
/// Under Slurm, export `MASTER_ADDR` (e.g. the first host of `scontrol show hostnames`) and
/// `MASTER_PORT` in the batch script; the rank variables come from `srun`.
#[derive(Clone, Debug, PartialEq)]
pub struct DistEnv {
    /// Global rank, `< world_size`.
    pub rank: usize,
    /// Number of ranks, `1..=MAX_WORLD_SIZE`.
    pub world_size: usize,
    /// Rank on this node (the CUDA device index for the NCCL backend).
    pub local_rank: usize,
    /// Host of rank 0.
    pub master_addr: String,
    /// Port of rank 0 (non-zero).
    pub master_port: u16,
    /// Run id every rank must present at the rendezvous (at most [`MAX_RUN_ID_BYTES`]).
    pub run_id: String,
    /// Rendezvous and per-collective timeout.
    pub timeout: Duration,
}

impl DistEnv {
    /// Reads the process environment (see the table on [`DistEnv`]).
    ///
    /// `Ok(None)` when none of `RANK`, `WORLD_SIZE`, `SLURM_PROCID` is set: a plain
    /// single-process run. Otherwise every variable must be present and valid, else a
    /// [`DistError::Env`] naming the variable.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any lookup function (tests, config files).
    ///
    /// ```
    /// use rl_dist::DistEnv;
    ///
    /// let vars = [("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")];
    /// let env = DistEnv::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))?
    ///     .expect("distributed");
    /// assert_eq!((env.rank, env.world_size, env.local_rank), (1, 2, 1));
    ///
    /// let bad = [("RANK", "2"), ("WORLD_SIZE", "2")];
    /// let err = DistEnv::from_lookup(|k| bad.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("RANK"), "{err}");
    /// # Ok::<(), rl_core::Error>(())
    /// ```
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let pick = |main: &'static str, fallback: &'static str| {
            get(main).map(|v| (main, v)).or_else(|| get(fallback).map(|v| (fallback, v)))
        };
        let rank = pick("RANK", "SLURM_PROCID");
        let world = pick("WORLD_SIZE", "SLURM_NTASKS");
        if rank.is_none() && world.is_none() {
            return Ok(None);
        }
        let (wvar, world) = world.ok_or_else(|| env_err("WORLD_SIZE", "not set (RANK is)"))?;
        let world_size = parse_usize(wvar, &world)?;
        if world_size == 0 || world_size > MAX_WORLD_SIZE {
            return Err(env_err(wvar, format!("{world_size} is not in 1..={MAX_WORLD_SIZE}")));
        }
        let (rvar, rank) = rank.ok_or_else(|| env_err("RANK", "not set (WORLD_SIZE is)"))?;
        let rank = parse_usize(rvar, &rank)?;
        if rank >= world_size {
            return Err(env_err(rvar, format!("{rank} is not below WORLD_SIZE = {world_size}")));
        }
        let local_rank = match pick("LOCAL_RANK", "SLURM_LOCALID") {
            Some((var, v)) => {
                let l = parse_usize(var, &v)?;
                if l >= world_size {
                    return Err(env_err(
                        var,
                        format!("{l} is not below WORLD_SIZE = {world_size}"),
                    ));
                }
                l
            }
            None => rank,
        };
        let master_addr = get("MASTER_ADDR").ok_or_else(|| env_err("MASTER_ADDR", "not set"))?;
        if master_addr.trim().is_empty() || master_addr.len() > 255 {
            return Err(env_err("MASTER_ADDR", "must be a host name or IP of 1..=255 bytes"));
        }
        let port = get("MASTER_PORT").ok_or_else(|| env_err("MASTER_PORT", "not set"))?;
        let master_port = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(env_err("MASTER_PORT", format!("`{port}` is not a port in 1..=65535")));
            }
        };
        let run_id = match pick("RL_ZERO_RUN_ID", "TORCHELASTIC_RUN_ID") {
            Some((var, id)) if id.len() > MAX_RUN_ID_BYTES => {
                return Err(env_err(var, format!("longer than {MAX_RUN_ID_BYTES} bytes")));
            }
            Some((_, id)) => id,
            None => "default".to_string(),
        };
        let timeout = match get("RL_ZERO_DIST_TIMEOUT_S") {
            None => DEFAULT_TIMEOUT,
            Some(s) => parse_timeout("RL_ZERO_DIST_TIMEOUT_S", &s)?,
        };
        Ok(Some(Self { rank, world_size, local_rank, master_addr, master_port, run_id, timeout }))
    }

    /// `MASTER_ADDR:MASTER_PORT` (IPv6 literals bracketed).
    pub fn addr(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }
}

/// Parses a positive, finite number of seconds no larger than [`MAX_TIMEOUT`].
pub(crate) fn parse_timeout(var: &str, s: &str) -> Result<Duration> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= MAX_TIMEOUT.as_secs_f64() => Ok(Duration::from_secs_f64(x)),
        _ => Err(env_err(
            var,
            format!("`{s}` is not a number of seconds in (0, {}]", MAX_TIMEOUT.as_secs()),
        )),
    }
}

fn parse_usize(var: &str, s: &str) -> Result<usize> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| env_err(var, format!("`{s}` is not a non-negative integer")))
}

fn env_err(var: &str, reason: impl Into<String>) -> Error {
    DistError::Env { var: var.to_string(), reason: reason.into() }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        DistEnv::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    fn var_of(e: Error) -> String {
        match e {
            Error::Dist(DistError::Env { var, .. }) => var,
            other => panic!("not an env error: {other}"),
        }
    }

    const OK: [(&str, &str); 4] =
        [("RANK", "0"), ("WORLD_SIZE", "3"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")];

    #[test]
    fn unset_means_single_process() {
        assert_eq!(env(&[("MASTER_ADDR", "x")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let mut v = OK.to_vec();
        v.extend([("LOCAL_RANK", "2"), ("TORCHELASTIC_RUN_ID", "abc")]);
        let e = env(&v).unwrap().unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank), (0, 3, 2));
        assert_eq!(
            (e.addr(), e.run_id.as_str(), e.timeout),
            ("node0:29500".into(), "abc", DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn slurm_fallbacks() {
        let v = [
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "::1"),
            ("MASTER_PORT", "1"),
        ];
        let e = env(&v).unwrap().unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank, e.addr()), (5, 8, 1, "[::1]:1".into()));
    }

    #[test]
    fn each_bad_variable_is_named() {
        let with = |k: &str, val: &str| {
            let mut v: Vec<(&str, &str)> = OK.iter().filter(|(n, _)| *n != k).copied().collect();
            if !val.is_empty() {
                v.push((k, val));
            }
            var_of(env(&v).unwrap_err())
        };
        assert_eq!(with("RANK", "3"), "RANK");
        assert_eq!(with("RANK", "-1"), "RANK");
        assert_eq!(with("RANK", ""), "RANK");
        assert_eq!(with("WORLD_SIZE", "0"), "WORLD_SIZE");
        assert_eq!(with("WORLD_SIZE", "99999999"), "WORLD_SIZE");
        assert_eq!(with("WORLD_SIZE", ""), "WORLD_SIZE");
        assert_eq!(with("MASTER_ADDR", ""), "MASTER_ADDR");
        assert_eq!(with("MASTER_PORT", "0"), "MASTER_PORT");
        assert_eq!(with("MASTER_PORT", "70000"), "MASTER_PORT");
        assert_eq!(with("LOCAL_RANK", "3"), "LOCAL_RANK");
        assert_eq!(with("RL_ZERO_DIST_TIMEOUT_S", "nan"), "RL_ZERO_DIST_TIMEOUT_S");
        assert_eq!(with("RL_ZERO_DIST_TIMEOUT_S", "-1"), "RL_ZERO_DIST_TIMEOUT_S");
        let long = "x".repeat(MAX_RUN_ID_BYTES + 1);
        assert_eq!(with("RL_ZERO_RUN_ID", &long), "RL_ZERO_RUN_ID");
    }
}
