//! The device against a mock driver on a real event loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::GuestMemoryMmap;

use super::*;
use crate::rate_limiter::TokenBucketConfig;
use crate::virtio::testing::{guest_mem, Driver, Loop};
use crate::virtio::{Interrupt, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};

const MEM_SIZE: usize = 0x40_0000;
const SENTINEL: u8 = 0xaa;

struct Bench<'a> {
    drv: Driver<'a>,
    lp: Loop<Rng>,
    irq: Arc<Interrupt>,
    next_buf: u64,
}

impl<'a> Bench<'a> {
    fn new(mem: &'a GuestMemoryMmap, cfg: RngConfig) -> Self {
        let drv = Driver::new(mem, 1, QUEUE_SIZE);
        let next_buf = drv.buffers_start();
        // Recognizable bytes everywhere the device may (not) write.
        drv.write(next_buf, &vec![SENTINEL; MEM_SIZE - next_buf as usize]);
        Bench {
            drv,
            lp: Loop::new(Rng::new(&cfg).unwrap()),
            irq: Arc::new(Interrupt::new().unwrap()),
            next_buf,
        }
    }

    fn activate(&mut self) {
        let mut rng = self.lp.lock();
        let features = rng.avail_features();
        rng.ack_features(features);
        rng.activate(self.drv.mem.clone(), self.irq.clone(), self.drv.queues(1))
            .unwrap();
    }

    /// A buffer of `len` bytes with a guard byte after it.
    fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len) + 1;
        addr
    }

    /// A writable chain of buffers of `lens` bytes: (head, buffers).
    fn request(&mut self, lens: &[u32]) -> (u16, Vec<(u64, u32)>) {
        let bufs: Vec<(u64, u32)> = lens.iter().map(|&l| (self.alloc(l), l)).collect();
        let descs: Vec<(u64, u32, bool)> = bufs.iter().map(|&(a, l)| (a, l, true)).collect();
        (self.drv.add_chain(0, &descs), bufs)
    }

    fn kick(&mut self) {
        self.lp.lock().queue_events()[0].write(1).unwrap();
        self.lp.run();
    }

    fn bytes(&self, bufs: &[(u64, u32)]) -> Vec<u8> {
        bufs.iter()
            .flat_map(|&(a, l)| self.drv.read(a, l as usize))
            .collect()
    }

    fn guards_intact(&self, bufs: &[(u64, u32)]) -> bool {
        bufs.iter()
            .all(|&(a, l)| self.drv.read(a + u64::from(l), 1) == [SENTINEL])
    }

    fn counters(&self) -> RngCounters {
        self.lp.lock().counters()
    }
}

fn limited(size: u64, refill_time_ms: u64) -> RngConfig {
    RngConfig {
        rate_limiter: Some(TokenBucketConfig {
            size,
            refill_time_ms,
            one_time_burst: 0,
        }),
    }
}

#[test]
fn identity_features_and_empty_config() {
    let rng = Rng::new(&RngConfig::default()).unwrap();
    assert_eq!(rng.device_type(), TYPE_RNG);
    assert_eq!(rng.queue_max_sizes(), &[256]);
    assert_eq!(rng.queue_events().len(), 1);
    assert_ne!(rng.avail_features() & (1 << VIRTIO_F_VERSION_1), 0);
    let mut data = [0xffu8; 4];
    rng.read_config(0, &mut data);
    assert_eq!(data, [0; 4]);
}

#[test]
fn odd_sized_requests_are_filled_completely() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, RngConfig::default());
    b.activate();
    let (h1, one) = b.request(&[1]);
    let (h3, three) = b.request(&[1, 2]);
    let (hbig, big) = b.request(&[4000, 90, 7]);
    b.kick();

    assert_eq!(
        b.drv.used(0),
        vec![
            (u32::from(h1), 1),
            (u32::from(h3), 3),
            (u32::from(hbig), 4097)
        ]
    );
    let small: Vec<u8> = b.bytes(&one).into_iter().chain(b.bytes(&three)).collect();
    assert_ne!(small, [SENTINEL; 4], "the small buffers were not written");
    let big_bytes = b.bytes(&big);
    assert!(big_bytes.iter().any(|&x| x != SENTINEL));
    assert!(big_bytes.iter().any(|&x| x != 0));
    // Each descriptor got bytes of its own, not a repeated block.
    assert_ne!(big_bytes[..90], big_bytes[4000..4090]);
    // Nothing beyond the buffers.
    for bufs in [&one, &three, &big] {
        assert!(b.guards_intact(bufs));
    }
    assert_eq!(b.irq.eventfd().read().unwrap(), 1);
    let c = b.counters();
    assert_eq!((c.requests, c.bytes, c.errors), (3, 4101, 0));
}

