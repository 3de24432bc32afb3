//! [`StreamSync`]: publish weights by sending the tensors straight into vLLM's workers — over
//! TCP (`type = "tcp"`), or by NCCL broadcast (`type = "nccl"`, feature `nccl`; compiled, never
//! run) — instead of through a directory on disk.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rl_core::{DType, SyncReport, Tensor, WeightSource, WeightSync};
use serde_json::{Value, json};

use crate::protocol::Engine;
use crate::sampler::Client;
use crate::sync::{Ledger, check_results, vllm_swap};
use crate::{Result, RolloutError, StreamSyncConfig};

/// The first bytes a worker sends on a weight stream (then nonce, version: u64; rank: u32;
/// little-endian), as `scripts/vllm/rlz_vllm_ext.py` writes them.
pub const STREAM_HELLO: &[u8; 4] = b"RLZW";
const HELLO_LEN: usize = 4 + 8 + 8 + 4;

/// How a [`StreamSync`] moves the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTransport {
    /// The workers connect to the trainer's listener and read every tensor's bytes.
    Tcp,
    /// One NCCL communicator (trainer = rank 0, the workers after it), one broadcast per tensor
    /// (feature `nccl`; compiled, never run).
    Nccl,
}

/// Publishes weights into vLLM's workers without a file system, through rl-zero's worker
/// extension (`scripts/vllm/rlz_vllm_ext.py`, loaded with `--worker-extension-cls
/// rlz_vllm_ext.TiedReloadExtension`):
///
/// 1. first publication: `/collective_rpc rlz_worker_info` counts each server's workers
///    (tensor × pipeline parallel); `nccl` then joins them into one communicator
///    (`rlz_init_nccl` with a fresh NCCL id, the trainer as rank 0);
/// 2. every publication: the pause → `/collective_rpc` → prefix-cache reset → version → resume
///    sequence of [`crate::DiskSync`], where the call is `rlz_receive_weights` with each
///    tensor's name, dtype and shape (Hugging Face names, [`WeightSource::named_weights`]
///    order). While it is in flight the trainer sends the tensors: `tcp` accepts one connection
///    per worker (each announces the publication's nonce and version) and writes every tensor's
///    raw bytes to each; `nccl` broadcasts each tensor from rank 0. The workers feed them to
///    vLLM's own in-place reload (`reload_weights(weights_iterator=...)`) and resync a tied head;
/// 3. each worker reports the version, tensor count and byte count it loaded, which must match
///    what was sent; then the version check and the log-prob probe of [`crate::DiskSync`].
///
/// vLLM only: SGLang's `update_weights_from_distributed` protocol is not built (use `disk`),
/// and llama.cpp cannot reload in place.
#[derive(Debug)]
pub struct StreamSync {
    client: Arc<Client>,
    cfg: StreamSyncConfig,
    dtype: DType,
    ledger: Ledger,
    transport: Transport,
    /// Workers per server, counted at the first publication.
    workers: Option<Vec<usize>>,
}

#[derive(Debug)]
enum Transport {
    Tcp {
        listener: TcpListener,
        advertise: String,
    },
    #[cfg(feature = "nccl")]
    Nccl {
        root: Option<rl_dist::NcclRoot>,
    },
}

