//! Test harness for the device: a socketpair stands in for the TAP (it
//! keeps datagram boundaries, like a TAP keeps frames), virtio-queue's mock
//! queues stand in for the driver, and a real EventManager runs the device.

mod device;
mod tap;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::{Interrupt, VirtioDevice};

const MEM_SIZE: usize = 0x100_0000;
const RXQ: u64 = 0;
const TXQ: u64 = 0x1_0000;
const BUFS: u64 = 0x10_0000;
const OUTSIDE: u64 = 0x1000_0000;

fn bit(b: u32) -> u64 {
    1u64 << b
}

/// What the device asked of its backend, and failures to inject.
#[derive(Default)]
struct Calls {
    offloads: Vec<u32>,
    hdr_lens: Vec<usize>,
    fail_reads: bool,
    fail_writes: bool,
}

struct FakeBackend {
    sock: UnixDatagram,
    calls: Arc<Mutex<Calls>>,
}

impl AsRawFd for FakeBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for FakeBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.calls.lock().unwrap().fail_reads {
            return Err(io::Error::from_raw_os_error(libc::EBADFD));
        }
        self.sock.recv(buf)
    }
    fn write_frame(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.calls.lock().unwrap().fail_writes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.sock.send(buf)
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.calls.lock().unwrap().offloads.push(flags);
        Ok(())
    }
    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()> {
        self.calls.lock().unwrap().hdr_lens.push(len);
        Ok(())
    }
}

fn config(mtu: Option<u16>) -> NetConfig {
    NetConfig {
        iface_id: "eth0".into(),
        tap_name: "unused".into(),
        guest_mac: Some([0x06, 1, 2, 3, 4, 5]),
        mtu,
    }
}

fn fake_net(cfg: &NetConfig) -> (Net, UnixDatagram, Arc<Mutex<Calls>>) {
    let (dev_side, host_side) = UnixDatagram::pair().unwrap();
    dev_side.set_nonblocking(true).unwrap();
    host_side.set_nonblocking(true).unwrap();
    let calls = Arc::new(Mutex::new(Calls::default()));
    let backend = FakeBackend {
        sock: dev_side,
        calls: calls.clone(),
    };
    let net = Net::with_backend(cfg, Box::new(backend)).unwrap();
    (net, host_side, calls)
}

/// A vnet header followed by a recognizable Ethernet frame of `len` bytes.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// The driver, the device on an event loop, and the host end of the backend.
struct Bench<'a> {
    mem: &'a GuestMemoryMmap,
    queues: [MockSplitQueue<'a, GuestMemoryMmap>; 2],
    next_desc: [u16; 2],
    next_buf: u64,
    net: Arc<Mutex<Net>>,
    em: EventManager<Arc<Mutex<Net>>>,
    /// The host end of the fake backend (None for a real TAP).
    host: Option<UnixDatagram>,
    calls: Arc<Mutex<Calls>>,
    irq: Arc<Interrupt>,
}

impl<'a> Bench<'a> {
    fn new(mem: &'a GuestMemoryMmap, cfg: &NetConfig) -> Self {
        let (net, host, calls) = fake_net(cfg);
        let mut b = Self::with_net(mem, net);
        b.host = Some(host);
        b.calls = calls;
        b
    }

    fn with_net(mem: &'a GuestMemoryMmap, net: Net) -> Self {
        let net = Arc::new(Mutex::new(net));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(net.clone());
        Bench {
            mem,
            queues: [
                MockSplitQueue::create(mem, GuestAddress(RXQ), QUEUE_SIZE),
                MockSplitQueue::create(mem, GuestAddress(TXQ), QUEUE_SIZE),
            ],
            next_desc: [0, 0],
            next_buf: BUFS,
            net,
            em,
            host: None,
            calls: Arc::default(),
            irq: Arc::new(Interrupt::new().unwrap()),
        }
    }

    /// Negotiate `features` and set DRIVER_OK.
    fn activate(&mut self, features: u64) {
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .map(|q| q.create_queue().unwrap())
            .collect();
        let mut net = self.net.lock().unwrap();
        net.ack_features(features);
        net.activate(self.mem.clone(), self.irq.clone(), queues)
            .unwrap();
    }

    fn all_features(&self) -> u64 {
        self.net.lock().unwrap().avail_features()
    }

    /// Run the event loop until it is idle; returns how many events it saw.
    fn run(&mut self) -> usize {
        let mut total = 0;
        for _ in 0..64 {
            match self.em.run_with_timeout(0).unwrap() {
                0 => return total,
                n => total += n,
            }
        }
        panic!("the event loop never went idle (busy polling?)");
    }

    /// Run the event loop until `done` or `ms` milliseconds pass.
    fn run_until(&mut self, ms: u64, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        while std::time::Instant::now() < deadline {
            self.em.run_with_timeout(10).unwrap();
            if done(self) {
                return true;
            }
        }
        false
    }

    /// Send a frame as if the host (the TAP's other side) sent it.
    fn inject(&self, frame: &[u8]) {
        self.host.as_ref().unwrap().send(frame).unwrap();
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len.max(1)).next_multiple_of(64);
        assert!(self.next_buf < MEM_SIZE as u64);
        addr
    }

    /// Publish a chain of (addr, len, device-writable) descriptors.
    fn add_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc[q] + n > QUEUE_SIZE {
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

    /// Post `n` single-descriptor RX buffers of `len` bytes; returns
    /// (head, addr) of each.
    fn add_rx_buffers(&mut self, n: usize, len: u32) -> Vec<(u16, u64)> {
        (0..n)
            .map(|_| {
                let addr = self.alloc(len);
                (self.add_chain(0, &[(addr, len, true)]), addr)
            })
            .collect()
    }

    /// Put `bytes` into guest memory as a TX chain cut at `cuts`.
    fn add_tx_frame(&mut self, bytes: &[u8], cuts: &[usize]) -> u16 {
        let mut descs = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([bytes.len()]) {
            let addr = self.alloc((end - start) as u32);
            self.mem
                .write_slice(&bytes[start..end], GuestAddress(addr))
                .unwrap();
            descs.push((addr, (end - start) as u32, false));
            start = end;
        }
        self.add_chain(1, &descs)
    }

    fn kick(&self, q: usize) {
        self.net.lock().unwrap().queue_events()[q].write(1).unwrap();
    }

    /// The used ring of queue `q`: (head, len) per entry.
    fn used(&self, q: usize) -> Vec<(u32, u32)> {
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

    /// Set the driver's used_event (EVENT_IDX) for queue `q`.
    fn set_used_event(&self, q: usize, v: u16) {
        let at = self.queues[q]
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(QUEUE_SIZE));
        self.mem.write_obj(v, at).unwrap();
    }

    fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Frames the device wrote to the backend since the last call.
    fn host_frames(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_BUFFER_LEN + 16];
        while let Ok(n) = self.host.as_ref().unwrap().recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    fn interrupts(&self) -> u64 {
        self.irq.eventfd().read().unwrap_or(0)
    }

    fn counters(&self) -> NetCounters {
        self.net.lock().unwrap().counters()
    }
}

fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}
