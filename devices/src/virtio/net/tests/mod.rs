//! Test harness for the device: a socketpair stands in for the TAP (it
//! keeps datagram boundaries, like a TAP keeps frames), virtio-queue's mock
//! queues stand in for the driver, and a real EventManager runs the device.

mod device;
mod state;
mod tap;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_net::*;

use super::*;
use crate::virtio::testing::{guest_mem, Driver, Loop};
use crate::virtio::{Interrupt, VirtioDevice};

const MEM_SIZE: usize = 0x100_0000;
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
    unsafe fn write_iovecs(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        if self.calls.lock().unwrap().fail_writes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        // SAFETY: the caller vouches for the buffers.
        unsafe { super::tap::writev(self.sock.as_raw_fd(), iov) }
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
    drv: Driver<'a>,
    lp: Loop<Net>,
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
        Bench {
            drv: Driver::new(mem, 2, QUEUE_SIZE),
            lp: Loop::new(net),
            host: None,
            calls: Arc::default(),
            irq: Arc::new(Interrupt::new().unwrap()),
        }
    }

    /// Negotiate `features` and set DRIVER_OK.
    fn activate(&mut self, features: u64) {
        let mut net = self.lp.lock();
        net.ack_features(features);
        net.activate(self.drv.mem.clone(), self.irq.clone(), self.drv.queues(2))
            .unwrap();
    }

    fn all_features(&self) -> u64 {
        self.lp.lock().avail_features()
    }

    /// Run the event loop until it is idle; returns how many events it saw.
    fn run(&mut self) -> usize {
        self.lp.run()
    }

    /// Run the event loop until `done` holds for the driver or `ms`
    /// milliseconds pass.
    fn run_until(&mut self, ms: u64, mut done: impl FnMut(&Driver) -> bool) -> bool {
        let drv = &self.drv;
        self.lp.run_until(Duration::from_millis(ms), |_| done(drv))
    }

    /// Send a frame as if the host (the TAP's other side) sent it.
    fn inject(&self, frame: &[u8]) {
        self.host.as_ref().unwrap().send(frame).unwrap();
    }

    /// Post `n` single-descriptor RX buffers of `len` bytes; returns
    /// (head, addr) of each.
    fn add_rx_buffers(&mut self, n: usize, len: u32) -> Vec<(u16, u64)> {
        (0..n)
            .map(|_| {
                let addr = self.drv.alloc(len);
                (self.drv.add_chain(RX_INDEX, &[(addr, len, true)]), addr)
            })
            .collect()
    }

    /// Put `bytes` into guest memory as a TX chain cut at `cuts`.
    fn add_tx_frame(&mut self, bytes: &[u8], cuts: &[usize]) -> u16 {
        self.drv.add_bytes(TX_INDEX, bytes, cuts)
    }

    fn kick(&self, q: usize) {
        self.lp.lock().queue_events()[q].write(1).unwrap();
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
        self.lp.lock().counters()
    }
}
