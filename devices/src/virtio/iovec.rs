//! Guest buffers as host iovecs, so that a host syscall (preadv, writev,
//! io_uring) moves data straight between guest memory and a file or TAP
//! without a copy through a host buffer.
//!
//! Every iovec here was built from a range vm-memory checked against guest
//! memory; they stay valid while the device holds its `GuestMemoryMmap` (the
//! mappings are not removed under a running device).

use crate::GuestMemoryMmap;
use vm_memory::bitmap::{Bitmap, MS};
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

/// Linux refuses readv/writev with more segments than this (UIO_MAXIOV).
pub const MAX_IOVECS: usize = 1024;

/// A guest range that is not all guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
pub struct OutsideMemory {
    pub addr: u64,
    pub len: usize,
}

/// A list of host iovecs over guest memory. `start` moves forward as a
/// short transfer is resumed.
#[derive(Debug, Default)]
pub struct IoVecs {
    vecs: Vec<libc::iovec>,
    start: usize,
}

// SAFETY: the pointers address guest memory, which is mapped for as long as
// the device holds its `GuestMemoryMmap` (in-flight I/O is drained before that
// is dropped) and is shared with vCPU threads anyway; an `IoVecs` is only used
// by whichever thread owns the device at the time.
unsafe impl Send for IoVecs {}

impl IoVecs {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            vecs: Vec::with_capacity(n),
            start: 0,
        }
    }

    /// Forget every iovec, keeping the allocation.
    pub fn clear(&mut self) {
        self.vecs.clear();
        self.start = 0;
    }

    /// Add the guest range `addr`+`len`: one iovec when one memory region
    /// holds it (the usual case: one lookup), one per region otherwise.
    /// `device_writes`: the device will write the range behind vm-memory's
    /// back, so its pages are marked dirty now (for Diff snapshots).
    pub fn push_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        device_writes: bool,
    ) -> Result<(), OutsideMemory> {
        if len == 0 {
            return Ok(());
        }
        let mut push = |slice: VolatileSlice<'_, MS<'_, GuestMemoryMmap>>| {
            if device_writes {
                slice.bitmap().mark_dirty(0, slice.len());
            }
            self.vecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        };
        if let Ok(slice) = mem.get_slice(addr, len) {
            push(slice);
            return Ok(());
        }
        let outside = OutsideMemory { addr: addr.0, len };
        // Check the whole range before adding any piece of it.
        if !GuestMemoryBackend::check_range(mem, addr, len) {
            return Err(outside);
        }
        for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
            push(slice.map_err(|_| outside)?);
        }
        Ok(())
    }

    /// Append the iovecs another list has still to transfer.
    pub fn extend_from(&mut self, other: &IoVecs) {
        self.vecs.extend_from_slice(other.as_slice());
    }

    /// Iovecs still in the list.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// The iovecs still to transfer.
    pub fn as_slice(&self) -> &[libc::iovec] {
        self.vecs.get(self.start..).unwrap_or_default()
    }

    /// Bytes still to transfer.
    pub fn remaining(&self) -> usize {
        self.as_slice().iter().map(|v| v.iov_len).sum()
    }

    /// Skip `n` bytes that were transferred.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(v) = self.vecs.get_mut(self.start) else {
                return;
            };
            if n < v.iov_len {
                // Stays inside the guest buffer this iovec was built from.
                v.iov_base = v.iov_base.wrapping_byte_add(n);
                v.iov_len -= n;
                return;
            }
            n -= v.iov_len;
            self.start += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .unwrap()
    }

    #[test]
    fn advance_stops_at_the_end() {
        let mem = two_regions();
        let mut v = IoVecs::default();
        v.push_guest(&mem, GuestAddress(0), 8, false).unwrap();
        v.push_guest(&mem, GuestAddress(0x100), 8, false).unwrap();
        v.advance(3);
        assert_eq!(v.remaining(), 13);
        v.advance(5);
        assert_eq!(v.as_slice().len(), 1);
        v.advance(100);
        assert_eq!(v.remaining(), 0);
        assert!(v.as_slice().is_empty());
        v.advance(1);
        assert!(v.as_slice().is_empty());
    }

    #[test]
    fn a_range_over_two_regions_is_two_iovecs_and_outside_memory_is_refused() {
        let mem = two_regions();
        let mut v = IoVecs::with_capacity(4);
        v.push_guest(&mem, GuestAddress(0xff0), 0x20, false)
            .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v.remaining(), 0x20);
        let err = v.push_guest(&mem, GuestAddress(0x1ff0), 0x20, false);
        assert_eq!(
            err,
            Err(OutsideMemory {
                addr: 0x1ff0,
                len: 0x20
            })
        );
        // Nothing of the refused range was added.
        assert_eq!(v.len(), 2);
        v.push_guest(&mem, GuestAddress(0x10), 0, false).unwrap();
        assert_eq!(v.len(), 2);
        v.clear();
        assert!(v.is_empty());
    }

    #[test]
    fn the_iovecs_address_the_guest_bytes() {
        let mem = two_regions();
        mem.write_slice(b"flint", GuestAddress(0xffe)).unwrap();
        let mut v = IoVecs::default();
        v.push_guest(&mem, GuestAddress(0xffe), 5, false).unwrap();
        let mut got = Vec::new();
        for iov in v.as_slice() {
            // SAFETY: the iovec covers guest memory that `mem` maps for the
            // whole test; nothing writes it meanwhile.
            got.extend_from_slice(unsafe {
                std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len)
            });
        }
        assert_eq!(got, b"flint");
    }
}
