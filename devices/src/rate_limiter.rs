//! A token bucket with Firecracker's `rate_limiter.bandwidth` semantics:
//! `size` tokens refill evenly over `refill_time` milliseconds, the bucket
//! starts full, and `one_time_burst` tokens are spent first and never come
//! back.
//!
//! Time is an argument (a [`Duration`] since any fixed point of a monotonic
//! clock), so the bucket is plain arithmetic and tests choose the clock.

use std::time::Duration;

/// One bucket as configured by the user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucketConfig {
    /// Tokens (bytes, for a bandwidth limit) the bucket holds when full.
    pub size: u64,
    /// Milliseconds an empty bucket takes to fill up again.
    pub refill_time_ms: u64,
    /// Extra tokens on top of `size`, spent before the bucket and never
    /// refilled.
    pub one_time_burst: u64,
}

/// What [`TokenBucket::reduce`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// The tokens were taken; go ahead.
    Done,
    /// Not enough tokens: nothing was taken. Ask again after this long.
    Wait(Duration),
}

/// A token bucket. See the module documentation.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    size: u128,
    refill_ns: u128,
    /// Tokens in the bucket. Negative after a request larger than the whole
    /// bucket was let through (the debt is paid back before the next one).
    budget: i128,
    one_time_burst: u64,
    /// Refills are counted from here; advanced only by the time the tokens
    /// handed out took, so fractions of a token are never lost.
    last: Duration,
}

impl TokenBucket {
    /// A full bucket at time `now`. A zero `size` or `refill_time_ms` means
    /// no limit, as in Firecracker: the answer is `None`.
    pub fn new(cfg: TokenBucketConfig, now: Duration) -> Option<Self> {
        if cfg.size == 0 || cfg.refill_time_ms == 0 {
            return None;
        }
        Some(TokenBucket {
            size: u128::from(cfg.size),
            refill_ns: u128::from(cfg.refill_time_ms) * 1_000_000,
            budget: i128::from(cfg.size),
            one_time_burst: cfg.one_time_burst,
            last: now,
        })
    }

    /// Take `tokens` at time `now`, or say how long to wait for them.
    ///
    /// A request larger than the whole bucket goes through once the bucket
    /// is full and leaves it in debt (Firecracker's over-consumption), so
    /// such a request is delayed rather than refused forever.
    pub fn reduce(&mut self, tokens: u64, now: Duration) -> Reduction {
        let from_burst = tokens.min(self.one_time_burst);
        let need = i128::from(tokens - from_burst);
        if need == 0 {
            self.one_time_burst -= from_burst;
            return Reduction::Done;
        }
        self.refill(now);
        let size = self.size as i128;
        if self.budget >= need || (need > size && self.budget == size) {
            self.one_time_burst -= from_burst;
            self.budget -= need;
            return Reduction::Done;
        }
        // Wait until the bucket holds `need` (or is full, for an oversized
        // request), rounding up so the retry finds enough.
        let deficit = (need.min(size) - self.budget) as u128;
        let total_ns = (deficit * self.refill_ns).div_ceil(self.size);
        let accrued_ns = now.saturating_sub(self.last).as_nanos();
        let wait_ns = total_ns.saturating_sub(accrued_ns).max(1);
        Reduction::Wait(Duration::from_nanos(
            u64::try_from(wait_ns).unwrap_or(u64::MAX),
        ))
    }

    /// Tokens in the bucket at `now` (negative while in debt), without the
    /// one-time burst.
    pub fn budget(&mut self, now: Duration) -> i128 {
        self.refill(now);
        self.budget
    }

