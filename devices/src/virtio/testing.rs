//! A driver stand-in for device tests: split queues in guest memory,
//! buffers placed above them, chains published from (address, length,
//! device-writable) triples, the used ring read back, and an event loop run
//! until idle. The rings are laid out here rather than by virtio-queue's
//! MockSplitQueue, which puts the used ring over the second half of the
//! avail ring of a large queue.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::GuestMemoryMmap;
use event_manager::{EventManager, MutEventSubscriber};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Queue `i` lives at `i * QUEUE_SPACING`; buffers go above the queues.
const QUEUE_SPACING: u64 = 0x1_0000;

/// Anonymous, private guest memory of `size` bytes at address 0.
pub(crate) fn guest_mem(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// Where one split queue of `size` entries lives, from `base`.
#[derive(Clone, Copy)]
struct Rings {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
}

impl Rings {
    fn at(base: u64, size: u16) -> Self {
        let size = u64::from(size);
        let avail = base + 16 * size;
        // flags, idx, ring[size], used_event; the used ring is 4-aligned.
        let used = (avail + 6 + 2 * size).next_multiple_of(4);
        assert!(
            used + 6 + 8 * size <= base + QUEUE_SPACING,
            "queue too large"
        );
        Rings {
            desc: GuestAddress(base),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
        }
    }
}

/// The driver's side of `n` queues.
pub(crate) struct Driver<'a> {
    pub mem: &'a GuestMemoryMmap,
    queues: Vec<Rings>,
    next_desc: Vec<u16>,
    size: u16,
    /// Where `alloc` places the next buffer.
    next_buf: u64,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, n: usize, size: u16) -> Self {
        Driver {
            mem,
            queues: (0..n)
                .map(|i| Rings::at(i as u64 * QUEUE_SPACING, size))
                .collect(),
            next_desc: vec![0; n],
            size,
            next_buf: n as u64 * QUEUE_SPACING,
        }
    }

    /// The first address above the queues.
    pub fn buffers_start(&self) -> u64 {
        self.queues.len() as u64 * QUEUE_SPACING
    }

    /// What the transport hands `activate`: the first `n` queues.
    pub fn queues(&self, n: usize) -> Vec<Queue> {
        self.queues[..n]
            .iter()
            .map(|r| {
                let mut q = Queue::new(self.size).unwrap();
                q.try_set_desc_table_address(r.desc).unwrap();
                q.try_set_avail_ring_address(r.avail).unwrap();
                q.try_set_used_ring_address(r.used).unwrap();
                q.set_ready(true);
                q
            })
            .collect()
    }

    /// A buffer of `len` bytes (64-byte aligned) above the queues and
    /// every buffer placed before it.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len.max(1)).next_multiple_of(64);
        assert!(
            self.next_buf <= self.mem.last_addr().raw_value(),
            "test ran out of guest memory"
        );
        addr
    }

    /// Publish a chain of (addr, len, device-writable) descriptors on queue
    /// `q`; returns its head index.
    pub fn add_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc[q] + n > self.size {
            self.next_desc[q] = 0;
        }
        let first = self.next_desc[q];
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let idx = first + i as u16;
            let at = self.queues[q].desc.unchecked_add(16 * u64::from(idx));
            self.mem.write_obj(addr, at).unwrap();
            self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
            self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            self.mem.write_obj(idx + 1, at.unchecked_add(14)).unwrap();
        }
        self.next_desc[q] += n;
        // Publish in the avail ring, wrapping around it.
        let avail = self.queues[q].avail;
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let slot = avail.unchecked_add(4 + 2 * u64::from(idx % self.size));
        self.mem.write_obj(first, slot).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        first
    }

    /// Put `bytes` in fresh buffers as a device-readable chain on queue `q`,
    /// cut into descriptors at the offsets in `cuts`; returns its head.
    pub fn add_bytes(&mut self, q: usize, bytes: &[u8], cuts: &[usize]) -> u16 {
        let mut descs = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([bytes.len()]) {
            let addr = self.alloc((end - start) as u32);
            self.write(addr, &bytes[start..end]);
            descs.push((addr, (end - start) as u32, false));
            start = end;
        }
        self.add_chain(q, &descs)
    }

    /// Set the driver's used_event (EVENT_IDX) for queue `q`.
    pub fn set_used_event(&self, q: usize, v: u16) {
        let at = self.queues[q]
            .avail
            .unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(v, at).unwrap();
    }

    /// A new driver after a reset: zeroed rings, descriptors from 0 again.
    pub fn clear_rings(&mut self) {
        for base in (0..self.queues.len() as u64).map(|i| i * QUEUE_SPACING) {
            self.write(base, &[0u8; QUEUE_SPACING as usize]);
        }
        self.next_desc.fill(0);
    }

    /// The used ring of queue `q`: (head, len) per entry, oldest first.
    /// Entries `i` and `i + size` share a slot, so only the latest `size`
    /// entries read back as they were written.
    pub fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let base = self.queues[q].used;
        let idx: u16 = self.mem.read_obj(base.unchecked_add(2)).unwrap();
        (0..u64::from(idx))
            .map(|i| {
                let at = base.unchecked_add(4 + 8 * (i % u64::from(self.size)));
                let id: u32 = self.mem.read_obj(at).unwrap();
                let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
                (id, len)
            })
            .collect()
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }
}

