//! Throughput of the virtio-block data path, against the same I/O done
//! directly on the same file with the same engine.
//!
//! A mock driver keeps `QD` requests of one size in the queue; the device is
//! driven by the real event loop (queue EventFd kick, io_uring completion
//! EventFd), exactly as in the VMM minus KVM. The "direct" column does the
//! same reads or writes at the same offsets with pread/pwrite (sync) or with
//! an io_uring of the same depth (submit_and_wait per batch).
//!
//! cargo run --release -p devices --example block_bench [seconds per run] [case filter]

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::block::{Block, BlockConfig, CacheType, EngineType, QUEUE_SIZE};
use devices::virtio::{Interrupt, VirtioDevice};
use devices::GuestMemoryMmap;
use event_manager::{EventManager, SubscriberOps};
use io_uring::{opcode, types, IoUring};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

#[path = "common/args.rs"]
mod args;
#[path = "common/ring.rs"]
#[allow(dead_code)] // each bench uses part of it
mod ring;
use ring::Ring;

const RING: Ring = Ring { base: 0 };

/// Runs per case and side; the best one counts.
const ROUNDS: usize = 5;
/// Requests kept in the queue at once (3 descriptors each).
const QD: u64 = 32;
const FILE_SIZE: u64 = 256 << 20;
const HDRS: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const MEM_SIZE: u64 = DATA + QD * (1 << 20);

struct Case {
    size: u64,
    write: bool,
    /// Scattered offsets instead of a sequential walk.
    random: bool,
}

struct Result {
    reqs: u64,
    secs: f64,
}

impl Result {
    fn rate(&self) -> f64 {
        self.reqs as f64 / self.secs
    }
}

fn main() {
    // The filter matches a case's label, e.g. "Sync 4 KiB read".
    let (secs, only) = args::parse();
    let dur = Duration::from_secs_f64(secs);
    let path = std::env::temp_dir().join(format!("flint-block-bench-{}.img", std::process::id()));
    make_image(&path);

    println!(
        "queue depth {QD}, {} MiB file (page cache), best of {ROUNDS} runs of {secs} s",
        FILE_SIZE >> 20
    );
    println!(
        "{:<9} {:>7} {:<9} {:>12} {:>10} {:>12} {:>10} {:>7}",
        "engine", "size", "op", "flint req/s", "flint MB/s", "direct req/s", "direct MB/s", "ratio"
    );
    for engine in [EngineType::Sync, EngineType::IoUring] {
        for (size, random) in [(4096, false), (4096, true), (1 << 20, false)] {
            for write in [false, true] {
                let label = format!(
                    "{:<9} {:>7} {:<9}",
                    format!("{engine:?}"),
                    if size == 4096 { "4 KiB" } else { "1 MiB" },
                    match (random, write) {
                        (false, false) => "read",
                        (false, true) => "write",
                        (true, false) => "randread",
                        (true, true) => "randwrite",
                    },
                );
                let squeezed = label.split_whitespace().collect::<Vec<_>>().join(" ");
                if only
                    .as_ref()
                    .is_some_and(|o| !squeezed.contains(o.as_str()))
                {
                    continue;
                }
                let case = Case {
                    size,
                    write,
                    random,
                };
                // The host may be busy: alternate the two sides and keep
                // the best of each.
                let mut flint = Result { reqs: 0, secs: 1.0 };
                let mut direct = Result { reqs: 0, secs: 1.0 };
                for _ in 0..ROUNDS {
                    let f = through_flint(&path, engine, &case, dur);
                    let d = match engine {
                        EngineType::Sync => direct_sync(&path, &case, dur),
                        EngineType::IoUring => direct_uring(&path, &case, dur),
                    };
                    if f.rate() > flint.rate() {
                        flint = f;
                    }
                    if d.rate() > direct.rate() {
                        direct = d;
                    }
                }
                let mbs = |r: &Result| r.rate() * size as f64 / 1e6;
                println!(
                    "{label} {:>12.0} {:>10.0} {:>12.0} {:>10.0} {:>7.2}",
                    flint.rate(),
                    mbs(&flint),
                    direct.rate(),
                    mbs(&direct),
                    flint.rate() / direct.rate(),
                );
            }
        }
    }
    let _ = fs::remove_file(&path);
}

fn make_image(path: &Path) {
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let f = File::create(path).expect("create the bench image");
    for i in 0..FILE_SIZE >> 20 {
        f.write_all_at(&chunk, i << 20)
            .expect("write the bench image");
    }
}

