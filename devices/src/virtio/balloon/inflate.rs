//! Inflate and deflate requests: arrays of le32 page frame numbers (4 KiB
//! pages). Inflated pages lose their host memory through `MADV_DONTNEED`;
//! on anonymous private memory (what `GuestMemoryMmap::from_ranges`
//! maps) they read as zeros when the guest touches them again. Deflated
//! pages need nothing from the host: they fault back in lazily.

use crate::GuestMemoryMmap;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{BalloonCounters, PAGE_SHIFT, PAGE_SIZE};

/// PFNs read, sorted and discarded at a time (the Linux driver sends at most
/// 256 per chain).
const BATCH: usize = 256;
/// PFNs looked at in one chain; the rest of a larger one is ignored (and
/// the chain counted as malformed), so a guest cannot hold the event loop
/// with one giant descriptor.
pub(super) const MAX_PFNS_PER_CHAIN: usize = 1 << 16;
const PFN_SIZE: usize = 4;

/// Discard the host memory behind every valid PFN in an inflate chain.
pub(super) fn inflate(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    counters: &mut BalloonCounters,
) {
    let mut pfns = [0u32; BATCH];
    let mut malformed = false;
    let mut seen = 0usize;
    let mut cut = false;
    for_each_batch(chain, mem, &mut malformed, |bytes| {
        if seen == MAX_PFNS_PER_CHAIN {
            cut = true;
            return false;
        }
        let n = (bytes.len() / PFN_SIZE).min(MAX_PFNS_PER_CHAIN - seen);
        seen += n;
        for (pfn, b) in pfns.iter_mut().zip(bytes.chunks_exact(PFN_SIZE).take(n)) {
            *pfn = b.first_chunk().map_or(0, |b| u32::from_le_bytes(*b));
        }
        // `bytes` holds at most BATCH entries, so `n` <= BATCH.
        discard_pfns(pfns.get_mut(..n).unwrap_or_default(), mem, counters);
        true
    });
    if cut {
        crate::rate_limited!(
            warn,
            "balloon: an inflate chain holds more than {MAX_PFNS_PER_CHAIN} PFNs; ignored the rest"
        );
    }
    if malformed || cut {
        counters.malformed_chains += 1;
    }
}

/// Count the pages of a deflate chain.
pub(super) fn deflate(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    counters: &mut BalloonCounters,
) {
    let mut malformed = false;
    for_each_batch(chain, mem, &mut malformed, |bytes| {
        counters.pages_deflated += (bytes.len() / PFN_SIZE) as u64;
        true
    });
    if malformed {
        counters.malformed_chains += 1;
    }
}

/// Read the chain's PFN array in batches of whole entries and hand each to
/// `f` until it returns false. Sets `malformed` for a device-writable
/// descriptor, an unreadable buffer, or a length that is not a multiple of
/// four (the whole entries before the problem are still used).
fn for_each_batch(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    malformed: &mut bool,
    mut f: impl FnMut(&[u8]) -> bool,
) {
    let mut buf = [0u8; BATCH * PFN_SIZE];
    for desc in chain {
        if desc.is_write_only() {
            *malformed = true;
            return;
        }
        let len = desc.len() as usize;
        if len % PFN_SIZE != 0 {
            *malformed = true;
        }
        let whole = len - len % PFN_SIZE;
        let mut off = 0;
        while off < whole {
            let n = (whole - off).min(buf.len());
            let Some(chunk) = buf.get_mut(..n) else {
                return;
            };
            let read = desc
                .addr()
                .checked_add(off as u64)
                .and_then(|at| mem.read_slice(chunk, at).ok());
            if read.is_none() {
                *malformed = true;
                return;
            }
            if !f(chunk) {
                return;
            }
            off += n;
        }
    }
}

