//! Tests of the read backends over a temporary file whose bytes are a function of their offset.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use super::{fill_pattern, pattern_byte, ScratchFile};

/// Not a multiple of 4096, so the last aligned span runs past the end of the file.
const FILE_LEN: u64 = (3 << 20) + 1234;

fn scratch() -> (tempfile::TempDir, ScratchFile) {
    let dir = tempfile::tempdir().unwrap();
    let f = ScratchFile::create(dir.path(), FILE_LEN).unwrap();
    (dir, f)
}

/// Random requests: unaligned offsets and lengths (some tiny, some up to 200 KiB, some clustered so that they
/// touch or overlap, some aligned), packed one after another in the destination buffer (at unaligned places).
fn random_reqs(rng: &mut StdRng, n: usize) -> (Vec<ReadReq>, usize) {
    let mut reqs = Vec::with_capacity(n);
    let mut dst = 0usize;
    let mut near = 0u64;
    for _ in 0..n {
        let len = match rng.gen_range(0..10) {
            0 => 0,
            1..=3 => rng.gen_range(1..600),
            4..=6 => rng.gen_range(1..20_000),
            7 => 4096,
            _ => rng.gen_range(1..200_000),
        };
        let offset = match rng.gen_range(0..4) {
            0 => near + rng.gen_range(0..3000),
            1 => rng.gen_range(0..FILE_LEN / 4096) * 4096,
            _ => rng.gen_range(0..FILE_LEN),
        }
        .min(FILE_LEN - len as u64);
        near = offset + len as u64;
        if len == 4096 && rng.gen_bool(0.5) {
            dst = dst.next_multiple_of(4096);
        }
        reqs.push(ReadReq { offset, len, dst });
        dst += len + rng.gen_range(0..3);
    }
    (reqs, dst)
}

fn check(reqs: &[ReadReq], buf: &AlignedBuf, what: &str) {
    let b = buf.as_slice();
    for r in reqs {
        let mut want = vec![0u8; r.len];
        fill_pattern(r.offset, &mut want);
        assert!(b[r.dst..r.dst + r.len] == want[..], "{what}: wrong bytes for {r:?}");
    }
}

fn configs() -> Vec<IoConfig> {
    let base = IoConfig::default();
    vec![
        IoConfig { merge: false, ..base.clone() },
        base.clone(),
        IoConfig { max_gap: 64 << 10, ..base.clone() },
        IoConfig { align: 512, max_gap: 8192, max_merge: 64 << 10, ..base },
    ]
}

/// Runs random batches through `b` and checks the bytes and the stats.
fn exercise(b: &mut dyn ReadBackend, seed: u64, batches: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = AlignedBuf::new(0).unwrap();
    b.reset_stats();
    let (mut nreq, mut bytes) = (0u64, 0u64);
    for i in 0..batches {
        let n = rng.gen_range(1..150);
        let (reqs, need) = random_reqs(&mut rng, n);
        buf.resize(need).unwrap();
        buf.as_mut_slice().fill(0);
        b.read_batch(&reqs, &mut buf).unwrap();
        check(&reqs, &buf, &format!("{} seed {seed} batch {i}", b.name()));
        nreq += reqs.len() as u64;
        bytes += reqs.iter().map(|r| r.len as u64).sum::<u64>();
    }
    let s = b.stats();
    assert_eq!(s.batches, batches as u64);
    assert_eq!(s.requests, nreq);
    assert_eq!(s.bytes_requested, bytes);
    assert_eq!(s.chunk_hist.iter().sum::<u64>(), s.reads);
    // Overlapping requests are read once, so the device may read fewer bytes than were asked for; but every
    // device read is whole aligned blocks.
    if b.name() != "mmap" {
        assert_eq!(s.bytes_read % 512, 0);
    }
}

#[test]
fn uring_reads_exact_bytes_at_all_depths() {
    let (_d, f) = scratch();
    for (c, cfg) in configs().into_iter().enumerate() {
        for qd in [1, 2, 3, 8, 32, 64] {
            let cfg = IoConfig { queue_depth: qd, ..cfg.clone() };
            let mut b = UringBackend::new(f.path(), &cfg).unwrap();
            exercise(&mut b, 100 + c as u64 * 10 + qd as u64, 6);
        }
    }
    let cfg = IoConfig { complete_batch: 8, submit_batch: 32, register_file: false, ..IoConfig::default() };
    exercise(&mut UringBackend::new(f.path(), &cfg).unwrap(), 7, 6);
}

#[test]
fn pool_reads_exact_bytes() {
    let (_d, f) = scratch();
    for (c, cfg) in configs().into_iter().enumerate() {
        for threads in [1, 4, 32] {
            let mut b = PoolBackend::open(f.path(), &IoConfig { threads, ..cfg.clone() }).unwrap();
            exercise(&mut b, 200 + c as u64 * 10 + threads as u64, 6);
        }
    }
}

