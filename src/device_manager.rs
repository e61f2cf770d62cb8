//! Device placement: port and MMIO addresses, interrupt lines, and the
//! wiring of each device's EventFds to KVM (irqfd, ioeventfd) and to the
//! event loop.

use std::io::Stdout;
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::legacy::{Cmos, I8042Device, SerialDevice, CMOS_BASE, CMOS_PORT_LEN};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::VirtioDevice;
use devices::{Bus, BusDevice};
use event_manager::MutEventSubscriber;
use vm_memory::GuestMemoryMmap;

use crate::console::ConsoleOut;
use crate::memory::{BOOT_TIMER_ADDR, BOOT_TIMER_MAGIC, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::timer::{self, Phase};
use crate::vstate::vm::{self, Vm};

const COM1_PORT: u64 = 0x3f8;
const COM1_IRQ: u32 = 4;
const I8042_PORT: u64 = 0x60;
const I8042_IRQ: u32 = 1;
/// virtio devices take IOAPIC pins from here to the last one.
const FIRST_VIRTIO_IRQ: u32 = 5;
const LAST_IRQ: u32 = 23;
/// Offset of QueueNotify in a virtio-mmio window.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

pub type Serial = SerialDevice<ConsoleOut<Stdout>>;

/// Errors from placing devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the {0} device: {1}")]
    Create(&'static str, String),
    #[error(transparent)]
    Bus(#[from] devices::BusError),
    #[error(transparent)]
    Kvm(#[from] vm::Error),
    #[error("too many virtio devices: only {0} interrupt lines are free")]
    OutOfIrqs(u32),
}

/// The boot timer: the guest writes 123 at its address once user space is
/// up (Firecracker's convention), and flint records the time.
pub struct BootTimer {
    pub print: bool,
}

impl BusDevice for BootTimer {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) && timer::mark(Phase::BootTimer) {
            if let (true, Some(ns)) = (self.print, timer::get(Phase::BootTimer)) {
                eprintln!(
                    "flint: guest boot timer: {:.3} ms since launch",
                    ns as f64 / 1e6
                );
            }
        }
    }
}

/// An event loop subscriber that also is a virtio device.
pub trait VirtioSubscriber: VirtioDevice + MutEventSubscriber {}
impl<T: VirtioDevice + MutEventSubscriber> VirtioSubscriber for T {}

/// All devices of one VM.
pub struct DeviceManager {
    pub pio: Bus,
    pub mmio: Bus,
    pub serial: Arc<Mutex<Serial>>,
    pub i8042: Arc<Mutex<I8042Device>>,
    /// `virtio_mmio.device=` parameters describing each virtio device.
    pub cmdline: Vec<String>,
    /// Devices to add to the event loop.
    pub subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    next_irq: u32,
    next_mmio: u64,
}

impl DeviceManager {
    /// Create the legacy devices (COM1, i8042, boot timer) and wire them.
    pub fn new(vm: &Vm, print_boot_timer: bool) -> Result<Self, Error> {
        let serial = SerialDevice::new(ConsoleOut::new(std::io::stdout()))
            .map_err(|e| Error::Create("serial", e.to_string()))?;
        vm.register_irqfd(serial.interrupt_evt(), COM1_IRQ)?;
        let serial = Arc::new(Mutex::new(serial));
        let i8042 = I8042Device::new().map_err(|e| Error::Create("i8042", e.to_string()))?;
        vm.register_irqfd(i8042.interrupt_evt(), I8042_IRQ)?;
        let i8042 = Arc::new(Mutex::new(i8042));

        let mut pio = Bus::new();
        pio.insert(serial.clone(), COM1_PORT, 8)?;
        pio.insert(i8042.clone(), I8042_PORT, 5)?;
        pio.insert(Arc::new(Mutex::new(Cmos::new())), CMOS_BASE, CMOS_PORT_LEN)?;
        let mut mmio = Bus::new();
        mmio.insert(
            Arc::new(Mutex::new(BootTimer {
                print: print_boot_timer,
            })),
            BOOT_TIMER_ADDR,
            0x1000,
        )?;
        Ok(DeviceManager {
            pio,
            mmio,
            serial,
            i8042,
            cmdline: Vec::new(),
            subscribers: Vec::new(),
            next_irq: FIRST_VIRTIO_IRQ,
            next_mmio: VIRTIO_MMIO_START,
        })
    }

    /// Put a virtio device on the MMIO bus: allocate its window and IRQ,
    /// register its queue notifications as ioeventfds and its interrupt as
    /// an irqfd, and queue it for the event loop.
    pub fn add_virtio<D: VirtioSubscriber + Send + 'static>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        device: D,
    ) -> Result<Arc<Mutex<D>>, Error> {
        if self.next_irq > LAST_IRQ {
            return Err(Error::OutOfIrqs(LAST_IRQ - FIRST_VIRTIO_IRQ + 1));
        }
        let (base, irq) = (self.next_mmio, self.next_irq);
        let device = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(mem.clone(), device.clone())
            .map_err(|e| Error::Create("virtio-mmio transport", e.to_string()))?;
        {
            let d = lock(&device);
            for (i, evt) in d.queue_events().iter().enumerate() {
                vm.register_mmio_ioevent(evt, base + QUEUE_NOTIFY_OFFSET, i as u32)?;
            }
        }
        vm.register_irqfd(transport.interrupt().eventfd(), irq)?;
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, VIRTIO_MMIO_SIZE)?;
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.subscribers.push(device.clone());
        self.next_mmio += VIRTIO_MMIO_SIZE;
        self.next_irq += 1;
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_timer_needs_the_magic() {
        let mut t = BootTimer { print: false };
        t.write(0, 4, &[BOOT_TIMER_MAGIC]);
        t.write(0, 0, &[1]);
        assert_eq!(timer::get(Phase::BootTimer), None);
        t.write(0, 0, &[BOOT_TIMER_MAGIC]);
        assert!(timer::get(Phase::BootTimer).is_some());
    }
}
