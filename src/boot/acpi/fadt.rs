//! The FADT (signature FACP): a hardware-reduced ACPI platform with no
//! legacy PM blocks and no FACS. Power-off and reset go through the sleep
//! control and reset registers of devices::legacy::acpi_pm.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use devices::legacy::acpi_pm::{
    RESET_OFFSET, RESET_VALUE, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET,
};

use super::{aml_bytes, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::ACPI_PM_PORT;

/// ACPI 6.x FADT size.
pub const FADT_LEN: usize = 276;

/// IA-PC boot architecture flags: ISA/LPC devices present (COM1), an 8042
/// present (so Linux keeps its i8042 driver), no VGA, no MSI.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_PRESENT: u16 = 1 << 3;
const IAPC_BOOT_ARCH: u16 =
    IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_PRESENT;

/// "FLINTVMM", which the FADT's hypervisor vendor identity field carries.
const HYPERVISOR_VENDOR: u64 = u64::from_le_bytes(*b"FLINTVMM");

fn io_byte_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

/// The FADT, pointing at the DSDT at `dsdt_addr` through X_DSDT.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    b.reset_reg = io_byte_register(ACPI_PM_PORT + RESET_OFFSET);
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = io_byte_register(ACPI_PM_PORT + SLEEP_CONTROL_OFFSET);
    b.sleep_status_reg = io_byte_register(ACPI_PM_PORT + SLEEP_STATUS_OFFSET);
    b.hypervisor_vendor_identity = HYPERVISOR_VENDOR.into();
    let t = aml_bytes(&b.finalize());
    debug_assert_eq!(t.len(), FADT_LEN);
    t
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check_header, u32_at, u64_at};
    use super::*;

    /// A generic address structure at `off`: (space, width, offset, access, address).
    fn gas_at(t: &[u8], off: usize) -> (u8, u8, u8, u8, u64) {
        (
            t[off],
            t[off + 1],
            t[off + 2],
            t[off + 3],
            u64_at(t, off + 4),
        )
    }

    #[test]
    fn fields() {
        let t = fadt(0xe_1000);
        assert_eq!(t.len(), FADT_LEN);
        check_header(&t, b"FACP", 6);
        let flags = u32_at(&t, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // No PM1/PM2/PM timer/GPE blocks, no SCI, no FACS.
        for off in (56..=84).step_by(4) {
            assert_eq!(u32_at(&t, off), 0, "legacy block at {off}");
        }
        assert_eq!(u32_at(&t, 36), 0, "FIRMWARE_CTRL");
        assert_eq!(u64_at(&t, 132), 0, "X_FIRMWARE_CTRL");
        assert_eq!(u64_at(&t, 140), 0xe_1000, "X_DSDT");
        // RESET_REG at 116, RESET_VALUE at 128: byte-wide I/O.
        assert_eq!(gas_at(&t, 116), (1, 8, 0, 1, 0x602));
        assert_eq!(t[128], RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(gas_at(&t, 244), (1, 8, 0, 1, 0x600));
        assert_eq!(gas_at(&t, 256), (1, 8, 0, 1, 0x601));
        assert_eq!(u16::from_le_bytes([t[109], t[110]]), IAPC_BOOT_ARCH);
        assert_eq!(t[131], 5, "FADT minor version");
    }
}
