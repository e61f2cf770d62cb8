//! Block device tests: a mock driver (virtio-queue's MockSplitQueue) puts
//! requests in guest memory, the device serves them from a temporary image.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::GuestMemoryMmap;
use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::engine::Engine;
use super::request::{STATUS_IOERR, STATUS_OK, STATUS_UNSUPP};
use super::*;
use crate::virtio::{DeviceState, Interrupt, StateError, VirtioDevice};

const MEM_SIZE: u64 = 0x40_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const IMAGE_SIZE: usize = 64 * 1024;

/// A temporary image file, removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    fn new(name: &str, content: &[u8]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "flint-blk-{}-{}-{name}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, content).unwrap();
        Self(path)
    }

    /// 64 KiB where byte i holds (i / 512 + i) as u8: every sector differs.
    fn patterned(name: &str) -> Self {
        Self::new(name, &pattern(0, IMAGE_SIZE))
    }

    fn content(&self) -> Vec<u8> {
        fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i / 512 + i) as u8)
        .collect()
}

fn config(img: &TempImage, engine: EngineType) -> BlockConfig {
    BlockConfig {
        drive_id: "flint-disk-0".into(),
        path: img.0.clone(),
        read_only: false,
        cache: CacheType::Writeback,
        engine,
    }
}

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn activate(blk: &mut Block, mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) {
    blk.ack_features(blk.avail_features());
    let q: Queue = vq.create_queue().unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    blk.activate(mem.clone(), irq, vec![q]).unwrap();
}

/// One descriptor: address, length, device-writable.
type Seg = (u64, u32, bool);

/// Write a chain at descriptor index `first` and make it available.
fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, first: u16, segs: &[Seg]) {
    let descs: Vec<RawDescriptor> = segs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, write))| {
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < segs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let next = first + i as u16 + 1;
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
        })
        .collect();
    vq.add_desc_chains(&descs, first).unwrap();
}

/// Request `n`: header at HDR + n * 0x100, status 0x80 further; data
/// buffers as given. Descriptors start at index 8 * n.
fn request(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    n: u16,
    kind: u32,
    sector: u64,
    data: &[Seg],
) -> GuestAddress {
    let hdr = HDR + u64::from(n) * 0x100;
    mem.write_obj(kind, GuestAddress(hdr)).unwrap();
    mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
    let status = GuestAddress(hdr + 0x80);
    mem.write_obj(0xffu8, status).unwrap();
    let mut segs = vec![(hdr, 16, false)];
    segs.extend_from_slice(data);
    segs.push((status.0, 1, true));
    add_chain(vq, 8 * n, &segs);
    status
}

/// Kick the device and wait until `want` chains are in the used ring.
fn run(blk: &mut Block, vq: &MockSplitQueue<GuestMemoryMmap>, want: u16) {
    blk.handle_queue_event();
    let deadline = Instant::now() + Duration::from_secs(10);
    while vq.used().idx().load() < want {
        assert!(Instant::now() < deadline, "requests did not complete");
        std::thread::sleep(Duration::from_millis(1));
        blk.handle_completion_event();
    }
}

fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

fn status(mem: &GuestMemoryMmap, addr: GuestAddress) -> u8 {
    mem.read_obj(addr).unwrap()
}

fn engines() -> [EngineType; 2] {
    [EngineType::Sync, EngineType::IoUring]
}

/// Run `f` for each engine with a fresh image, memory, queue and device.
fn with_device(
    name: &str,
    cfg: impl Fn(&mut BlockConfig),
    f: impl Fn(&TempImage, &GuestMemoryMmap, &MockSplitQueue<GuestMemoryMmap>, &mut Block),
) {
    for engine in engines() {
        let img = TempImage::patterned(name);
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let mut c = config(&img, engine);
        cfg(&mut c);
        let mut blk = Block::new(&c).unwrap();
        if engine == EngineType::IoUring && blk.engine() != engine {
            eprintln!("io_uring unavailable on this host; tested the fallback");
        }
        activate(&mut blk, &mem, &vq);
        f(&img, &mem, &vq, &mut blk);
        assert_eq!(blk.in_flight(), 0);
    }
}

