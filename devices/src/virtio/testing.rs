//! A driver stand-in for device tests: virtio-queue's mock split queues in
//! guest memory, chains published from (address, length, device-writable)
//! triples, the used ring read back, and an event loop run until idle.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Queue `i` lives at `i * QUEUE_SPACING`; buffers go above the queues.
const QUEUE_SPACING: u64 = 0x1_0000;

/// Anonymous, private guest memory of `size` bytes at address 0.
pub(crate) fn guest_mem(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// The driver's side of `n` queues.
pub(crate) struct Driver<'a> {
    pub mem: &'a GuestMemoryMmap,
    queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    next_desc: Vec<u16>,
    size: u16,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, n: usize, size: u16) -> Self {
        Driver {
            mem,
            queues: (0..n)
                .map(|i| MockSplitQueue::create(mem, GuestAddress(i as u64 * QUEUE_SPACING), size))
                .collect(),
            next_desc: vec![0; n],
            size,
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
            .map(|q| q.create_queue().unwrap())
            .collect()
    }

    /// Publish a chain of (addr, len, device-writable) descriptors on queue
    /// `q`; returns its head index.
    pub fn add_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc[q] + n > self.size {
            self.next_desc[q] = 0;
        }
        let first = self.next_desc[q];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                SplitDescriptor::new(addr, len, flags, first + i as u16 + 1).into()
            })
            .collect();
        self.queues[q].add_desc_chains(&raw, first).unwrap();
        self.next_desc[q] += n;
        first
    }

    /// The used ring of queue `q`: (head, len) per entry.
    pub fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let base = self.queues[q].used_addr();
        let idx: u16 = self.mem.read_obj(base.unchecked_add(2)).unwrap();
        (0..u64::from(idx))
            .map(|i| {
                let at = base.unchecked_add(4 + 8 * i);
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
        let mut total = 0;
        for _ in 0..64 {
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
