//! Receive path: backend -> guest RX buffers.
//!
//! One frame at a time is read from the backend into a host buffer and then
//! copied into as many RX chains as it needs (one, unless MRG_RXBUF is
//! negotiated). When the guest has not posted enough buffers, the frame stays
//! pending here and the device stops reading the backend until the guest
//! kicks the RX queue, so frames wait in the TAP's queue, not in a growing
//! host buffer, and none is lost between the two.
//!
//! A readv straight into the guest's buffers was measured against this
//! (devices/examples/net_bench): it needs chains reserved for the largest
//! frame and hands the kernel an iovec per buffer, which cost as much as
//! the copy it saves for 64 KiB frames and more than it for small ones.

use std::io;

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};

use super::reserved::Reserved;
use super::tap::NetBackend;
use super::{log_rate_limited, NetCounters, MAX_BUFFER_LEN, VNET_HDR_LEN};

/// Frames handled per call before going back to the event loop, so a busy
/// RX side does not starve TX; the level-triggered backend fd brings us back.
const RX_BUDGET: usize = 256;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// What became of a read from the backend.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// A frame of this many bytes is in the host buffer.
    Frame(usize),
    /// Nothing usable came (a runt, a signal): go on.
    Again,
    /// The backend has no frame, or failed.
    Empty,
}

/// Whether the reserved chains can take a frame.
#[derive(Debug, PartialEq, Eq)]
enum Fill {
    Enough,
    /// Not yet: the ring has no more chains for now.
    Starved,
    /// Never: the reserved chains hold every descriptor the ring has.
    Never,
}

/// What became of the pending frame.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Delivered,
    Dropped,
    /// Not enough guest buffers yet; the frame stays pending.
    Starved,
}

#[derive(Debug)]
pub(super) struct RxPath {
    frame: Vec<u8>,
    /// Length of the frame waiting in `frame`; 0 when none.
    pending: usize,
    /// Chains popped from the RX queue but not yet used.
    reserved: Reserved,
    /// vnet header length the driver negotiated.
    pub(super) hdr_len: usize,
    pub(super) mrg_rxbuf: bool,
    /// The backend failed for good; stop polling it.
    failed: bool,
}

impl RxPath {
    pub(super) fn new() -> Self {
        Self {
            frame: vec![0; MAX_BUFFER_LEN],
            pending: 0,
            reserved: Reserved::default(),
            hdr_len: VNET_HDR_LEN,
            mrg_rxbuf: false,
            failed: false,
        }
    }

    /// Forget the queue state (device reset). A pending frame is dropped
    /// with the queue it was meant for.
    pub(super) fn reset(&mut self) {
        self.pending = 0;
        self.reserved.clear();
    }

    /// How many chains at the end of the available ring's taken part are
    /// held unanswered, for a snapshot to count them back into the ring;
    /// `None` when they are not the last ones taken.
    pub(super) fn held_chains(&self) -> Option<u16> {
        if !self.reserved.are_last_taken() {
            return None;
        }
        u16::try_from(self.reserved.len()).ok()
    }

    /// Whether the backend should be polled: not while a frame waits for
    /// guest buffers (that is what keeps RX free of busy polling).
    pub(super) fn wants_frames(&self) -> bool {
        self.pending == 0 && !self.failed
    }

    /// The backend reported an error condition on its fd.
    pub(super) fn backend_failed(&mut self, counters: &mut NetCounters) {
        counters.rx_backend_errors += 1;
        if !self.failed {
            log::error!("network backend reported an error; receiving stops");
        }
        self.failed = true;
    }

    /// Move frames from the backend into the guest until the backend is
    /// empty, the guest runs out of buffers, or the budget is spent. Returns
    /// whether the used ring changed (so the caller may need to interrupt).
    pub(super) fn process(
        &mut self,
        backend: &mut dyn NetBackend,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        counters: &mut NetCounters,
    ) -> bool {
        let mut used = false;
        for _ in 0..RX_BUDGET {
            if self.pending == 0 {
                if self.failed {
                    break;
                }
                let read = backend.read_frame(&mut self.frame);
                match self.check_read(read, counters) {
                    Read::Frame(n) => self.pending = n,
                    Read::Again => continue,
                    Read::Empty => break,
                }
            }
            match self.deliver(mem, queue, counters, &mut used) {
                Delivery::Delivered | Delivery::Dropped => {}
                Delivery::Starved => break,
            }
        }
        used
    }