impl StreamSync {
    pub(crate) fn new(
        client: Arc<Client>,
        cfg: StreamSyncConfig,
        transport: StreamTransport,
    ) -> Result<Self> {
        let tcp = transport == StreamTransport::Tcp;
        cfg.validate("weight_sync", tcp)?;
        if client.engine != Engine::Vllm {
            return Err(RolloutError::Unsupported(format!(
                "{transport:?} weight sync streams into vLLM's workers only (for {:?} use type = \"disk\")",
                client.engine
            )));
        }
        let dtype = cfg.dtype("weight_sync")?;
        let transport = match transport {
            StreamTransport::Tcp => {
                let addr: SocketAddr = cfg.listen.parse().map_err(|_| {
                    RolloutError::config("weight_sync.listen", "not an ip:port socket address")
                })?;
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                let advertise = match &cfg.advertise {
                    Some(a) => a.clone(),
                    None if addr.ip().is_unspecified() => {
                        return Err(RolloutError::config(
                            "weight_sync.advertise",
                            "required when `listen` binds every interface (the workers need an address to connect to)",
                        ));
                    }
                    None => listener.local_addr()?.to_string(),
                };
                Transport::Tcp { listener, advertise }
            }
            #[cfg(feature = "nccl")]
            StreamTransport::Nccl => Transport::Nccl { root: None },
            #[cfg(not(feature = "nccl"))]
            StreamTransport::Nccl => {
                return Err(RolloutError::Unsupported(
                    "nccl weight sync: build rl-rollout with its `nccl` feature (compiled, never run on a GPU)".into(),
                ));
            }
        };
        let ledger = Ledger::new(cfg.verify_every);
        Ok(Self { client, cfg, dtype, ledger, transport, workers: None })
    }

    /// The settings.
    pub fn config(&self) -> &StreamSyncConfig {
        &self.cfg
    }

    /// `tcp`: the address the workers connect to.
    pub fn address(&self) -> Option<&str> {
        match &self.transport {
            Transport::Tcp { advertise, .. } => Some(advertise),
            #[cfg(feature = "nccl")]
            Transport::Nccl { .. } => None,
        }
    }

    /// Workers per server (`rlz_worker_info`), asked once.
    fn workers(&mut self) -> Result<Vec<usize>> {
        if let Some(w) = &self.workers {
            return Ok(w.clone());
        }
        let body = json!({"method": "rlz_worker_info"});
        let mut counts = Vec::new();
        for i in 0..self.client.cfg.urls.len() {
            let url = self.client.url(i, "/collective_rpc");
            let out = self.client.http.post(&url, &body, "weight sync rlz_worker_info")?;
            let results = out
                .get("results")
                .and_then(Value::as_array)
                .filter(|r| !r.is_empty() && r.iter().all(|w| w.get("rank").is_some()))
                .ok_or_else(|| {
                    RolloutError::response(
                        &url,
                        "weight sync rlz_worker_info",
                        "results",
                        format!("no worker ranks in {out} (is vLLM started with --worker-extension-cls rlz_vllm_ext.TiedReloadExtension?)"),
                    )
                })?;
            counts.push(results.len());
        }
        self.workers = Some(counts.clone());
        Ok(counts)
    }

    fn publish_inner(&mut self, source: &dyn WeightSource, version: u64) -> Result<SyncReport> {
        let verify = self.ledger.start(source, version)?;
        let t0 = Instant::now();
        let workers = self.workers()?;
        let weights = source.named_weights()?;
        let dtype_name = match self.dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        };
        let specs: Vec<Value> =
            weights.iter().map(|(n, t)| json!([n, dtype_name, t.dims()])).collect();
        let bytes: u64 =
            weights.iter().map(|(_, t)| (t.elem_count() * self.dtype.size_in_bytes()) as u64).sum();
        let timeout = Duration::from_secs_f64(self.cfg.connect_timeout_s);
        let mut send_seconds = 0.0;
        let client = Arc::clone(&self.client);
        let n_tensors = weights.len();
        // Every worker loaded exactly what was sent (checked before the engine takes the version).
        let check = |results: &[Vec<Value>]| -> Result<()> {
            for (i, (per_worker, want)) in results.iter().zip(&workers).enumerate() {
                if per_worker.len() != *want {
                    return Err(RolloutError::response(
                        &client.url(i, "/collective_rpc"),
                        "weight sync",
                        "results",
                        format!("{} workers answered, {want} expected", per_worker.len()),
                    ));
                }
            }
            check_results(&client, results, "version", &json!(version))?;
            check_results(&client, results, "tensors", &json!(n_tensors))?;
            check_results(&client, results, "bytes", &json!(bytes))
        };
        match &mut self.transport {
            Transport::Tcp { listener, advertise } => {
                let nonce = nonce();
                let call = json!({"method": "rlz_receive_weights", "kwargs": {
                    "transport": "tcp", "version": version, "tensors": specs,
                    "address": advertise, "nonce": nonce,
                }});
                let calls = vec![call; workers.len()];
                let expected = workers.iter().sum();
                let hello = Hello { nonce, version };
                vllm_swap(
                    &self.client,
                    version,
                    &calls,
                    |failed| {
                        let t = Instant::now();
                        let conns = accept_workers(listener, expected, hello, timeout, failed)?;
                        send_tcp(conns, &weights, self.dtype)?;
                        send_seconds = t.elapsed().as_secs_f64();
                        Ok(())
                    },
                    check,
                )?;
            }
            #[cfg(feature = "nccl")]
            Transport::Nccl { root } => {
                let root = nccl::connect(&self.client, root, &workers, &weights, timeout)?;
                let call = json!({"method": "rlz_receive_weights", "kwargs": {
                    "transport": "nccl", "version": version, "tensors": specs,
                }});
                let calls = vec![call; workers.len()];
                vllm_swap(
                    &self.client,
                    version,
                    &calls,
                    |_| {
                        let t = Instant::now();
                        nccl::broadcast(root, &weights, self.dtype)?;
                        send_seconds = t.elapsed().as_secs_f64();
                        Ok(())
                    },
                    check,
                )?;
            }
        }
        let probe = self.ledger.finish(&self.client, source, version, verify)?;
        Ok(SyncReport {
            version,
            bytes,
            seconds: t0.elapsed().as_secs_f64(),
            export_seconds: send_seconds,
            probe_mean_abs_diff: probe,
        })
    }
}

