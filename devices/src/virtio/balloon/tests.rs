//! The device against a mock driver on a real event loop.

use std::sync::Arc;
use std::time::Duration;

use crate::GuestMemoryMmap;

use super::stats::{AVAIL, ENTRY_SIZE, MEMFREE, MEMTOT, SWAP_IN};
use super::*;
use crate::virtio::testing::{guest_mem, Driver, Loop};
use crate::virtio::{
    ActivateError, Interrupt, VirtioDevice, INT_CONFIG, INT_VRING, TYPE_BALLOON, VIRTIO_F_VERSION_1,
};

const MEM_SIZE: usize = 0x40_0000;
/// Pages the tests inflate start here (PFN 0x100).
const PAGES: u64 = 0x10_0000;
const FIRST_PFN: u32 = (PAGES >> PAGE_SHIFT) as u32;
const PATTERN: u8 = 0x5a;

fn cfg(amount_mib: u32, deflate_on_oom: bool, stats_polling_interval_s: u16) -> BalloonConfig {
    BalloonConfig {
        amount_mib,
        deflate_on_oom,
        stats_polling_interval_s,
    }
}

struct Bench<'a> {
    drv: Driver<'a>,
    lp: Loop<Balloon>,
    irq: Arc<Interrupt>,
    next_buf: u64,
}

impl<'a> Bench<'a> {
    fn new(mem: &'a GuestMemoryMmap, cfg: BalloonConfig) -> Self {
        let drv = Driver::new(mem, 3, QUEUE_SIZE);
        let next_buf = drv.buffers_start();
        Bench {
            drv,
            lp: Loop::new(Balloon::new(&cfg).unwrap()),
            irq: Arc::new(Interrupt::new().unwrap()),
            next_buf,
        }
    }

    /// Accept every feature offered and set DRIVER_OK.
    fn activate(&mut self) {
        let mut b = self.lp.lock();
        let features = b.avail_features();
        b.ack_features(features);
        let n = b.queue_max_sizes().len();
        b.activate(self.drv.mem.clone(), self.irq.clone(), self.drv.queues(n))
            .unwrap();
        drop(b);
        self.lp.run();
    }

    /// A device-readable buffer holding `bytes`.
    fn buffer(&mut self, bytes: &[u8]) -> (u64, u32) {
        let addr = self.next_buf;
        self.next_buf += (bytes.len() as u64).max(1).next_multiple_of(16);
        self.drv.write(addr, bytes);
        (addr, bytes.len() as u32)
    }

    /// Post an array of PFNs on `q`; returns the chain's head.
    fn post_pfns(&mut self, q: usize, pfns: &[u32]) -> u16 {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        let (addr, len) = self.buffer(&bytes);
        self.drv.add_chain(q, &[(addr, len, false)])
    }

    fn kick(&mut self, q: usize) {
        self.lp.lock().queue_events()[q].write(1).unwrap();
        self.lp.run();
    }

    fn counters(&self) -> BalloonCounters {
        self.lp.lock().counters()
    }

    fn page(&self, pfn: u32) -> Vec<u8> {
        self.drv
            .read(u64::from(pfn) << PAGE_SHIFT, PAGE_SIZE as usize)
    }
}