/// A device on a real event loop.
pub(crate) struct Loop<T: MutEventSubscriber> {
    pub dev: Arc<Mutex<T>>,
    em: EventManager<Arc<Mutex<T>>>,
}

impl<T: MutEventSubscriber> Loop<T> {
    pub fn new(dev: T) -> Self {
        use event_manager::SubscriberOps;
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        Loop { dev, em }
    }

    /// Run the event loop until it is idle; returns how many events it saw.
    pub fn run(&mut self) -> usize {
        self.run_up_to(64)
    }

    /// Run the event loop until it is idle, for at most `rounds` rounds of
    /// events; returns how many events it saw.
    pub fn run_up_to(&mut self, rounds: usize) -> usize {
        let mut total = 0;
        for _ in 0..rounds {
            match self.em.run_with_timeout(0).unwrap() {
                0 => return total,
                n => total += n,
            }
        }
        panic!("the event loop never went idle (busy polling?)");
    }

    /// Run the event loop until `done` holds or `limit` passes; returns
    /// whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&T) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.em.run_with_timeout(10).unwrap();
            if done(&self.dev.lock().unwrap()) {
                return true;
            }
        }
        false
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.dev.lock().unwrap()
    }
}

/// A driver's bring-up through the transport's registers: accept every
/// offered feature, lay out `queues` (their size and addresses) and set
/// DRIVER_OK.
pub(crate) fn bring_up(t: &mut super::mmio::MmioTransport, queues: &[Queue]) {
    use super::mmio::*;
    use crate::bus::BusDevice;
    use virtio_queue::QueueT;
    let features = {
        let mut d = [0u8; 4];
        let mut f = 0u64;
        for sel in 0..2u32 {
            t.write(0, DEVICE_FEATURES_SEL, &sel.to_le_bytes());
            t.read(0, DEVICE_FEATURES, &mut d);
            f |= u64::from(u32::from_le_bytes(d)) << (32 * sel);
        }
        f
    };
    let mut wr = |offset: u64, v: u32| t.write(0, offset, &v.to_le_bytes());
    wr(STATUS, STATUS_ACKNOWLEDGE);
    wr(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    for sel in 0..2u32 {
        wr(DRIVER_FEATURES_SEL, sel);
        wr(DRIVER_FEATURES, (features >> (32 * sel)) as u32);
    }
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    wr(STATUS, ok);
    for (i, q) in queues.iter().enumerate() {
        wr(QUEUE_SEL, i as u32);
        wr(QUEUE_NUM, u32::from(q.size()));
        for (low, addr) in [
            (QUEUE_DESC_LOW, q.desc_table()),
            (QUEUE_DRIVER_LOW, q.avail_ring()),
            (QUEUE_DEVICE_LOW, q.used_ring()),
        ] {
            wr(low, addr as u32);
            wr(low + 4, (addr >> 32) as u32);
        }
        wr(QUEUE_READY, 1);
    }
    wr(STATUS, ok | STATUS_DRIVER_OK);
    assert_eq!(
        t.status(),
        ok | STATUS_DRIVER_OK,
        "the device did not start"
    );
}

/// `state` through JSON and back, as a snapshot file carries it.
pub(crate) fn through_json<T: serde::Serialize + serde::de::DeserializeOwned>(state: &T) -> T {
    serde_json::from_str(&serde_json::to_string(state).unwrap()).unwrap()
}
