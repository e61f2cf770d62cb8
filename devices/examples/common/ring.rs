//! A split virtqueue laid out by hand for the benchmarks: descriptor
//! table, avail ring and used ring 4 KiB apart. (virtio-queue's
//! MockSplitQueue places its used ring over the second half of its avail
//! ring for queues larger than a few entries, so a driver that cycles
//! through all 256 slots has its entries overwritten by the device.)

use std::sync::atomic::Ordering;

use devices::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

/// A split ring laid out by hand: descriptor table, avail ring and used
/// ring 4 KiB apart from `base`.
#[derive(Clone, Copy)]
pub struct Ring {
    pub base: u64,
}

impl Ring {
    /// Entries in the ring.
    pub const SIZE: u16 = 256;

    pub fn desc(self) -> GuestAddress {
        GuestAddress(self.base)
    }
    pub fn avail(self) -> GuestAddress {
        GuestAddress(self.base + 0x1000)
    }
    pub fn used(self) -> GuestAddress {
        GuestAddress(self.base + 0x2000)
    }

    pub fn queue(self) -> Queue {
        let mut q = Queue::new(Self::SIZE).unwrap();
        q.try_set_desc_table_address(self.desc()).unwrap();
        q.try_set_avail_ring_address(self.avail()).unwrap();
        q.try_set_used_ring_address(self.used()).unwrap();
        q.set_ready(true);
        q
    }

    /// Descriptor `i`: `len` bytes at `addr`, followed by `i + 1` if
    /// `flags` has NEXT.
    pub fn store(self, mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u32) {
        let at = self.desc().unchecked_add(16 * u64::from(i));
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags as u16, at.unchecked_add(12)).unwrap();
        mem.write_obj(i.wrapping_add(1), at.unchecked_add(14))
            .unwrap();
    }

    /// Make the chains at `heads` available, in order, after `idx`.
    pub fn publish(self, mem: &GuestMemoryMmap, idx: u16, heads: &[u16]) {
        for (k, &h) in heads.iter().enumerate() {
            let slot = u64::from(idx.wrapping_add(k as u16) % Self::SIZE);
            mem.write_obj(h, self.avail().unchecked_add(4 + 2 * slot))
                .unwrap();
        }
        let next = idx.wrapping_add(heads.len() as u16);
        mem.store(next, self.avail().unchecked_add(2), Ordering::Release)
            .unwrap();
    }

    pub fn used_idx(self, mem: &GuestMemoryMmap) -> u16 {
        mem.load(self.used().unchecked_add(2), Ordering::Acquire)
            .unwrap()
    }

    pub fn used_id(self, mem: &GuestMemoryMmap, i: u16) -> u16 {
        let slot = u64::from(i % Self::SIZE);
        let id: u32 = mem
            .read_obj(self.used().unchecked_add(4 + 8 * slot))
            .unwrap();
        id as u16
    }
}