/// Discard the pages in `pfns` (any order, duplicates allowed): contiguous
/// runs become one `madvise` each, PFNs outside guest memory are counted
/// and skipped.
fn discard_pfns(pfns: &mut [u32], mem: &GuestMemoryMmap, counters: &mut BalloonCounters) {
    pfns.sort_unstable();
    let mut run: Option<(u64, u64)> = None; // (first pfn, pages)
    let mut prev: Option<u32> = None;
    for &pfn in pfns.iter() {
        if prev == Some(pfn) {
            continue;
        }
        prev = Some(pfn);
        let addr = GuestAddress(u64::from(pfn) << PAGE_SHIFT);
        if !mem.check_range(addr, PAGE_SIZE as usize) {
            counters.bad_pfns += 1;
            crate::rate_limited!(
                warn,
                "balloon: the driver inflated PFN {pfn:#x}, outside guest memory"
            );
            continue;
        }
        let pfn = u64::from(pfn);
        run = match run {
            Some((first, n)) if first + n == pfn => Some((first, n + 1)),
            Some(done) => {
                discard_run(done, mem, counters);
                Some((pfn, 1))
            }
            None => Some((pfn, 1)),
        };
    }
    if let Some(done) = run {
        discard_run(done, mem, counters);
    }
}

/// Discard `pages` pages from PFN `first`, all inside guest memory, cut
/// where one memory region ends and the next begins.
fn discard_run((first, pages): (u64, u64), mem: &GuestMemoryMmap, counters: &mut BalloonCounters) {
    let mut addr = GuestAddress(first << PAGE_SHIFT);
    let mut left = pages << PAGE_SHIFT;
    while left > 0 {
        let Some((region, at)) = mem.to_region_addr(addr) else {
            counters.discard_errors += 1;
            return;
        };
        let n = left.min(region.len() - at.raw_value());
        let host = match region.get_host_address(at) {
            Ok(host) => host,
            Err(e) => {
                counters.discard_errors += 1;
                crate::rate_limited!(error, "balloon: no host address for {:#x}: {e}", addr.0);
                return;
            }
        };
        // SAFETY: [host, host + n) lies inside one region's mapping (every
        // page was checked against guest memory and the run is cut at the
        // region's end), which `mem` keeps mapped. MADV_DONTNEED changes no
        // mapping: the pages only read as zeros next time. Nothing in the
        // VMM holds a Rust reference into guest memory (all accesses are
        // volatile), and the guest has given these pages up.
        let rc = unsafe { libc::madvise(host.cast(), n as usize, libc::MADV_DONTNEED) };
        if rc == 0 {
            counters.pages_discarded += n >> PAGE_SHIFT;
        } else {
            counters.discard_errors += 1;
            let e = std::io::Error::last_os_error();
            crate::rate_limited!(
                error,
                "balloon: cannot discard {n:#x} bytes of guest memory at {:#x}: {e}",
                addr.0
            );
        }
        addr = addr.unchecked_add(n);
        left -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        // Two regions that touch: a run across them takes two madvise calls.
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000), (GuestAddress(0x4000), 0x4000)])
            .unwrap()
    }

    #[test]
    fn runs_cross_regions_and_bad_pfns_are_skipped() {
        let mem = mem();
        for pfn in 0..8u64 {
            mem.write_obj(0xdead_beef_u32, GuestAddress(pfn << PAGE_SHIFT))
                .unwrap();
        }
        let mut c = BalloonCounters::default();
        let mut pfns = [5, 3, 4, 3, 1, 1000, u32::MAX];
        discard_pfns(&mut pfns, &mem, &mut c);
        assert_eq!((c.pages_discarded, c.bad_pfns, c.discard_errors), (4, 2, 0));
        let word = |pfn: u64| -> u32 { mem.read_obj(GuestAddress(pfn << PAGE_SHIFT)).unwrap() };
        let got: Vec<u32> = (0..8).map(word).collect();
        let z = 0;
        let d = 0xdead_beef;
        assert_eq!(got, vec![d, z, d, z, z, z, d, d]);
    }
}
