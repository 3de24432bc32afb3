//! The TCP rendezvous and the CPU process group built on it.
//!
//! **For development and tests, not a performance path.** Rank 0 is a hub: every collective
//! sends each rank's data to rank 0, which combines it and sends the result back. That makes
//! the result deterministic and easy to reason about, and rank 0's link the bottleneck: an
//! all-reduce moves `2(N-1)` full copies through one socket, against `2(N-1)/N` per link for
//! NCCL's ring. Use NCCL (feature `nccl`) on GPUs.
//!
//! ## Reduction order
//!
//! Rank 0 sums in rank order, element by element: `((x₀ + x₁) + x₂) + …`, in the tensor's own
//! dtype for f32 and f64 (bf16 and f16 are accumulated in f32 and rounded once). The result is
//! therefore bitwise identical run to run, on every rank, and bitwise equal to one process
//! adding the per-rank tensors in rank order. It is *not* bitwise equal to one process computing
//! the whole batch's gradient in one backward pass (that sums in a different order), only equal
//! up to rounding.
//!
//! ## Timeouts and failures
//!
//! Every read and write has a deadline (`DistEnv::timeout` per collective) and every payload a
//! size known before it is read. Rank 0 judges failures: when a peer closes, dies, sends a frame
//! that is out of step or stays silent past the deadline, rank 0 sends the resulting
//! [`DistError`] (naming that peer) to every other rank, so all survivors report the same rank.
//! Non-zero ranks wait [`REPLY_GRACE`] (5 s) longer than the timeout for rank 0's reply, to
//! receive that verdict rather than time out on their own; if rank 0 itself dies they see the
//! closed connection and name rank 0.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor};
use half::{bf16, f16};
use rl_core::dist::{
    DistError, MAX_GATHER_BYTES, MAX_SCALARS, ProcessGroup, ReduceOp, check_len, check_root,
};
use rl_core::{Error, Result};

use crate::env::{DistEnv, MAX_RUN_ID_BYTES, MAX_WORLD_SIZE};
use crate::wire::{
    Header, Kind, Link, LinkError, MAX_CONTROL_BYTES, Op, PROTOCOL_VERSION, decode_abort,
    encode_abort,
};

/// Largest tensor one all-reduce or broadcast may move: 2³⁶ bytes (64 GiB), a sanity bound
/// (the receiver only ever accepts exactly the size of its own tensor).
pub const MAX_TENSOR_BYTES: usize = 1 << 36;

/// How long rank 0 waits for one connecting peer's hello before dropping it.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long rank 0 tries to tell the others about a failure.
const ABORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Extra time a non-zero rank waits for rank 0's reply beyond the timeout: rank 0 judges
/// which peer failed and forwards its verdict, so the others should not give up first.
pub const REPLY_GRACE: Duration = Duration::from_secs(5);

/// A CPU process group over TCP (see the [module docs](self) for topology and reduction
/// order). Created by a rendezvous on `MASTER_ADDR:MASTER_PORT`.
///
/// ```no_run
/// use rl_core::dist::ProcessGroup;
/// use rl_dist::{DistEnv, TcpGroup};
///
/// let env = DistEnv::from_env()?.expect("launched with RANK / WORLD_SIZE / MASTER_*");
/// let mut pg = TcpGroup::init(&env)?;
/// let t = rl_core::Tensor::new(&[pg.rank() as f64], &rl_core::Device::Cpu)?;
/// pg.all_reduce_sum(&t)?; // every rank now holds 0 + 1 + … + (N-1)
/// # Ok::<(), rl_core::Error>(())
/// ```
#[derive(Debug)]
pub struct TcpGroup {
    rank: usize,
    world_size: usize,
    /// Rank 0: the links to ranks `1..world_size`, in rank order. Others: one link to rank 0.
    links: Vec<Link>,
    timeout: Duration,
    seq: u64,
    poisoned: Option<DistError>,
}

