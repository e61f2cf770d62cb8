//! A minimal MC146818 CMOS real-time clock at ports 0x70/0x71.
//!
//! KVM does not emulate the RTC. Without one a guest kernel reads all ones,
//! sees the update-in-progress bit stuck, waits for it, and then boots with
//! its clock at 1970. This device answers the time registers from the host's
//! clock (UTC, BCD, 24-hour) and keeps the rest as plain CMOS RAM.

use crate::bus::BusDevice;

pub const CMOS_BASE: u64 = 0x70;
pub const CMOS_PORT_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// 32.768 kHz time base, 1024 Hz periodic rate; update-in-progress clear.
const STATUS_A: u8 = 0x26;
/// 24-hour mode, BCD, no interrupts enabled.
const STATUS_B: u8 = 0x02;
/// Valid RAM and time.
const STATUS_D: u8 = 0x80;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub weekday: u8, // 0 = Sunday
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// UTC broken down from seconds since the epoch (civil-from-days).
pub fn from_unix(secs: i64) -> DateTime {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    DateTime {
        year,
        month,
        day,
        weekday: (days + 4).rem_euclid(7) as u8,
        hour: (rem / 3600) as u8,
        minute: (rem / 60 % 60) as u8,
        second: (rem % 60) as u8,
    }
}

fn bcd(v: u32) -> u8 {
    (((v / 10 % 10) << 4) | (v % 10)) as u8
}

fn host_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a snapshot keeps of the CMOS: the index register and the RAM. The
/// clock is the host's, read at every access, and so is not saved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosState {
    pub index: u8,
    /// All 128 bytes, the clock's registers included (they are never read
    /// from here).
    pub ram: Vec<u8>,
}

/// The CMOS RTC and its RAM.
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    now: fn() -> i64,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    pub fn new() -> Self {
        Self::with_clock(host_now)
    }

    /// A CMOS whose clock is `now` (seconds since the epoch); for tests.
    pub fn with_clock(now: fn() -> i64) -> Self {
        Cmos {
            index: 0,
            ram: [0; 128],
            now,
        }
    }

    /// The index register and the RAM, for a snapshot.
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            ram: self.ram.to_vec(),
        }
    }

    /// Put back what [`Cmos::state`] gave; a RAM image of another size is
    /// refused and changes nothing.
    pub fn restore(&mut self, state: &CmosState) -> Result<(), super::StateError> {
        let ram = <[u8; 128]>::try_from(state.ram.as_slice()).map_err(|_| {
            super::StateError::Invalid {
                device: "CMOS",
                why: format!("{} bytes of RAM, not 128", state.ram.len()),
            }
        })?;
        self.index = state.index;
        self.ram = ram;
        Ok(())
    }

    fn register(&self, index: u8) -> u8 {
        let t = from_unix((self.now)());
        match index {
            REG_SECONDS => bcd(t.second.into()),
            REG_MINUTES => bcd(t.minute.into()),
            REG_HOURS => bcd(t.hour.into()),
            REG_WEEKDAY => bcd(u32::from(t.weekday) + 1),
            REG_DAY => bcd(t.day.into()),
            REG_MONTH => bcd(t.month.into()),
            REG_YEAR => bcd(t.year % 100),
            REG_CENTURY => bcd(t.year / 100),
            REG_STATUS_A => STATUS_A,
            REG_STATUS_B => STATUS_B,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D,
            i => self.ram.get(usize::from(i & 0x7f)).copied().unwrap_or(0xff),
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = match (offset, data.len()) {
            (1, 1) => self.register(self.index),
            (0, 1) => self.index,
            _ => 0xff,
        };
        data.fill(v);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Bit 7 of the index port masks NMIs on a PC; nothing to mask here.
            (0, [v]) => self.index = v & 0x7f,
            // The clock follows the host: writes to the time registers are
            // dropped, the rest is RAM.
            (1, [v]) if self.index > REG_STATUS_D => {
                if let Some(r) = self.ram.get_mut(usize::from(self.index)) {
                    *r = *v;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &mut Cmos, index: u8) -> u8 {
        c.write(CMOS_BASE, 0, &[index]);
        let mut d = [0u8];
        c.read(CMOS_BASE, 1, &mut d);
        d[0]
    }

    #[test]
    fn civil_dates() {
        assert_eq!(
            from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                weekday: 4,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2026-11-29 13:05:09 UTC, a Sunday.
        assert_eq!(
            from_unix(1_795_957_509),
            DateTime {
                year: 2026,
                month: 11,
                day: 29,
                weekday: 0,
                hour: 13,
                minute: 5,
                second: 9
            }
        );
        // 2000-02-29, a leap day.
        assert_eq!(from_unix(951_782_400).day, 29);
    }

    #[test]
    fn time_registers_in_bcd() {
        let mut c = Cmos::with_clock(|| 1_795_957_509);
        assert_eq!(read(&mut c, REG_SECONDS), 0x09);
        assert_eq!(read(&mut c, REG_MINUTES), 0x05);
        assert_eq!(read(&mut c, REG_HOURS), 0x13);
        assert_eq!(read(&mut c, REG_DAY), 0x29);
        assert_eq!(read(&mut c, REG_MONTH), 0x11);
        assert_eq!(read(&mut c, REG_YEAR), 0x26);
        assert_eq!(read(&mut c, REG_CENTURY), 0x20);
        assert_eq!(read(&mut c, REG_WEEKDAY), 0x01);
        assert_eq!(read(&mut c, REG_STATUS_A) & 0x80, 0, "update in progress");
        assert_eq!(read(&mut c, REG_STATUS_D), STATUS_D);
    }

    #[test]
    fn ram_and_garbage() {
        let mut c = Cmos::with_clock(|| 0);
        c.write(CMOS_BASE, 0, &[0x8f]); // NMI bit set, index 0x0f
        c.write(CMOS_BASE, 1, &[0x5a]);
        assert_eq!(read(&mut c, 0x0f), 0x5a);
        c.write(CMOS_BASE, 0, &[REG_SECONDS]);
        c.write(CMOS_BASE, 1, &[0x59]);
        assert_eq!(read(&mut c, REG_SECONDS), 0x00);
        let mut wide = [0u8; 4];
        c.read(CMOS_BASE, 0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        c.write(CMOS_BASE, 1, &[1, 2]);
        c.write(CMOS_BASE, 7, &[1]);
    }

    #[test]
    fn state_round_trips() {
        let mut c = Cmos::with_clock(|| 0);
        c.write(CMOS_BASE, 0, &[0x40]);
        c.write(CMOS_BASE, 1, &[0x99]);
        c.write(CMOS_BASE, 0, &[0x41]);
        let state: CmosState =
            serde_json::from_str(&serde_json::to_string(&c.state()).unwrap()).unwrap();
        let mut r = Cmos::with_clock(|| 0);
        r.restore(&state).unwrap();
        assert_eq!(r.state(), state);
        assert_eq!(state.index, 0x41);
        assert_eq!(read(&mut r, 0x40), 0x99);

        let before = r.state();
        let short = CmosState {
            index: 1,
            ram: vec![0; 64],
        };
        assert!(r.restore(&short).is_err());
        assert_eq!(r.state(), before);
    }
}
