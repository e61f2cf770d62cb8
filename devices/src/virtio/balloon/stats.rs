//! The statistics the driver reports (virtio 1.2, section 5.5.6.3): an
//! array of packed `{ le16 tag; le64 val; }` entries.

/// Statistic tags.
pub const SWAP_IN: u16 = 0;
pub const SWAP_OUT: u16 = 1;
pub const MAJFLT: u16 = 2;
pub const MINFLT: u16 = 3;
pub const MEMFREE: u16 = 4;
pub const MEMTOT: u16 = 5;
pub const AVAIL: u16 = 6;
pub const CACHES: u16 = 7;
pub const HTLB_PGALLOC: u16 = 8;
pub const HTLB_PGFAIL: u16 = 9;
pub const OOM_KILL: u16 = 10;
pub const ALLOC_STALL: u16 = 11;
pub const ASYNC_SCAN: u16 = 12;
pub const DIRECT_SCAN: u16 = 13;
pub const ASYNC_RECLAIM: u16 = 14;
pub const DIRECT_RECLAIM: u16 = 15;

/// Bytes of one entry: le16 tag, le64 value, no padding.
pub const ENTRY_SIZE: usize = 10;

/// The balloon's size and the guest's latest statistics, as Firecracker's
/// `GET /balloon/statistics` shows them. Memory amounts are in bytes,
/// events are counts; `None` until the driver has reported that one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonStats {
    /// The target, in 4 KiB pages and in MiB.
    pub target_pages: u32,
    pub target_mib: u32,
    /// What the driver says the balloon holds, in 4 KiB pages and in MiB.
    pub actual_pages: u32,
    pub actual_mib: u32,
    /// Memory swapped in and out (bytes).
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    /// Memory not used for anything (bytes).
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    /// An estimate of memory available for new work (bytes).
    pub available_memory: Option<u64>,
    /// Memory in the page cache that could be dropped (bytes).
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
    pub oom_kill: Option<u64>,
    pub alloc_stall: Option<u64>,
    pub async_scan: Option<u64>,
    pub direct_scan: Option<u64>,
    pub async_reclaim: Option<u64>,
    pub direct_reclaim: Option<u64>,
}

impl BalloonStats {
    /// Record one entry. Returns false for a tag this device does not know
    /// (a newer driver's): such entries are skipped.
    pub fn update(&mut self, tag: u16, val: u64) -> bool {
        let field = match tag {
            SWAP_IN => &mut self.swap_in,
            SWAP_OUT => &mut self.swap_out,
            MAJFLT => &mut self.major_faults,
            MINFLT => &mut self.minor_faults,
            MEMFREE => &mut self.free_memory,
            MEMTOT => &mut self.total_memory,
            AVAIL => &mut self.available_memory,
            CACHES => &mut self.disk_caches,
            HTLB_PGALLOC => &mut self.hugetlb_allocations,
            HTLB_PGFAIL => &mut self.hugetlb_failures,
            OOM_KILL => &mut self.oom_kill,
            ALLOC_STALL => &mut self.alloc_stall,
            ASYNC_SCAN => &mut self.async_scan,
            DIRECT_SCAN => &mut self.direct_scan,
            ASYNC_RECLAIM => &mut self.async_reclaim,
            DIRECT_RECLAIM => &mut self.direct_reclaim,
            _ => return false,
        };
        *field = Some(val);
        true
    }

    /// Record every whole entry in `bytes`; values not in `bytes` keep what
    /// the driver reported before. Returns how many entries had a tag this
    /// device does not know.
    pub fn update_from(&mut self, bytes: &[u8]) -> usize {
        bytes
            .chunks_exact(ENTRY_SIZE)
            .filter(|e| {
                let Some((tag, val)) = e.split_first_chunk::<2>() else {
                    return true;
                };
                let Some(val) = val.first_chunk::<8>() else {
                    return true;
                };
                !self.update(u16::from_le_bytes(*tag), u64::from_le_bytes(*val))
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, val: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend(val.to_le_bytes());
        e
    }

    #[test]
    fn entries_land_in_their_fields() {
        let mut s = BalloonStats::default();
        let mut buf: Vec<u8> = (0..16u16)
            .flat_map(|t| entry(t, 1000 + u64::from(t)))
            .collect();
        buf.extend(entry(99, 7));
        // A trailing partial entry is ignored.
        buf.extend([4, 0, 1]);
        assert_eq!(s.update_from(&buf), 1);
        assert_eq!(s.swap_in, Some(1000));
        assert_eq!(s.swap_out, Some(1001));
        assert_eq!(s.major_faults, Some(1002));
        assert_eq!(s.minor_faults, Some(1003));
        assert_eq!(s.free_memory, Some(1004));
        assert_eq!(s.total_memory, Some(1005));
        assert_eq!(s.available_memory, Some(1006));
        assert_eq!(s.disk_caches, Some(1007));
        assert_eq!(s.hugetlb_allocations, Some(1008));
        assert_eq!(s.hugetlb_failures, Some(1009));
        assert_eq!(s.oom_kill, Some(1010));
        assert_eq!(s.direct_reclaim, Some(1015));

        // A later report overwrites what it carries and keeps the rest.
        assert_eq!(s.update_from(&entry(MEMFREE, 5)), 0);
        assert_eq!((s.free_memory, s.total_memory), (Some(5), Some(1005)));
    }
}