impl TcpGroup {
    /// Joins (or, on rank 0, hosts) the rendezvous described by `env`.
    ///
    /// Rank 0 listens on `MASTER_ADDR:MASTER_PORT`; the others connect, retrying until
    /// `env.timeout`. Each peer's handshake must present the same protocol version, world size
    /// and run id, and a rank not yet taken; other connections are rejected (and told why) and
    /// rank 0 keeps waiting. Returns once all `world_size` ranks are in. Errors:
    /// [`DistError::RendezvousTimeout`] naming the ranks that never joined (on every rank that
    /// did), [`DistError::Handshake`] for a rejected peer, [`DistError::Rendezvous`] when rank 0
    /// cannot listen.
    pub fn init(env: &DistEnv) -> Result<Self> {
        Ok(Self::init_with_blob(env, &[])?.0)
    }

    /// [`init`](Self::init), also handing rank 0's `blob` (at most 64 KiB; ignored on other
    /// ranks) to every rank: the second value is rank 0's blob on every rank. The NCCL backend
    /// passes its unique id this way.
    pub fn init_with_blob(env: &DistEnv, blob: &[u8]) -> Result<(Self, Vec<u8>)> {
        if env.rank == 0 {
            let addr = env.addr();
            let listener = bind(&addr)?;
            Self::host(listener, env, blob)
        } else {
            Self::join(env)
        }
    }

