//! ACPI tables for a guest kernel with ACPI: how it finds its CPUs and
//! IOAPIC (MADT), its devices (DSDT) and how it powers off and resets
//! (FADT, hardware-reduced, pointing at devices::legacy::acpi_pm).
//!
//! The tables sit in the BIOS area, reserved in the e820 map: the RSDP at
//! [`ACPI_START`] (where Linux also scans for it; flint passes its address
//! in the zero page too), then XSDT, FADT, MADT and DSDT, each 16-byte
//! aligned, all below the MP table at [`MPTABLE_START`]. Table building
//! uses rust-vmm's `acpi_tables` crate; the layout and the PC devices are
//! flint's.

mod dsdt;
mod fadt;
mod madt;

#[cfg(test)]
mod iasl_tests;

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};
use devices::GuestMemoryMmap;

pub use crate::memory::ACPI_START;
use crate::memory::MPTABLE_START;

/// The OEM fields of every table.
pub const OEM_ID: [u8; 6] = *b"FLINT ";
pub const OEM_TABLE_ID: [u8; 8] = *b"FLINTVM ";
pub const OEM_REVISION: u32 = 1;
const TABLE_ALIGN: u64 = 16;

/// Errors from building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the ACPI tables support 1 to 254 vCPUs, not {0}")]
    CpuCount(u8),
    #[error(
        "virtio-mmio window {base:#x} lies above 4 GiB; the DSDT describes 32-bit windows only"
    )]
    MmioAbove4G { base: u64 },
    #[error("the ACPI tables need {size} bytes but only {room} fit below the MP table")]
    TooLarge { size: u64, room: u64 },
    #[error("cannot write the ACPI {table} into guest memory: {source}")]
    Write {
        table: &'static str,
        source: vm_memory::GuestMemoryError,
    },
}

/// One virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// What the tables describe. COM1, the i8042 and the power registers are
/// always there, at their fixed ports (crate::layout).
#[derive(Debug, Clone, Copy)]
pub struct AcpiConfig<'a> {
    pub vcpus: u8,
    /// virtio-mmio devices to list in the DSDT; empty when the kernel gets
    /// them on its command line instead.
    pub virtio: &'a [MmioDevice],
}

/// The tables, each with the guest address it goes to.
#[derive(Debug)]
pub struct Tables {
    pub rsdp: (u64, Vec<u8>),
    pub xsdt: (u64, Vec<u8>),
    pub fadt: (u64, Vec<u8>),
    pub madt: (u64, Vec<u8>),
    pub dsdt: (u64, Vec<u8>),
}

impl Tables {
    /// (name, address, bytes) of every table, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64, &[u8])> {
        [
            ("RSDP", &self.rsdp),
            ("XSDT", &self.xsdt),
            ("FADT", &self.fadt),
            ("MADT", &self.madt),
            ("DSDT", &self.dsdt),
        ]
        .into_iter()
        .map(|(n, (a, b))| (n, *a, b.as_slice()))
    }
}