#[test]
fn mmap_and_mem_read_exact_bytes() {
    let (_d, f) = scratch();
    let mut b = MmapBackend::open(f.path(), &IoConfig::default()).unwrap();
    exercise(&mut b, 300, 8);
    let data = std::fs::read(f.path()).unwrap();
    for (c, cfg) in configs().into_iter().enumerate() {
        let mut m = MemBackend::new("mem.bin", data.clone(), &cfg).unwrap();
        exercise(&mut m, 310 + c as u64, 8);
    }
}

#[test]
fn buffered_mode_works_too() {
    let (_d, f) = scratch();
    let cfg = IoConfig { direct: false, ..IoConfig::default() };
    exercise(&mut UringBackend::new(f.path(), &cfg).unwrap(), 400, 4);
    exercise(&mut PoolBackend::open(f.path(), &cfg).unwrap(), 401, 4);
}

#[test]
fn stats_count_what_was_issued() {
    let (_d, f) = scratch();
    let mut b = open_backend(BackendKind::Uring, f.path(), &IoConfig::default()).unwrap();
    let mut buf = AlignedBuf::new(3 * 4096).unwrap();
    // Two requests in one block and one touching block: one device read of 8 KiB; an aligned request whose
    // destination is aligned: one 4 KiB read straight into the buffer.
    let reqs = [
        ReadReq { offset: 10, len: 100, dst: 0 },
        ReadReq { offset: 4000, len: 200, dst: 100 },
        ReadReq { offset: 1 << 20, len: 4096, dst: 8192 },
    ];
    b.read_batch(&reqs, &mut buf).unwrap();
    check(&reqs, &buf, "stats");
    let s = b.stats().clone();
    assert_eq!((s.batches, s.requests, s.reads), (1, 3, 2));
    assert_eq!(s.bytes_requested, 4396);
    assert_eq!(s.bytes_read, 8192 + 4096);
    assert_eq!(s.histogram().collect::<Vec<_>>(), vec![(4096, 1), (8192, 1)]);
    assert!(s.wait_ns > 0 && s.latency_ns > 0);
    assert!((s.read_amplification() - 12288.0 / 4396.0).abs() < 1e-12);
    b.reset_stats();
    assert_eq!(b.stats(), &IoStats::default());
}

fn expect_read_error(e: crate::Error, offset: u64, what: &str) {
    let msg = e.to_string();
    match e {
        crate::Error::Read { offset: o, .. } => assert_eq!(o, offset, "{what}: {msg}"),
        other => panic!("{what}: expected a read error, got {other}"),
    }
    assert!(msg.contains(&format!("offset {offset}")), "{what}: {msg}");
}

#[test]
fn past_the_end_and_short_reads_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.bin");
    let mut data = vec![0u8; 64 << 10];
    fill_pattern(0, &mut data);
    std::fs::write(&path, &data).unwrap();
    for kind in BackendKind::ALL {
        let mut b = open_backend(kind, &path, &IoConfig::default()).unwrap();
        let mut buf = AlignedBuf::new(8192).unwrap();
        let e = b.read_batch(&[ReadReq { offset: 65000, len: 1000, dst: 0 }], &mut buf).unwrap_err();
        assert!(e.to_string().contains("f.bin"), "{e}");
        expect_read_error(e, 65000, kind.as_str());
        let e = b.read_batch(&[ReadReq { offset: 0, len: 100, dst: 8100 }], &mut buf).unwrap_err();
        assert!(matches!(e, crate::Error::Invalid(_)), "{kind}: {e}");
    }
    // The file shrinks after opening: the device reads come back short, which must not pass as zeros.
    for kind in [BackendKind::Uring, BackendKind::Pool] {
        let b = open_backend(kind, &path, &IoConfig::default()).unwrap();
        let mut b = b;
        std::fs::File::options().write(true).open(&path).unwrap().set_len(16 << 10).unwrap();
        let mut buf = AlignedBuf::new(8192).unwrap();
        let e = b.read_batch(&[ReadReq { offset: 40960, len: 5000, dst: 0 }], &mut buf).unwrap_err();
        assert!(e.to_string().contains("short read"), "{e}");
        expect_read_error(e, 40960, kind.as_str());
        std::fs::write(&path, &data).unwrap();
    }
}

#[test]
fn faulty_backend_fails_the_chosen_request() {
    let data: Vec<u8> = (0..100_000u64).map(pattern_byte).collect();
    let mem = MemBackend::new("model/ffn.bin", data, &IoConfig::default()).unwrap();
    let mut f = FaultyBackend::new(Box::new(mem), Fault::NthRequest(3));
    let mut buf = AlignedBuf::new(1000).unwrap();
    let reqs = [ReadReq { offset: 0, len: 10, dst: 0 }, ReadReq { offset: 5000, len: 10, dst: 10 }];
    f.read_batch(&reqs, &mut buf).unwrap();
    let e = f.read_batch(&reqs, &mut buf).unwrap_err();
    assert!(e.to_string().contains("model/ffn.bin") && e.to_string().contains("injected"), "{e}");
    expect_read_error(e, 5000, "nth");
    f.read_batch(&reqs, &mut buf).unwrap();
    assert_eq!(f.injected, 1);
    assert_eq!(f.stats().batches, 2, "the failed batch never reached the inner backend");

    let mem = MemBackend::new("m", (0..100_000u64).map(pattern_byte).collect::<Vec<_>>(), &IoConfig::default());
    let mut f = FaultyBackend::new(Box::new(mem.unwrap()), Fault::Covering(5005));
    expect_read_error(f.read_batch(&reqs, &mut buf).unwrap_err(), 5000, "covering");
    f.read_batch(&reqs[..1], &mut buf).unwrap();
}