#[test]
fn a_request_is_capped_at_64_kib() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, RngConfig::default());
    b.activate();
    let (head, bufs) = b.request(&[60 * 1024, 40 * 1024]);
    b.kick();

    assert_eq!(b.drv.used(0), vec![(u32::from(head), 65536)]);
    let second = bufs[1].0;
    let filled = (MAX_REQUEST_BYTES - 60 * 1024) as u64;
    assert!(b.drv.read(second, 4096).iter().any(|&x| x != SENTINEL));
    assert_eq!(
        b.drv.read(second + filled, 40 * 1024 - filled as usize),
        vec![SENTINEL; 40 * 1024 - filled as usize]
    );
    assert_eq!(b.counters().bytes, 65536);
}

#[test]
fn bad_chains_come_back_empty_and_are_counted() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, RngConfig::default());
    b.activate();
    let ro = b.alloc(64);
    let rw = b.alloc(64);
    let h_ro = b.drv.add_chain(0, &[(rw, 64, true), (ro, 64, false)]);
    let h_out = b.drv.add_chain(0, &[(MEM_SIZE as u64 - 16, 64, true)]);
    let (h_ok, ok) = b.request(&[32]);
    b.kick();

    assert_eq!(
        b.drv.used(0),
        vec![
            (u32::from(h_ro), 0),
            (u32::from(h_out), 0),
            (u32::from(h_ok), 32)
        ]
    );
    // The refused chain's writable buffer was not touched.
    assert_eq!(b.drv.read(rw, 64), vec![SENTINEL; 64]);
    assert!(b.bytes(&ok).iter().any(|&x| x != SENTINEL));
    let c = b.counters();
    assert_eq!((c.requests, c.bytes, c.errors), (3, 32, 2));
}

#[test]
fn rate_limit_defers_the_second_request_until_the_bucket_refills() {
    let mem = guest_mem(MEM_SIZE);
    // 100 bytes per 100 ms.
    let mut b = Bench::new(&mem, limited(100, 100));
    b.activate();
    b.lp.run();
    let (h1, _) = b.request(&[100]);
    let (h2, second) = b.request(&[100]);
    let start = Instant::now();
    b.kick();

    // The first drained the bucket; the second waits for the timer.
    assert_eq!(b.drv.used(0), vec![(u32::from(h1), 100)]);
    assert!(b.lp.lock().is_throttled());
    assert_eq!(b.counters().throttled, 1);
    assert_eq!(b.bytes(&second), vec![SENTINEL; 100]);
    // Kicks while throttled change nothing.
    b.kick();
    assert_eq!(b.drv.used(0).len(), 1);

    let resumed =
        b.lp.run_until(Duration::from_secs(5), |rng| rng.counters().requests == 2);
    assert!(resumed, "the queue never resumed");
    assert!(start.elapsed() >= Duration::from_millis(90));
    assert_eq!(
        b.drv.used(0),
        vec![(u32::from(h1), 100), (u32::from(h2), 100)]
    );
    assert!(b.bytes(&second).iter().any(|&x| x != SENTINEL));
    assert!(!b.lp.lock().is_throttled());
    let c = b.counters();
    assert_eq!((c.requests, c.bytes, c.throttled), (2, 200, 1));
}

#[test]
fn reset_while_throttled_forgets_the_wait() {
    let mem = guest_mem(MEM_SIZE);
    // One byte per minute: the timer would not fire during the test.
    let mut b = Bench::new(&mem, limited(1, 60_000));
    b.activate();
    b.request(&[1]);
    b.request(&[1]);
    b.kick();
    assert!(b.lp.lock().is_throttled());
    b.lp.lock().reset();
    {
        let rng = b.lp.lock();
        assert!(!rng.is_throttled());
        assert!(!rng.is_activated());
        assert!(!rng.timer.is_armed().unwrap());
    }
}

#[test]
fn getrandom_fills_large_buffers() {
    let mut buf = vec![0u8; 1 << 20];
    handler::getrandom(&mut buf).unwrap();
    // A megabyte of zeros in any 4 KiB block would be a broken fill.
    assert!(buf.chunks(4096).all(|c| c.iter().any(|&x| x != 0)));
}

#[test]
fn rng_state_round_trips() {
    use crate::virtio::testing::through_json;
    use crate::virtio::{DeviceState, StateError};

    let mut a = Rng::new(&RngConfig::default()).unwrap();
    a.counters.requests = 5;
    a.counters.bytes = 80;
    let state = through_json(&a.save_state());
    let mut b = Rng::new(&RngConfig::default()).unwrap();
    b.restore_state(&state).unwrap();
    assert_eq!(b.save_state(), state);
    assert_eq!(b.counters(), a.counters());
    assert!(matches!(
        b.restore_state(&DeviceState::None),
        Err(StateError::WrongDevice { here: "rng", .. })
    ));
}