#[test]
fn config_space_and_features() {
    let img = TempImage::patterned("config");
    let mut c = config(&img, EngineType::Sync);
    let blk = Block::new(&c).unwrap();
    let mut cap = [0u8; 8];
    blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), (IMAGE_SIZE / 512) as u64);
    assert_eq!(blk.capacity(), 128);
    let mut seg_max = [0u8; 4];
    blk.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), u32::from(QUEUE_SIZE) - 2);
    assert_eq!(blk.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(blk.queue_max_sizes(), &[QUEUE_SIZE]);
    // Past the end: zeros, no panic.
    let mut far = [0xffu8; 4];
    blk.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);

    c.read_only = true;
    let ro = Block::new(&c).unwrap();
    assert_ne!(ro.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn construction_errors_name_the_file() {
    let img = TempImage::new("odd", &[0u8; 1000]);
    let err = Block::new(&config(&img, EngineType::Sync)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BlockError::UnalignedSize { size: 1000, .. }));
    assert!(msg.contains(&*img.0.to_string_lossy()), "{msg}");
    assert!(msg.contains("1000 bytes, not a multiple of 512"), "{msg}");

    let mut c = config(&img, EngineType::Sync);
    c.path = img.0.with_extension("missing");
    let err = Block::new(&c).unwrap_err();
    assert!(matches!(err, BlockError::NotFound { .. }));
    assert!(err.to_string().contains("missing"));

    c.path = std::env::temp_dir();
    c.read_only = true;
    assert!(matches!(
        Block::new(&c).unwrap_err(),
        BlockError::NotAFile { .. }
    ));
    c.read_only = false;
    assert!(matches!(
        Block::new(&c).unwrap_err(),
        BlockError::NotAFile { .. }
    ));
}

#[test]
fn read() {
    with_device(
        "read",
        |_| {},
        |_, mem, vq, blk| {
            // Two sectors at sector 3, split over two buffers.
            let data = [(DATA, 512, true), (DATA + 0x1000, 512, true)];
            let st = request(mem, vq, 0, VIRTIO_BLK_T_IN, 3, &data);
            run(blk, vq, 1);
            assert_eq!(status(mem, st), STATUS_OK);
            assert_eq!(used(vq, 0), (0, 1025));
            let mut got = vec![0u8; 512];
            mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
            assert_eq!(got, pattern(3 * 512, 512));
            mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
                .unwrap();
            assert_eq!(got, pattern(4 * 512, 512));
            let c = blk.counters();
            assert_eq!((c.requests, c.read_requests, c.bytes_read), (1, 1, 1024));
            assert_eq!(c.interrupts, 1);
        },
    );
}

#[test]
fn write_then_read_back() {
    with_device(
        "write",
        |_| {},
        |img, mem, vq, blk| {
            let payload: Vec<u8> = (0..4096).map(|i| (i * 7) as u8).collect();
            mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
            let st = request(mem, vq, 0, VIRTIO_BLK_T_OUT, 8, &[(DATA, 4096, false)]);
            run(blk, vq, 1);
            assert_eq!(status(mem, st), STATUS_OK);
            assert_eq!(used(vq, 0), (0, 1));
            let file = img.content();
            assert_eq!(&file[8 * 512..8 * 512 + 4096], &payload[..]);
            assert_eq!(&file[..8 * 512], &pattern(0, 8 * 512)[..]);

            let st = request(
                mem,
                vq,
                1,
                VIRTIO_BLK_T_IN,
                8,
                &[(DATA + 0x10000, 4096, true)],
            );
            run(blk, vq, 2);
            assert_eq!(status(mem, st), STATUS_OK);
            let mut back = vec![0u8; 4096];
            mem.read_slice(&mut back, GuestAddress(DATA + 0x10000))
                .unwrap();
            assert_eq!(back, payload);
            assert_eq!(blk.counters().bytes_written, 4096);
        },
    );
}

#[test]
fn flush_with_both_cache_modes() {
    for cache in [CacheType::Writeback, CacheType::Unsafe] {
        with_device(
            "flush",
            |c| c.cache = cache,
            |_, mem, vq, blk| {
                let st = request(mem, vq, 0, VIRTIO_BLK_T_FLUSH, 0, &[]);
                run(blk, vq, 1);
                assert_eq!(status(mem, st), STATUS_OK);
                assert_eq!(used(vq, 0), (0, 1));
                assert_eq!(blk.counters().flush_requests, 1);
            },
        );
    }
}