    /// Rank 0's side of the rendezvous on an already bound `listener` (tests bind port 0 and
    /// hand the port to the others). `env.rank` must be 0; `env.master_*` are not used.
    pub fn host(listener: TcpListener, env: &DistEnv, blob: &[u8]) -> Result<(Self, Vec<u8>)> {
        check_env(env)?;
        if env.rank != 0 {
            return Err(DistError::Rendezvous {
                addr: env.addr(),
                reason: format!("only rank 0 hosts the rendezvous (this is rank {})", env.rank),
            }
            .into());
        }
        check_len("rendezvous blob", blob.len(), MAX_CONTROL_BYTES)?;
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| env.addr());
        let io =
            |e: std::io::Error| DistError::Rendezvous { addr: addr.clone(), reason: e.to_string() };
        listener.set_nonblocking(true).map_err(io)?;
        let start = Instant::now();
        let deadline = start + env.timeout;
        let world = env.world_size;
        let mut slots: Vec<Option<Link>> = (0..world).map(|_| None).collect();
        let mut rejected: Vec<String> = Vec::new();
        while slots[1..].iter().any(Option::is_none) {
            if Instant::now() >= deadline {
                let missing: Vec<usize> = (1..world).filter(|r| slots[*r].is_none()).collect();
                let detail = if rejected.is_empty() {
                    String::new()
                } else {
                    format!("; rejected: {}", rejected.join("; "))
                };
                let e = DistError::RendezvousTimeout {
                    addr: addr.clone(),
                    waited_s: start.elapsed().as_secs_f64(),
                    missing,
                    detail,
                };
                let abort_deadline = Instant::now() + ABORT_TIMEOUT;
                let payload = encode_abort(&e);
                for link in slots.iter_mut().flatten() {
                    let _ = link.send(
                        &Header::new(Kind::Abort, payload.len()),
                        &payload,
                        abort_deadline,
                    );
                }
                return Err(e.into());
            }
            match listener.accept() {
                Ok((stream, from)) => match hello(stream, env, deadline, &slots) {
                    Ok(link) => {
                        let r = link.peer;
                        slots[r] = Some(link);
                    }
                    Err(reason) => rejected.push(format!("{from}: {reason}")),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    rejected.push(format!("accept: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let mut links: Vec<Link> = slots.into_iter().flatten().collect();
        let welcome = Header::new(Kind::Welcome, blob.len());
        for link in &mut links {
            let peer = link.peer;
            link.send(&welcome, blob, deadline).map_err(|e| e.into_dist(peer, "rendezvous"))?;
        }
        Ok((Self::new(0, world, links, env.timeout), blob.to_vec()))
    }

    /// A non-zero rank's side of the rendezvous (connect to `env.addr()` with retries).
    fn join(env: &DistEnv) -> Result<(Self, Vec<u8>)> {
        check_env(env)?;
        let addr = env.addr();
        let start = Instant::now();
        let deadline = start + env.timeout;
        let mut backoff = Duration::from_millis(20);
        let mut last = String::from("no attempt");
        let stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DistError::RendezvousTimeout {
                    addr,
                    waited_s: start.elapsed().as_secs_f64(),
                    missing: vec![0],
                    detail: format!("; cannot reach rank 0: {last}"),
                }
                .into());
            }
            match connect(&addr, left.min(Duration::from_secs(5))) {
                Ok(s) => break s,
                Err(e) => last = e,
            }
            std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
            backoff = (backoff * 2).min(Duration::from_millis(500));
        };
        let mut link = Link { stream, peer: 0 };
        let mut hello = Vec::with_capacity(12 + env.run_id.len());
        hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        hello.extend_from_slice(&(env.world_size as u64).to_le_bytes());
        hello.extend_from_slice(env.run_id.as_bytes());
        let mut h = Header::new(Kind::Hello, hello.len());
        h.aux = env.rank as u64;
        let op = "rendezvous";
        link.send(&h, &hello, deadline).map_err(|e| e.into_dist(0, op))?;
        // Rank 0 decides about a timeout at its own deadline: wait a little longer for its verdict.
        let reply_deadline = deadline + Duration::from_secs(5);
        let h = link.recv_header(reply_deadline).map_err(|e| e.into_dist(0, op))?;
        let payload = link
            .recv_payload(h.len, MAX_CONTROL_BYTES, reply_deadline)
            .map_err(|e| e.into_dist(0, op))?;
        match h.kind {
            k if k == Kind::Welcome as u8 => {
                Ok((Self::new(env.rank, env.world_size, vec![link], env.timeout), payload))
            }
            k if k == Kind::Reject as u8 => Err(DistError::Handshake {
                rank: Some(0),
                reason: format!(
                    "rank 0 rejected rank {}: {}",
                    env.rank,
                    String::from_utf8_lossy(&payload)
                ),
            }
            .into()),
            k if k == Kind::Abort as u8 => Err(decode_abort(&payload, 0, op).into()),
            k => {
                Err(DistError::Mismatch { rank: 0, op: op.into(), what: format!("frame kind {k}") }
                    .into())
            }
        }
    }

    fn new(rank: usize, world_size: usize, links: Vec<Link>, timeout: Duration) -> Self {
        for l in &links {
            let _ = l.stream.set_nonblocking(false);
            let _ = l.stream.set_nodelay(true);
        }
        Self { rank, world_size, links, timeout, seq: 0, poisoned: None }
    }

    /// The per-collective timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn begin(&mut self) -> Result<Instant> {
        if let Some(first) = &self.poisoned {
            return Err(DistError::Poisoned { first: first.to_string() }.into());
        }
        self.seq += 1;
        Ok(Instant::now() + self.timeout)
    }

    /// Records the first failure; rank 0 also tells every other peer, so they report the same
    /// failed rank instead of waiting for their own timeout.
    fn fail(&mut self, e: DistError) -> Error {
        if self.rank == 0 {
            let skip = match &e {
                DistError::PeerFailed { rank, .. } | DistError::Timeout { rank, .. } => Some(*rank),
                _ => None,
            };
            let payload = encode_abort(&e);
            let deadline = Instant::now() + ABORT_TIMEOUT;
            for link in self.links.iter_mut().filter(|l| Some(l.peer) != skip) {
                let _ = link.send(&Header::new(Kind::Abort, payload.len()), &payload, deadline);
            }
        }
        self.poisoned = Some(e.clone());
        e.into()
    }

    fn data_header(&self, op: Op, len: usize) -> Header {
        let mut h = Header::new(Kind::Data, len);
        h.op = op as u8;
        h.seq = self.seq;
        h
    }