impl WeightSync for StreamSync {
    fn publish(&mut self, source: &dyn WeightSource, version: u64) -> rl_core::Result<SyncReport> {
        Ok(self.publish_inner(source, version)?)
    }

    fn published_version(&self) -> Option<u64> {
        self.ledger.published
    }

    fn observe(&mut self, version: u64) -> rl_core::Result<()> {
        self.ledger.observe(&self.client, version);
        Ok(())
    }
}

/// A per-publication random number the workers echo, so a stray or stale connection is not
/// mistaken for a worker.
fn nonce() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((Instant::now(), std::process::id()))
}

#[derive(Clone, Copy, Debug)]
struct Hello {
    nonce: u64,
    version: u64,
}

/// Accepts `expected` worker connections whose hello carries this publication's nonce (others
/// are dropped), within `timeout`; stops early when an engine's receive call already failed.
fn accept_workers(
    listener: &TcpListener,
    expected: usize,
    hello: Hello,
    timeout: Duration,
    failed: &AtomicBool,
) -> Result<Vec<(SocketAddr, TcpStream)>> {
    let deadline = Instant::now() + timeout;
    let here = listener.local_addr()?.to_string();
    let mut conns = Vec::with_capacity(expected);
    while conns.len() < expected {
        if failed.load(Ordering::SeqCst) {
            return Err(RolloutError::Stream {
                peer: here,
                reason: format!(
                    "an engine's rlz_receive_weights call failed after {} of {expected} workers connected",
                    conns.len()
                ),
            });
        }
        let (mut sock, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(RolloutError::Stream {
                        peer: here,
                        reason: format!(
                            "{} of {expected} workers connected within {:.0} s (connect_timeout_s)",
                            conns.len(),
                            timeout.as_secs_f64()
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        sock.set_write_timeout(Some(timeout))?;
        let mut buf = [0u8; HELLO_LEN];
        if sock.read_exact(&mut buf).is_err()
            || &buf[..4] != STREAM_HELLO
            || u64_at(&buf, 4) != hello.nonce
        {
            continue; // not a worker of this publication
        }
        let announced = u64_at(&buf, 12);
        if announced != hello.version {
            return Err(RolloutError::Stream {
                peer: peer.to_string(),
                reason: format!(
                    "worker announced version {announced}, publishing {}",
                    hello.version
                ),
            });
        }
        sock.set_nodelay(true)?;
        conns.push((peer, sock));
    }
    Ok(conns)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Writes every tensor's bytes, converted to `dtype`, to every connection in order (each tensor
/// is converted once), then closes them.
fn send_tcp(
    mut conns: Vec<(SocketAddr, TcpStream)>,
    weights: &[(String, Tensor)],
    dtype: DType,
) -> Result<()> {
    for (name, t) in weights {
        let data = tensor_bytes(t, dtype)?;
        for (peer, sock) in &mut conns {
            sock.write_all(&data).map_err(|e| RolloutError::Stream {
                peer: peer.to_string(),
                reason: format!("sending {name} ({} bytes): {e}", data.len()),
            })?;
        }
    }
    for (peer, sock) in &mut conns {
        sock.flush().map_err(|e| RolloutError::Stream {
            peer: peer.to_string(),
            reason: format!("flush: {e}"),
        })?;
    }
    Ok(())
}

/// The row-major little-endian bytes of `t` converted to `dtype` (f32, bf16 or f16).
///
/// # Errors
/// [`RolloutError::Unsupported`] for another dtype; candle's errors.
pub fn tensor_bytes(t: &Tensor, dtype: DType) -> Result<Vec<u8>> {
    /// One copy out of the tensor and one reinterpreting copy: no per-element work, which
    /// matters in debug builds (a 538 MB model took 15 s element by element).
    fn le<T: candle_core::WithDType + bytemuck::Pod>(t: &Tensor) -> Result<Vec<u8>> {
        if cfg!(target_endian = "big") {
            return Err(RolloutError::Unsupported("weight streams from a big-endian host".into()));
        }
        Ok(bytemuck::cast_slice(&t.to_vec1::<T>().map_err(candle)?).to_vec())
    }
    let flat = t.to_dtype(dtype).and_then(|t| t.flatten_all()).map_err(candle)?;
    match dtype {
        DType::F32 => le::<f32>(&flat),
        DType::BF16 => le::<half::bf16>(&flat),
        DType::F16 => le::<half::f16>(&flat),
        other => Err(RolloutError::Unsupported(format!("streaming {other:?} tensors"))),
    }
}

fn candle(e: candle_core::Error) -> RolloutError {
    rl_core::Error::from(e).into()
}

#[cfg(feature = "nccl")]
mod nccl {
    //! The NCCL transport: compiled (`scripts/check_nccl.sh`), never run.

    use super::*;
    use rl_dist::NcclRoot;

    /// The communicator, created at the first publication: a fresh id goes to every server's
    /// workers (`rlz_init_nccl`, ranks 1.. in server order) while this thread joins as rank 0.
    pub(super) fn connect<'a>(
        client: &Client,
        root: &'a mut Option<NcclRoot>,
        workers: &[usize],
        weights: &[(String, Tensor)],
        _timeout: Duration,
    ) -> Result<&'a mut NcclRoot> {
        if root.is_none() {
            let device = weights.first().map(|(_, t)| t.device().clone()).ok_or_else(|| {
                RolloutError::config("weight_sync", "the weight source has no tensors")
            })?;
            if !device.is_cuda() {
                return Err(RolloutError::Unsupported(
                    "nccl weight sync: the trainer's weights are not on a CUDA device (use type = \"tcp\")".into(),
                ));
            }
            let id = NcclRoot::unique_id()?;
            let world = 1 + workers.iter().sum::<usize>();
            let mut offset = 1;
            let calls: Vec<Value> = workers
                .iter()
                .map(|w| {
                    let call = json!({"method": "rlz_init_nccl", "kwargs": {
                        "nccl_id": id.to_vec(), "rank_offset": offset, "world_size": world,
                    }});
                    offset += w;
                    call
                })
                .collect();
            let (answers, joined) = std::thread::scope(|s| {
                let handles: Vec<_> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, body)| {
                        s.spawn(move || {
                            let url = client.url(i, "/collective_rpc");
                            client.http.post_once(&url, body, "weight sync rlz_init_nccl")
                        })
                    })
                    .collect();
                let joined = NcclRoot::connect(&device, &id, world);
                let answers: Vec<Result<Value>> =
                    handles.into_iter().map(|h| h.join().expect("rlz_init_nccl thread")).collect();
                (answers, joined)
            });
            answers.into_iter().collect::<Result<Vec<_>>>()?;
            *root = Some(joined?);
        }
        Ok(root.as_mut().expect("set above"))
    }

    /// One broadcast per tensor (converted to `dtype`, contiguous), then a device synchronise
    /// so the workers' loads see complete tensors.
    pub(super) fn broadcast(
        root: &mut NcclRoot,
        weights: &[(String, Tensor)],
        dtype: DType,
    ) -> Result<()> {
        let mut device = None;
        for (name, t) in weights {
            let t = t.to_dtype(dtype).and_then(|t| t.contiguous()).map_err(candle)?;
            root.broadcast(&t).map_err(|e| RolloutError::Stream {
                peer: "nccl".into(),
                reason: format!("broadcasting {name}: {e}"),
            })?;
            device = Some(t.device().clone());
        }
        if let Some(d) = device {
            d.synchronize().map_err(candle)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(nonce: u64, version: u64) -> Vec<u8> {
        let mut h = STREAM_HELLO.to_vec();
        h.extend_from_slice(&nonce.to_le_bytes());
        h.extend_from_slice(&version.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    }

    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[test]
    fn strangers_are_ignored_and_the_worker_gets_every_byte() {
        let (l, addr) = listener();
        let worker = std::thread::spawn(move || {
            let mut stranger = TcpStream::connect(addr).unwrap();
            stranger.write_all(&hello(1, 3)).unwrap(); // wrong nonce
            let mut w = TcpStream::connect(addr).unwrap();
            w.write_all(&hello(42, 3)).unwrap();
            let mut got = Vec::new();
            w.read_to_end(&mut got).unwrap();
            got
        });
        let no = AtomicBool::new(false);
        let h = Hello { nonce: 42, version: 3 };
        let conns = accept_workers(&l, 1, h, Duration::from_secs(20), &no).unwrap();
        let t = Tensor::new(&[[1.5f32, -2.0], [0.25, 4.0]], &rl_core::Device::Cpu).unwrap();
        send_tcp(conns, &[("w".into(), t.clone()), ("v".into(), t.t().unwrap())], DType::BF16)
            .unwrap();
        let got = worker.join().unwrap();
        assert_eq!(got.len(), 16);
        let first: Vec<f32> = got[..8]
            .chunks(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect();
        assert_eq!(first, [1.5, -2.0, 0.25, 4.0]);
        // The transposed view goes out row-major.
        assert_eq!(
            got[8..],
            tensor_bytes(&t.t().unwrap().contiguous().unwrap(), DType::BF16).unwrap()
        );
        assert_eq!(tensor_bytes(&t, DType::F32).unwrap()[..4], 1.5f32.to_le_bytes());
        assert!(tensor_bytes(&t, DType::U8).is_err());
    }

    #[test]
    fn a_stale_version_a_failed_call_and_a_timeout_are_errors() {
        let (l, addr) = listener();
        let no = AtomicBool::new(false);
        let c = std::thread::spawn(move || {
            let mut w = TcpStream::connect(addr).unwrap();
            w.write_all(&hello(7, 2)).unwrap();
            w
        });
        let e = accept_workers(&l, 1, Hello { nonce: 7, version: 3 }, Duration::from_secs(20), &no)
            .unwrap_err();
        assert!(e.to_string().contains("announced version 2, publishing 3"), "{e}");
        drop(c.join());
        let e =
            accept_workers(&l, 1, Hello { nonce: 7, version: 3 }, Duration::from_millis(50), &no)
                .unwrap_err();
        assert!(e.to_string().contains("0 of 1 workers connected"), "{e}");
        let yes = AtomicBool::new(true);
        let e =
            accept_workers(&l, 2, Hello { nonce: 7, version: 3 }, Duration::from_secs(20), &yes)
                .unwrap_err();
        assert!(e.to_string().contains("call failed after 0 of 2"), "{e}");
    }
}
