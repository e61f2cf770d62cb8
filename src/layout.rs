//! Where flint's devices sit: port numbers, interrupt lines and the size of
//! a virtio-mmio window. The memory map itself is in [`crate::memory`].

/// COM1, the guest console.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;
/// The i8042 keyboard controller (data 0x60, command/status 0x64).
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
pub const I8042_IRQ: u32 = 1;
/// IOAPIC input pins; the MP table lists one ISA interrupt per pin.
pub const IOAPIC_PINS: u8 = 24;
/// virtio devices take IOAPIC pins from here to the last one.
pub const FIRST_VIRTIO_IRQ: u32 = 5;
pub const LAST_IRQ: u32 = IOAPIC_PINS as u32 - 1;
/// One virtio-mmio window per device.
pub const VIRTIO_MMIO_SIZE: u64 = devices::virtio::mmio::MMIO_WINDOW_SIZE;
/// Where the VMM's queue-notify ioeventfds go in a window.
pub const QUEUE_NOTIFY_OFFSET: u64 = devices::virtio::mmio::QUEUE_NOTIFY;
