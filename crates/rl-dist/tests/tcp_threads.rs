//! The TCP rendezvous and collectives with ranks as threads of one process (fast checks of
//! the handshake rules and argument errors; the multi-process behaviour is in
//! `processes.rs`).

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use rl_core::dist::{DistError, MAX_GATHER_BYTES, ProcessGroup, ReduceOp};
use rl_core::{DType, Device, Error, Tensor};
use rl_dist::{DistEnv, TcpGroup};

fn env(rank: usize, world: usize, port: u16, run_id: &str, timeout_s: f64) -> DistEnv {
    DistEnv {
        rank,
        world_size: world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        run_id: run_id.into(),
        timeout: Duration::from_secs_f64(timeout_s),
    }
}

fn dist(e: Error) -> DistError {
    match e {
        Error::Dist(d) => d,
        other => panic!("not a DistError: {other}"),
    }
}

/// Runs `f(rank, group)` on `world` threads after a rendezvous on a port-0 listener.
fn group<T: Send + 'static>(
    world: usize,
    blob: &'static [u8],
    f: impl Fn(usize, TcpGroup, Vec<u8>) -> T + Send + Sync + Copy + 'static,
) -> Vec<T> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = thread::spawn(move || {
        let (pg, b) = TcpGroup::host(listener, &env(0, world, port, "t", 20.0), blob).unwrap();
        f(0, pg, b)
    });
    let others: Vec<_> = (1..world)
        .map(|r| {
            thread::spawn(move || {
                let (pg, b) =
                    TcpGroup::init_with_blob(&env(r, world, port, "t", 20.0), &[]).unwrap();
                f(r, pg, b)
            })
        })
        .collect();
    let mut out = vec![host.join().unwrap()];
    out.extend(others.into_iter().map(|h| h.join().unwrap()));
    out
}

