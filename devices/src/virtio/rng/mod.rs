//! virtio-rng (virtio 1.2, section 5.4), Firecracker's "entropy" device:
//! the guest posts writable buffers and gets them back full of bytes from
//! the host's `getrandom`.
//!
//! - [`device`]: [`Rng`], the [`VirtioDevice`](super::VirtioDevice) and
//!   event-loop subscriber.
//! - [`handler`]: queue processing, the rate limit, and filling buffers.

mod device;
mod handler;

#[cfg(test)]
mod tests;

use std::io;

pub use crate::rate_limiter::TokenBucketConfig;
pub use device::Rng;

/// The single request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// At most this many bytes go into one request; the rest of a larger chain
/// stays untouched and the used length says how much was filled. It bounds
/// the scratch buffer and the time one request holds the event loop.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How to build an [`Rng`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngConfig {
    /// Bytes handed to the guest, as Firecracker's
    /// `rate_limiter.bandwidth`; `None` (or a zero size or refill time)
    /// means no limit.
    pub rate_limiter: Option<TokenBucketConfig>,
}

/// Why an entropy device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("entropy device: cannot create its queue EventFd: {0}")]
    EventFd(#[source] io::Error),
    #[error("entropy device: cannot create the rate limiter's timerfd: {0}")]
    Timer(#[source] io::Error),
}

/// What the device has done since it was built (resets keep the counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngCounters {
    /// Descriptor chains taken from the queue, answered or refused.
    pub requests: u64,
    /// Random bytes written into guest buffers.
    pub bytes: u64,
    /// Chains returned with nothing written: a device-readable descriptor,
    /// a buffer outside guest memory, or (rarely) a failed `getrandom`.
    pub errors: u64,
    /// Times the rate limiter stopped the queue until its bucket refilled.
    pub throttled: u64,
}

/// An entropy device's own state: only its counters. The rate limiter's
/// budget starts full again after a restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    pub counters: RngCounters,
}

impl std::fmt::Display for RngCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} bytes, {} errors, throttled {} times",
            self.requests, self.bytes, self.errors, self.throttled
        )
    }
}
