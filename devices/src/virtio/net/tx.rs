//! Transmit path: guest TX chains -> backend, one frame per chain, written
//! with one writev straight from the guest's buffers (no copy in flint).

use std::io;

use crate::virtio::iovec::{IoVecs, MAX_IOVECS};
use crate::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueT};

use super::tap::NetBackend;
use super::{log_rate_limited, NetCounters, MAX_BUFFER_LEN, VNET_HDR_LEN};

#[derive(Debug)]
pub(super) struct TxPath {
    /// The guest buffers of the frame being sent; reused between frames.
    iov: IoVecs,
    /// vnet header length the driver negotiated.
    pub(super) hdr_len: usize,
}

impl TxPath {
    pub(super) fn new() -> Self {
        Self {
            iov: IoVecs::with_capacity(4),
            hdr_len: VNET_HDR_LEN,
        }
    }

    /// Send every available TX chain. Returns whether the used ring changed.
    pub(super) fn process(
        &mut self,
        backend: &mut dyn NetBackend,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        counters: &mut NetCounters,
    ) -> bool {
        let mut used = false;
        loop {
            if let Err(e) = queue.disable_notification(mem) {
                log::error!("net: cannot disable TX queue notifications: {e}");
                return used;
            }
            let mut popped = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                popped = true;
                let head = chain.head_index();
                match self.gather(chain, mem) {
                    Ok(len) => self.send(backend, len, counters),
                    Err(reason) => {
                        counters.tx_malformed += 1;
                        log_rate_limited(
                            counters.tx_malformed,
                            format_args!("net: dropped a malformed TX chain: {reason}"),
                        );
                    }
                }
                // TX buffers are only read: nothing was written to them.
                if let Err(e) = queue.add_used(mem, head, 0) {
                    log::error!("net: cannot return a TX chain: {e}");
                    return used;
                }
                used = true;
            }
            match queue.enable_notification(mem) {
                // More chains arrived while notifications were off. An empty
                // round means the avail index is corrupt: stop, don't spin.
                Ok(true) if popped => continue,
                Ok(_) => return used,
                Err(e) => {
                    log::error!("net: cannot enable TX queue notifications: {e}");
                    return used;
                }
            }
        }
    }

    /// Map a chain's vnet header + frame into `iov`; returns its length.
    fn gather(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, &'static str> {
        self.iov.clear();
        let mut len = 0usize;
        for desc in chain {
            if desc.is_write_only() {
                return Err("writable descriptor in a TX chain");
            }
            len = len
                .checked_add(desc.len() as usize)
                .filter(|&end| end <= MAX_BUFFER_LEN)
                .ok_or("frame larger than 65562 bytes")?;
            self.iov
                .push_guest(mem, desc.addr(), desc.len() as usize, false)
                .map_err(|_| "buffer outside guest memory")?;
            if self.iov.len() > MAX_IOVECS {
                return Err("frame in more than 1024 pieces");
            }
        }
        if len <= self.hdr_len {
            return Err("no frame after the vnet header");
        }
        Ok(len)
    }

    fn send(&mut self, backend: &mut dyn NetBackend, len: usize, counters: &mut NetCounters) {
        let res = loop {
            // SAFETY: `gather` built the iovecs from guest ranges vm-memory
            // checked; the device holds the guest memory, so they stay
            // mapped for the call. The backend only reads them.
            match unsafe { backend.write_iovecs(self.iov.as_slice()) } {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                res => break res,
            }
        };
        match res {
            Ok(_) => {
                counters.tx_frames += 1;
                counters.tx_bytes += (len - self.hdr_len) as u64;
            }
            // A full or down TAP drops the frame, as a NIC with a full
            // queue or no carrier would; TCP and friends retransmit.
            Err(e) => {
                counters.tx_dropped += 1;
                log_rate_limited(
                    counters.tx_dropped,
                    format_args!("net: the backend refused a TX frame: {e}"),
                );
            }
        }
    }
}