#[test]
fn get_id() {
    with_device(
        "id",
        |_| {},
        |_, mem, vq, blk| {
            mem.write_slice(&[0xaa; 32], GuestAddress(DATA)).unwrap();
            let st = request(mem, vq, 0, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
            run(blk, vq, 1);
            assert_eq!(status(mem, st), STATUS_OK);
            assert_eq!(used(vq, 0), (0, 21));
            let mut id = [0u8; 21];
            mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
            assert_eq!(&id[..12], b"flint-disk-0");
            assert_eq!(&id[12..20], &[0u8; 8]);
            assert_eq!(id[20], 0xaa, "wrote past the 20-byte id");
        },
    );
    // A longer id is cut at 20 bytes.
    with_device(
        "long-id",
        |c| c.drive_id = "0123456789abcdefghijKLMN".into(),
        |_, mem, vq, blk| {
            let st = request(mem, vq, 0, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 64, true)]);
            run(blk, vq, 1);
            assert_eq!(status(mem, st), STATUS_OK);
            let mut id = [0u8; 20];
            mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
            assert_eq!(&id, b"0123456789abcdefghij");
        },
    );
}

#[test]
fn get_id_split_over_descriptors() {
    with_device(
        "split-id",
        |c| c.drive_id = "0123456789abcdefghijKLMN".into(),
        |_, mem, vq, blk| {
            mem.write_slice(&[0xaa; 0x300], GuestAddress(DATA)).unwrap();
            let bufs = [
                (DATA, 8, true),
                (DATA + 0x100, 8, true),
                (DATA + 0x200, 8, true),
            ];
            let st = request(mem, vq, 0, VIRTIO_BLK_T_GET_ID, 0, &bufs);
            run(blk, vq, 1);
            assert_eq!(status(mem, st), STATUS_OK);
            assert_eq!(used(vq, 0), (0, 21));
            let read = |at: u64| {
                let mut b = [0u8; 8];
                mem.read_slice(&mut b, GuestAddress(at)).unwrap();
                b
            };
            assert_eq!(&read(DATA), b"01234567");
            assert_eq!(&read(DATA + 0x100), b"89abcdef");
            assert_eq!(&read(DATA + 0x200), b"ghij\xaa\xaa\xaa\xaa");
        },
    );
}

#[test]
fn refused_requests_get_an_error_status() {
    let past_end = (IMAGE_SIZE / 512) as u64;
    let cases: Vec<(&str, u32, u64, Vec<Seg>, u8)> = vec![
        (
            "unknown type",
            99,
            0,
            vec![(DATA, 512, true)],
            STATUS_UNSUPP,
        ),
        (
            "sector past the end",
            VIRTIO_BLK_T_IN,
            past_end,
            vec![(DATA, 512, true)],
            STATUS_IOERR,
        ),
        (
            "straddles the end",
            VIRTIO_BLK_T_IN,
            past_end - 1,
            vec![(DATA, 1024, true)],
            STATUS_IOERR,
        ),
        (
            "sector overflow",
            VIRTIO_BLK_T_OUT,
            u64::MAX / 256,
            vec![(DATA, 512, false)],
            STATUS_IOERR,
        ),
        (
            "data outside memory",
            VIRTIO_BLK_T_IN,
            0,
            vec![(MEM_SIZE - 256, 512, true)],
            STATUS_IOERR,
        ),
        (
            "data far outside memory",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(u64::MAX - 511, 512, false)],
            STATUS_IOERR,
        ),
        (
            "read into a readable buffer",
            VIRTIO_BLK_T_IN,
            0,
            vec![(DATA, 512, false)],
            STATUS_IOERR,
        ),
        (
            "write from a writable buffer",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(DATA, 512, true)],
            STATUS_IOERR,
        ),
        (
            "unaligned length",
            VIRTIO_BLK_T_IN,
            0,
            vec![(DATA, 100, true)],
            STATUS_IOERR,
        ),
        (
            "get-id into a readable buffer",
            VIRTIO_BLK_T_GET_ID,
            0,
            vec![(DATA, 20, false)],
            STATUS_IOERR,
        ),
    ];
    with_device(
        "refused",
        |_| {},
        |img, mem, vq, blk| {
            for (n, (what, kind, sector, data, want)) in cases.iter().enumerate() {
                let st = request(mem, vq, n as u16, *kind, *sector, data);
                run(blk, vq, n as u16 + 1);
                assert_eq!(status(mem, st), *want, "{what}");
                assert_eq!(used(vq, n), (8 * n as u32, 1), "{what}");
            }
            assert_eq!(blk.counters().errors, cases.len() as u64);
            assert_eq!(img.content(), pattern(0, IMAGE_SIZE));
        },
    );
}

