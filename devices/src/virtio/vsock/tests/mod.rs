//! Test harness: virtio-queue's mock queues play the guest driver, a real
//! EventManager runs the device, and real unix sockets in a fresh
//! directory under the system's temp dir are the host side.

mod flow;
mod guest;
mod host;
mod malformed;
mod state;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::GuestMemoryMmap;

use super::packet::Header;
use super::*;
use crate::virtio::testing::{guest_mem, Driver, Loop};
use crate::virtio::{Interrupt, VirtioDevice};

const MEM_SIZE: usize = 0x100_0000;
const OUTSIDE: u64 = 0x1000_0000;

pub(super) const GUEST_CID: u64 = 3;
/// The guest's receive buffer in the headers it sends, unless a test says.
pub(super) const GUEST_BUF: u32 = 64 * 1024;

/// A directory of its own under the temp dir, removed afterwards.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flint-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A packet header from the guest (CID 3) to the host (CID 2).
pub(super) fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF,
        fwd_cnt: 0,
    }
}

/// The guest driver, the device on an event loop, and the socket directory.
pub(super) struct Bench<'a> {
    pub(super) drv: Driver<'a>,
    pub(super) lp: Loop<Vsock>,
    pub(super) irq: Arc<Interrupt>,
    /// Guest address of each posted RX chain's buffer, by head.
    rx_bufs: HashMap<u16, u64>,
    /// RX used-ring entries already looked at.
    rx_seen: u16,
    pub(super) uds: PathBuf,
    _dir: TempDir,
}

impl<'a> Bench<'a> {
    /// A device on a fresh socket path, activated, with `rx` 4 KiB RX
    /// buffers posted.
    pub(super) fn new(mem: &'a GuestMemoryMmap, rx: usize) -> Self {
        let dir = TempDir::new();
        let uds = dir.path().join("v.sock");
        let cfg = VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.clone(),
        };
        let mut b = Bench {
            drv: Driver::new(mem, 3, QUEUE_SIZE),
            lp: Loop::new(Vsock::new(&cfg).unwrap()),
            irq: Arc::new(Interrupt::new().unwrap()),
            rx_bufs: HashMap::new(),
            rx_seen: 0,
            uds,
            _dir: dir,
        };
        b.activate();
        b.post_rx(rx, 4096);
        b.run();
        b
    }

    /// Negotiate every feature and set DRIVER_OK.
    pub(super) fn activate(&mut self) {
        let mut dev = self.lp.lock();
        let features = dev.avail_features();
        dev.ack_features(features);
        dev.activate(self.drv.mem.clone(), self.irq.clone(), self.drv.queues(3))
            .unwrap();
    }

    /// A new driver after a reset: fresh (zeroed) rings, then DRIVER_OK.
    pub(super) fn reactivate(&mut self) {
        self.drv.clear_rings();
        self.rx_bufs.clear();
        self.rx_seen = 0;
        self.activate();
    }

    /// Run the event loop until it is idle; returns how many events it saw.
    pub(super) fn run(&mut self) -> usize {
        self.lp.run_up_to(256)
    }

    pub(super) fn kick(&self, q: usize) {
        self.lp.lock().queue_events()[q].write(1).unwrap();
    }

    /// Post `n` single-descriptor RX buffers of `len` bytes and kick.
    pub(super) fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let addr = self.drv.alloc(len);
            let head = self.drv.add_chain(RX_INDEX, &[(addr, len, true)]);
            self.rx_bufs.insert(head, addr);
        }
        self.kick(RX_INDEX);
    }

    /// Put `bytes` in guest memory as a TX chain cut at `cuts`, kick, run.
    pub(super) fn send_raw(&mut self, bytes: &[u8], cuts: &[usize]) -> u16 {
        let head = self.drv.add_bytes(TX_INDEX, bytes, cuts);
        self.kick(TX_INDEX);
        self.run();
        head
    }

    /// Send one packet in a single descriptor; `len` is set from `payload`.
    pub(super) fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_raw(&bytes, &[]);
    }

    /// Packets the device put in RX buffers since the last call.
    pub(super) fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.drv.used(RX_INDEX);
        let new = used[usize::from(self.rx_seen)..].to_vec();
        self.rx_seen = used.len() as u16;
        new.into_iter()
            .map(|(head, len)| {
                let addr = self.rx_bufs[&(head as u16)];
                let raw = self.drv.read(addr, len as usize);
                assert!(raw.len() >= HDR_LEN, "RX packet of {} bytes", raw.len());
                let h = Header::from_bytes(raw[..HDR_LEN].try_into().unwrap());
                assert_eq!(
                    h.len as usize,
                    raw.len() - HDR_LEN,
                    "header len vs used len"
                );
                (h, raw[HDR_LEN..].to_vec())
            })
            .collect()
    }

    /// The one packet that must have arrived.
    pub(super) fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let mut got = self.recv();
        assert_eq!(got.len(), 1, "expected one packet, got {got:?}");
        got.pop().unwrap()
    }

    pub(super) fn counters(&self) -> VsockCounters {
        self.lp.lock().counters()
    }

    pub(super) fn connections(&self) -> usize {
        self.lp.lock().connection_count()
    }

    /// A host process listening for guest connections to `port`.
    pub(super) fn listen(&self, port: u32) -> UnixListener {
        let mut p = self.uds.clone().into_os_string();
        p.push(format!("_{port}"));
        UnixListener::bind(p).unwrap()
    }

    /// Guest port `gport` connects to host port `port`, where `l` listens:
    /// checks the RESPONSE and returns the host's stream.
    pub(super) fn guest_connect(&mut self, l: &UnixListener, gport: u32, port: u32) -> UnixStream {
        self.send(hdr(OP_REQUEST, gport, port), &[]);
        let (h, _) = self.recv_one();
        assert_eq!(h.op, OP_RESPONSE, "{h:?}");
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// A host process connects and sends `CONNECT port`; returns its
    /// stream and the REQUEST the guest got.
    pub(super) fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.run();
        let (h, _) = self.recv_one();
        assert_eq!(h.op, OP_REQUEST, "{h:?}");
        (s, h)
    }
}

/// Read what the host stream has now, without waiting; None at EOF.
pub(super) fn host_read_now(s: &mut UnixStream) -> Option<Vec<u8>> {
    s.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let eof = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(e) => panic!("host read: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    if eof && out.is_empty() {
        None
    } else {
        Some(out)
    }
}
