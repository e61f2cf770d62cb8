//! Everything written into guest memory before the first instruction: the
//! kernel and initrd, the command line, the zero page, the MP table and
//! the ACPI tables, the entry-time GDT and page tables; and the vCPU state
//! at entry.

pub mod acpi;
pub mod bzimage;
pub mod cpuid;
pub mod kernel_scan;
pub mod loader;
pub mod mptable;
pub mod msr;
pub mod params;
pub mod regs;

use std::path::Path;

use vm_memory::GuestAddress;
use devices::GuestMemoryMmap;

use crate::memory::{CMDLINE_MAX_SIZE, CMDLINE_START};

/// Errors from preparing the guest's boot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error(transparent)]
    Params(#[from] params::Error),
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    #[error(transparent)]
    Regs(#[from] regs::Error),
    #[error("the kernel command line is {len} bytes; the x86 kernel takes at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot write the command line into guest memory: {0}")]
    CmdlineWrite(linux_loader::loader::Error),
}

/// Check a command line against the kernel's limit.
pub fn check_cmdline(cmdline: &str) -> Result<(), Error> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    if cmdline.contains('\0') {
        return Err(Error::CmdlineNul);
    }
    Ok(())
}

/// What the vCPUs need to start the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    pub entry: GuestAddress,
}

/// The kernel and initrd, in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Images {
    pub kernel: loader::LoadedKernel,
    pub initrd: Option<loader::LoadedInitrd>,
}

/// Load the kernel and the initrd. Needs nothing but guest memory, so the
/// VMM runs it while KVM builds the VM.
pub fn load_images(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
) -> Result<Images, Error> {
    let kernel = loader::load_kernel(mem, kernel)?;
    let initrd_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(0x7fff_ffff);
    let initrd = initrd
        .map(|p| loader::load_initrd(mem, p, kernel.end, initrd_max))
        .transpose()?;
    Ok(Images { kernel, initrd })
}

/// Write what the kernel reads at entry (command line, zero page with the
/// RNG seed, MP table, ACPI tables listing `acpi_virtio`, GDT and page
/// tables) and return the entry point.
pub fn write_boot_data(
    mem: &GuestMemoryMmap,
    images: &Images,
    mem_mib: u64,
    vcpus: u8,
    cmdline: &str,
    acpi_virtio: &[acpi::MmioDevice],
) -> Result<BootEntry, Error> {
    check_cmdline(cmdline)?;
    let too_long = || Error::CmdlineTooLong {
        len: cmdline.len(),
        max: CMDLINE_MAX_SIZE - 1,
    };
    let mut cl = linux_loader::cmdline::Cmdline::new(CMDLINE_MAX_SIZE).map_err(|_| too_long())?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline).map_err(|_| too_long())?;
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(Error::CmdlineWrite)?;
    let seed = params::random_seed()?;
    let rsdp = acpi::write(
        mem,
        &acpi::AcpiConfig {
            vcpus,
            virtio: acpi_virtio,
        },
    )?;
    params::write(
        mem,
        &params::BootInfo {
            mem_mib,
            cmdline_len: cmdline.len() + 1,
            initrd: images.initrd,
            setup_header: images.kernel.setup_header,
            rng_seed: &seed,
            acpi_rsdp: Some(rsdp),
        },
    )?;
    mptable::setup(mem, vcpus)?;
    regs::write_tables(mem)?;
    Ok(BootEntry {
        entry: images.kernel.entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_limit() {
        assert!(check_cmdline(&"a".repeat(2047)).is_ok());
        let e = check_cmdline(&"a".repeat(2048)).unwrap_err();
        assert!(e.to_string().contains("2048 bytes"), "{e}");
        assert!(check_cmdline("a\0b").is_err());
    }
}
