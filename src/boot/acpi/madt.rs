//! The MADT (signature APIC): the CPUs' local APICs, the IOAPIC and the
//! local NMI line, matching what the MP table and CPUID say.
//!
//! No Interrupt Source Override for ISA IRQ 0: PCs route the PIT to GSI 2,
//! but flint leaves KVM's default GSI routing in place, where the PIT's
//! GSI 0 reaches IOAPIC pin 0, as the MP table also says. Without an
//! override every ISA IRQ is identity-mapped, edge, active high, which is
//! exactly the routing KVM applies.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::boot::mptable;
use crate::memory::{IOAPIC_ADDR, LAPIC_ADDR};

/// ACPI 6.3's MADT revision (the newest `iasl` on Debian 12 knows).
pub const MADT_REVISION: u8 = 5;
const MADT_HEADER_LEN: u32 = 44;
/// Dual 8259s are present (KVM's in-kernel PIC).
const PCAT_COMPAT: u32 = 1;
const LOCAL_APIC_NMI: u8 = 4;
const ALL_PROCESSORS: u8 = 0xff;
/// MPS INTI flags 0: polarity and trigger conform to the bus.
const NMI_FLAGS: u16 = 0;
const NMI_LINT: u8 = 1;

/// The MADT for `vcpus` vCPUs (APIC ids 0..vcpus-1).
pub fn madt(vcpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u32(36, LAPIC_ADDR as u32);
    t.write_u32(40, PCAT_COMPAT);
    let mut entries = Vec::with_capacity(usize::from(vcpus) * 8 + 18);
    for id in 0..vcpus {
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(mptable::ioapic_id(vcpus), IOAPIC_ADDR as u32, 0).to_aml_bytes(&mut entries);
    entries.extend_from_slice(&[LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    entries.extend_from_slice(&NMI_FLAGS.to_le_bytes());
    entries.push(NMI_LINT);
    t.append_slice(&entries);
    t.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check_header, u32_at};
    use super::*;

    /// (type, bytes) of each entry after the 44-byte header.
    fn entries(t: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < t.len() {
            let len = usize::from(t[off + 1]);
            out.push((t[off], &t[off..off + len]));
            off += len;
        }
        assert_eq!(off, t.len());
        out
    }

    #[test]
    fn entries_for_1_2_and_8_vcpus() {
        for n in [1u8, 2, 8] {
            let t = madt(n);
            check_header(&t, b"APIC", MADT_REVISION);
            assert_eq!(u32_at(&t, 36), 0xfee0_0000);
            assert_eq!(u32_at(&t, 40), PCAT_COMPAT);
            let e = entries(&t);
            assert_eq!(e.len(), usize::from(n) + 2, "{n} vCPUs");
            for (i, (ty, b)) in e.iter().take(usize::from(n)).enumerate() {
                // Processor Local APIC: uid, APIC id = vCPU index, enabled.
                assert_eq!((*ty, b.len()), (0, 8));
                assert_eq!((b[2], b[3]), (i as u8, i as u8));
                assert_eq!(u32_at(b, 4), 1);
            }
            let (ty, io) = e[usize::from(n)];
            assert_eq!((ty, io.len()), (1, 12));
            assert_eq!(io[2], mptable::ioapic_id(n), "the MP table's IOAPIC id");
            assert_eq!(u32_at(io, 4), 0xfec0_0000);
            assert_eq!(u32_at(io, 8), 0, "GSI base");
            let (ty, nmi) = e[usize::from(n) + 1];
            assert_eq!((ty, nmi), (4, &[4u8, 6, 0xff, 0, 0, 1][..]));
        }
    }
}
