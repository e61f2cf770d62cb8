//! The RX chains the device has taken from the available ring but not yet
//! used, in ring order. A frame that needs several (MRG_RXBUF) waits here
//! for more, so the avail ring never has to be rewound. The chains'
//! writable buffers are kept in one flat queue of guest ranges: a large
//! frame fills dozens of chains, and none of them costs an allocation.

use std::collections::VecDeque;

use crate::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// One chain: its head and how much of the flat queues is its.
#[derive(Debug)]
struct Chain {
    head: u16,
    /// Its entries in `segs`.
    segs: usize,
    capacity: usize,
    /// Descriptors it occupies in the descriptor table.
    descs: usize,
}

#[derive(Debug, Default)]
pub(super) struct Reserved {
    chains: VecDeque<Chain>,
    /// (guest address, length) of every writable buffer of every chain.
    segs: VecDeque<(GuestAddress, usize)>,
    capacity: usize,
    descs: usize,
    /// A chain taken after these was answered at once (malformed), so
    /// these are not the ring's last entries taken.
    gap: bool,
}

impl Reserved {
    pub fn clear(&mut self) {
        self.chains.clear();
        self.segs.clear();
        self.capacity = 0;
        self.descs = 0;
        self.gap = false;
    }

    /// Chains held.
    pub fn len(&self) -> usize {
        self.chains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Bytes all chains together can take.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Descriptors all chains together occupy.
    pub fn descs(&self) -> usize {
        self.descs
    }

    /// Bytes the next chain can take.
    pub fn front_capacity(&self) -> Option<usize> {
        self.chains.front().map(|c| c.capacity)
    }

    /// Whether the chains held are the last ones taken from the ring.
    pub fn are_last_taken(&self) -> bool {
        !self.gap
    }

    /// A chain taken after these went straight back to the driver.
    pub fn note_answered(&mut self) {
        self.gap |= !self.is_empty();
    }

    /// Check a chain's buffers against guest memory and hold it; a chain
    /// the device cannot use comes back as its head and the reason.
    pub fn push(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), (u16, &'static str)> {
        let head = chain.head_index();
        let segs = self.segs.len();
        let undo = |r: &mut Self, why| {
            r.segs.truncate(segs);
            Err((head, why))
        };
        let mut capacity = 0usize;
        let mut descs = 0usize;
        for desc in chain {
            descs += 1;
            if !desc.is_write_only() {
                return undo(self, "read-only descriptor in an RX chain");
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
                return undo(self, "buffer outside guest memory");
            }
            self.segs.push_back((desc.addr(), len));
            capacity += len;
        }
        if capacity == 0 {
            return undo(self, "no writable space");
        }
        self.chains.push_back(Chain {
            head,
            segs: self.segs.len() - segs,
            capacity,
            descs,
        });
        self.capacity += capacity;
        self.descs += descs;
        Ok(())
    }

    /// How many of the chains a frame of `len` bytes fills: one without
    /// MRG_RXBUF, else as many as it takes.
    pub fn chains_for(&self, len: usize, mrg_rxbuf: bool) -> usize {
        if !mrg_rxbuf {
            return 1;
        }
        let mut sum = 0;
        self.chains
            .iter()
            .take_while(|c| {
                let more = sum < len;
                sum += c.capacity;
                more
            })
            .count()
    }

    /// Copy `frame` into the buffers of the first chains, in order.
    pub fn copy_in(&self, mem: &GuestMemoryMmap, frame: &[u8]) {
        let mut off = 0;
        for &(addr, len) in &self.segs {
            let Some(rest) = frame.get(off..).filter(|r| !r.is_empty()) else {
                return;
            };
            let n = len.min(rest.len());
            // The range was checked when the chain was taken and guest
            // memory does not change under a running device.
            if let Err(e) = mem.write_slice(rest.get(..n).unwrap_or_default(), addr) {
                log::error!("net: writing an RX buffer at {:#x} failed: {e}", addr.0);
            }
            off += n;
        }
    }

    /// A frame of `len` bytes fills the first `chains` chains: hand them to
    /// the driver with the bytes each holds. Returns whether the used ring
    /// changed.
    pub fn hand_over(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        len: usize,
        chains: usize,
    ) -> bool {
        let mut used = false;
        let mut off = 0;
        for _ in 0..chains {
            let Some(c) = self.chains.pop_front() else {
                break;
            };
            self.capacity -= c.capacity;
            self.descs -= c.descs;
            let mut written = 0usize;
            for (_, seg_len) in self.segs.drain(..c.segs.min(self.segs.len())) {
                let n = seg_len.min(len.saturating_sub(off));
                off += n;
                written += n;
            }
            // `written` <= the chain's length, which virtio-queue caps at u32.
            let written = u32::try_from(written).unwrap_or(u32::MAX);
            if let Err(e) = queue.add_used(mem, c.head, written) {
                log::error!("net: cannot return an RX chain: {e}");
            }
            used = true;
        }
        if self.chains.is_empty() {
            self.gap = false;
        }
        used
    }
}
