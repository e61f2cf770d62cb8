//! The ACPI power-off and reset registers of a hardware-reduced ACPI
//! platform, as three byte-wide I/O ports that the FADT points at.
//!
//! - offset 0, SLEEP_CONTROL_REG: the guest writes SLP_EN (bit 5) with
//!   SLP_TYP (bits 2-4) set to the value of its `\_S5_` object to power off.
//! - offset 1, SLEEP_STATUS_REG: reads 0 (no wake event ever pending);
//!   Linux writes WAK_STS (bit 7) here to clear it before sleeping.
//! - offset 2, RESET_REG: writing [`RESET_VALUE`] resets the machine.
//!
//! Neither request is carried out here: the device writes
//! [`AcpiPmDevice::power_off_evt`] or [`AcpiPmDevice::reset_evt`] and the
//! VMM ends the VM, as for the i8042's CPU reset.

use std::io;

use log::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;

/// First port: above the ISA and VGA ranges, where no legacy PC device
/// decodes (Cloud Hypervisor puts its ACPI registers at the same place).
pub const ACPI_PM_BASE: u64 = 0x600;
/// Sleep control, sleep status, reset.
pub const ACPI_PM_PORT_LEN: u64 = 3;
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
pub const SLEEP_STATUS_OFFSET: u64 = 1;
pub const RESET_OFFSET: u64 = 2;
/// The FADT's RESET_VALUE.
pub const RESET_VALUE: u8 = 0x01;
/// SLP_TYP of the S5 (soft off) state: the first element of `\_S5_`.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Sleep control register fields (ACPI 6.5, 4.8.3.7).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7 << SLP_TYP_SHIFT;
/// Sleep status register: wake status, write 1 to clear.
const WAK_STS: u8 = 1 << 7;

/// Errors of the ACPI power device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create the ACPI {which} EventFd: {source}")]
    EventFd {
        which: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The value a guest writes to the sleep control register to power off.
pub const fn s5_request() -> u8 {
    SLP_EN | (S5_SLEEP_TYPE << SLP_TYP_SHIFT)
}

/// The sleep control, sleep status and reset registers. Writes act at once
/// and reads are constant: there is no state to save for a snapshot.
#[derive(Debug)]
pub struct AcpiPmDevice {
    power_off_evt: EventFd,
    reset_evt: EventFd,
}

impl AcpiPmDevice {
    pub fn new() -> Result<Self, Error> {
        let eventfd =
            |which| EventFd::new(EFD_NONBLOCK).map_err(|source| Error::EventFd { which, source });
        Ok(AcpiPmDevice {
            power_off_evt: eventfd("power-off")?,
            reset_evt: eventfd("reset")?,
        })
    }

    /// Written (with 1) when the guest enters S5: the VM should end as
    /// powered off.
    pub fn power_off_evt(&self) -> &EventFd {
        &self.power_off_evt
    }

    /// Written (with 1) when the guest writes the reset register: the VM
    /// should end as rebooted.
    pub fn reset_evt(&self) -> &EventFd {
        &self.reset_evt
    }

    fn signal(evt: &EventFd, what: &str) {
        debug!("acpi: guest requested {what}");
        if let Err(e) = evt.write(1) {
            warn!("acpi: cannot signal the {what} request: {e}");
        }
    }

    fn sleep_control(&self, value: u8) {
        if value & SLP_EN == 0 {
            debug!("acpi: sleep control write {value:#04x} without SLP_EN ignored");
            return;
        }
        let typ = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if typ == S5_SLEEP_TYPE {
            Self::signal(&self.power_off_evt, "power-off");
        } else {
            crate::rate_limited!(
                warn,
                "acpi: guest asked for sleep type {typ}, which flint does not offer; ignored"
            );
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // No wake event is ever pending; the other registers are write-only.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let [value] = *data else {
            crate::rate_limited!(
                warn,
                "acpi: {}-byte write at register {offset} ignored; the registers are 8 bits wide",
                data.len()
            );
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET => self.sleep_control(value),
            // Clearing WAK_STS, which never is set.
            SLEEP_STATUS_OFFSET if value & !WAK_STS == 0 => {}
            RESET_OFFSET if value == RESET_VALUE => Self::signal(&self.reset_evt, "reset"),
            _ => crate::rate_limited!(
                warn,
                "acpi: write of {value:#04x} to register {offset} ignored"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(evt: &EventFd) -> bool {
        evt.read().is_ok()
    }

    #[test]
    fn s5_powers_off() {
        let mut d = AcpiPmDevice::new().unwrap();
        assert_eq!(s5_request(), 0x34);
        // Linux clears WAK_STS first, then writes SLP_TYP | SLP_EN.
        d.write(ACPI_PM_BASE, SLEEP_STATUS_OFFSET, &[WAK_STS]);
        assert!(!fired(d.power_off_evt()));
        d.write(ACPI_PM_BASE, SLEEP_CONTROL_OFFSET, &[s5_request()]);
        assert!(fired(d.power_off_evt()));
        assert!(!fired(d.reset_evt()));
    }

    #[test]
    fn reset_value_resets() {
        let mut d = AcpiPmDevice::new().unwrap();
        d.write(ACPI_PM_BASE, RESET_OFFSET, &[RESET_VALUE]);
        assert!(fired(d.reset_evt()));
        assert!(!fired(d.power_off_evt()));
    }

    #[test]
    fn other_writes_are_ignored() {
        let mut d = AcpiPmDevice::new().unwrap();
        // SLP_TYP 5 without SLP_EN, another sleep type, S5 in the wrong
        // register, a wrong reset value, a wide write, an odd status bit.
        d.write(ACPI_PM_BASE, SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << 2]);
        d.write(ACPI_PM_BASE, SLEEP_CONTROL_OFFSET, &[SLP_EN | (3 << 2)]);
        d.write(ACPI_PM_BASE, SLEEP_STATUS_OFFSET, &[s5_request()]);
        d.write(ACPI_PM_BASE, RESET_OFFSET, &[0x06]);
        d.write(ACPI_PM_BASE, RESET_OFFSET, &[RESET_VALUE, 0]);
        d.write(ACPI_PM_BASE, SLEEP_CONTROL_OFFSET, &[s5_request(), 0]);
        d.write(ACPI_PM_BASE, SLEEP_STATUS_OFFSET, &[0x01]);
        assert!(!fired(d.power_off_evt()));
        assert!(!fired(d.reset_evt()));
        let mut b = [0xffu8; 1];
        d.read(ACPI_PM_BASE, SLEEP_STATUS_OFFSET, &mut b);
        assert_eq!(b, [0]);
    }
}