#[test]
fn header_problems_get_ioerr() {
    with_device(
        "header",
        |_| {},
        |_, mem, vq, blk| {
            let st = GuestAddress(HDR + 0x80);
            // Header outside guest memory.
            add_chain(vq, 0, &[(MEM_SIZE + 0x1000, 16, false), (st.0, 1, true)]);
            // Header too short, then header device-writable.
            add_chain(vq, 2, &[(HDR, 8, false), (st.0 + 1, 1, true)]);
            add_chain(vq, 4, &[(HDR, 16, true), (st.0 + 2, 1, true)]);
            run(blk, vq, 3);
            for i in 0..3 {
                assert_eq!(status(mem, GuestAddress(st.0 + i)), STATUS_IOERR);
                assert_eq!(used(vq, i as usize).1, 1);
            }
        },
    );
}

#[test]
fn broken_chains_are_returned_empty() {
    with_device(
        "broken",
        |_| {},
        |_, mem, vq, blk| {
            let st = GuestAddress(HDR + 0x80);
            mem.write_obj(0xffu8, st).unwrap();
            // Only a header.
            add_chain(vq, 0, &[(HDR, 16, false)]);
            // Status not writable.
            add_chain(vq, 2, &[(HDR, 16, false), (st.0, 1, false)]);
            // Status of length 0.
            add_chain(vq, 4, &[(HDR, 16, false), (st.0, 0, true)]);
            // Status outside guest memory.
            add_chain(vq, 6, &[(HDR, 16, false), (MEM_SIZE, 1, true)]);
            run(blk, vq, 4);
            for i in 0..4 {
                assert_eq!(used(vq, i), (2 * i as u32, 0));
            }
            assert_eq!(status(mem, st), 0xff);
            assert_eq!(blk.counters().broken_chains, 4);
        },
    );
}

#[test]
fn write_to_read_only_drive_is_refused() {
    with_device(
        "ro",
        |c| c.read_only = true,
        |img, mem, vq, blk| {
            mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
            let st = request(mem, vq, 0, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)]);
            run(blk, vq, 1);
            assert_eq!(status(mem, st), STATUS_IOERR);
            assert_eq!(used(vq, 0), (0, 1));
            assert_eq!(img.content(), pattern(0, IMAGE_SIZE));
            // Reads still work.
            let st = request(mem, vq, 1, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]);
            run(blk, vq, 2);
            assert_eq!(status(mem, st), STATUS_OK);
        },
    );
}

/// Many requests at once, more than the engine may have in flight: every
/// one is answered, with the right data.
#[test]
fn many_requests_in_flight() {
    with_device(
        "many",
        |_| {},
        |img, mem, vq, blk| {
            // A shallow io_uring forces the queue to stall and resume.
            if blk.engine() == EngineType::IoUring {
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&img.0)
                    .unwrap();
                blk.engine = Engine::new(EngineType::IoUring, file, &img.0, 4);
            }
            let n = 31u16;
            let mut statuses = Vec::new();
            for i in 0..n {
                let buf = DATA + u64::from(i) * 0x2000;
                let sector = u64::from(i) * 4;
                statuses.push(if i % 2 == 0 {
                    request(mem, vq, i, VIRTIO_BLK_T_IN, sector, &[(buf, 2048, true)])
                } else {
                    mem.write_slice(&[i as u8; 2048], GuestAddress(buf))
                        .unwrap();
                    request(mem, vq, i, VIRTIO_BLK_T_OUT, sector, &[(buf, 2048, false)])
                });
            }
            run(blk, vq, n);
            let file = img.content();
            for i in 0..n {
                assert_eq!(status(mem, statuses[i as usize]), STATUS_OK, "request {i}");
                let off = usize::from(i) * 2048;
                if i % 2 == 0 {
                    let mut got = vec![0u8; 2048];
                    let buf = GuestAddress(DATA + u64::from(i) * 0x2000);
                    mem.read_slice(&mut got, buf).unwrap();
                    assert_eq!(got, pattern(off, 2048), "request {i}");
                } else {
                    assert_eq!(&file[off..off + 2048], &[i as u8; 2048][..], "request {i}");
                }
            }
            let ids: std::collections::HashSet<u32> =
                (0..n as usize).map(|i| used(vq, i).0).collect();
            assert_eq!(ids.len(), n as usize);
        },
    );
}