fn stats_buffer(entries: &[(u16, u64)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(entries.len() * ENTRY_SIZE);
    for &(tag, val) in entries {
        buf.extend(tag.to_le_bytes());
        buf.extend(val.to_le_bytes());
    }
    buf
}

fn config_bytes(b: &Balloon) -> [u8; 12] {
    let mut data = [0xffu8; 12];
    b.read_config(0, &mut data);
    data
}

#[test]
fn features_and_queues_follow_the_config() {
    let v1 = 1u64 << VIRTIO_F_VERSION_1;
    let stats = 1u64 << VIRTIO_BALLOON_F_STATS_VQ;
    let oom = 1u64 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
    let cases = [
        (cfg(0, false, 0), v1, 2),
        (cfg(0, true, 0), v1 | oom, 2),
        (cfg(0, false, 5), v1 | stats, 3),
        (cfg(0, true, 5), v1 | stats | oom, 3),
    ];
    for (c, features, queues) in cases {
        let b = Balloon::new(&c).unwrap();
        assert_eq!(b.device_type(), TYPE_BALLOON);
        assert_eq!(b.avail_features(), features, "{c:?}");
        assert_eq!(b.queue_max_sizes(), &vec![256; queues][..], "{c:?}");
        assert_eq!(b.queue_events().len(), queues);
    }
    assert!(matches!(
        Balloon::new(&cfg(MAX_AMOUNT_MIB + 1, false, 0)),
        Err(Error::TooLarge(_))
    ));
}

#[test]
fn config_space_holds_num_pages_and_the_drivers_actual() {
    let mut b = Balloon::new(&cfg(4, false, 0)).unwrap();
    // num_pages = 4 MiB in 4 KiB pages; nothing past `actual`.
    assert_eq!(config_bytes(&b), [0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    b.write_config(4, &300u32.to_le_bytes());
    // num_pages is not the driver's to write.
    b.write_config(0, &[9, 9, 9, 9]);
    assert_eq!(config_bytes(&b), [0, 4, 0, 0, 0x2c, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!((b.actual_pages(), b.actual_mib()), (300, 1));
    let mut actual = [0u8; 4];
    b.read_config(4, &mut actual);
    assert_eq!(u32::from_le_bytes(actual), 300);
    // A write straddling the end keeps the part inside `actual`.
    b.write_config(6, &[1, 2, 3]);
    assert_eq!(b.actual_pages(), 0x0201_012c);
    b.reset();
    assert_eq!(b.actual_pages(), 0);
}

#[test]
fn inflate_discards_pages_inside_memory_and_skips_the_rest() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, cfg(1, false, 0));
    b.drv.write(PAGES, &vec![PATTERN; 8 * PAGE_SIZE as usize]);
    b.activate();
    let outside = (MEM_SIZE as u64 >> PAGE_SHIFT) as u32;
    let p = FIRST_PFN;
    let head = b.post_pfns(INFLATE_INDEX, &[p + 2, p, p + 1, p + 5, outside, u32::MAX]);
    b.kick(INFLATE_INDEX);

    assert_eq!(b.drv.used(INFLATE_INDEX), vec![(u32::from(head), 0)]);
    for i in 0..8 {
        let want = if [0, 1, 2, 5].contains(&i) {
            0
        } else {
            PATTERN
        };
        assert_eq!(b.page(p + i), vec![want; PAGE_SIZE as usize], "page {i}");
    }
    assert_eq!(b.irq.status(), INT_VRING);
    let c = b.counters();
    assert_eq!(
        (
            c.inflate_requests,
            c.pages_discarded,
            c.bad_pfns,
            c.discard_errors
        ),
        (1, 4, 2, 0)
    );
    assert_eq!(c.malformed_chains, 0);
}

#[test]
fn deflate_is_counted_and_leaves_memory_alone() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, cfg(0, true, 0));
    b.drv.write(PAGES, &vec![PATTERN; PAGE_SIZE as usize]);
    b.activate();
    let head = b.post_pfns(DEFLATE_INDEX, &[FIRST_PFN, FIRST_PFN + 1, FIRST_PFN + 7]);
    b.kick(DEFLATE_INDEX);

    assert_eq!(b.drv.used(DEFLATE_INDEX), vec![(u32::from(head), 0)]);
    assert_eq!(b.page(FIRST_PFN), vec![PATTERN; PAGE_SIZE as usize]);
    let c = b.counters();
    assert_eq!((c.deflate_requests, c.pages_deflated), (1, 3));
    assert_eq!((c.inflate_requests, c.pages_discarded), (0, 0));
}

#[test]
fn malformed_inflate_chains_are_counted_not_fatal() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, cfg(0, false, 0));
    b.drv.write(PAGES, &vec![PATTERN; 2 * PAGE_SIZE as usize]);
    b.activate();
    // A device-writable array, an array outside memory, a ragged length.
    let (w, _) = b.buffer(&FIRST_PFN.to_le_bytes());
    let h1 = b.drv.add_chain(INFLATE_INDEX, &[(w, 4, true)]);
    let h2 = b
        .drv
        .add_chain(INFLATE_INDEX, &[(MEM_SIZE as u64 - 2, 8, false)]);
    let mut ragged = (FIRST_PFN + 1).to_le_bytes().to_vec();
    ragged.push(7);
    let (r, len) = b.buffer(&ragged);
    let h3 = b.drv.add_chain(INFLATE_INDEX, &[(r, len, false)]);
    b.kick(INFLATE_INDEX);

    let heads = [h1, h2, h3].map(|h| (u32::from(h), 0));
    assert_eq!(b.drv.used(INFLATE_INDEX), heads.to_vec());
    // The ragged chain's whole entry was still used.
    assert_eq!(b.page(FIRST_PFN), vec![PATTERN; PAGE_SIZE as usize]);
    assert_eq!(b.page(FIRST_PFN + 1), vec![0; PAGE_SIZE as usize]);
    let c = b.counters();
    assert_eq!((c.malformed_chains, c.pages_discarded), (3, 1));
}