#[test]
fn mem_backend_logs_planned_reads() {
    let data = vec![1u8; 1 << 20];
    let mut m = MemBackend::new("m", data, &IoConfig { max_gap: 4096, ..IoConfig::default() }).unwrap();
    let mut buf = AlignedBuf::new(100).unwrap();
    let reqs = [ReadReq { offset: 0, len: 10, dst: 0 }, ReadReq { offset: 8192, len: 10, dst: 10 }];
    m.read_batch(&reqs, &mut buf).unwrap();
    assert_eq!(m.device_reads(), &[(0, 12288)]);
    assert_eq!(m.stats().reads, 1);
}

#[test]
fn forced_fallback_uses_the_pool() {
    let (_d, f) = scratch();
    let cfg = IoConfig { force_fallback: true, threads: 4, ..IoConfig::default() };
    let mut b = open_backend(BackendKind::Uring, f.path(), &cfg).unwrap();
    assert_eq!(b.name(), "pool");
    exercise(b.as_mut(), 500, 3);
    assert!(matches!(UringBackend::new(f.path(), &cfg), Err(crate::Error::Unsupported { .. })));
}

#[test]
fn open_errors_name_the_file() {
    let missing = Path::new("/nonexistent/spike/ffn.bin");
    for kind in BackendKind::ALL {
        let e = open_backend(kind, missing, &IoConfig::default()).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/spike/ffn.bin"), "{e}");
    }
    assert!("uring".parse::<BackendKind>().is_ok());
    assert!("disk".parse::<BackendKind>().is_err());
    let e = open_backend(BackendKind::Pool, missing, &IoConfig { threads: 0, ..IoConfig::default() });
    assert!(matches!(e, Err(crate::Error::Invalid(_))));
}

#[test]
fn backends_are_object_safe_and_send() {
    fn is_send<T: Send>() {}
    is_send::<Box<dyn ReadBackend>>();
    is_send::<AlignedBuf>();
}

/// `read_batch_arriving` hands every request over exactly once with its bytes, on every backend: io_uring as
/// each direct read completes (the chunks of a run), the others after the batch; random batches (scratch
/// spans) are handed over after the batch. An error from the callback ends the batch and is returned as is.
#[test]
fn requests_are_handed_over_once_as_they_arrive() {
    let (_d, f) = scratch();
    // Eight aligned 64 KiB chunks straight into the buffer, and an empty request.
    let mut reqs: Vec<ReadReq> =
        (0..8).map(|i| ReadReq { offset: 4096 + i as u64 * 65536, len: 65536, dst: i * 65536 }).collect();
    reqs.push(ReadReq { offset: 0, len: 0, dst: 0 });
    let mut rng = StdRng::seed_from_u64(600);
    let (random, need) = random_reqs(&mut rng, 60);
    for kind in BackendKind::ALL {
        let mut b = open_backend(kind, f.path(), &IoConfig { max_merge: 65536, ..IoConfig::default() }).unwrap();
        for (reqs, len) in [(&reqs, 8 * 65536), (&random, need)] {
            let mut buf = AlignedBuf::new(len).unwrap();
            let mut seen = vec![0usize; reqs.len()];
            b.read_batch_arriving(reqs, &mut buf, &mut |i, bytes| {
                let r = reqs[i];
                let mut want = vec![0u8; r.len];
                fill_pattern(r.offset, &mut want);
                assert!(bytes == &want[..], "{kind}: request {i}'s bytes");
                seen[i] += 1;
                Ok(())
            })
            .unwrap();
            assert!(seen.iter().all(|&n| n == 1), "{kind}: {seen:?}");
            check(reqs, &buf, kind.as_str());
        }
        let mut buf = AlignedBuf::new(8 * 65536).unwrap();
        let mut calls = 0;
        let e = b
            .read_batch_arriving(&reqs, &mut buf, &mut |_, _| {
                calls += 1;
                match calls {
                    2 => Err(crate::Error::Invalid("stop".into())),
                    _ => Ok(()),
                }
            })
            .unwrap_err();
        assert!(matches!(e, crate::Error::Invalid(ref w) if w == "stop"), "{kind}: {e}");
        assert_eq!(calls, 2, "{kind}: nothing is handed over after an error");
        // The backend is usable after the error.
        b.read_batch(&reqs, &mut buf).unwrap();
        check(&reqs, &buf, kind.as_str());
    }
}
