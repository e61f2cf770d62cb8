//! Receive path: backend -> guest RX buffers.
//!
//! One frame at a time is read from the backend into a host buffer and then
//! copied into as many RX chains as it needs (one, unless MRG_RXBUF is
//! negotiated). When the guest has not posted enough buffers, the frame stays
//! pending here and the device stops reading the backend until the guest
//! kicks the RX queue, so frames wait in the TAP's queue, not in a growing
//! host buffer, and none is lost between the two.

use std::collections::VecDeque;
use std::io;

use crate::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::tap::NetBackend;
use super::{log_rate_limited, NetCounters, MAX_BUFFER_LEN, VNET_HDR_LEN};

/// Frames handled per call before going back to the event loop, so a busy
/// RX side does not starve TX; the level-triggered backend fd brings us back.
const RX_BUDGET: usize = 256;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// The writable buffers of one RX chain, checked against guest memory.
#[derive(Debug)]
struct RxBuf {
    head: u16,
    segs: Vec<(GuestAddress, usize)>,
    capacity: usize,
    /// Descriptors the chain occupies in the descriptor table.
    descs: usize,
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
    /// Chains popped from the RX queue but not yet used: a frame that needs
    /// several (MRG_RXBUF) holds them here while more are awaited, so the
    /// avail ring never has to be rewound.
    reserved: VecDeque<RxBuf>,
    reserved_capacity: usize,
    reserved_descs: usize,
    /// A chain popped after those in `reserved` was answered at once
    /// (malformed), so `reserved` is not the ring's last entries.
    reserved_gap: bool,
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
            reserved: VecDeque::new(),
            reserved_capacity: 0,
            reserved_descs: 0,
            reserved_gap: false,
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
        self.reserved_capacity = 0;
        self.reserved_descs = 0;
        self.reserved_gap = false;
    }

    /// How many chains at the end of the available ring's taken part are
    /// held unanswered, for a snapshot to count them back into the ring;
    /// `None` when they are not the last ones taken.
    pub(super) fn held_chains(&self) -> Option<u16> {
        if self.reserved_gap {
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
                match backend.read_frame(&mut self.frame) {
                    Ok(n) if n < self.hdr_len => {
                        counters.rx_dropped += 1;
                        log_rate_limited(
                            counters.rx_dropped,
                            format_args!(
                                "net: dropped a {n}-byte read, shorter than a vnet header"
                            ),
                        );
                        continue;
                    }
                    Ok(n) => self.pending = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        counters.rx_backend_errors += 1;
                        log::error!("net: reading from the backend failed: {e}; receiving stops");
                        self.failed = true;
                        break;
                    }
                }
            }
            match self.deliver(mem, queue, counters, &mut used) {
                Delivery::Delivered | Delivery::Dropped => {}
                Delivery::Starved => break,
            }
        }
        used
    }

    /// Try to place the pending frame in guest buffers.
    fn deliver(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        counters: &mut NetCounters,
        used: &mut bool,
    ) -> Delivery {
        let len = self.pending;
        // Set when the avail ring looked empty and notifications were
        // re-armed; a second empty look after that means really empty (and
        // guards against a corrupt avail index making us spin).
        let mut rearmed = false;
        loop {
            let enough = if self.mrg_rxbuf {
                self.reserved_capacity >= len
            } else {
                !self.reserved.is_empty()
            };
            if enough {
                break;
            }
            // The guest can never have more than a queue's worth of
            // descriptors outstanding; if the chains holding them all cannot
            // take the frame, it will never fit.
            if self.reserved_descs >= usize::from(queue.size()) {
                return self.drop_pending(counters, "larger than all RX buffers together");
            }
            match queue.pop_descriptor_chain(mem) {
                Some(chain) => {
                    rearmed = false;
                    match parse_rx_chain(chain, mem) {
                        Ok(buf) => {
                            self.reserved_capacity += buf.capacity;
                            self.reserved_descs += buf.descs;
                            self.reserved.push_back(buf);
                        }
                        Err((head, reason)) => {
                            self.reserved_gap |= !self.reserved.is_empty();
                            counters.rx_malformed += 1;
                            log_rate_limited(
                                counters.rx_malformed,
                                format_args!("net: returning a malformed RX chain: {reason}"),
                            );
                            if let Err(e) = queue.add_used(mem, head, 0) {
                                log::error!("net: cannot return an RX chain: {e}");
                                return Delivery::Starved;
                            }
                            *used = true;
                        }
                    }
                }
                None if rearmed => return Delivery::Starved,
                None => match queue.enable_notification(mem) {
                    // Buffers arrived while notifications were off: retry.
                    Ok(true) => rearmed = true,
                    Ok(false) => return Delivery::Starved,
                    Err(e) => {
                        log::error!("net: cannot enable RX queue notifications: {e}");
                        return Delivery::Starved;
                    }
                },
            }
        }

        // Without MRG_RXBUF a frame must fit in the single next chain.
        let chains = if self.mrg_rxbuf {
            let mut sum = 0;
            self.reserved
                .iter()
                .take_while(|b| {
                    let more = sum < len;
                    sum += b.capacity;
                    more
                })
                .count()
        } else if self.reserved.front().is_some_and(|b| b.capacity >= len) {
            1
        } else {
            return self.drop_pending(counters, "larger than the guest's RX buffer");
        };
        let Ok(num_buffers) = u16::try_from(chains) else {
            return self.drop_pending(counters, "needs more than 65535 buffers");
        };
        if self.hdr_len >= NUM_BUFFERS_OFFSET + 2 {
            if let Some(field) = self
                .frame
                .get_mut(NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2)
            {
                field.copy_from_slice(&num_buffers.to_le_bytes());
            }
        }

        let mut off = 0;
        for _ in 0..chains {
            let Some(buf) = self.reserved.pop_front() else {
                break;
            };
            self.reserved_capacity -= buf.capacity;
            self.reserved_descs -= buf.descs;
            if self.reserved.is_empty() {
                self.reserved_gap = false;
            }
            let mut written = 0usize;
            for &(addr, seg_len) in &buf.segs {
                if off >= len {
                    break;
                }
                let n = seg_len.min(len - off);
                // `off + n` <= `len`, the length of the frame in `frame`.
                let Some(src) = self.frame.get(off..off + n) else {
                    break;
                };
                // The range was checked when the chain was parsed and guest
                // memory does not change under a running device.
                if let Err(e) = mem.write_slice(src, addr) {
                    log::error!("net: writing an RX buffer at {:#x} failed: {e}", addr.0);
                }
                off += n;
                written += n;
            }
            // `written` <= the chain's length, which virtio-queue caps at u32.
            let written = u32::try_from(written).unwrap_or(u32::MAX);
            if let Err(e) = queue.add_used(mem, buf.head, written) {
                log::error!("net: cannot return an RX chain: {e}");
            }
            *used = true;
        }
        counters.rx_frames += 1;
        counters.rx_bytes += (len - self.hdr_len) as u64;
        self.pending = 0;
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

/// Collect the writable buffers of an RX chain, or say why it is unusable
/// (returning its head so it can go back to the guest).
fn parse_rx_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Result<RxBuf, (u16, &'static str)> {
    let head = chain.head_index();
    let mut segs = Vec::new();
    let mut capacity = 0usize;
    let mut descs = 0usize;
    for desc in chain {
        descs += 1;
        if !desc.is_write_only() {
            return Err((head, "read-only descriptor in an RX chain"));
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return Err((head, "buffer outside guest memory"));
        }
        segs.push((desc.addr(), len));
        capacity += len;
    }
    if capacity == 0 {
        return Err((head, "no writable space"));
    }
    Ok(RxBuf {
        head,
        segs,
        capacity,
        descs,
    })
}