#[test]
fn update_target_changes_num_pages_and_interrupts_a_running_driver() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, cfg(1, false, 0));
    // Before DRIVER_OK: the value changes, nobody is interrupted.
    b.lp.lock().update_target(2).unwrap();
    assert_eq!(config_bytes(&b.lp.lock())[..4], 512u32.to_le_bytes());
    b.activate();
    assert_eq!(b.irq.status(), 0);

    b.lp.lock().update_target(64).unwrap();
    let dev = b.lp.lock();
    assert_eq!(config_bytes(&dev)[..4], (64u32 * 256).to_le_bytes());
    assert_eq!((dev.target_pages(), dev.config().amount_mib), (16384, 64));
    assert_eq!(b.irq.status(), INT_CONFIG);
    assert_eq!(b.irq.eventfd().read().unwrap(), 1);
    drop(dev);
    assert!(matches!(
        b.lp.lock().update_target(MAX_AMOUNT_MIB + 1),
        Err(Error::TooLarge(_))
    ));
    assert_eq!(b.lp.lock().config().amount_mib, 64);
}

#[test]
fn stats_buffer_is_parsed_held_and_returned_on_the_poll() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, cfg(2, false, 1));
    // The driver posts its first buffer before DRIVER_OK.
    let entries = [
        (SWAP_IN, 11),
        (MEMFREE, 1 << 30),
        (MEMTOT, 2 << 30),
        (AVAIL, 3 << 20),
    ];
    let (addr, len) = b.buffer(&stats_buffer(&entries));
    let head = b.drv.add_chain(STATS_INDEX, &[(addr, len, false)]);
    b.activate();
    b.lp.lock().write_config(4, &256u32.to_le_bytes());

    // Parsed and held: nothing in the used ring yet.
    assert!(b.drv.used(STATS_INDEX).is_empty());
    let s = b.lp.lock().latest_stats().unwrap();
    assert_eq!((s.target_pages, s.target_mib), (512, 2));
    assert_eq!((s.actual_pages, s.actual_mib), (256, 1));
    assert_eq!(s.swap_in, Some(11));
    assert_eq!(s.free_memory, Some(1 << 30));
    assert_eq!(s.total_memory, Some(2 << 30));
    assert_eq!(s.available_memory, Some(3 << 20));
    assert_eq!(
        (s.swap_out, s.major_faults, s.disk_caches),
        (None, None, None)
    );
    assert_eq!(b.counters().stats_updates, 1);

    // The poll (every second) hands the buffer back.
    let returned =
        b.lp.run_until(Duration::from_secs(5), |dev| dev.stats_head.is_none());
    assert!(returned, "the statistics buffer was never returned");
    assert_eq!(b.drv.used(STATS_INDEX), vec![(u32::from(head), 0)]);
    assert_ne!(b.irq.status() & INT_VRING, 0);

    // The driver answers with fresh numbers.
    let (addr, len) = b.buffer(&stats_buffer(&[(MEMFREE, 5)]));
    b.drv.add_chain(STATS_INDEX, &[(addr, len, false)]);
    b.kick(STATS_INDEX);
    let s = b.lp.lock().latest_stats().unwrap();
    assert_eq!((s.free_memory, s.total_memory), (Some(5), Some(2 << 30)));
    assert_eq!(b.counters().stats_updates, 2);
}

#[test]
fn stats_interval_changes_but_stats_cannot_be_toggled() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, cfg(0, false, 60));
    let (addr, len) = b.buffer(&stats_buffer(&[(MEMFREE, 1)]));
    let head = b.drv.add_chain(STATS_INDEX, &[(addr, len, false)]);
    b.activate();
    assert!(b.drv.used(STATS_INDEX).is_empty());

    // A new interval returns the buffer at once.
    b.lp.lock().update_stats_interval(30).unwrap();
    assert_eq!(b.drv.used(STATS_INDEX), vec![(u32::from(head), 0)]);
    assert_eq!(b.lp.lock().config().stats_polling_interval_s, 30);
    assert!(b.lp.lock().stats_timer.is_armed().unwrap());
    assert!(matches!(
        b.lp.lock().update_stats_interval(0),
        Err(Error::StatsToggle { from: 30, to: 0 })
    ));

    let mut off = Balloon::new(&cfg(0, false, 0)).unwrap();
    assert!(matches!(
        off.update_stats_interval(1),
        Err(Error::StatsToggle { from: 0, to: 1 })
    ));
    assert!(matches!(off.latest_stats(), Err(Error::StatsDisabled)));
    off.update_stats_interval(0).unwrap();
}

