//! Guest physical memory: the fixed layout of a flint microVM and the
//! creation of its `GuestMemoryMmap`.
//!
//! ```text
//! 0x0000_0000  real-mode IVT and BIOS data area (left zero)
//! 0x0000_0500  GDT used at entry
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8000  setup_data: the guest's RNG seed
//! 0x0000_8ff0  initial stack (grows down)
//! 0x0000_9000  PML4, PDPT, PD: identity map of the first 1 GiB
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP floating pointer (in the EBDA, where Linux looks for it)
//! 0x000e_0000  ACPI tables: RSDP, XSDT, FADT, MADT, DSDT  } BIOS area,
//! 0x000f_0000  MP configuration table                    } e820 reserved
//! 0x0010_0000  high memory: kernel, then the initrd at the top of low RAM
//! 0xc000_0000  32-bit MMIO gap: boot timer, then virtio-mmio windows
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC
//! 0x1_0000_0000 RAM above the gap when the guest has more than 3 GiB
//! ```

use vm_memory::GuestAddress;
use devices::GuestMemoryMmap;

pub const GDT_START: u64 = 0x500;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const SETUP_DATA_START: u64 = 0x8000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
/// The x86 kernel's COMMAND_LINE_SIZE, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
/// The BIOS area, reserved in the e820 map up to [`HIMEM_START`]: Linux
/// finds the ACPI tables and the MP table here and leaves them alone.
pub const BIOS_AREA_START: u64 = 0xe_0000;
/// The RSDP, then the other ACPI tables up to [`MPTABLE_START`].
pub const ACPI_START: u64 = BIOS_AREA_START;
/// The MP configuration table (room for 254 CPUs: about 5.4 KiB).
pub const MPTABLE_START: u64 = 0xf_0000;
// The ACPI tables and the MP table lie in the reserved BIOS area, clear of
// the zero page, setup_data, page tables and command line below the EBDA.
const _: () = assert!(
    ACPI_START >= BIOS_AREA_START
        && ACPI_START < MPTABLE_START
        && MPTABLE_START < HIMEM_START
        && EBDA_START < BIOS_AREA_START
        && CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START
);
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Firecracker-compatible boot timer: the guest writes 123 here.
pub const BOOT_TIMER_ADDR: u64 = MMIO_GAP_START;
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// virtio-mmio windows start one page above the boot timer.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x1000;
pub const VIRTIO_MMIO_SIZE: u64 = crate::layout::VIRTIO_MMIO_SIZE;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// Errors from building guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory of {0} MiB is too small; flint needs at least 16 MiB")]
    TooSmall(u64),
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges of a guest with `mem_mib` MiB: split around the MMIO gap.
pub fn ram_ranges(mem_mib: u64) -> Vec<(GuestAddress, usize)> {
    let size = mem_mib << 20;
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Map the guest's RAM. Pages are only touched when the guest (or the
/// loader) writes them, so this costs no time proportional to the size.
pub fn create(mem_mib: u64) -> Result<GuestMemoryMmap, Error> {
    if mem_mib < 16 {
        return Err(Error::TooSmall(mem_mib));
    }
    GuestMemoryMmap::from_ranges(&ram_ranges(mem_mib)).map_err(|source| Error::Map {
        mib: mem_mib,
        source,
    })
}

/// The end of RAM below the MMIO gap (exclusive).
pub fn low_ram_end(mem_mib: u64) -> u64 {
    (mem_mib << 20).min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_have_one_range() {
        assert_eq!(ram_ranges(128), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(low_ram_end(128), 128 << 20);
    }

    #[test]
    fn large_guests_are_split_around_the_gap() {
        let r = ram_ranges(4096);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
        assert_eq!(low_ram_end(4096), MMIO_GAP_START);
    }

    #[test]
    fn tiny_memory_is_refused() {
        assert!(matches!(create(4), Err(Error::TooSmall(4))));
    }
}