fn align(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

fn aml_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Build every table for `cfg`, laid out from [`ACPI_START`].
pub fn build(cfg: &AcpiConfig) -> Result<Tables, Error> {
    if cfg.vcpus == 0 || cfg.vcpus > 254 {
        return Err(Error::CpuCount(cfg.vcpus));
    }
    if let Some(d) = cfg.virtio.iter().find(|d| d.base + d.size > 1 << 32) {
        return Err(Error::MmioAbove4G { base: d.base });
    }
    let dsdt = dsdt::dsdt(cfg.virtio);
    let madt = madt::madt(cfg.vcpus);
    let xsdt_len = 36 + 2 * 8;
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let fadt_addr = align(xsdt_addr + xsdt_len);
    let madt_addr = align(fadt_addr + fadt::FADT_LEN as u64);
    let dsdt_addr = align(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > MPTABLE_START {
        return Err(Error::TooLarge {
            size: end - ACPI_START,
            room: MPTABLE_START - ACPI_START,
        });
    }
    let fadt = fadt::fadt(dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = aml_bytes(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(Tables {
        rsdp: (rsdp_addr, rsdp),
        xsdt: (xsdt_addr, xsdt),
        fadt: (fadt_addr, fadt),
        madt: (madt_addr, madt),
        dsdt: (dsdt_addr, dsdt),
    })
}

/// Build the tables and write them into guest memory; returns the RSDP's
/// address for the zero page.
pub fn write(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<u64, Error> {
    let tables = build(cfg)?;
    for (table, addr, bytes) in tables.iter() {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| Error::Write { table, source })?;
    }
    Ok(tables.rsdp.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    pub fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    pub fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    pub const TWO_DEVICES: [MmioDevice; 2] = [
        MmioDevice {
            base: 0xc000_1000,
            size: 0x1000,
            irq: 5,
        },
        MmioDevice {
            base: 0xc000_2000,
            size: 0x1000,
            irq: 6,
        },
    ];

    pub fn two_device_tables() -> Tables {
        build(&AcpiConfig {
            vcpus: 2,
            virtio: &TWO_DEVICES,
        })
        .unwrap()
    }

    /// Signature, length, revision, checksum and OEM id of an SDT.
    pub fn check_header(t: &[u8], sig: &[u8; 4], revision: u8) {
        assert_eq!(&t[0..4], sig);
        assert_eq!(u32_at(t, 4) as usize, t.len(), "{sig:?} length");
        assert_eq!(t[8], revision, "{sig:?} revision");
        assert_eq!(sum(t), 0, "{sig:?} checksum");
        assert_eq!(&t[10..16], b"FLINT ");
        assert_eq!(&t[16..24], &OEM_TABLE_ID);
    }

    #[test]
    fn every_table_header_and_checksum() {
        let t = two_device_tables();
        check_header(&t.xsdt.1, b"XSDT", 1);
        check_header(&t.fadt.1, b"FACP", 6);
        check_header(&t.madt.1, b"APIC", madt::MADT_REVISION);
        check_header(&t.dsdt.1, b"DSDT", 2);
    }

    #[test]
    fn rsdp_points_at_the_xsdt() {
        let t = two_device_tables();
        let r = &t.rsdp.1;
        assert_eq!(t.rsdp.0, 0xe_0000);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(sum(&r[0..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(r.len(), 36);
        assert_eq!(sum(r), 0, "extended checksum");
        assert_eq!(&r[9..15], b"FLINT ");
        assert_eq!(r[15], 2, "revision 2: ACPI 2.0+");
        assert_eq!(u32_at(r, 20), 36, "length");
        assert_eq!(u64_at(r, 24), t.xsdt.0);
    }

    #[test]
    fn xsdt_lists_fadt_and_madt_and_fadt_points_at_dsdt() {
        let t = two_device_tables();
        let x = &t.xsdt.1;
        assert_eq!(x.len(), 36 + 16);
        assert_eq!(u64_at(x, 36), t.fadt.0);
        assert_eq!(u64_at(x, 44), t.madt.0);
        // X_DSDT at offset 140; the 32-bit DSDT field is left 0.
        assert_eq!(u64_at(&t.fadt.1, 140), t.dsdt.0);
        assert_eq!(u32_at(&t.fadt.1, 40), 0);
    }

    #[test]
    fn layout_stays_in_the_reserved_bios_area() {
        let t = build(&AcpiConfig {
            vcpus: 254,
            virtio: &[MmioDevice {
                base: 0xc000_1000,
                size: 0x1000,
                irq: 5,
            }; 19],
        })
        .unwrap();
        let mut prev_end = ACPI_START;
        for (name, addr, bytes) in t.iter() {
            assert!(addr >= prev_end, "{name} overlaps the table before it");
            assert_eq!(addr % 16, 0, "{name} alignment");
            prev_end = addr + bytes.len() as u64;
        }
        assert!(prev_end <= MPTABLE_START);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let cfg = |vcpus, virtio| AcpiConfig { vcpus, virtio };
        assert!(matches!(build(&cfg(0, &[])), Err(Error::CpuCount(0))));
        assert!(matches!(build(&cfg(255, &[])), Err(Error::CpuCount(255))));
        let high = [MmioDevice {
            base: 1 << 32,
            size: 0x1000,
            irq: 5,
        }];
        assert!(matches!(
            build(&cfg(1, &high)),
            Err(Error::MmioAbove4G { .. })
        ));
    }

    #[test]
    fn written_where_linux_looks() {
        let mem = crate::memory::create(16).unwrap();
        let cfg = AcpiConfig {
            vcpus: 1,
            virtio: &TWO_DEVICES,
        };
        assert_eq!(write(&mem, &cfg).unwrap(), 0xe_0000);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(0xe_0000)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