    /// Non-zero rank: send `h` + `payload` to rank 0 and return its reply's payload (at most
    /// `max_reply` bytes).
    fn exchange(
        &mut self,
        h: Header,
        payload: &[u8],
        max_reply: usize,
        deadline: Instant,
        op: Op,
    ) -> Result<Vec<u8>> {
        let link = &mut self.links[0];
        let r = (|| {
            link.send(&h, payload, deadline)?;
            let deadline = deadline + REPLY_GRACE;
            let rh = link.recv_header(deadline)?;
            if rh.kind == Kind::Abort as u8 {
                let p = link.recv_payload(rh.len, MAX_CONTROL_BYTES, deadline)?;
                return Ok(Err(decode_abort(&p, 0, op.name())));
            }
            if rh.kind != Kind::Data as u8 || rh.op != op as u8 || rh.seq != h.seq {
                return Err(LinkError::BadFrame(format!(
                    "reply kind {} op {} seq {} to {} seq {}",
                    rh.kind,
                    rh.op,
                    rh.seq,
                    op.name(),
                    h.seq
                )));
            }
            Ok(Ok(link.recv_payload(rh.len, max_reply, deadline)?))
        })();
        match r {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(self.fail(e)),
            Err(e) => Err(self.fail(e.into_dist(0, op.name()))),
        }
    }