    /// One-time burst tokens left.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    fn refill(&mut self, now: Duration) {
        let size = self.size as i128;
        if self.budget >= size {
            // A full bucket accrues nothing.
            self.last = now;
            return;
        }
        let elapsed = now.saturating_sub(self.last).as_nanos();
        let earned = elapsed * self.size / self.refill_ns;
        if earned == 0 {
            return;
        }
        // The time those tokens took, rounded up: never more than elapsed.
        let spent_ns = (earned * self.refill_ns).div_ceil(self.size);
        self.last += Duration::from_nanos(u64::try_from(spent_ns).unwrap_or(u64::MAX));
        self.budget = (self.budget + earned as i128).min(size);
        if self.budget == size {
            self.last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn bucket(size: u64, refill_time_ms: u64, one_time_burst: u64) -> TokenBucket {
        let cfg = TokenBucketConfig {
            size,
            refill_time_ms,
            one_time_burst,
        };
        TokenBucket::new(cfg, ms(1000)).unwrap()
    }

    #[test]
    fn zero_size_or_refill_time_means_no_limit() {
        let cfg = |size, refill_time_ms| TokenBucketConfig {
            size,
            refill_time_ms,
            one_time_burst: 5,
        };
        assert!(TokenBucket::new(cfg(0, 100), ms(0)).is_none());
        assert!(TokenBucket::new(cfg(100, 0), ms(0)).is_none());
        assert!(TokenBucket::new(cfg(100, 100), ms(0)).is_some());
    }

    #[test]
    fn empties_then_refills_evenly() {
        // 1000 tokens per second.
        let mut b = bucket(1000, 1000, 0);
        assert_eq!(b.reduce(600, ms(1000)), Reduction::Done);
        assert_eq!(b.reduce(400, ms(1000)), Reduction::Done);
        assert_eq!(b.budget(ms(1000)), 0);
        // 100 tokens need 100 ms.
        assert_eq!(b.reduce(100, ms(1000)), Reduction::Wait(ms(100)));
        assert_eq!(b.reduce(100, ms(1040)), Reduction::Wait(ms(60)));
        assert_eq!(b.reduce(100, ms(1100)), Reduction::Done);
        assert_eq!(b.budget(ms(1100)), 0);
        // Refills stop at the bucket's size.
        assert_eq!(b.budget(ms(9000)), 1000);
        assert_eq!(b.reduce(1000, ms(9000)), Reduction::Done);
        assert!(matches!(b.reduce(1, ms(9000)), Reduction::Wait(_)));
    }

    #[test]
    fn fractions_of_a_token_are_not_lost() {
        // One token every 3 ms.
        let mut b = bucket(10, 30, 0);
        assert_eq!(b.reduce(10, ms(1000)), Reduction::Done);
        // 2 ms + 2 ms: the second step completes the first token.
        assert_eq!(b.budget(ms(1002)), 0);
        assert_eq!(b.budget(ms(1004)), 1);
        assert_eq!(b.budget(ms(1006)), 2);
    }

    #[test]
    fn one_time_burst_goes_first_and_does_not_come_back() {
        let mut b = bucket(100, 1000, 50);
        assert_eq!(b.reduce(30, ms(1000)), Reduction::Done);
        assert_eq!((b.one_time_burst(), b.budget(ms(1000))), (20, 100));
        // 20 from the burst, 80 from the bucket.
        assert_eq!(b.reduce(100, ms(1000)), Reduction::Done);
        assert_eq!((b.one_time_burst(), b.budget(ms(1000))), (0, 20));
        // A refused request leaves everything as it was.
        assert_eq!(b.reduce(50, ms(1000)), Reduction::Wait(ms(300)));
        assert_eq!(b.budget(ms(1000)), 20);
        assert_eq!(b.budget(ms(5000)), 100);
        assert_eq!(b.one_time_burst(), 0);
    }

    #[test]
    fn oversized_request_waits_for_a_full_bucket_then_leaves_a_debt() {
        let mut b = bucket(100, 100, 0);
        assert_eq!(b.reduce(10, ms(1000)), Reduction::Done);
        // 250 > size: only a full bucket lets it through.
        assert_eq!(b.reduce(250, ms(1000)), Reduction::Wait(ms(10)));
        assert_eq!(b.reduce(250, ms(1010)), Reduction::Done);
        assert_eq!(b.budget(ms(1010)), -150);
        // The debt (150) plus the next request (100) take 250 ms.
        assert_eq!(b.reduce(100, ms(1010)), Reduction::Wait(ms(250)));
        assert_eq!(b.reduce(100, ms(1260)), Reduction::Done);
    }
}
