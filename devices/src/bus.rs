//! One I/O trait and one bus type, used twice: once for port I/O, once for MMIO.
//!
//! The vCPU loop hands every access to a bus; the bus finds the device whose
//! range holds the address and calls it with the range base and the offset.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a bus.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `base + offset`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `base + offset`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

struct Range {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges mapped to devices. Built before the vCPUs start, then shared
/// read-only between them; each device has its own lock.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if let Some((&other, r)) = self.ranges.range(..end).next_back() {
            if other + r.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Range)> {
        let (&base, range) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= range.len).then_some((base, range))
    }

    /// Dispatch a read; false when no device covers the access (the caller
    /// then answers with all ones, as unclaimed bus cycles do).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, range)) => {
                lock(&range.device).read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, range)) => {
                lock(&range.device).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device, tolerating a poisoned mutex: a device is plain state, and a
/// panic elsewhere must not take every later access down with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut buf = [0u8; 1];
        assert!(bus.read(0x3fd, &mut buf));
        assert_eq!(buf, [5]);
        assert!(bus.write(0x3f8, &[7]));
        assert_eq!(a.lock().unwrap().last, Some((0x3f8, 0, vec![7])));
        assert!(!bus.read(0x3f7, &mut buf));
        assert!(!bus.read(0x400, &mut buf));
        // An access that straddles the end of the range is not claimed.
        let mut wide = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut wide));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d.clone(), 0x1000, 0x100).unwrap();
        assert!(matches!(
            bus.insert(d.clone(), 0x10ff, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d.clone(), 0xf00, 0x101),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d.clone(), 0x2000, 0),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(d.clone(), u64::MAX, 2),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(d, 0x1100, 0x100).unwrap();
    }
}