    /// Rank 0: read one frame per peer, in rank order; `expect(rank, header)` validates the
    /// header and returns the payload length to accept, `take(rank, payload)` consumes it.
    fn gather(
        &mut self,
        op: Op,
        deadline: Instant,
        expect: impl Fn(usize, &Header) -> std::result::Result<usize, String>,
        mut take: impl FnMut(usize, Vec<u8>) -> std::result::Result<(), DistError>,
    ) -> Result<()> {
        for i in 0..self.links.len() {
            let seq = self.seq;
            let link = &mut self.links[i];
            let peer = link.peer;
            let r = (|| {
                let h = link.recv_header(deadline)?;
                if h.kind == Kind::Abort as u8 {
                    let p = link.recv_payload(h.len, MAX_CONTROL_BYTES, deadline)?;
                    return Ok(Err(decode_abort(&p, peer, op.name())));
                }
                if h.kind != Kind::Data as u8 || h.op != op as u8 || h.seq != seq {
                    let what = format!(
                        "sent frame kind {} op {} seq {}, expected {} seq {seq}",
                        h.kind,
                        h.op,
                        h.seq,
                        op.name()
                    );
                    return Err(LinkError::BadFrame(what));
                }
                let len = expect(peer, &h).map_err(LinkError::BadFrame)?;
                if h.len != len as u64 {
                    return Err(LinkError::BadFrame(format!(
                        "{} payload bytes, expected {len}",
                        h.len
                    )));
                }
                Ok(Ok(link.recv_payload(h.len, len, deadline)?))
            })();
            let payload = match r {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Err(self.fail(e)),
                Err(e) => return Err(self.fail(e.into_dist(peer, op.name()))),
            };
            if let Err(e) = take(peer, payload) {
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    /// Rank 0: send `payload` to every peer.
    fn scatter_all(&mut self, op: Op, payload: &[u8], deadline: Instant) -> Result<()> {
        let h = self.data_header(op, payload.len());
        for i in 0..self.links.len() {
            let peer = self.links[i].peer;
            if let Err(e) = self.links[i].send(&h, payload, deadline) {
                return Err(self.fail(e.into_dist(peer, op.name())));
            }
        }
        Ok(())
    }

    fn scalars<T: Scalar>(&mut self, values: &mut [T], rop: ReduceOp, op: Op) -> Result<()> {
        check_len(op.name(), values.len(), MAX_SCALARS)?;
        let deadline = self.begin()?;
        let n = values.len();
        let mut h = self.data_header(op, n * 8);
        h.aux = n as u64;
        h.rop = rop_code(rop);
        if self.rank != 0 {
            let reply = self.exchange(h, &T::encode(values), n * 8, deadline, op)?;
            if reply.len() != n * 8 {
                return Err(self.fail(DistError::Mismatch {
                    rank: 0,
                    op: op.name().into(),
                    what: format!("{} reply bytes, expected {}", reply.len(), n * 8),
                }));
            }
            T::decode_into(&reply, values);
            return Ok(());
        }
        let mut acc = values.to_vec();
        let code = h.rop;
        let mut overflow = false;
        self.gather(
            op,
            deadline,
            |_, p| {
                if p.aux != n as u64 || p.rop != code {
                    Err(format!(
                        "{} values with reduce op {}, expected {n} with {code}",
                        p.aux, p.rop
                    ))
                } else {
                    Ok(n * 8)
                }
            },
            |_, payload| {
                let mut theirs = acc.clone();
                T::decode_into(&payload, &mut theirs);
                for (a, b) in acc.iter_mut().zip(theirs) {
                    match T::combine(rop, *a, b) {
                        Some(v) => *a = v,
                        None => overflow = true,
                    }
                }
                if overflow { Err(DistError::Overflow { op: op.name().into() }) } else { Ok(()) }
            },
        )?;
        let out = T::encode(&acc);
        self.scatter_all(op, &out, deadline)?;
        values.copy_from_slice(&acc);
        Ok(())
    }
}

/// Rank 0's handshake with one connecting stream: the peer's link, or why it was rejected.
fn hello(
    stream: TcpStream,
    env: &DistEnv,
    deadline: Instant,
    slots: &[Option<Link>],
) -> std::result::Result<Link, String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut link = Link { stream, peer: usize::MAX };
    let d = deadline.min(Instant::now() + HELLO_TIMEOUT);
    let h = link.recv_header(d).map_err(describe)?;
    if h.kind != Kind::Hello as u8 {
        return Err(format!("first frame of kind {} is not a hello", h.kind));
    }
    let p = link.recv_payload(h.len, 12 + MAX_RUN_ID_BYTES, d).map_err(describe)?;
    let reason = if p.len() < 12 {
        Some(format!("hello of {} bytes", p.len()))
    } else {
        let version = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let mut w = [0u8; 8];
        w.copy_from_slice(&p[4..12]);
        let world = u64::from_le_bytes(w);
        let run_id = String::from_utf8_lossy(&p[12..]).into_owned();
        let rank = h.aux;
        if version != PROTOCOL_VERSION {
            Some(format!("protocol version {version}, rank 0 speaks {PROTOCOL_VERSION}"))
        } else if world != env.world_size as u64 {
            Some(format!("world size {world}, rank 0 has {}", env.world_size))
        } else if run_id != env.run_id {
            Some(format!("run id `{run_id}`, rank 0 has `{}`", env.run_id))
        } else if rank == 0 || rank >= env.world_size as u64 {
            Some(format!("rank {rank} is not in 1..{}", env.world_size))
        } else if slots[rank as usize].is_some() {
            Some(format!("rank {rank} already joined"))
        } else {
            link.peer = rank as usize;
            None
        }
    };
    match reason {
        None => Ok(link),
        Some(reason) => {
            let _ = link.send(&Header::new(Kind::Reject, reason.len()), reason.as_bytes(), d);
            Err(reason)
        }
    }
}

fn describe(e: LinkError) -> String {
    match e {
        LinkError::Closed(s) | LinkError::BadFrame(s) => s,
        LinkError::TimedOut(s) => format!("no hello within {s:.1} s"),
    }
}

fn check_env(env: &DistEnv) -> Result<()> {
    if env.world_size == 0 || env.world_size > MAX_WORLD_SIZE || env.rank >= env.world_size {
        return Err(DistError::RankOutOfRange {
            what: "rank".into(),
            rank: env.rank,
            world_size: env.world_size,
        }
        .into());
    }
    check_len("run id", env.run_id.len(), MAX_RUN_ID_BYTES)
}

fn bind(addr: &str) -> Result<TcpListener> {
    let err = |reason: String| Error::from(DistError::Rendezvous { addr: addr.into(), reason });
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(|e| err(e.to_string()))?.collect();
    let mut last = String::from("address resolves to nothing");
    for a in addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = format!("cannot listen on {a}: {e}"),
        }
    }
    Err(err(last))
}