#[test]
fn blob_reaches_every_rank_and_sums_are_bitwise_rank_order() {
    let out = group(3, b"nccl-id", |r, mut pg, blob| {
        assert_eq!(blob, b"nccl-id");
        assert_eq!((pg.rank(), pg.world_size(), pg.backend()), (r, 3, "tcp"));
        // Values whose f32 sum depends on the order: (1e8 + 1) + (-1e8) vs 1e8 + (1 - 1e8).
        let v = [1e8f32, 1.0, -1e8][r];
        let t = Tensor::new(&[v, v], &Device::Cpu).unwrap();
        pg.all_reduce_sum(&t).unwrap();
        // f16 accumulates in f32 and rounds once.
        let h = Tensor::new(&[0.1f32 * (r as f32 + 1.0)], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        pg.all_reduce_sum(&h).unwrap();
        (t.to_vec1::<f32>().unwrap(), h.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap())
    });
    let rank_order = (1e8f32 + 1.0) + -1e8;
    for (t, _) in &out {
        assert_eq!(t, &[rank_order, rank_order]);
    }
    assert_eq!(out[0].1, out[1].1);
    assert_eq!(out[1].1, out[2].1);
}

#[test]
fn in_place_write_respects_a_view_offset_and_only_touches_the_view() {
    let out = group(2, b"", |r, mut pg, _| {
        let base = Tensor::new(&[10f64, 20.0, 30.0, 40.0], &Device::Cpu).unwrap();
        let view = base.narrow(0, 1, 2).unwrap(); // contiguous at offset 1
        let add = Tensor::new(&[r as f64, r as f64], &Device::Cpu).unwrap();
        let view = (view + add).unwrap(); // its own storage now
        pg.all_reduce_sum(&view).unwrap();
        // A non-contiguous tensor is refused with a typed error.
        let t = Tensor::new(&[[1f64, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap().t().unwrap();
        let e = dist(pg.all_reduce_sum(&t).unwrap_err());
        assert!(matches!(e, DistError::Unsupported { .. }), "{e}");
        // An integer tensor too.
        let u = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        assert!(matches!(dist(pg.all_reduce_sum(&u).unwrap_err()), DistError::Unsupported { .. }));
        // The group still works after argument errors (nothing was sent).
        let narrow_base = Tensor::new(&[1f64, 2.0, 3.0, 4.0], &Device::Cpu).unwrap();
        let tail = narrow_base.narrow(0, 2, 2).unwrap();
        pg.all_reduce_sum(&tail).unwrap();
        (view.to_vec1::<f64>().unwrap(), narrow_base.to_vec1::<f64>().unwrap())
    });
    for (v, base) in out {
        assert_eq!(v, [41.0, 61.0]);
        // The tail view was summed in place; the head of its storage untouched.
        assert_eq!(base, [1.0, 2.0, 6.0, 8.0]);
    }
}

#[test]
fn bounds_and_out_of_step_calls_are_typed_errors() {
    let out = group(2, b"", |r, mut pg, _| {
        let big = vec![0u8; MAX_GATHER_BYTES + 1];
        let e = dist(pg.all_gather_bytes(&big).unwrap_err());
        assert!(matches!(e, DistError::TooLarge { .. }), "{e}");
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let e = dist(pg.broadcast(&t, 2).unwrap_err());
        assert!(matches!(e, DistError::RankOutOfRange { rank: 2, .. }), "{e}");
        // Out of step: rank 0 reduces 2 values, rank 1 reduces 3.
        let mut v = vec![1u64; 2 + r];
        let e = dist(pg.all_reduce_u64(&mut v, ReduceOp::Sum).unwrap_err());
        // The group is unusable afterwards.
        let p = dist(pg.barrier().unwrap_err());
        (e, p)
    });
    // Rank 0 sees rank 1 out of step; rank 1 gets rank 0's verdict.
    for (rank, (e, p)) in out.into_iter().enumerate() {
        assert!(matches!(e, DistError::Mismatch { rank: 1, .. }), "rank {rank}: {e}");
        assert!(matches!(p, DistError::Poisoned { .. }), "rank {rank}: {p}");
    }
}

#[test]
fn u64_sum_overflow_is_reported_on_every_rank() {
    let out = group(2, b"", |_, mut pg, _| {
        let mut v = [u64::MAX / 2 + 1];
        dist(pg.all_reduce_u64(&mut v, ReduceOp::Sum).unwrap_err())
    });
    for e in out {
        assert!(matches!(e, DistError::Overflow { .. }), "{e}");
    }
}

#[test]
fn wrong_run_id_or_world_size_is_rejected_and_rank_0_keeps_waiting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = thread::spawn(move || TcpGroup::host(listener, &env(0, 2, port, "run-a", 3.0), b""));
    let bad_id = TcpGroup::init(&env(1, 2, port, "run-b", 3.0)).unwrap_err();
    match dist(bad_id) {
        DistError::Handshake { rank: Some(0), reason } => {
            assert!(reason.contains("run id"), "{reason}")
        }
        other => panic!("{other}"),
    }
    let bad_world = TcpGroup::init(&env(1, 3, port, "run-a", 3.0)).unwrap_err();
    match dist(bad_world) {
        DistError::Handshake { reason, .. } => assert!(reason.contains("world size"), "{reason}"),
        other => panic!("{other}"),
    }
    // No valid rank 1 ever comes: rank 0 times out, listing the rejections.
    match dist(host.join().unwrap().unwrap_err()) {
        DistError::RendezvousTimeout { missing, detail, .. } => {
            assert_eq!(missing, [1]);
            assert!(detail.contains("run id") && detail.contains("world size"), "{detail}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_rank_with_no_rank_0_times_out_naming_rank_0() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = Instant::now();
    let e = dist(TcpGroup::init(&env(1, 2, port, "t", 1.0)).unwrap_err());
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(e, DistError::RendezvousTimeout { ref missing, .. } if missing == &[0]),
        "{e}"
    );
}
