//! Frame rate of the virtio-net data path, against the same frames sent or
//! received directly on the same kind of socket.
//!
//! The backend is a unix datagram socketpair (it keeps frame boundaries, as
//! a TAP does); a thread on its other end drains what the device sends
//! (TX) or keeps it full of frames (RX). A mock driver keeps the queues
//! full: TX chains of a 12-byte vnet header and the frame in two
//! descriptors, RX chains of one 1536-byte buffer (Linux's mergeable buffer
//! size for a 1500-byte MTU) recycled as soon as they are used. The
//! "direct" column sends the same frames with send(2) from one buffer, or
//! receives them with recv(2) into one buffer, on the same thread.
//!
//! cargo run --release -p devices --example net_bench [seconds per run] [case filter]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use devices::virtio::net::{Net, NetBackend, NetConfig, QUEUE_SIZE};
use devices::virtio::{Interrupt, VirtioDevice};
use devices::GuestMemoryMmap;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

#[path = "common/args.rs"]
mod args;
#[path = "common/ring.rs"]
#[allow(dead_code)] // each bench uses part of it
mod ring;
use ring::Ring;
use vm_memory::{Bytes, GuestAddress};

/// Runs per case and side; the best one counts.
const ROUNDS: usize = 5;
const HDR: u64 = 12;
const RX_BUF: u32 = 1536;
const BUFS: u64 = 0x10_0000;
/// Room for a queue of 64 KiB frames.
const MEM_SIZE: u64 = BUFS + QUEUE_SIZE as u64 * 0x1_0000;
/// Socket buffers: room for a few of the largest frames.
const SOCK_BUF: libc::c_int = 4 << 20;

/// A datagram socket queues at most net.unix.max_dgram_qlen frames (10 by
/// default), so a reader and a writer would mostly measure how fast they
/// wake each other. As root, move into a network namespace of our own (the
/// limit is per namespace) and raise it there, to a TAP's default queue
/// length. Returns the limit in force.
fn deepen_socket_queues() -> String {
    const KNOB: &str = "/proc/sys/net/unix/max_dgram_qlen";
    // SAFETY: unshare takes no pointers; the process is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        let _ = std::fs::write(KNOB, "1000");
    }
    std::fs::read_to_string(KNOB)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The device's end of the socketpair.
struct Sock(UnixDatagram);

impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for Sock {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    unsafe fn write_iovecs(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the device vouches for the buffers; the kernel only reads
        // `iov.len()` of them.
        let n = unsafe { libc::writev(self.0.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
    fn set_vnet_hdr_len(&mut self, _len: usize) -> io::Result<()> {
        Ok(())
    }
}

fn socketpair() -> (UnixDatagram, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().expect("a socketpair");
    for s in [&a, &b] {
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            // SAFETY: a valid socket and a c_int option value.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&SOCK_BUF as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            assert_eq!(r, 0, "setsockopt");
        }
    }
    (a, b)
}

struct Rate {
    frames: u64,
    secs: f64,
    /// CPU time of the thread that drove the device (or did the direct
    /// I/O): what the path costs, whatever the other end's pace.
    cpu: f64,
}

impl Rate {
    fn per_s(&self) -> f64 {
        self.frames as f64 / self.secs
    }
    fn cpu_ns(&self) -> f64 {
        self.cpu * 1e9 / self.frames.max(1) as f64
    }
}

/// The calling thread's CPU time, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Wall and CPU time from a start.
struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    fn start() -> Self {
        Clock {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }
    fn running(&self, dur: Duration) -> bool {
        self.wall.elapsed() < dur
    }
    fn rate(&self, frames: u64) -> Rate {
        Rate {
            frames,
            secs: self.wall.elapsed().as_secs_f64(),
            cpu: thread_cpu() - self.cpu,
        }
    }
}

fn main() {
    // The filter matches a case's label, e.g. "RX 1514".
    let (secs, only) = args::parse();
    let dur = Duration::from_secs_f64(secs);
    let qlen = deepen_socket_queues();
    println!(
        "unix datagram socketpair backend ({qlen} frames queued at most), best of {ROUNDS} runs \
         of {secs} s"
    );
    println!(
        "{:<4} {:>7} {:>12} {:>9} {:>12} {:>9} {:>10} {:>9}",
        "dir",
        "frame",
        "flint frm/s",
        "flint ns",
        "direct frm/s",
        "direct ns",
        "rate ratio",
        "ns ratio"
    );
    for rx in [false, true] {
        for size in [64usize, 1514, 9000, 65000] {
            let label = format!("{} {size}", if rx { "RX" } else { "TX" });
            if only.as_ref().is_some_and(|o| !label.contains(o.as_str())) {
                continue;
            }
            let none = || Rate {
                frames: 0,
                secs: 1.0,
                cpu: 1.0,
            };
            // Best rate and least CPU per frame of the rounds, each side.
            let (mut flint, mut direct) = (none(), none());
            let (mut flint_ns, mut direct_ns) = (f64::MAX, f64::MAX);
            for _ in 0..ROUNDS {
                let (f, d) = if rx {
                    (rx_flint(size, dur), rx_direct(size, dur))
                } else {
                    (tx_flint(size, dur), tx_direct(size, dur))
                };
                flint_ns = flint_ns.min(f.cpu_ns());
                direct_ns = direct_ns.min(d.cpu_ns());
                if f.per_s() > flint.per_s() {
                    flint = f;
                }
                if d.per_s() > direct.per_s() {
                    direct = d;
                }
            }
            println!(
                "{:<4} {:>7} {:>12.0} {:>9.0} {:>12.0} {:>9.0} {:>10.2} {:>9.2}",
                if rx { "RX" } else { "TX" },
                size,
                flint.per_s(),
                flint_ns,
                direct.per_s(),
                direct_ns,
                flint.per_s() / direct.per_s(),
                flint_ns / direct_ns,
            );
        }
    }
}

const RXQ: Ring = Ring { base: 0 };
const TXQ: Ring = Ring { base: 0x8000 };

/// A device on `sock`, activated with every feature it offers.
fn device(mem: &GuestMemoryMmap, sock: UnixDatagram) -> Net {
    let cfg = NetConfig {
        iface_id: "bench".into(),
        tap_name: "unused".into(),
        guest_mac: Some([6, 0, 0, 0, 0, 1]),
        mtu: None,
    };
    let mut net = Net::with_backend(&cfg, Box::new(Sock(sock))).expect("a device");
    let features = net.avail_features();
    net.ack_features(features);
    let irq = Arc::new(Interrupt::new().unwrap());
    net.activate(mem.clone(), irq, vec![RXQ.queue(), TXQ.queue()])
        .expect("activation");
    net
}

/// A thread that receives and counts frames on `sock` until `stop`.
fn drain(sock: UnixDatagram, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 17];
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            if sock.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    })
}

