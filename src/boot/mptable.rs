//! The Intel MultiProcessor table: how a guest without ACPI finds its CPUs,
//! its IOAPIC and the routing of the ISA interrupts.

use vm_memory::{Bytes, GuestAddress};
use devices::GuestMemoryMmap;

use crate::memory::{EBDA_START, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_START};

/// The floating pointer goes at the start of the EBDA; the configuration
/// table in the BIOS area at 0xf0000, where it has room for 254 CPUs.
const MPC_TABLE_START: u64 = MPTABLE_START;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// IOAPIC input pins (KVM's in-kernel IOAPIC has 24).
pub const IRQ_PINS: u8 = crate::layout::IOAPIC_PINS;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const BUS_ID_ISA: u8 = 0;
/// CPUID.1 signature and features advertised in processor entries (family 6,
/// FPU and APIC present); Linux only looks at the APIC ID and flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the MP table supports 1 to 254 vCPUs, not {0}")]
    CpuCount(u8),
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

fn put_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// The IOAPIC's ID: right after the CPUs' APIC IDs.
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

/// Build the configuration table (header and entries) for `cpus` CPUs.
pub fn config_table(cpus: u8) -> Result<Vec<u8>, Error> {
    if cpus == 0 || cpus > 254 {
        return Err(Error::CpuCount(cpus));
    }
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION]);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        put_u32(&mut entries, CPU_SIGNATURE);
        put_u32(&mut entries, CPU_FEATURES);
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, BUS_ID_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic = ioapic_id(cpus);
    entries.extend_from_slice(&[MP_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    put_u32(&mut entries, IOAPIC_ADDR as u32);
    count += 1;
    for irq in 0..IRQ_PINS {
        entries.extend_from_slice(&[MP_INTSRC, MP_INT]);
        put_u16(&mut entries, 0); // conforms to the bus: ISA is edge, active high
        entries.extend_from_slice(&[BUS_ID_ISA, irq, ioapic, irq]);
        count += 1;
    }
    for (kind, dest_apic, lint) in [(MP_EXTINT, 0u8, 0u8), (MP_NMI, 0xff, 1)] {
        entries.extend_from_slice(&[MP_LINTSRC, kind]);
        put_u16(&mut entries, 0);
        entries.extend_from_slice(&[BUS_ID_ISA, 0, dest_apic, lint]);
        count += 1;
    }

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    put_u16(&mut table, (44 + entries.len()) as u16);
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"FLINT   ");
    table.extend_from_slice(b"microVM     ");
    put_u32(&mut table, 0); // OEM table pointer
    put_u16(&mut table, 0); // OEM table size
    put_u16(&mut table, count);
    put_u32(&mut table, LAPIC_ADDR as u32);
    put_u32(&mut table, 0); // extended table length, reserved
    table.extend_from_slice(&entries);
    let sum = checksum(&table);
    if let Some(c) = table.get_mut(7) {
        *c = sum;
    }
    Ok(table)
}

/// The 16-byte MP floating pointer structure pointing at the table.
pub fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[0..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&table_addr.to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = 4; // spec revision 1.4
    f[10] = checksum(&f);
    f
}

/// Write the floating pointer and the table for `cpus` CPUs.
pub fn setup(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), Error> {
    let table = config_table(cpus)?;
    mem.write_slice(&table, GuestAddress(MPC_TABLE_START))
        .map_err(Error::Write)?;
    mem.write_slice(
        &floating_pointer(MPC_TABLE_START as u32),
        GuestAddress(EBDA_START),
    )
    .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn table_checksums_to_zero() {
        for cpus in [1u8, 2, 64, 254] {
            let t = config_table(cpus).unwrap();
            assert_eq!(sum(&t), 0);
            assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
            let entries = u16::from_le_bytes([t[34], t[35]]);
            assert_eq!(entries as usize, cpus as usize + 2 + IRQ_PINS as usize + 2);
        }
        assert_eq!(sum(&floating_pointer(0xf0000)), 0);
    }

    #[test]
    fn processors_and_ioapic() {
        let t = config_table(2).unwrap();
        // First processor entry follows the 44-byte header: BSP, enabled.
        assert_eq!(
            &t[44..48],
            &[MP_PROCESSOR, 0, APIC_VERSION, CPU_ENABLED | CPU_BSP]
        );
        assert_eq!(&t[64..68], &[MP_PROCESSOR, 1, APIC_VERSION, CPU_ENABLED]);
        let ioapic = 44 + 2 * 20 + 8;
        assert_eq!(&t[ioapic..ioapic + 4], &[MP_IOAPIC, 2, IOAPIC_VERSION, 1]);
    }

    #[test]
    fn cpu_count_limits() {
        assert!(config_table(0).is_err());
        assert!(config_table(255).is_err());
    }

    #[test]
    fn written_where_linux_scans() {
        let mem = crate::memory::create(16).unwrap();
        setup(&mem, 4).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