    /// Judge a read from the backend into the host buffer.
    fn check_read(&mut self, read: io::Result<usize>, counters: &mut NetCounters) -> Read {
        match read {
            Ok(n) if n < self.hdr_len => {
                counters.rx_dropped += 1;
                log_rate_limited(
                    counters.rx_dropped,
                    format_args!("net: dropped a {n}-byte read, shorter than a vnet header"),
                );
                Read::Again
            }
            Ok(n) => Read::Frame(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::Empty,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Read::Again,
            Err(e) => {
                counters.rx_backend_errors += 1;
                log::error!("net: reading from the backend failed: {e}; receiving stops");
                self.failed = true;
                Read::Empty
            }
        }
    }

    /// Take chains from the ring until the reserved ones can take a frame
    /// of `len` bytes (with MRG_RXBUF, together; without, one chain is all
    /// a frame may use).
    fn fill(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        counters: &mut NetCounters,
        used: &mut bool,
        len: usize,
    ) -> Fill {
        // Set when the avail ring looked empty and notifications were
        // re-armed; a second empty look after that means really empty (and
        // guards against a corrupt avail index making us spin).
        let mut rearmed = false;
        loop {
            let enough = if self.mrg_rxbuf {
                self.reserved.capacity() >= len
            } else {
                !self.reserved.is_empty()
            };
            if enough {
                return Fill::Enough;
            }
            // The guest can never have more than a queue's worth of
            // descriptors outstanding; if the chains holding them all cannot
            // take the frame, it will never fit.
            if self.reserved.descs() >= usize::from(queue.size()) {
                return Fill::Never;
            }
            match queue.pop_descriptor_chain(mem) {
                Some(chain) => {
                    rearmed = false;
                    if let Err((head, reason)) = self.reserved.push(chain, mem) {
                        self.reserved.note_answered();
                        counters.rx_malformed += 1;
                        log_rate_limited(
                            counters.rx_malformed,
                            format_args!("net: returning a malformed RX chain: {reason}"),
                        );
                        if let Err(e) = queue.add_used(mem, head, 0) {
                            log::error!("net: cannot return an RX chain: {e}");
                            return Fill::Starved;
                        }
                        *used = true;
                    }
                }
                None if rearmed => return Fill::Starved,
                None => match queue.enable_notification(mem) {
                    // Buffers arrived while notifications were off: retry.
                    Ok(true) => rearmed = true,
                    Ok(false) => return Fill::Starved,
                    Err(e) => {
                        log::error!("net: cannot enable RX queue notifications: {e}");
                        return Fill::Starved;
                    }
                },
            }
        }
    }

    /// Try to place the pending frame (in the host buffer) in guest
    /// buffers.
    fn deliver(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        counters: &mut NetCounters,
        used: &mut bool,
    ) -> Delivery {
        let len = self.pending;
        match self.fill(mem, queue, counters, used, len) {
            Fill::Enough => {}
            Fill::Starved => return Delivery::Starved,
            Fill::Never => {
                return self.drop_pending(counters, "larger than all RX buffers together")
            }
        }
        // Without MRG_RXBUF a frame must fit in the single next chain.
        if !self.mrg_rxbuf && self.reserved.front_capacity().is_some_and(|c| c < len) {
            return self.drop_pending(counters, "larger than the guest's RX buffer");
        }
        let chains = self.reserved.chains_for(len, self.mrg_rxbuf);
        // `chains` <= the reserved chains, at most a queue's worth (u16).
        let num_buffers = u16::try_from(chains).unwrap_or(u16::MAX);
        if self.hdr_len >= NUM_BUFFERS_OFFSET + 2 {
            if let Some(field) = self
                .frame
                .get_mut(NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2)
            {
                field.copy_from_slice(&num_buffers.to_le_bytes());
            }
        }
        self.reserved
            .copy_in(mem, self.frame.get(..len).unwrap_or_default());
        *used |= self.reserved.hand_over(mem, queue, len, chains);
        self.pending = 0;
        counters.rx_frames += 1;
        counters.rx_bytes += (len - self.hdr_len) as u64;
        Delivery::Delivered
    }

    fn drop_pending(&mut self, counters: &mut NetCounters, why: &str) -> Delivery {
        counters.rx_dropped += 1;
        log_rate_limited(
            counters.rx_dropped,
            format_args!("net: dropped a {}-byte RX frame: {why}", self.pending),
        );
        self.pending = 0;
        Delivery::Dropped
    }
}
