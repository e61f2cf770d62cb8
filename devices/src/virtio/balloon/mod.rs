//! virtio-balloon (virtio 1.2, section 5.5) with Firecracker's semantics.
//!
//! The host sets a target (`num_pages` in the config space); the driver
//! inflates (hands pages to the host, which drops their backing with
//! `MADV_DONTNEED`) or deflates (takes pages back, which fault in as zeros)
//! and reports its size in `actual`. With statistics on, the device holds
//! the driver's statistics buffer and gives it back every polling interval;
//! the driver answers with a fresh one.
//!
//! - [`device`]: [`Balloon`], the [`VirtioDevice`](super::VirtioDevice) and
//!   event-loop subscriber, and the VMM's controls.
//! - [`handler`]: queue processing (disable notifications, drain, re-enable).
//! - [`inflate`]: page frame numbers to host ranges, and discarding them.
//! - [`stats`]: [`BalloonStats`] and the statistics buffer's format.

mod device;
mod handler;
mod inflate;
mod stats;

#[cfg(test)]
mod tests;

use std::io;

pub use device::Balloon;
pub use stats::BalloonStats;

/// Queue indices. The statistics queue exists only with statistics on.
pub const INFLATE_INDEX: usize = 0;
pub const DEFLATE_INDEX: usize = 1;
pub const STATS_INDEX: usize = 2;
/// Every queue offers this many descriptors.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bits (virtio 1.2, section 5.5.3).
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;

/// The balloon counts 4 KiB pages, whatever the guest's page size.
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Pages per MiB.
pub const PAGES_PER_MIB: u32 = 256;
/// The largest target: `num_pages` is a le32.
pub const MAX_AMOUNT_MIB: u32 = u32::MAX / PAGES_PER_MIB;

/// How to build a [`Balloon`] (Firecracker's `PUT /balloon`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Target balloon size in MiB: memory the guest should give back.
    pub amount_mib: u32,
    /// Let the guest deflate the balloon when it runs out of memory
    /// (VIRTIO_BALLOON_F_DEFLATE_ON_OOM).
    pub deflate_on_oom: bool,
    /// Seconds between statistics updates; 0 turns statistics (and the
    /// statistics queue) off for the life of the device.
    pub stats_polling_interval_s: u16,
}

/// A balloon's own state: the host's target, what the guest reported, and
/// the statistics settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonState {
    /// The target (config `num_pages` / 256).
    pub amount_mib: u32,
    /// Restore refuses a device built otherwise (the feature differs).
    pub deflate_on_oom: bool,
    /// Seconds between polls; restore refuses a device where statistics are
    /// on and off the other way (the queue count differs).
    pub stats_polling_interval_s: u16,
    /// Config `actual`, as the driver last wrote it (4 KiB pages).
    pub actual_pages: u32,
    /// The guest's latest statistics.
    pub stats: BalloonStats,
    pub counters: BalloonCounters,
}

/// Why a balloon could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "balloon: amount_mib {0} is too large: the target in 4 KiB pages must fit in 32 bits \
         (at most {MAX_AMOUNT_MIB} MiB)"
    )]
    TooLarge(u32),
    #[error(
        "balloon: stats_polling_interval_s cannot go from {from} to {to}: statistics can only \
         be turned on or off when the balloon is created (the guest sets up the statistics \
         queue at boot)"
    )]
    StatsToggle { from: u16, to: u16 },
    #[error("balloon: statistics are off (stats_polling_interval_s is 0)")]
    StatsDisabled,
    #[error("balloon: cannot create an EventFd: {0}")]
    EventFd(#[source] io::Error),
    #[error("balloon: cannot create or arm the statistics timer: {0}")]
    Timer(#[source] io::Error),
    #[error("balloon: cannot interrupt the guest: {0}")]
    Interrupt(#[source] io::Error),
}

/// What the device has done since it was built (resets keep the counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonCounters {
    /// Chains taken from the inflate queue.
    pub inflate_requests: u64,
    /// Chains taken from the deflate queue.
    pub deflate_requests: u64,
    /// Pages whose host memory was dropped.
    pub pages_discarded: u64,
    /// Pages the driver took back.
    pub pages_deflated: u64,
    /// Page frame numbers outside guest memory, skipped.
    pub bad_pfns: u64,
    /// Ranges the host refused to discard (madvise failed).
    pub discard_errors: u64,
    /// Chains that broke the protocol (device-writable descriptors,
    /// buffers outside guest memory, lengths not a multiple of the entry
    /// size), answered with what could be used of them.
    pub malformed_chains: u64,
    /// Statistics buffers received and parsed.
    pub stats_updates: u64,
}

impl std::fmt::Display for BalloonCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} inflates ({} pages discarded, {} bad PFNs, {} discard errors), {} deflates \
             ({} pages), {} malformed chains, {} statistics updates",
            self.inflate_requests,
            self.pages_discarded,
            self.bad_pfns,
            self.discard_errors,
            self.deflate_requests,
            self.pages_deflated,
            self.malformed_chains,
            self.stats_updates
        )
    }
}