fn tx_flint(size: usize, dur: Duration) -> Rate {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let (dev, host) = socketpair();
    let mut net = device(&mem, dev);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = drain(host, stop.clone());
    // Chain i: header (2i) then frame (2i+1), fixed for the whole run.
    let chains = QUEUE_SIZE / 2;
    for i in 0..chains {
        let at = BUFS + u64::from(i) * 0x1_0000;
        mem.write_slice(&vec![0u8; HDR as usize + size], GuestAddress(at))
            .unwrap();
        TXQ.store(&mem, 2 * i, at, HDR as u32, VRING_DESC_F_NEXT);
        TXQ.store(&mem, 2 * i + 1, at + HDR, size as u32, 0);
    }
    let heads: Vec<u16> = (0..chains).map(|i| 2 * i).collect();
    let mut idx: u16 = 0;
    let clock = Clock::start();
    while clock.running(dur) {
        TXQ.publish(&mem, idx, &heads);
        idx = idx.wrapping_add(chains);
        net.process_tx();
    }
    let c = net.counters();
    let rate = clock.rate(c.tx_frames);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(c.tx_dropped + c.tx_malformed, 0, "frames lost: {c:?}");
    rate
}

fn tx_direct(size: usize, dur: Duration) -> Rate {
    let (dev, host) = socketpair();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = drain(host, stop.clone());
    let frame = vec![0u8; HDR as usize + size];
    let mut n = 0u64;
    let clock = Clock::start();
    while clock.running(dur) {
        for _ in 0..QUEUE_SIZE / 2 {
            dev.send(&frame).unwrap();
            n += 1;
        }
    }
    let rate = clock.rate(n);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    rate
}

/// A thread that keeps `sock` full of `size`-byte frames until `stop`.
fn flood(sock: UnixDatagram, size: usize, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    sock.set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    thread::spawn(move || {
        let frame = vec![0u8; HDR as usize + size];
        while !stop.load(Ordering::Relaxed) {
            let _ = sock.send(&frame);
        }
    })
}

fn rx_flint(size: usize, dur: Duration) -> Rate {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let (dev, host) = socketpair();
    dev.set_nonblocking(true).unwrap();
    let watch = dev.try_clone().unwrap();
    let mut net = device(&mem, dev);
    for i in 0..QUEUE_SIZE {
        let at = BUFS + u64::from(i) * u64::from(RX_BUF);
        RXQ.store(&mem, i, at, RX_BUF, VRING_DESC_F_WRITE);
    }
    let all: Vec<u16> = (0..QUEUE_SIZE).collect();
    RXQ.publish(&mem, 0, &all);
    let mut avail: u16 = QUEUE_SIZE;
    let mut seen: u16 = 0;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = flood(host, size, stop.clone());
    let clock = Clock::start();
    let mut heads = Vec::with_capacity(QUEUE_SIZE.into());
    while clock.running(dur) {
        net.process_rx();
        // Recycle every used buffer, as a driver refilling its ring.
        let idx = RXQ.used_idx(&mem);
        if idx == seen {
            // Nothing came: wait for the socket, as the event loop does.
            let mut pfd = libc::pollfd {
                fd: watch.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
        }
        heads.clear();
        while seen != idx {
            heads.push(RXQ.used_id(&mem, seen));
            seen = seen.wrapping_add(1);
        }
        RXQ.publish(&mem, avail, &heads);
        avail = avail.wrapping_add(heads.len() as u16);
    }
    let c = net.counters();
    let rate = clock.rate(c.rx_frames);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(c.rx_dropped + c.rx_malformed, 0, "frames lost: {c:?}");
    rate
}

fn rx_direct(size: usize, dur: Duration) -> Rate {
    let (dev, host) = socketpair();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = flood(host, size, stop.clone());
    dev.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 17];
    let mut frames = 0;
    let clock = Clock::start();
    while clock.running(dur) {
        if dev.recv(&mut buf).is_ok() {
            frames += 1;
        }
    }
    let rate = clock.rate(frames);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    rate
}
