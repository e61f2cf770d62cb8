//! Rate limiting for log lines a guest can trigger: a driver that keeps
//! poking a register wrongly must not flood the host's log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A budget for log lines the guest can trigger: at most `BURST` lines per
/// second per call site; the rest are counted and reported with the next
/// line that gets through.
pub struct RateLimit {
    window_s: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

const BURST: u64 = 10;

impl RateLimit {
    pub const fn new() -> Self {
        RateLimit {
            window_s: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may go out now; when it may, also how many were
    /// suppressed since the last one.
    pub fn allow(&self, now_s: u64) -> Option<u64> {
        if self.window_s.swap(now_s, Ordering::Relaxed) != now_s {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds since the epoch, the rate limit's clock.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Log a guest-triggered line at most [`BURST`] times a second from this
/// call site: `rate_limited!(warn, "bad access at {addr:#x}")`.
#[macro_export]
macro_rules! rate_limited {
    ($lvl:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::RateLimit = $crate::log_limit::RateLimit::new();
        if let Some(skipped) = LIMIT.allow($crate::log_limit::now_s()) {
            if skipped > 0 {
                log::$lvl!("({skipped} similar lines suppressed) {}", format_args!($($arg)+));
            } else {
                log::$lvl!($($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_a_burst_through_per_second() {
        let r = RateLimit::new();
        for _ in 0..BURST {
            assert_eq!(r.allow(100), Some(0));
        }
        assert_eq!(r.allow(100), None);
        assert_eq!(r.allow(100), None);
        // The next second: through again, with the count of the lost ones.
        assert_eq!(r.allow(101), Some(2));
        assert_eq!(r.allow(101), Some(0));
    }
}