fn connect(addr: &str, timeout: Duration) -> std::result::Result<TcpStream, String> {
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(|e| e.to_string())?.collect();
    let mut last = String::from("address resolves to nothing");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout.max(Duration::from_millis(1))) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(last)
}

fn rop_code(op: ReduceOp) -> u8 {
    match op {
        ReduceOp::Sum => 1,
        ReduceOp::Max => 2,
        ReduceOp::Min => 3,
    }
}

/// The scalar types of the scalar all-reduces.
trait Scalar: Copy {
    fn encode(v: &[Self]) -> Vec<u8>;
    fn decode_into(b: &[u8], out: &mut [Self]);
    fn combine(op: ReduceOp, a: Self, b: Self) -> Option<Self>;
}

impl Scalar for u64 {
    fn encode(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn decode_into(b: &[u8], out: &mut [Self]) {
        for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            *o = u64::from_le_bytes(a);
        }
    }
    fn combine(op: ReduceOp, a: Self, b: Self) -> Option<Self> {
        op.apply_u64(a, b)
    }
}

impl Scalar for f64 {
    fn encode(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn decode_into(b: &[u8], out: &mut [Self]) {
        for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            *o = f64::from_le_bytes(a);
        }
    }
    fn combine(op: ReduceOp, a: Self, b: Self) -> Option<Self> {
        Some(op.apply_f64(a, b))
    }
}

/// A CPU tensor's elements, in its own dtype.
#[derive(Debug)]
enum Host {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

fn dtype_code(d: DType) -> Option<u8> {
    Some(match d {
        DType::F32 => 1,
        DType::F64 => 2,
        DType::BF16 => 3,
        DType::F16 => 4,
        _ => return None,
    })
}

/// Checks that `t` can be reduced in place by this backend and returns its dtype code.
fn check_tensor(t: &Tensor, op: Op) -> Result<u8> {
    let unsupported =
        |what: String| Error::from(DistError::Unsupported { op: op.name().into(), what });
    if !t.device().is_cpu() {
        return Err(unsupported(format!(
            "a tensor on {:?} (the TCP backend is CPU only)",
            t.device()
        )));
    }
    if !t.is_contiguous() {
        return Err(unsupported("a non-contiguous tensor".into()));
    }
    let code =
        dtype_code(t.dtype()).ok_or_else(|| unsupported(format!("dtype {:?}", t.dtype())))?;
    check_len(op.name(), t.elem_count() * t.dtype().size_in_bytes(), MAX_TENSOR_BYTES)?;
    Ok(code)
}

impl Host {
    fn read(t: &Tensor) -> Result<Self> {
        let flat = t.flatten_all()?;
        Ok(match t.dtype() {
            DType::F32 => Self::F32(flat.to_vec1()?),
            DType::F64 => Self::F64(flat.to_vec1()?),
            DType::BF16 => Self::Bf16(flat.to_vec1()?),
            DType::F16 => Self::F16(flat.to_vec1()?),
            d => {
                return Err(DistError::Unsupported {
                    op: "tcp".into(),
                    what: format!("dtype {d:?}"),
                }
                .into());
            }
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::Bf16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// Overwrites `self` with values decoded from `b` (same length, checked by the caller).
    fn set_from_bytes(&mut self, b: &[u8]) {
        match self {
            Self::F32(v) => {
                for (o, c) in v.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Self::F64(v) => {
                for (o, c) in v.iter_mut().zip(b.chunks_exact(8)) {
                    *o = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                }
            }
            Self::Bf16(v) => {
                for (o, c) in v.iter_mut().zip(b.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([c[0], c[1]]);
                }
            }
            Self::F16(v) => {
                for (o, c) in v.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]);
                }
            }
        }
    }

    /// Writes the values into `t`'s storage, in place (`t` checked by [`check_tensor`]).
    fn write(&self, t: &Tensor) -> Result<()> {
        t.inplace_op1(&Overwrite(self))?;
        Ok(())
    }
}

/// Rank-order accumulator of an all-reduce (f32 for f32 / bf16 / f16, f64 for f64).
enum Acc {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Acc {
    fn new(h: &Host) -> Self {
        match h {
            Host::F32(v) => Self::F32(v.clone()),
            Host::F64(v) => Self::F64(v.clone()),
            Host::Bf16(v) => Self::F32(v.iter().map(|x| x.to_f32()).collect()),
            Host::F16(v) => Self::F32(v.iter().map(|x| x.to_f32()).collect()),
        }
    }

