//! The connection table: routes guest packets to connections, opens
//! connections in both directions, picks what goes into the next guest RX
//! buffer, and keeps the event loop's interest in each host stream in step.
//!
//! Host streams are registered with the event loop under their own token.
//! A stream is only closed after it has left the event loop (`sync`), since
//! the event manager keeps its own table of registered fds.

use std::collections::{HashMap, VecDeque};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events};

use super::connection::{Action, Connection, Rx};
use super::packet::Header;
use super::unix::{connect_guest_port, Line, Listener, PendingHost};
use super::{
    Error, VsockConfig, VsockCounters, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS, OP_REQUEST,
    OP_RST,
};

/// (host port, guest port) of a connection.
pub(super) type ConnKey = (u32, u32);

/// Tokens below this are the device's own fds.
pub(super) const FIRST_STREAM_TOKEN: u32 = 16;

/// Replies owed to the guest for packets that have no connection (RSTs)
/// wait here for RX buffers; beyond this many, a guest that sends bad
/// packets without posting RX buffers loses the replies.
const MAX_CONTROL: usize = 1024;

#[derive(Debug)]
pub(super) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    pub(super) listener: Listener,
    conns: HashMap<ConnKey, Connection>,
    /// Connection of each stream token.
    tokens: HashMap<u32, ConnKey>,
    /// Host streams still sending their CONNECT line, by token; each is
    /// registered for IN.
    pending: HashMap<u32, PendingHost>,
    next_token: u32,
    next_local_port: u32,
    /// Packets without a connection to come from (RSTs).
    control: VecDeque<Header>,
    /// Connections that have something for the guest, each once.
    rx_queue: VecDeque<ConnKey>,
    /// Streams to take out of the event loop and close: (stream, token,
    /// registered events).
    graveyard: Vec<(UnixStream, u32, EventSet)>,
    /// Whether the guest driver is up; host connects are refused otherwise.
    active: bool,
    /// MAX_CONNECTIONS, lower in tests.
    pub(super) max_connections: usize,
    pub(super) counters: VsockCounters,
}

impl Muxer {
    pub(super) fn new(cfg: &VsockConfig) -> Result<Muxer, Error> {
        Ok(Muxer {
            guest_cid: cfg.guest_cid,
            uds_path: cfg.uds_path.clone(),
            listener: Listener::bind(&cfg.uds_path)?,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            pending: HashMap::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            rx_queue: VecDeque::new(),
            graveyard: Vec::new(),
            active: false,
            max_connections: MAX_CONNECTIONS,
            counters: VsockCounters::default(),
        })
    }

    pub(super) fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub(super) fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub(super) fn set_active(&mut self) {
        self.active = true;
    }

    /// The driver reset the device: end every connection. Streams are shut
    /// down now, so host processes see EOF at once, and closed when the
    /// event loop next runs `sync`. Hosts still writing CONNECT stay.
    pub(super) fn reset(&mut self) {
        self.active = false;
        for (_, conn) in self.conns.drain() {
            let _ = conn.stream.shutdown(Shutdown::Both);
            self.graveyard
                .push((conn.stream, conn.token, conn.registered));
        }
        self.tokens.clear();
        self.control.clear();
        self.rx_queue.clear();
    }

    fn full(&self) -> bool {
        self.conns.len() + self.pending.len() >= self.max_connections
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = t.checked_add(1).unwrap_or(FIRST_STREAM_TOKEN);
            if !self.tokens.contains_key(&t) && !self.pending.contains_key(&t) {
                return t;
            }
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    fn mark_rx(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.in_rx_queue && conn.has_rx() {
                conn.in_rx_queue = true;
                self.rx_queue.push_back(key);
            }
        }
    }

    fn push_control(&mut self, hdr: Header) {
        if self.control.len() >= MAX_CONTROL {
            crate::rate_limited!(
                warn,
                "vsock: dropping a reply, the guest posts no RX buffers"
            );
            return;
        }
        self.control.push_back(hdr);
    }

