//! One stream connection between a guest port and a host unix stream: its
//! state, the credit accounting of both directions (virtio 1.2, 5.10.6.3),
//! shutdown, and the control packets it owes the guest.
//!
//! Counters wrap at 2^32 as the spec's do; every difference is taken with
//! wrapping arithmetic.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::packet::Header;
use super::{
    VsockCounters, CONN_BUF_SIZE, CREDIT_UPDATE_THRESHOLD, HOST_CID, OP_CREDIT_REQUEST,
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV,
    SHUTDOWN_SEND, TYPE_STREAM,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The host opened it: REQUEST sent (or about to be), no RESPONSE yet.
    HostConnecting,
    Established,
}

/// What the connection table should do after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Keep,
    /// Close the host stream and forget the connection, telling the guest
    /// with RST when `rst`.
    Remove {
        rst: bool,
    },
}

/// What the connection has for one guest RX buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rx {
    Nothing,
    /// A header, with `len` payload bytes at the start of the buffer.
    Packet(Header),
    /// The connection is over: send RST and forget it.
    Reset,
}

#[derive(Debug)]
pub(super) struct Connection {
    pub(super) stream: UnixStream,
    /// Event loop token of `stream`.
    pub(super) token: u32,
    /// What `stream` is registered for in the event loop (empty: not).
    pub(super) registered: EventSet,
    /// Whether it sits in the muxer's queue of connections with RX work.
    pub(super) in_rx_queue: bool,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    state: State,

    // Guest to host.
    /// Guest bytes the host stream has not taken yet; the guest's credit
    /// keeps this within CONN_BUF_SIZE.
    to_host: VecDeque<u8>,
    /// Guest bytes forwarded to the host (the spec's fwd_cnt).
    fwd_cnt: u32,
    /// fwd_cnt as the guest last saw it in one of our headers.
    fwd_cnt_sent: u32,
    /// The guest will send no more (SHUTDOWN with SEND).
    peer_shut_send: bool,
    /// We shut the host stream's write side after the last guest byte.
    host_write_closed: bool,

    // Host to guest.
    /// Bytes sent to the guest (the spec's tx_cnt, on our side).
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The guest will receive no more (SHUTDOWN with RCV).
    peer_shut_rcv: bool,
    /// The event loop said the host stream is readable and no read has
    /// come back empty since.
    host_readable: bool,
    /// The host stream reached end of file.
    host_eof: bool,

    // Control packets owed to the guest.
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,
    pending_shutdown: bool,
}

impl Connection {
    fn new(
        stream: UnixStream,
        token: u32,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        Connection {
            stream,
            token,
            registered: EventSet::empty(),
            in_rx_queue: false,
            guest_cid,
            local_port,
            peer_port,
            state: State::HostConnecting,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            peer_shut_send: false,
            host_write_closed: false,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            peer_shut_rcv: false,
            host_readable: false,
            host_eof: false,
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            pending_shutdown: false,
        }
    }

    /// A host process asked for guest port `peer_port`; REQUEST it.
    pub(super) fn host_initiated(
        stream: UnixStream,
        token: u32,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        let mut c = Connection::new(stream, token, guest_cid, local_port, peer_port);
        c.pending_request = true;
        c
    }

    /// The guest's REQUEST `req` reached a listening host socket; answer
    /// RESPONSE.
    pub(super) fn guest_initiated(stream: UnixStream, token: u32, req: &Header) -> Self {
        let mut c = Connection::new(stream, token, req.src_cid, req.dst_port, req.src_port);
        c.state = State::Established;
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = req.fwd_cnt;
        c.pending_response = true;
        c
    }

    /// A header from us to the guest; it carries our credit, which the
    /// guest has now seen.
    fn header(&mut self, op: u16) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The RST that ends this connection.
    pub(super) fn rst(&mut self) -> Header {
        self.header(OP_RST)
    }

    /// How many more bytes the guest can take.
    pub(super) fn peer_free(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.peer_free() > 0
    }

    /// Whether a guest RX buffer would be used.
    pub(super) fn has_rx(&self) -> bool {
        self.pending_request
            || self.pending_response
            || self.pending_credit_update
            || self.pending_shutdown
            || (self.host_readable && self.can_read_host())
    }

