//! The TCP backend's framing: a fixed 40-byte header, then `len` payload bytes.
//!
//! Every read has a deadline and a length bound known *before* the payload is read (the
//! receiver knows what it expects), so a confused or hostile peer can neither hang a rank past
//! its timeout nor make it allocate more than the bound.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rl_core::Result;
use rl_core::dist::DistError;

/// First four bytes of every frame.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"RLZD");
/// Wire protocol version (checked at the rendezvous).
pub const PROTOCOL_VERSION: u32 = 1;
/// Header size in bytes.
pub(crate) const HEADER_BYTES: usize = 40;
/// Largest control payload (hello, welcome blob, abort): 64 KiB.
pub(crate) const MAX_CONTROL_BYTES: usize = 64 << 10;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Hello = 1,
    Welcome = 2,
    Reject = 3,
    Data = 4,
    Abort = 5,
}

/// Collectives (the `op` byte of a data frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    AllReduce = 1,
    Broadcast = 2,
    Gather = 3,
    ScalarU64 = 4,
    ScalarF64 = 5,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AllReduce => "all_reduce_sum",
            Self::Broadcast => "broadcast",
            Self::Gather => "all_gather_bytes",
            Self::ScalarU64 => "all_reduce_u64",
            Self::ScalarF64 => "all_reduce_f64",
        }
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: u8,
    pub op: u8,
    /// Dtype code of a tensor payload (0 otherwise).
    pub dtype: u8,
    /// Reduce op code of a scalar all-reduce (0 otherwise).
    pub rop: u8,
    /// Element count (tensors, scalars), rank (hello).
    pub aux: u64,
    /// Root (broadcast).
    pub aux2: u64,
    /// Collective sequence number.
    pub seq: u64,
    /// Payload bytes that follow.
    pub len: u64,
}

impl Header {
    pub(crate) fn new(kind: Kind, len: usize) -> Self {
        Self { kind: kind as u8, op: 0, dtype: 0, rop: 0, aux: 0, aux2: 0, seq: 0, len: len as u64 }
    }

    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.kind;
        b[5] = self.op;
        b[6] = self.dtype;
        b[7] = self.rop;
        b[8..16].copy_from_slice(&self.aux.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b[32..40].copy_from_slice(&self.aux2.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_BYTES]) -> Option<Self> {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        if b[0..4] != MAGIC.to_le_bytes() {
            return None;
        }
        Some(Self {
            kind: b[4],
            op: b[5],
            dtype: b[6],
            rop: b[7],
            aux: u64_at(8),
            seq: u64_at(16),
            len: u64_at(24),
            aux2: u64_at(32),
        })
    }
}

/// One connection to a peer, with its rank for error messages.
#[derive(Debug)]
pub(crate) struct Link {
    pub stream: TcpStream,
    pub peer: usize,
}

/// What went wrong on a link (mapped to a [`DistError`] by the caller, who knows the op).
pub(crate) enum LinkError {
    Closed(String),
    TimedOut(f64),
    BadFrame(String),
}

impl LinkError {
    pub(crate) fn into_dist(self, peer: usize, op: &str) -> DistError {
        match self {
            Self::Closed(reason) => DistError::PeerFailed { rank: peer, op: op.into(), reason },
            Self::TimedOut(waited_s) => DistError::Timeout { rank: peer, op: op.into(), waited_s },
            Self::BadFrame(what) => DistError::Mismatch { rank: peer, op: op.into(), what },
        }
    }
}

impl Link {
    /// Reads exactly `buf.len()` bytes before `deadline`.
    pub(crate) fn read_exact(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
    ) -> Result<(), LinkError> {
        let start = Instant::now();
        let mut filled = 0;
        while filled < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LinkError::TimedOut(start.elapsed().as_secs_f64()));
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| LinkError::Closed(e.to_string()))?;
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(LinkError::Closed("connection closed (process exited?)".into()));
                }
                Ok(n) => filled += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(LinkError::Closed(e.to_string())),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` before `deadline`.
    pub(crate) fn write_all(&mut self, buf: &[u8], deadline: Instant) -> Result<(), LinkError> {
        let start = Instant::now();
        let mut sent = 0;
        while sent < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LinkError::TimedOut(start.elapsed().as_secs_f64()));
            }
            self.stream
                .set_write_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| LinkError::Closed(e.to_string()))?;
            match self.stream.write(&buf[sent..]) {
                Ok(0) => return Err(LinkError::Closed("connection closed".into())),
                Ok(n) => sent += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(LinkError::Closed(e.to_string())),
            }
        }
        Ok(())
    }

    /// Sends a header and its payload (`h.len` must equal `payload.len()`).
    pub(crate) fn send(
        &mut self,
        h: &Header,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(), LinkError> {
        debug_assert_eq!(h.len as usize, payload.len());
        self.write_all(&h.encode(), deadline)?;
        self.write_all(payload, deadline)
    }

    /// Reads a header (bad magic is a [`LinkError::BadFrame`]).
    pub(crate) fn recv_header(&mut self, deadline: Instant) -> Result<Header, LinkError> {
        let mut b = [0u8; HEADER_BYTES];
        self.read_exact(&mut b, deadline)?;
        Header::decode(&b).ok_or_else(|| LinkError::BadFrame("bad frame magic".into()))
    }

    /// Reads a payload of `len` bytes after checking `len ≤ max`.
    pub(crate) fn recv_payload(
        &mut self,
        len: u64,
        max: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, LinkError> {
        if len > max as u64 {
            return Err(LinkError::BadFrame(format!("payload of {len} bytes, more than {max}")));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf, deadline)?;
        Ok(buf)
    }
}

/// Encodes an error for an abort frame.
pub(crate) fn encode_abort(e: &DistError) -> Vec<u8> {
    let mut v = serde_json::to_vec(e).unwrap_or_else(|_| b"{}".to_vec());
    v.truncate(MAX_CONTROL_BYTES);
    v
}

/// Decodes an abort frame's error (a garbled one still names the sender).
pub(crate) fn decode_abort(payload: &[u8], from: usize, op: &str) -> DistError {
    serde_json::from_slice(payload).unwrap_or_else(|_| DistError::PeerFailed {
        rank: from,
        op: op.into(),
        reason: format!("aborted: {}", String::from_utf8_lossy(payload)),
    })
}
