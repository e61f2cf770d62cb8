//! The zero page (struct boot_params): e820 map, command line, initrd and the
//! setup_data chain that carries the guest's RNG seed.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header, SETUP_RNG_SEED};
use vm_memory::{Bytes, GuestAddress};
use devices::GuestMemoryMmap;

use super::loader::LoadedInitrd;
use crate::memory::{
    ram_ranges, BIOS_AREA_START, CMDLINE_START, EBDA_START, HIMEM_START, SETUP_DATA_START,
    ZERO_PAGE_START,
};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// Boot protocol 2.15, which knows setup_data and 64-bit entry.
const BOOT_PROTOCOL_VERSION: u16 = 0x020f;
const CAN_USE_HEAP: u8 = 0x80;
/// Bytes of entropy handed to the guest; the kernel credits it at once.
pub const RNG_SEED_LEN: usize = 32;

/// Errors from writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("more than {0} e820 entries")]
    TooManyE820(usize),
    #[error("cannot write {what} into guest memory: {source}")]
    Write {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("cannot read random bytes for the guest's RNG seed: {0}")]
    Random(std::io::Error),
}

/// The e820 map for a guest of `mem_mib` MiB: low RAM below the EBDA, the
/// BIOS area (ACPI tables and MP table) reserved, and every RAM range from
/// 1 MiB up.
pub fn e820_map(mem_mib: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: BIOS_AREA_START,
            size: HIMEM_START - BIOS_AREA_START,
            r#type: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(mem_mib) {
        let start = start.0;
        let end = start + len as u64;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    map
}

/// Everything the zero page describes.
pub struct BootInfo<'a> {
    pub mem_mib: u64,
    pub cmdline_len: usize,
    pub initrd: Option<LoadedInitrd>,
    pub setup_header: Option<setup_header>,
    pub rng_seed: &'a [u8],
    /// Where the ACPI RSDP is (boot protocol 2.14's `acpi_rsdp_addr`).
    pub acpi_rsdp: Option<u64>,
}

/// Build the zero page.
pub fn build_boot_params(info: &BootInfo) -> Result<boot_params, Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.version = BOOT_PROTOCOL_VERSION;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some(rsdp) = info.acpi_rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    if let Some(initrd) = info.initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    if !info.rng_seed.is_empty() {
        params.hdr.setup_data = SETUP_DATA_START;
    }
    let map = e820_map(info.mem_mib);
    if map.len() > params.e820_table.len() {
        return Err(Error::TooManyE820(params.e820_table.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// A setup_data node of type SETUP_RNG_SEED, as bytes: next (u64), type
/// (u32), len (u32), then the seed.
pub fn rng_seed_setup_data(seed: &[u8]) -> Vec<u8> {
    let mut node = Vec::with_capacity(16 + seed.len());
    node.extend_from_slice(&0u64.to_le_bytes());
    node.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    node.extend_from_slice(&(seed.len() as u32).to_le_bytes());
    node.extend_from_slice(seed);
    node
}

/// Fresh random bytes from the host kernel.
pub fn random_seed() -> Result<[u8; RNG_SEED_LEN], Error> {
    let mut seed = [0u8; RNG_SEED_LEN];
    // SAFETY: getrandom writes at most `seed.len()` bytes into the buffer we
    // own, and we check how many it wrote.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        return Err(Error::Random(std::io::Error::last_os_error()));
    }
    Ok(seed)
}

/// Write the zero page and the RNG seed into guest memory.
pub fn write(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), Error> {
    let params = build_boot_params(info)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| Error::Write {
            what: "the zero page",
            source,
        })?;
    if !info.rng_seed.is_empty() {
        mem.write_slice(
            &rng_seed_setup_data(info.rng_seed),
            GuestAddress(SETUP_DATA_START),
        )
        .map_err(|source| Error::Write {
            what: "the RNG seed",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn e820_small_guest() {
        let map = e820_map(128);
        assert_eq!(map.len(), 3);
        assert_eq!((map[0].addr, map[0].size), (0, EBDA_START));
        assert_eq!(
            (map[1].addr, map[1].size, map[1].r#type),
            (0xe_0000, 0x2_0000, E820_RESERVED)
        );
        assert_eq!(
            (map[2].addr, map[2].size, map[2].r#type),
            (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM)
        );
    }

    #[test]
    fn e820_large_guest_skips_the_gap() {
        let map = e820_map(8192);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(
            (map[3].addr, map[3].size),
            (MMIO_GAP_END, (8192u64 << 20) - MMIO_GAP_START)
        );
    }

    #[test]
    fn zero_page_fields() {
        let seed = [7u8; RNG_SEED_LEN];
        let p = build_boot_params(&BootInfo {
            mem_mib: 256,
            cmdline_len: 42,
            initrd: Some(LoadedInitrd {
                addr: 0x0f00_0000,
                size: 0x1234,
            }),
            setup_header: None,
            rng_seed: &seed,
            acpi_rsdp: Some(0xe_0000),
        })
        .unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.setup_data }, SETUP_DATA_START);
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
    }

    #[test]
    fn rng_seed_node_layout() {
        let node = rng_seed_setup_data(&[1, 2, 3]);
        assert_eq!(&node[0..8], &[0; 8]);
        assert_eq!(
            u32::from_le_bytes(node[8..12].try_into().unwrap()),
            SETUP_RNG_SEED
        );
        assert_eq!(u32::from_le_bytes(node[12..16].try_into().unwrap()), 3);
        assert_eq!(&node[16..], &[1, 2, 3]);
        assert_ne!(random_seed().unwrap(), [0u8; RNG_SEED_LEN]);
    }
}
