//! Legacy PC devices on the port-I/O bus.
//!
//! - [`serial`]: COM1, a 16550A UART (vm-superio) at 0x3f8, IRQ 4: the
//!   guest console.
//! - [`i8042`]: the PS/2 controller at 0x60/0x64, IRQ 1: keyboard input,
//!   Ctrl-Alt-Del from the VMM, and the CPU reset that `reboot=k` uses.
//! - [`acpi_pm`]: the ACPI sleep control and reset registers at 0x600: how
//!   a guest with ACPI powers off and reboots.
//!
//! Each device creates its own EventFds and exposes them; the VMM registers
//! the interrupt ones as irqfds and watches the rest in its event loop.
//!
//! For snapshots, the serial port, the i8042 and the CMOS hand out their
//! registers as plain serde data and take them back (a restored device's
//! EventFds are new: the VMM registers them as for a new device). The ACPI
//! registers hold nothing between accesses.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod serial;

/// Why a saved legacy device state could not be put back. The device is
/// left as it was.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the saved {device} state is invalid: {why}")]
    Invalid { device: &'static str, why: String },
    #[error("cannot create the restored {device}'s EventFds: {source}")]
    EventFd {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot raise the restored {device}'s interrupt: {source}")]
    Interrupt {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub use acpi_pm::{AcpiPmDevice, Error as AcpiPmError, ACPI_PM_BASE, ACPI_PM_PORT_LEN};
pub use cmos::{Cmos, CmosState, CMOS_BASE, CMOS_PORT_LEN};
pub use i8042::{
    Error as I8042Error, I8042Device, I8042State, I8042_BASE, I8042_KBD_IRQ, I8042_PORT_LEN,
};
pub use serial::{
    SerialCounts, SerialDevice, SerialMetrics, SerialState, COM1_BASE, COM1_IRQ, SERIAL_PORT_LEN,
};
