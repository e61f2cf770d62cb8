//! Where flint's devices sit: port numbers, interrupt lines and the size of
//! a virtio-mmio window, in one place. The legacy devices define their own
//! standard PC addresses (devices::legacy); the VMM takes them from there
//! rather than repeating them. The memory map itself is in [`crate::memory`].

pub use devices::legacy::{
    ACPI_PM_BASE as ACPI_PM_PORT, ACPI_PM_PORT_LEN, CMOS_BASE, CMOS_PORT_LEN,
    COM1_BASE as COM1_PORT, COM1_IRQ, I8042_BASE as I8042_PORT, I8042_KBD_IRQ as I8042_IRQ,
    I8042_PORT_LEN, SERIAL_PORT_LEN as COM1_PORT_LEN,
};

/// IOAPIC input pins; the MP table lists one ISA interrupt per pin.
pub const IOAPIC_PINS: u8 = 24;
/// virtio devices take IOAPIC pins from here to the last one.
pub const FIRST_VIRTIO_IRQ: u32 = 5;
pub const LAST_IRQ: u32 = IOAPIC_PINS as u32 - 1;
/// One virtio-mmio window per device.
pub const VIRTIO_MMIO_SIZE: u64 = devices::virtio::mmio::MMIO_WINDOW_SIZE;
/// Where the VMM's queue-notify ioeventfds go in a window.
pub const QUEUE_NOTIFY_OFFSET: u64 = devices::virtio::mmio::QUEUE_NOTIFY;

// virtio lines must stay clear of the legacy ones and inside the IOAPIC.
const _: () = assert!(FIRST_VIRTIO_IRQ > COM1_IRQ && FIRST_VIRTIO_IRQ > I8042_IRQ);
const _: () = assert!(LAST_IRQ < IOAPIC_PINS as u32);