/// The offset of request `n` of `case`: a sequential walk through the
/// file, or blocks scattered over it (no two of a batch adjacent).
fn offset(case: &Case, n: u64) -> u64 {
    let blocks = FILE_SIZE / case.size;
    let block = if case.random {
        // A multiplicative hash: a fixed, spread-out permutation.
        n.wrapping_mul(2_654_435_761) % blocks
    } else {
        n % blocks
    };
    block * case.size
}

fn through_flint(path: &Path, engine: EngineType, case: &Case, dur: Duration) -> Result {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let cfg = BlockConfig {
        drive_id: "bench".into(),
        path: PathBuf::from(path),
        read_only: false,
        cache: CacheType::Writeback,
        engine,
    };
    let blk = Arc::new(Mutex::new(Block::new(&cfg).expect("open the bench image")));
    let kick = blk.lock().unwrap().queue_event().try_clone().unwrap();
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em.add_subscriber(blk.clone());
    {
        let mut b = blk.lock().unwrap();
        assert_eq!(b.engine(), engine, "io_uring unavailable");
        let features = b.avail_features();
        b.ack_features(features);
        let irq = Arc::new(Interrupt::new().unwrap());
        b.activate(mem.clone(), irq, vec![RING.queue()]).unwrap();
    }
    // The activation kick finds an empty queue.
    em.run_with_timeout(0).unwrap();

    // Descriptors never change: chain i is 3i (header), 3i+1 (data), 3i+2
    // (status).
    let kind = if case.write {
        VIRTIO_BLK_T_OUT
    } else {
        VIRTIO_BLK_T_IN
    };
    let data_flags = VRING_DESC_F_NEXT | if case.write { 0 } else { VRING_DESC_F_WRITE };
    for i in 0..QD {
        let d = (i * 3) as u16;
        let hdr = HDRS + i * 0x100;
        mem.write_obj(kind, GuestAddress(hdr)).unwrap();
        let descs = [
            (hdr, 16, VRING_DESC_F_NEXT),
            (DATA + i * case.size, case.size as u32, data_flags),
            (hdr + 0x80, 1, VRING_DESC_F_WRITE),
        ];
        for (j, (addr, len, flags)) in descs.into_iter().enumerate() {
            RING.store(&mem, d + j as u16, addr, len, flags);
        }
    }

    let heads: Vec<u16> = (0..QD as u16).map(|i| i * 3).collect();
    let mut next: u16 = 0;
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < dur {
        for i in 0..QD {
            let hdr = GuestAddress(HDRS + i * 0x100 + 8);
            mem.write_obj(offset(case, n + i) / 512, hdr).unwrap();
        }
        RING.publish(&mem, next, &heads);
        next = next.wrapping_add(QD as u16);
        kick.write(1).unwrap();
        while RING.used_idx(&mem) != next {
            em.run().unwrap();
        }
        n += QD;
    }
    let secs = start.elapsed().as_secs_f64();
    let c = blk.lock().unwrap().counters();
    assert_eq!(c.errors + c.broken_chains, 0, "requests failed: {c:?}");
    assert_eq!(
        c.read_requests + c.write_requests,
        n,
        "requests lost: {c:?}"
    );
    Result { reqs: n, secs }
}

fn open(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn direct_sync(path: &Path, case: &Case, dur: Duration) -> Result {
    let file = open(path);
    // One buffer per request in the batch, like the guest's.
    let mut bufs = vec![0u8; (QD * case.size) as usize];
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < dur {
        for (i, buf) in bufs.chunks_mut(case.size as usize).enumerate() {
            let off = offset(case, n + i as u64);
            if case.write {
                file.write_all_at(buf, off).unwrap();
            } else {
                file.read_exact_at(buf, off).unwrap();
            }
        }
        n += QD;
    }
    Result {
        reqs: n,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn direct_uring(path: &Path, case: &Case, dur: Duration) -> Result {
    let file = open(path);
    let fd = types::Fd(file.as_raw_fd());
    let mut ring = IoUring::new(QUEUE_SIZE.into()).unwrap();
    let mut bufs = vec![0u8; (QD * case.size) as usize];
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < dur {
        for i in 0..QD {
            let off = offset(case, n + i);
            let buf = bufs[(i * case.size) as usize..].as_mut_ptr();
            let len = case.size as u32;
            let sqe = if case.write {
                opcode::Write::new(fd, buf, len).offset(off).build()
            } else {
                opcode::Read::new(fd, buf, len).offset(off).build()
            };
            // SAFETY: `bufs` outlives the batch, which is waited for below.
            unsafe { ring.submission().push(&sqe) }.unwrap();
        }
        ring.submit_and_wait(QD as usize).unwrap();
        for cqe in ring.completion() {
            assert_eq!(cqe.result(), case.size as i32);
        }
        n += QD;
    }
    Result {
        reqs: n,
        secs: start.elapsed().as_secs_f64(),
    }
}