    /// Answer a packet that has no connection with RST (never an RST).
    fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op != OP_RST {
            self.push_control(hdr.reply(OP_RST));
        }
    }

    fn remove(&mut self, key: ConnKey, rst: bool) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        self.tokens.remove(&conn.token);
        if rst {
            let hdr = conn.rst();
            self.push_control(hdr);
        }
        self.graveyard
            .push((conn.stream, conn.token, conn.registered));
    }

    fn apply(&mut self, key: ConnKey, action: Action) {
        match action {
            Action::Keep => self.mark_rx(key),
            Action::Remove { rst } => self.remove(key, rst),
        }
    }

    /// A well-formed packet from the guest.
    pub(super) fn handle_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            self.counters.bad_address += 1;
            crate::rate_limited!(
                warn,
                "vsock: packet from CID {} to CID {} (the guest is CID {}, only the host, \
                 CID 2, is reachable)",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            self.reply_rst(hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            let action = conn.handle_guest_packet(hdr, payload, &mut self.counters);
            self.apply(key, action);
            return;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(hdr),
            OP_RST => {}
            _ => {
                self.counters.unknown_connection += 1;
                self.reply_rst(hdr);
            }
        }
    }

    fn guest_connect(&mut self, req: &Header) {
        if self.full() {
            self.counters.over_limit += 1;
            crate::rate_limited!(
                warn,
                "vsock: refusing a guest connection to port {}: {} connections are open",
                req.dst_port,
                self.max_connections
            );
            self.reply_rst(req);
            return;
        }
        match connect_guest_port(&self.uds_path, req.dst_port) {
            Ok(stream) => {
                let token = self.alloc_token();
                let key = (req.dst_port, req.src_port);
                self.conns
                    .insert(key, Connection::guest_initiated(stream, token, req));
                self.tokens.insert(token, key);
                self.counters.guest_connections += 1;
                self.mark_rx(key);
            }
            Err(e) => {
                self.counters.guest_connect_failures += 1;
                crate::rate_limited!(
                    info,
                    "vsock: guest connection to port {} refused: {}: {e}",
                    req.dst_port,
                    super::unix::guest_port_path(&self.uds_path, req.dst_port).display()
                );
                self.reply_rst(req);
            }
        }
    }

    /// Whether the guest is owed a packet.
    pub(super) fn rx_pending(&self) -> bool {
        !self.control.is_empty() || !self.rx_queue.is_empty()
    }

    /// The next packet for the guest, its payload in the first `len` bytes
    /// of `buf` (at least one byte long).
    pub(super) fn next_rx(&mut self, buf: &mut [u8]) -> Option<Header> {
        loop {
            if let Some(hdr) = self.control.pop_front() {
                if hdr.op == OP_RST {
                    self.counters.resets_sent += 1;
                }
                return Some(hdr);
            }
            let key = self.rx_queue.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rx_queue = false;
            match conn.next_rx(buf) {
                Rx::Packet(hdr) => {
                    // Round robin: others get the next buffer.
                    self.mark_rx(key);
                    return Some(hdr);
                }
                Rx::Nothing => {}
                Rx::Reset => self.remove(key, true),
            }
        }
    }

    /// The listening socket is readable: take every waiting host stream
    /// and wait for its CONNECT line.
    pub(super) fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    crate::rate_limited!(
                        error,
                        "vsock {}: accepting a host connection: {e}",
                        self.uds_path.display()
                    );
                    return;
                }
            };
            if self.full() {
                self.counters.over_limit += 1;
                crate::rate_limited!(
                    warn,
                    "vsock {}: refusing a host connection: {} connections are open",
                    self.uds_path.display(),
                    self.max_connections
                );
                continue;
            }
            let token = self.alloc_token();
            let events = Events::with_data(&stream, token, EventSet::IN);
            match ops.add(events) {
                Ok(()) => {
                    self.pending.insert(token, PendingHost::new(stream));
                }
                Err(e) => crate::rate_limited!(
                    error,
                    "vsock {}: cannot watch a host connection: {e}",
                    self.uds_path.display()
                ),
            }
        }
    }

    /// A host stream's fd fired.
    pub(super) fn host_event(&mut self, token: u32, set: EventSet) {
        if let Some(p) = self.pending.get_mut(&token) {
            match p.read_line() {
                Line::Incomplete => {}
                Line::Port(port) => self.host_connect(token, port),
                Line::Bad(why) => {
                    self.counters.bad_connect_lines += 1;
                    crate::rate_limited!(warn, "vsock: closing a host connection: {why}");
                    if let Some(p) = self.pending.remove(&token) {
                        self.graveyard.push((p.stream, token, EventSet::IN));
                    }
                }
            }
            return;
        }
        // Events of a stream that was just closed can still arrive.
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
            && conn.registered.contains(EventSet::IN)
        {
            // Reading tells EOF and errors apart.
            conn.set_host_readable();
        }
        let mut action = Action::Keep;
        if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR)
            && conn.registered.contains(EventSet::OUT)
        {
            action = conn.flush(&mut self.counters);
        }
        self.apply(key, action);
    }

    /// A host stream sent `CONNECT <port>`: ask the guest.
    fn host_connect(&mut self, token: u32, port: u32) {
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        if !self.active {
            crate::rate_limited!(
                info,
                "vsock {}: refusing a host connection to port {port}: the guest driver is not \
                 ready",
                self.uds_path.display()
            );
            self.graveyard.push((p.stream, token, EventSet::IN));
            return;
        }
        let local = self.alloc_local_port(port);
        let mut conn = Connection::host_initiated(p.stream, token, self.guest_cid, local, port);
        conn.registered = EventSet::IN;
        self.conns.insert((local, port), conn);
        self.tokens.insert(token, (local, port));
        self.counters.host_connections += 1;
        self.mark_rx((local, port));
    }

    /// Close what was let go, and poll each host stream for what its
    /// connection can use now.
    pub(super) fn sync(&mut self, ops: &mut EventOps) {
        for (stream, token, registered) in self.graveyard.drain(..) {
            if !registered.is_empty() {
                let events = Events::with_data(&stream, token, registered);
                if let Err(e) = ops.remove(events) {
                    log::error!("vsock: cannot unwatch a host stream: {e}");
                }
            }
        }
        for conn in self.conns.values_mut() {
            let want = conn.interest();
            if want == conn.registered {
                continue;
            }
            let fd = conn.stream.as_raw_fd();
            let res = if conn.registered.is_empty() {
                ops.add(Events::with_data_raw(fd, conn.token, want))
            } else if want.is_empty() {
                ops.remove(Events::with_data_raw(fd, conn.token, conn.registered))
            } else {
                ops.modify(Events::with_data_raw(fd, conn.token, want))
            };
            match res {
                Ok(()) => conn.registered = want,
                Err(e) => log::error!("vsock: cannot change how a host stream is watched: {e}"),
            }
        }
    }
}