    /// Adds a peer's payload (`dtype` code of the tensor, length checked by the caller).
    fn add_bytes(&mut self, code: u8, b: &[u8]) {
        match self {
            Self::F64(acc) => {
                for (a, c) in acc.iter_mut().zip(b.chunks_exact(8)) {
                    *a += f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                }
            }
            Self::F32(acc) if code == 1 => {
                for (a, c) in acc.iter_mut().zip(b.chunks_exact(4)) {
                    *a += f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Self::F32(acc) if code == 3 => {
                for (a, c) in acc.iter_mut().zip(b.chunks_exact(2)) {
                    *a += bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Self::F32(acc) => {
                for (a, c) in acc.iter_mut().zip(b.chunks_exact(2)) {
                    *a += f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        }
    }

    /// The sum in the tensor's dtype (rounded once for bf16 / f16).
    fn into_host(self, like: &Host) -> Host {
        match (self, like) {
            (Self::F64(v), _) => Host::F64(v),
            (Self::F32(v), Host::Bf16(_)) => {
                Host::Bf16(v.into_iter().map(bf16::from_f32).collect())
            }
            (Self::F32(v), Host::F16(_)) => Host::F16(v.into_iter().map(f16::from_f32).collect()),
            (Self::F32(v), _) => Host::F32(v),
        }
    }
}

/// In-place overwrite of a contiguous CPU tensor's elements.
struct Overwrite<'a>(&'a Host);

impl InplaceOp1 for Overwrite<'_> {
    fn name(&self) -> &'static str {
        "tcp-collective-write"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("collective write into a non-contiguous tensor")
        };
        match (storage, self.0) {
            (CpuStorage::F32(d), Host::F32(s)) if s.len() == b - a => d[a..b].copy_from_slice(s),
            (CpuStorage::F64(d), Host::F64(s)) if s.len() == b - a => d[a..b].copy_from_slice(s),
            (CpuStorage::BF16(d), Host::Bf16(s)) if s.len() == b - a => d[a..b].copy_from_slice(s),
            (CpuStorage::F16(d), Host::F16(s)) if s.len() == b - a => d[a..b].copy_from_slice(s),
            _ => candle_core::bail!("collective write: dtype or length differs from the tensor"),
        }
        Ok(())
    }
}

impl ProcessGroup for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<()> {
        let op = Op::AllReduce;
        let code = check_tensor(tensor, op)?;
        let deadline = self.begin()?;
        let host = Host::read(tensor)?;
        let n = tensor.elem_count();
        let bytes = n * tensor.dtype().size_in_bytes();
        let mut h = self.data_header(op, bytes);
        h.aux = n as u64;
        h.dtype = code;
        if self.rank != 0 {
            let reply = self.exchange(h, &host.to_bytes(), bytes, deadline, op)?;
            if reply.len() != bytes {
                return Err(self.fail(DistError::Mismatch {
                    rank: 0,
                    op: op.name().into(),
                    what: format!("{} reply bytes, expected {bytes}", reply.len()),
                }));
            }
            let mut out = host;
            out.set_from_bytes(&reply);
            return out.write(tensor);
        }
        let mut acc = Acc::new(&host);
        let expect = |_: usize, p: &Header| {
            if p.aux != n as u64 || p.dtype != code {
                Err(format!(
                    "tensor of {} elements dtype code {}, expected {n} elements dtype code {code}",
                    p.aux, p.dtype
                ))
            } else {
                Ok(bytes)
            }
        };
        self.gather(op, deadline, expect, |_, payload| {
            acc.add_bytes(code, &payload);
            Ok(())
        })?;
        let out = acc.into_host(&host);
        self.scatter_all(op, &out.to_bytes(), deadline)?;
        out.write(tensor)
    }

    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<()> {
        let op = Op::Broadcast;
        check_root(root, self.world_size)?;
        let code = check_tensor(tensor, op)?;
        let deadline = self.begin()?;
        let n = tensor.elem_count();
        let bytes = n * tensor.dtype().size_in_bytes();
        let mine = if self.rank == root { Host::read(tensor)?.to_bytes() } else { Vec::new() };
        let mut h = self.data_header(op, mine.len());
        h.aux = n as u64;
        h.aux2 = root as u64;
        h.dtype = code;
        if self.rank != 0 {
            let reply = self.exchange(h, &mine, bytes, deadline, op)?;
            if reply.len() != bytes {
                return Err(self.fail(DistError::Mismatch {
                    rank: 0,
                    op: op.name().into(),
                    what: format!("{} reply bytes, expected {bytes}", reply.len()),
                }));
            }
            if self.rank != root {
                let mut out = Host::read(tensor)?;
                out.set_from_bytes(&reply);
                out.write(tensor)?;
            }
            return Ok(());
        }
        let mut value = mine;
        // The root sends the payload, the others an empty frame.
        let expect = |peer: usize, p: &Header| {
            if p.aux != n as u64 || p.dtype != code || p.aux2 != root as u64 {
                Err(format!(
                    "{} elements dtype code {} root {}, expected {n} elements dtype code {code} root {root}",
                    p.aux, p.dtype, p.aux2
                ))
            } else {
                Ok(if peer == root { bytes } else { 0 })
            }
        };
        self.gather(op, deadline, expect, |peer, payload| {
            if peer == root {
                value = payload;
            }
            Ok(())
        })?;
        self.scatter_all(op, &value, deadline)?;
        if root != 0 {
            let mut out = Host::read(tensor)?;
            out.set_from_bytes(&value);
            out.write(tensor)?;
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        self.all_gather_bytes(&[]).map(|_| ())
    }

    fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let op = Op::Gather;
        check_len(op.name(), mine.len(), MAX_GATHER_BYTES)?;
        let deadline = self.begin()?;
        let world = self.world_size;
        let h = self.data_header(op, mine.len());
        let max_reply = world * (8 + MAX_GATHER_BYTES);
        if self.rank != 0 {
            let reply = self.exchange(h, mine, max_reply, deadline, op)?;
            return match split_gathered(&reply, world) {
                Some(parts) => Ok(parts),
                None => Err(self.fail(DistError::Mismatch {
                    rank: 0,
                    op: op.name().into(),
                    what: "malformed all-gather reply".into(),
                })),
            };
        }
        let mut parts: Vec<Vec<u8>> = vec![mine.to_vec()];
        // Lengths differ per rank: accept whatever the header says, up to the bound.
        self.gather(
            op,
            deadline,
            |_, p| {
                if p.len > MAX_GATHER_BYTES as u64 {
                    Err(format!("{} bytes, more than {MAX_GATHER_BYTES}", p.len))
                } else {
                    Ok(p.len as usize)
                }
            },
            |_, payload| {
                parts.push(payload);
                Ok(())
            },
        )?;
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
        for p in &parts {
            out.extend_from_slice(&(p.len() as u64).to_le_bytes());
            out.extend_from_slice(p);
        }
        self.scatter_all(op, &out, deadline)?;
        Ok(parts)
    }

    fn all_reduce_u64(&mut self, values: &mut [u64], op: ReduceOp) -> Result<()> {
        self.scalars(values, op, Op::ScalarU64)
    }

    fn all_reduce_f64(&mut self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        self.scalars(values, op, Op::ScalarF64)
    }
}

/// Splits `world` length-prefixed buffers; `None` when malformed.
fn split_gathered(b: &[u8], world: usize) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(world);
    let mut at = 0usize;
    for _ in 0..world {
        let len = u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?) as usize;
        at += 8;
        if len > MAX_GATHER_BYTES {
            return None;
        }
        out.push(b.get(at..at.checked_add(len)?)?.to_vec());
        at += len;
    }
    (at == b.len()).then_some(out)
}
