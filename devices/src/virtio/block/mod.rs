//! virtio-block over a raw image file (virtio 1.2, section 5.2).
//!
//! - [`device`]: [`Block`], the [`VirtioDevice`](super::VirtioDevice) and
//!   event-loop subscriber.
//! - [`handler`]: queue processing (disable notifications, drain, re-enable)
//!   and completion of requests into the used ring.
//! - [`request`]: parsing and validating one descriptor chain.
//! - [`sync_io`] and [`io_uring`]: the two I/O engines behind [`engine`].

mod device;
mod engine;
mod handler;
mod io_uring;
mod request;
mod sync_io;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use device::Block;

/// Sector size of the virtio-blk protocol; capacity and offsets count these.
pub const SECTOR_SIZE: u64 = 512;
/// The single request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// What FLUSH means for the host file. The VMM's configuration owns the
/// default (`Unsafe`, as Firecracker's); this enum has none on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheType {
    /// Writes go to the host page cache and FLUSH is acknowledged without
    /// syncing: fastest, and a host crash can lose what the guest flushed.
    Unsafe,
    /// Writes go to the host page cache and FLUSH runs fdatasync.
    Writeback,
}

/// How the device reads and writes the image.
///
/// `Sync` is the default because it measured as fast or faster with the
/// image in the host page cache (`examples/block_bench.rs`: equal for reads
/// and 1 MiB writes, about 1.8x faster for 4 KiB writes, which ext4 hands to
/// io_uring's worker threads). `IoUring` keeps the event loop free while the
/// host waits for slow storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineType {
    /// preadv/pwritev on the event loop thread, the requests of one kick in
    /// order, adjacent ones merged.
    #[default]
    Sync,
    /// io_uring: requests are submitted in batches and complete on the event
    /// loop; falls back to `Sync` when the host refuses io_uring.
    IoUring,
}

/// How to build a [`Block`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Answer to GET_ID (the guest's /sys/block/vdX/serial); at most 20 bytes
    /// are used.
    pub drive_id: String,
    /// A raw image whose size is a multiple of 512 bytes.
    pub path: PathBuf,
    pub read_only: bool,
    pub cache: CacheType,
    pub engine: EngineType,
}

/// Why a block device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk image {path}: no such file")]
    NotFound { path: PathBuf },
    #[error("disk image {path}: permission denied opening it {mode}; check its mode and owner, or make the drive read-only")]
    PermissionDenied { path: PathBuf, mode: &'static str },
    #[error("disk image {path}: cannot open it: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("disk image {path}: cannot read its size: {source}")]
    Metadata { path: PathBuf, source: io::Error },
    #[error("disk image {path} is not a regular file; give a raw image file")]
    NotAFile { path: PathBuf },
    #[error("disk image {path} is {size} bytes, not a multiple of 512; pad it (truncate -s) to whole sectors")]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error("could not create the queue EventFd of disk {path}: {source}")]
    EventFd { path: PathBuf, source: io::Error },
    #[error("disk image {path}: requests in flight cannot be waited for; try again")]
    Busy { path: PathBuf },
}

/// What the device has done since it was built, for the VMM to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockCounters {
    /// Descriptor chains taken from the queue.
    pub requests: u64,
    pub read_requests: u64,
    pub write_requests: u64,
    pub flush_requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests answered IOERR or UNSUPP: malformed by the guest or failed
    /// on the host.
    pub errors: u64,
    /// Of `errors`, those the host file caused (a failed read, write, sync).
    pub host_io_errors: u64,
    /// Chains without a usable status byte, returned with length 0.
    pub broken_chains: u64,
    /// Times the driver broke the queue itself (an available index too far
    /// ahead, a head past the descriptor table): the device then ignores
    /// the queue and asks for a reset.
    pub broken_rings: u64,
    /// Interrupts raised towards the guest.
    pub interrupts: u64,
    /// Requests whose data moved in one host read or write with the
    /// request before them (adjacent sectors, the synchronous engine).
    #[serde(default)]
    pub merged_requests: u64,
}

/// A block device's own state. The image itself is not part of it: the
/// VMM builds the device again on the same file (same size, same mode)
/// and its contents are whatever the host has there.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockState {
    /// The GET_ID answer.
    pub drive_id: String,
    pub read_only: bool,
    /// Size in 512-byte sectors when the state was taken; restore refuses
    /// an image of another size.
    pub capacity: u64,
    pub counters: BlockCounters,
}

impl std::fmt::Display for BlockCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} reads, {} writes, {} flushes), {} bytes read, {} bytes written, \
             {} errors ({} on the host), {} broken chains, {} broken rings, {} interrupts",
            self.requests,
            self.read_requests,
            self.write_requests,
            self.flush_requests,
            self.bytes_read,
            self.bytes_written,
            self.errors,
            self.host_io_errors,
            self.broken_chains,
            self.broken_rings,
            self.interrupts
        )
    }
}