#[test]
fn reset_waits_for_requests_in_flight() {
    with_device(
        "reset",
        |_| {},
        |_, mem, vq, blk| {
            for i in 0..8 {
                request(mem, vq, i, VIRTIO_BLK_T_IN, 0, &[(DATA, 4096, true)]);
            }
            blk.handle_queue_event();
            blk.reset();
            assert_eq!(blk.in_flight(), 0);
            // Kicks after reset are ignored.
            blk.handle_queue_event();
            blk.handle_completion_event();
        },
    );
}

#[test]
fn avail_index_beyond_the_queue_is_not_a_busy_loop() {
    with_device(
        "overrun",
        |_| {},
        |_, _mem, vq, blk| {
            vq.avail().idx().store(QUEUE_SIZE + 10);
            blk.handle_queue_event();
            assert!(blk.broken);
            blk.handle_queue_event();
            assert_eq!(vq.used().idx().load(), 0);
            // Seen before a chain was taken, and once.
            assert_eq!(blk.counters().requests, 0);
            assert_eq!(blk.counters().broken_rings, 1);
        },
    );
}

#[test]
fn head_past_the_descriptor_table_breaks_the_ring_until_reset() {
    with_device(
        "bad-head",
        |_| {},
        |_, mem, vq, blk| {
            let st = request(mem, vq, 0, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]);
            // A second entry whose head no used entry could name.
            vq.avail().ring().ref_at(1).unwrap().store(0x8000);
            vq.avail().idx().store(2);
            run(blk, vq, 1);
            assert_eq!(status(mem, st), STATUS_OK);
            assert!(blk.broken, "the ring must wait for a reset");
            assert_eq!(vq.used().idx().load(), 1, "no used entry for the bad head");
            let c = blk.counters();
            assert_eq!((c.broken_chains, c.broken_rings), (1, 1));
            // Further kicks do nothing until the driver resets the device.
            blk.handle_queue_event();
            assert_eq!(blk.counters().requests, 2);
        },
    );
}

/// Found by fuzzing (tests/fuzz, virtio_block): virtio-queue hands out no
/// chain from an avail ring at guest address 0 while its index says there
/// are some, and the device looked again forever.
#[test]
fn avail_ring_at_address_zero_is_not_a_busy_loop() {
    use virtio_queue::QueueT;
    let img = TempImage::patterned("avail0");
    let mem = guest_memory();
    let mut blk = Block::new(&config(&img, EngineType::Sync)).unwrap();
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(8);
    q.set_desc_table_address(Some(0x1000), Some(0));
    q.set_avail_ring_address(Some(0), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_ready(true);
    mem.write_obj(4u16, GuestAddress(2)).unwrap(); // avail idx
    let irq = Arc::new(Interrupt::new().unwrap());
    blk.activate(mem.clone(), irq.clone(), vec![q]).unwrap();
    blk.handle_queue_event();
    assert!(blk.broken);
    assert!(irq.needs_reset());
}

#[test]
fn activation_needs_exactly_one_queue() {
    let img = TempImage::patterned("queues");
    let mut blk = Block::new(&config(&img, EngineType::Sync)).unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    assert!(blk.activate(guest_memory(), irq, Vec::new()).is_err());
}

/// The real event loop: activation kicks the queue, the subscriber serves
/// the request and (with io_uring) its completion.
#[test]
fn served_from_the_event_manager() {
    for engine in engines() {
        let img = TempImage::patterned("evmgr");
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let blk = Arc::new(Mutex::new(Block::new(&config(&img, engine)).unwrap()));
        let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
        em.add_subscriber(blk.clone());
        let st = request(&mem, &vq, 0, VIRTIO_BLK_T_IN, 1, &[(DATA, 512, true)]);
        activate(&mut blk.lock().unwrap(), &mem, &vq);
        let deadline = Instant::now() + Duration::from_secs(10);
        while vq.used().idx().load() < 1 {
            assert!(Instant::now() < deadline);
            em.run_with_timeout(100).unwrap();
        }
        assert_eq!(status(&mem, st), STATUS_OK);
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, pattern(512, 512));
    }
}

