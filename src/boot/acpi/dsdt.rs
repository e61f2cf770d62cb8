//! The DSDT: the devices a guest cannot discover by itself, in AML.
//!
//! ```text
//! Scope (\_SB) {
//!     Device (COM1) { _HID PNP0501, _UID 1,
//!                     _CRS: IO (Decode16, 0x3F8, 0x3F8, 1, 8), IRQNoFlags {4} }
//!     Device (PS2K) { _HID PNP0303, _UID 1,
//!                     _CRS: IO 0x60, IO 0x64, IRQNoFlags {1} }
//!     Device (VR00) { _HID "LNRO0005", _UID 0,      (one per virtio-mmio device)
//!                     _CRS: Memory32Fixed (ReadWrite, base, 0x1000),
//!                           Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {irq} }
//! }
//! Name (_S5, Package { 5, 0 })      (SLP_TYP for the sleep control register)
//! ```
//!
//! `LNRO0005` is the ACPI id Linux's virtio_mmio driver matches.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};
use devices::legacy::acpi_pm::S5_SLEEP_TYPE;

use super::{MmioDevice, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{COM1_IRQ, COM1_PORT, COM1_PORT_LEN, I8042_IRQ, I8042_PORT};

/// DSDT revision 2: integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// The i8042's data and command/status ports.
const I8042_DATA_PORT: u16 = I8042_PORT as u16;
const I8042_CMD_PORT: u16 = I8042_PORT as u16 + 4;

/// An `IRQNoFlags () {irq}` descriptor: a small IRQ descriptor with only
/// its 16-bit mask (edge, active high, exclusive). acpi_tables has only the
/// extended interrupt descriptor, which ISA devices do not use.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x22); // small item 0x04 (IRQ), length 2
        sink.word(1u16 << self.0);
    }
}

/// The virtio device node's name: VR00, VR01, ... (hex).
pub fn virtio_node_name(n: usize) -> String {
    format!("VR{n:02X}")
}

fn com1() -> Vec<u8> {
    let mut v = Vec::new();
    let io = IO::new(COM1_PORT as u16, COM1_PORT as u16, 1, COM1_PORT_LEN as u8);
    let irq = IrqNoFlags(COM1_IRQ as u8);
    Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &1u8),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io, &irq])),
        ],
    )
    .to_aml_bytes(&mut v);
    v
}

fn i8042() -> Vec<u8> {
    let mut v = Vec::new();
    let data = IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let cmd = IO::new(I8042_CMD_PORT, I8042_CMD_PORT, 1, 1);
    let irq = IrqNoFlags(I8042_IRQ as u8);
    Device::new(
        "PS2K".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0303")),
            &Name::new("_UID".into(), &1u8),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&data, &cmd, &irq]),
            ),
        ],
    )
    .to_aml_bytes(&mut v);
    v
}

fn virtio(n: usize, d: &MmioDevice) -> Vec<u8> {
    let mut v = Vec::new();
    // build() refuses windows above 4 GiB.
    let mem = Memory32Fixed::new(true, d.base as u32, d.size as u32);
    let irq = Interrupt::new(true, true, false, false, d.irq);
    Device::new(
        Path::new(&virtio_node_name(n)),
        vec![
            &Name::new("_HID".into(), &VIRTIO_MMIO_HID),
            &Name::new("_UID".into(), &(n as u64)),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&mem, &irq])),
        ],
    )
    .to_aml_bytes(&mut v);
    v
}

/// Already encoded AML, so that devices built one at a time can go into
/// one Scope.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// The DSDT's AML body (without the table header).
pub fn aml(virtio_devices: &[MmioDevice]) -> Vec<u8> {
    let mut devices = vec![Raw(com1()), Raw(i8042())];
    devices.extend(
        virtio_devices
            .iter()
            .enumerate()
            .map(|(n, d)| Raw(virtio(n, d))),
    );
    let children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    let mut v = Vec::new();
    Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut v);
    Name::new("_S5_".into(), &Package::new(vec![&S5_SLEEP_TYPE, &0u8])).to_aml_bytes(&mut v);
    v
}

/// The whole DSDT.
pub fn dsdt(virtio_devices: &[MmioDevice]) -> Vec<u8> {
    let mut t = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.append_slice(&aml(virtio_devices));
    t.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check_header, TWO_DEVICES};
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn two_virtio_devices() {
        let t = dsdt(&TWO_DEVICES);
        check_header(&t, b"DSDT", DSDT_REVISION);
        // Each device: its node, _HID string, Memory32Fixed (0x86, length
        // 9, read-write, base, 0x1000) and extended IRQ (0x89, length 6,
        // consumer|edge, one interrupt, the number).
        for (n, d) in TWO_DEVICES.iter().enumerate() {
            assert!(contains(&t, virtio_node_name(n).as_bytes()));
            let mut mem = vec![0x86, 9, 0, 1];
            mem.extend_from_slice(&(d.base as u32).to_le_bytes());
            mem.extend_from_slice(&0x1000u32.to_le_bytes());
            assert!(contains(&t, &mem), "device {n} memory");
            let mut irq = vec![0x89, 6, 0, 0b0011, 1];
            irq.extend_from_slice(&d.irq.to_le_bytes());
            assert!(contains(&t, &irq), "device {n} interrupt");
        }
        // Name(_HID, "LNRO0005"): NameOp, name, StringPrefix, string, NUL.
        let mut hid = vec![0x08];
        hid.extend_from_slice(b"_HID\x0dLNRO0005\0");
        assert_eq!(t.windows(hid.len()).filter(|w| *w == &hid[..]).count(), 2);
        // _UID 1 of the second device: NameOp "_UID" OneOp.
        assert!(contains(&t, b"\x08_UID\x01"));
        // \_SB_ scope, COM1 and the keyboard with their EISA ids.
        assert!(contains(&t, b"\\_SB_"));
        assert!(contains(&t, b"\x08_HID\x0c\x41\xd0\x05\x01"), "PNP0501");
        assert!(contains(&t, b"\x08_HID\x0c\x41\xd0\x03\x03"), "PNP0303");
        // IO(Decode16, 0x3f8, 0x3f8, 1, 8), IRQNoFlags {4}.
        assert!(contains(
            &t,
            &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8, 0x22, 0x10, 0]
        ));
        // IO 0x60, IO 0x64, IRQNoFlags {1}.
        assert!(contains(
            &t,
            &[0x47, 1, 0x60, 0, 0x60, 0, 1, 1, 0x47, 1, 0x64, 0, 0x64, 0, 1, 1, 0x22, 2, 0]
        ));
        // Name(_S5_, Package(2) {5, 0}).
        assert!(t.ends_with(b"\x08_S5_\x12\x05\x02\x0a\x05\x00"));
    }

    #[test]
    fn no_virtio_devices() {
        let t = dsdt(&[]);
        check_header(&t, b"DSDT", DSDT_REVISION);
        assert!(!contains(&t, b"LNRO0005"));
        assert!(contains(&t, b"COM1") && contains(&t, b"PS2K"));
    }
}
