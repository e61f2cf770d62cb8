//! A non-blocking timerfd for device event loops (rate limiters, the
//! balloon's statistics polling).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

/// A disarmed timer whose reads never block: arming it again between
/// epoll's report and the read clears the expiration count, and a blocking
/// read would then stall the event loop.
pub fn new_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: `fd` is the timerfd owned by `timer`, open for the whole call;
    // F_GETFL reads its status flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL only changes the descriptor's status flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

/// Consume the timer's expirations. Returns whether it had expired (false
/// for a stale wake-up after it was re-armed or cleared).
pub fn expired(timer: &mut TimerFd) -> io::Result<bool> {
    match timer.wait() {
        Ok(n) => Ok(n > 0),
        Err(e) if e.errno() == libc::EAGAIN => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Arm `timer` to fire once after `after` (at least 1 ns: zero disarms).
pub fn arm_once(timer: &mut TimerFd, after: Duration) -> io::Result<()> {
    let after = after.max(Duration::from_nanos(1));
    timer.reset(after, None).map_err(io::Error::from)
}

/// Arm `timer` to fire every `period` (not zero).
pub fn arm_periodic(timer: &mut TimerFd, period: Duration) -> io::Result<()> {
    let period = period.max(Duration::from_nanos(1));
    timer.reset(period, Some(period)).map_err(io::Error::from)
}

/// Disarm `timer`.
pub fn disarm(timer: &mut TimerFd) -> io::Result<()> {
    timer.clear().map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_do_not_block_and_report_expiry() {
        let mut t = new_timer().unwrap();
        assert!(!expired(&mut t).unwrap());
        arm_once(&mut t, Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(expired(&mut t).unwrap());
        assert!(!expired(&mut t).unwrap());
        arm_once(&mut t, Duration::from_secs(60)).unwrap();
        assert!(t.is_armed().unwrap());
        disarm(&mut t).unwrap();
        assert!(!t.is_armed().unwrap());
    }
}