    /// What to poll the host stream for: readable while we could forward
    /// what arrives (and do not know of unread data already), writable
    /// while guest bytes wait for it.
    pub(super) fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if !self.host_readable && self.can_read_host() {
            set |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// The event loop reported the host stream readable (or hung up).
    pub(super) fn set_host_readable(&mut self) {
        self.host_readable = true;
    }

    /// Handle a packet the guest sent on this connection.
    pub(super) fn handle_guest_packet(
        &mut self,
        hdr: &Header,
        payload: &[u8],
        counters: &mut VsockCounters,
    ) -> Action {
        // Every header carries the sender's current credit.
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        let protocol_error = |counters: &mut VsockCounters, what: &str| {
            counters.protocol_errors += 1;
            crate::rate_limited!(warn, "vsock: resetting a connection: {what}");
            Action::Remove { rst: true }
        };
        match (self.state, hdr.op) {
            (_, OP_RST) => Action::Remove { rst: false },
            (State::HostConnecting, OP_RESPONSE) => {
                self.state = State::Established;
                let line = format!("OK {}\n", self.local_port);
                match write_nonblocking(&mut self.stream, line.as_bytes()) {
                    Ok(n) if n == line.len() => Action::Keep,
                    // A fresh socket's buffer takes a short line; the host
                    // is gone if it does not.
                    _ => Action::Remove { rst: true },
                }
            }
            (State::HostConnecting, _) => protocol_error(counters, "no RESPONSE to a REQUEST"),
            (State::Established, OP_RW) => {
                if self.peer_shut_send {
                    return protocol_error(counters, "data after SHUTDOWN");
                }
                if self.to_host.len() + payload.len() > CONN_BUF_SIZE as usize {
                    return protocol_error(counters, "data beyond the credit given");
                }
                self.send_to_host(payload, counters)
            }
            (State::Established, OP_CREDIT_UPDATE) => Action::Keep,
            (State::Established, OP_CREDIT_REQUEST) => {
                self.pending_credit_update = true;
                Action::Keep
            }
            (State::Established, OP_SHUTDOWN) => {
                self.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.progress()
            }
            (State::Established, op) => protocol_error(counters, &format!("unexpected op {op}")),
        }
    }

    fn send_to_host(&mut self, data: &[u8], counters: &mut VsockCounters) -> Action {
        let mut written = 0;
        if self.to_host.is_empty() {
            match write_nonblocking(&mut self.stream, data) {
                Ok(n) => written = n,
                Err(_) => return Action::Remove { rst: true },
            }
        }
        self.to_host.extend(data.get(written..).unwrap_or_default());
        self.forwarded(written, counters);
        Action::Keep
    }

    /// The host stream is writable: pass on what waits for it.
    pub(super) fn flush(&mut self, counters: &mut VsockCounters) -> Action {
        while !self.to_host.is_empty() {
            let (chunk, _) = self.to_host.as_slices();
            match write_nonblocking(&mut self.stream, chunk) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.forwarded(n, counters);
                }
                Err(_) => return Action::Remove { rst: true },
            }
        }
        self.progress()
    }

    fn forwarded(&mut self, n: usize, counters: &mut VsockCounters) {
        counters.tx_bytes += n as u64;
        // n <= CONN_BUF_SIZE.
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending_credit_update = true;
        }
    }

    /// After a shutdown or a flush: close the host's write side once the
    /// guest has sent its last byte and it is delivered, and end the
    /// connection once neither direction carries data any more.
    fn progress(&mut self) -> Action {
        if self.peer_shut_send && self.to_host.is_empty() && !self.host_write_closed {
            // The host may already have closed; its reads see EOF either way.
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_closed = true;
        }
        if self.host_write_closed && (self.host_eof || self.peer_shut_rcv) {
            return Action::Remove { rst: true };
        }
        Action::Keep
    }

    /// Fill one guest RX buffer, whose payload room is `buf` (at least one
    /// byte): control packets first, then host data, then a credit update
    /// or the SHUTDOWN that follows the host's last byte.
    pub(super) fn next_rx(&mut self, buf: &mut [u8]) -> Rx {
        if self.pending_request {
            self.pending_request = false;
            return Rx::Packet(self.header(OP_REQUEST));
        }
        if self.pending_response {
            self.pending_response = false;
            return Rx::Packet(self.header(OP_RESPONSE));
        }
        if self.host_readable && self.can_read_host() {
            let n = buf.len().min(self.peer_free() as usize);
            let Some(dst) = buf.get_mut(..n) else {
                return Rx::Nothing;
            };
            match self.stream.read(dst) {
                Ok(0) => {
                    self.host_readable = false;
                    self.host_eof = true;
                    if self.progress() != Action::Keep {
                        return Rx::Reset;
                    }
                    self.pending_shutdown = true;
                }
                Ok(n) => {
                    // n <= MAX_PKT_LEN.
                    self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                    self.pending_credit_update = false;
                    let mut hdr = self.header(OP_RW);
                    hdr.len = n as u32;
                    return Rx::Packet(hdr);
                }
                // Interrupted too: the level-triggered event loop says
                // again if there is data.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    self.host_readable = false;
                }
                Err(_) => return Rx::Reset,
            }
        }
        if self.pending_credit_update {
            self.pending_credit_update = false;
            return Rx::Packet(self.header(OP_CREDIT_UPDATE));
        }
        if self.pending_shutdown {
            self.pending_shutdown = false;
            let mut hdr = self.header(OP_SHUTDOWN);
            hdr.flags = SHUTDOWN_SEND;
            return Rx::Packet(hdr);
        }
        Rx::Nothing
    }
}

/// Write what the non-blocking stream takes now; Ok(0) when it is full.
fn write_nonblocking(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) {
        match stream.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