/// The whole path a guest takes: program the transport's registers, set
/// DRIVER_OK, kick, and get an interrupt for the answer.
#[test]
fn through_the_mmio_transport() {
    use crate::bus::BusDevice;
    use crate::virtio::mmio::*;
    use event_manager::MutEventSubscriber;

    fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(0, offset, &v.to_le_bytes());
    }

    for engine in engines() {
        let img = TempImage::patterned("mmio");
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let blk = Arc::new(Mutex::new(Block::new(&config(&img, engine)).unwrap()));
        // What the VMM holds: the same device as a VirtioDevice and as an
        // event loop subscriber, both shareable across threads.
        let _: Arc<Mutex<dyn VirtioDevice>> = blk.clone();
        let _: Arc<Mutex<dyn MutEventSubscriber + Send>> = blk.clone();
        let mut t = MmioTransport::new(mem.clone(), blk.clone()).unwrap();

        let features = blk.lock().unwrap().avail_features();
        wr(&mut t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for sel in 0..2 {
            wr(&mut t, DRIVER_FEATURES_SEL, sel);
            wr(&mut t, DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        wr(&mut t, STATUS, ok);
        wr(&mut t, QUEUE_SEL, 0);
        wr(&mut t, QUEUE_NUM, u32::from(QUEUE_SIZE));
        wr(&mut t, QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
        wr(&mut t, QUEUE_DRIVER_LOW, vq.avail_addr().0 as u32);
        wr(&mut t, QUEUE_DEVICE_LOW, vq.used_addr().0 as u32);
        wr(&mut t, QUEUE_READY, 1);
        wr(&mut t, STATUS, ok | STATUS_DRIVER_OK);
        assert_eq!(t.status(), ok | STATUS_DRIVER_OK);

        let st = request(&mem, &vq, 0, VIRTIO_BLK_T_IN, 2, &[(DATA, 512, true)]);
        // The driver's used_event stays 0: it wants to hear about entry 0.
        wr(&mut t, QUEUE_NOTIFY, 0);
        run(&mut blk.lock().unwrap(), &vq, 1);
        assert_eq!(status(&mem, st), STATUS_OK);
        assert_eq!(t.interrupt().status() & crate::virtio::INT_VRING, 1);
        assert_eq!(t.interrupt().eventfd().read().unwrap(), 1);

        wr(&mut t, STATUS, 0);
        assert_eq!(blk.lock().unwrap().in_flight(), 0);
        assert!(blk.lock().unwrap().active.is_none());
    }
}

#[test]
fn swapping_the_backing_file_serves_the_new_one_with_its_size() {
    with_device(
        "swap",
        |_| {},
        |_, mem, vq, blk| {
            let bigger: Vec<u8> = (0..2 * IMAGE_SIZE).map(|i| (i % 251) as u8).collect();
            let other = TempImage::new("swap-new", &bigger);
            blk.swap_backing(&other.0).unwrap();
            assert_eq!(blk.capacity(), (2 * IMAGE_SIZE / 512) as u64);
            let mut cap = [0u8; 8];
            blk.read_config(0, &mut cap);
            assert_eq!(u64::from_le_bytes(cap), (2 * IMAGE_SIZE / 512) as u64);
            assert_eq!(blk.path(), other.0.as_path());
            // A read now comes from the new file, beyond the old end too.
            let sector = (IMAGE_SIZE / 512 + 1) as u64;
            let st = request(mem, vq, 0, VIRTIO_BLK_T_IN, sector, &[(DATA, 512, true)]);
            run(blk, vq, 1);
            assert_eq!(status(mem, st), STATUS_OK);
            let mut got = vec![0u8; 512];
            mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
            let at = sector as usize * 512;
            assert_eq!(got, bigger[at..at + 512]);
            // A bad file leaves the device as it was.
            let odd = TempImage::new("swap-odd", &[0u8; 1000]);
            assert!(matches!(
                blk.swap_backing(&odd.0),
                Err(BlockError::UnalignedSize { .. })
            ));
            assert_eq!(blk.path(), other.0.as_path());
        },
    );
}

/// A snapshot with requests in flight: `prepare_save` answers them, the
/// state moves to a new device on the same image, and that device takes
/// the request still waiting in the ring and answers it in the next used
/// entry.
#[test]
fn state_moves_to_a_new_device_on_the_same_image() {
    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::testing::{bring_up, through_json};

    for engine in engines() {
        let img = TempImage::patterned("state");
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let blk = Arc::new(Mutex::new(Block::new(&config(&img, engine)).unwrap()));
        if blk.lock().unwrap().engine() != engine {
            eprintln!("io_uring unavailable on this host; tested the fallback");
        }
        let mut t = MmioTransport::new(mem.clone(), blk.clone()).unwrap();
        bring_up(&mut t, &[vq.create_queue().unwrap()]);
        for i in 0..8u16 {
            let buf = DATA + u64::from(i) * 0x1000;
            mem.write_slice(&[i as u8 + 1; 512], GuestAddress(buf))
                .unwrap();
            request(
                &mem,
                &vq,
                i,
                VIRTIO_BLK_T_OUT,
                u64::from(i),
                &[(buf, 512, false)],
            );
        }
        // Handed to the engine; with io_uring their completions have not
        // been looked at.
        blk.lock().unwrap().handle_queue_event();
        let read_buf = DATA + 0x10_0000;
        let st = request(&mem, &vq, 8, VIRTIO_BLK_T_IN, 3, &[(read_buf, 512, true)]);

        t.prepare_save().unwrap();
        assert_eq!(blk.lock().unwrap().in_flight(), 0);
        assert_eq!(vq.used().idx().load(), 8);
        let state = through_json(&t.state());
        assert_eq!(
            (state.queues[0].next_avail, state.queues[0].next_used),
            (8, 8)
        );
        let DeviceState::Block(dev) = &state.device else {
            panic!("{:?}", state.device);
        };
        assert_eq!(dev.counters.write_requests, 8);
        assert_eq!(dev.capacity, IMAGE_SIZE as u64 / SECTOR_SIZE);
        drop(t);
        drop(blk);

        let blk2 = Arc::new(Mutex::new(Block::new(&config(&img, engine)).unwrap()));
        let mut t2 = MmioTransport::new(mem.clone(), blk2.clone()).unwrap();
        t2.restore(&state).unwrap();
        assert_eq!(t2.state(), state);
        run(&mut blk2.lock().unwrap(), &vq, 9);
        assert_eq!(used(&vq, 8).0, 64);
        assert_eq!(status(&mem, st), STATUS_OK);
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(read_buf)).unwrap();
        assert_eq!(got, [4u8; 512]);
        assert_eq!(blk2.lock().unwrap().counters().requests, 9);
    }
}

#[test]
fn block_state_round_trips_and_refuses_another_drive() {
    use crate::virtio::testing::through_json;

    let img = TempImage::patterned("state-rt");
    let mut blk = Block::new(&config(&img, EngineType::Sync)).unwrap();
    blk.counters.requests = 7;
    let state = through_json(&blk.save_state());
    let mut fresh = Block::new(&config(&img, EngineType::Sync)).unwrap();
    fresh.restore_state(&state).unwrap();
    assert_eq!(fresh.save_state(), state);

    let other = |f: &dyn Fn(&mut BlockConfig)| {
        let mut c = config(&img, EngineType::Sync);
        f(&mut c);
        Block::new(&c).unwrap()
    };
    let small = TempImage::new("state-small", &[0u8; 1024]);
    for (mut b, what) in [
        (other(&|c| c.read_only = true), "read-only flag"),
        (other(&|c| c.drive_id = "other".into()), "drive ID"),
        (other(&|c| c.path = small.0.clone()), "disk size in sectors"),
    ] {
        let before = b.save_state();
        match b.restore_state(&state) {
            Err(StateError::Mismatch { what: w, .. }) => assert_eq!(w, what),
            r => panic!("{what}: {r:?}"),
        }
        assert_eq!(b.save_state(), before);
    }
    assert!(matches!(
        fresh.restore_state(&DeviceState::None),
        Err(StateError::WrongDevice {
            saved: "stateless",
            here: "block"
        })
    ));
}

/// A snapshot taken while a shallow io_uring has the queue stalled: every
/// request taken is answered, the state's positions agree with the used
/// ring, and the device (left running) still serves the rest.
#[test]
fn prepare_save_leaves_nothing_half_done() {
    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::testing::bring_up;

    for engine in engines() {
        let img = TempImage::patterned("prepare");
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let blk = Arc::new(Mutex::new(Block::new(&config(&img, engine)).unwrap()));
        if blk.lock().unwrap().engine() == EngineType::IoUring {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img.0)
                .unwrap();
            blk.lock().unwrap().engine = Engine::new(EngineType::IoUring, file, &img.0, 4);
        }
        let mut t = MmioTransport::new(mem.clone(), blk.clone()).unwrap();
        bring_up(&mut t, &[vq.create_queue().unwrap()]);
        let n = 24u16;
        for i in 0..n {
            let buf = DATA + u64::from(i) * 0x1000;
            request(
                &mem,
                &vq,
                i,
                VIRTIO_BLK_T_IN,
                u64::from(i),
                &[(buf, 512, true)],
            );
        }
        blk.lock().unwrap().handle_queue_event();
        t.prepare_save().unwrap();
        assert_eq!(blk.lock().unwrap().in_flight(), 0);
        let state = t.state();
        let q = state.queues[0];
        assert_eq!(q.next_avail, q.next_used);
        assert_eq!(vq.used().idx().load(), q.next_used);
        // The VM runs on: whatever was left in the ring is served.
        run(&mut blk.lock().unwrap(), &vq, n);
        for i in 0..n {
            let mut got = vec![0u8; 512];
            mem.read_slice(&mut got, GuestAddress(DATA + u64::from(i) * 0x1000))
                .unwrap();
            assert_eq!(got, pattern(usize::from(i) * 512, 512), "request {i}");
        }
    }
}

#[test]
fn adjacent_requests_share_one_host_io_and_keep_their_own_results() {
    with_device(
        "merge",
        |_| {},
        |img, mem, vq, blk| {
            let buf = |n: u64| DATA + n * 0x2000;
            // Two adjacent reads (the first in two buffers), two adjacent
            // writes, a flush, a read after it, and a read that does not
            // follow on.
            let sts = [
                request(
                    mem,
                    vq,
                    0,
                    VIRTIO_BLK_T_IN,
                    0,
                    &[(buf(0), 1024, true), (buf(0) + 1024, 3072, true)],
                ),
                request(mem, vq, 1, VIRTIO_BLK_T_IN, 8, &[(buf(1), 4096, true)]),
                {
                    mem.write_slice(&[0xa2; 4096], GuestAddress(buf(2)))
                        .unwrap();
                    request(mem, vq, 2, VIRTIO_BLK_T_OUT, 16, &[(buf(2), 4096, false)])
                },
                {
                    mem.write_slice(&[0xa3; 4096], GuestAddress(buf(3)))
                        .unwrap();
                    request(mem, vq, 3, VIRTIO_BLK_T_OUT, 24, &[(buf(3), 4096, false)])
                },
                request(mem, vq, 4, VIRTIO_BLK_T_FLUSH, 0, &[]),
                request(mem, vq, 5, VIRTIO_BLK_T_IN, 32, &[(buf(5), 4096, true)]),
                request(mem, vq, 6, VIRTIO_BLK_T_IN, 2, &[(buf(6), 1024, true)]),
            ];
            run(blk, vq, 7);
            for (i, st) in sts.iter().enumerate() {
                assert_eq!(status(mem, *st), STATUS_OK, "request {i}");
            }
            let read = |addr: u64, len: usize| {
                let mut got = vec![0u8; len];
                mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
                got
            };
            assert_eq!(read(buf(0), 4096), pattern(0, 4096));
            assert_eq!(read(buf(1), 4096), pattern(4096, 4096));
            assert_eq!(read(buf(5), 4096), pattern(16384, 4096));
            assert_eq!(read(buf(6), 1024), pattern(1024, 1024));
            let file = img.content();
            assert_eq!(&file[8192..12288], &[0xa2; 4096][..]);
            assert_eq!(&file[12288..16384], &[0xa3; 4096][..]);
            let c = blk.counters();
            let want = if blk.engine() == EngineType::Sync {
                2
            } else {
                0
            };
            assert_eq!(c.merged_requests, want, "{:?}", blk.engine());
            assert_eq!((c.bytes_read, c.bytes_written), (13312, 8192));
        },
    );
}

#[test]
fn a_merged_read_that_fails_is_redone_request_by_request() {
    with_device(
        "merge-fail",
        |_| {},
        |img, mem, vq, blk| {
            let first = request(mem, vq, 0, VIRTIO_BLK_T_IN, 0, &[(DATA, 4096, true)]);
            let second = request(
                mem,
                vq,
                1,
                VIRTIO_BLK_T_IN,
                8,
                &[(DATA + 0x2000, 4096, true)],
            );
            // The image shrinks under the device: the second read now ends
            // past its end, the first does not.
            fs::OpenOptions::new()
                .write(true)
                .open(&img.0)
                .unwrap()
                .set_len(4096)
                .unwrap();
            run(blk, vq, 2);
            assert_eq!(status(mem, first), STATUS_OK);
            assert_eq!(status(mem, second), STATUS_IOERR);
            let mut got = vec![0u8; 4096];
            mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
            assert_eq!(got, pattern(0, 4096));
            let c = blk.counters();
            assert_eq!((c.host_io_errors, c.merged_requests), (1, 0));
        },
    );
}