#[test]
fn stats_queue_is_only_required_when_negotiated() {
    let mem = guest_mem(MEM_SIZE);
    let drv = Driver::new(&mem, 3, QUEUE_SIZE);
    let irq = Arc::new(Interrupt::new().unwrap());
    let mut b = Balloon::new(&cfg(0, false, 5)).unwrap();

    // A driver that declines statistics sets up two queues.
    b.ack_features(1 << VIRTIO_F_VERSION_1);
    b.activate(mem.clone(), irq.clone(), drv.queues(2)).unwrap();
    assert!(b.active.as_ref().unwrap().stats.is_none());
    assert!(!b.stats_timer.is_armed().unwrap());
    b.reset();

    // One that accepts them must set up the third.
    b.ack_features(b.avail_features());
    let e = b.activate(mem.clone(), irq.clone(), drv.queues(2));
    assert!(matches!(
        e,
        Err(ActivateError::QueueCount { got: 2, want: 3 })
    ));
    b.activate(mem.clone(), irq, drv.queues(3)).unwrap();
    assert!(b.stats_timer.is_armed().unwrap());
    b.reset();
    assert!(!b.stats_timer.is_armed().unwrap());
    assert!(!b.is_activated());
}

#[test]
fn a_giant_inflate_chain_is_cut_short() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, cfg(0, false, 0));
    b.activate();
    // Distinct PFNs, all past the end of memory, one more than the cap.
    let first_outside = (MEM_SIZE as u64 >> PAGE_SHIFT) as u32;
    let pfns: Vec<u32> = (0..=inflate::MAX_PFNS_PER_CHAIN as u32)
        .map(|i| first_outside + i)
        .collect();
    let head = b.post_pfns(INFLATE_INDEX, &pfns);
    b.kick(INFLATE_INDEX);

    assert_eq!(b.drv.used(INFLATE_INDEX), vec![(u32::from(head), 0)]);
    let c = b.counters();
    assert_eq!(c.bad_pfns, inflate::MAX_PFNS_PER_CHAIN as u64);
    assert_eq!((c.malformed_chains, c.pages_discarded), (1, 0));
}

mod state {
    use super::*;
    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::testing::{bring_up, through_json};
    use crate::virtio::{DeviceState, StateError};

    /// The target, what the driver reported and the statistics settings
    /// move to a new device; the statistics buffer the old one held is
    /// taken again by the new one.
    #[test]
    fn balloon_moves_to_a_new_device() {
        let mem = guest_mem(MEM_SIZE);
        let mut drv = Driver::new(&mem, 3, QUEUE_SIZE);
        let mut lp = Loop::new(Balloon::new(&cfg(64, true, 1)).unwrap());
        let mut t = MmioTransport::new(mem.clone(), lp.dev.clone()).unwrap();
        bring_up(&mut t, &drv.queues(3));
        lp.lock().update_stats_interval(7).unwrap();
        let stats = drv.alloc(ENTRY_SIZE as u32);
        let mut entry = MEMFREE.to_le_bytes().to_vec();
        entry.extend(4096u64.to_le_bytes());
        drv.write(stats, &entry);
        let head = drv.add_chain(STATS_INDEX, &[(stats, ENTRY_SIZE as u32, false)]);
        lp.run();
        assert_eq!(lp.lock().stats_head, Some(head));
        lp.lock().write_config(4, &100u32.to_le_bytes());
        lp.lock().update_target(32).unwrap();

        let state = through_json(&t.state());
        assert_eq!(state.queues[STATS_INDEX].next_avail, 0);
        let DeviceState::Balloon(saved) = &state.device else {
            panic!("{:?}", state.device);
        };
        assert_eq!(saved.amount_mib, 32);
        assert_eq!(saved.actual_pages, 100);
        assert_eq!(saved.stats_polling_interval_s, 7);
        assert_eq!(saved.stats.free_memory, Some(4096));

        let mut lp2 = Loop::new(Balloon::new(&cfg(0, true, 1)).unwrap());
        let mut t2 = MmioTransport::new(mem.clone(), lp2.dev.clone()).unwrap();
        t2.restore(&state).unwrap();
        assert_eq!(t2.state(), state);
        lp2.run();
        let b = lp2.lock();
        assert_eq!(b.stats_head, Some(head));
        assert_eq!(b.target_pages(), 32 * PAGES_PER_MIB);
        assert_eq!(b.actual_pages(), 100);
        assert_eq!(b.config().stats_polling_interval_s, 7);
        assert!(b.is_activated());
    }

    #[test]
    fn another_setup_is_refused() {
        let a = Balloon::new(&cfg(8, true, 1)).unwrap();
        let state = a.save_state();
        for (other, what) in [
            (cfg(8, false, 1), "deflate-on-OOM setting"),
            (cfg(8, true, 0), "statistics polling interval (seconds)"),
        ] {
            let mut b = Balloon::new(&other).unwrap();
            let before = b.save_state();
            match b.restore_state(&state) {
                Err(StateError::Mismatch { what: w, .. }) => assert_eq!(w, what),
                r => panic!("{what}: {r:?}"),
            }
            assert_eq!(b.save_state(), before);
        }
    }
}
