//! Device placement: port and MMIO addresses, interrupt lines, and the
//! wiring of each device's EventFds to KVM (irqfd, ioeventfd) and to the
//! event loop.

use std::io::Stdout;
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::legacy::{AcpiPmDevice, Cmos, I8042Device, SerialDevice};
use devices::virtio::balloon::Balloon;
use devices::virtio::block::Block;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::Net;
use devices::virtio::rng::Rng;
use devices::virtio::vsock::Vsock;
use devices::virtio::VirtioDevice;
use devices::{Bus, BusDevice};
use event_manager::MutEventSubscriber;
use devices::GuestMemoryMmap;

use crate::console::ConsoleOut;
use crate::layout::{
    ACPI_PM_PORT, ACPI_PM_PORT_LEN, CMOS_BASE, CMOS_PORT_LEN, COM1_IRQ, COM1_PORT, COM1_PORT_LEN,
    FIRST_VIRTIO_IRQ, I8042_IRQ, I8042_PORT, I8042_PORT_LEN, LAST_IRQ, QUEUE_NOTIFY_OFFSET,
    VIRTIO_MMIO_SIZE,
};
use crate::memory::{BOOT_TIMER_ADDR, BOOT_TIMER_MAGIC, VIRTIO_MMIO_START};
use crate::timer::{self, Phase};
use crate::vstate::vm::{self, Vm};

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

/// A typed handle on a virtio device model, for the VMM's own use (metrics,
/// a drive's backing file swapped at run time).
#[derive(Clone)]
pub enum VirtioHandle {
    Block(Arc<Mutex<Block>>),
    Net(Arc<Mutex<Net>>),
    Rng(Arc<Mutex<Rng>>),
    Balloon(Arc<Mutex<Balloon>>),
    Vsock(Arc<Mutex<Vsock>>),
}

pub type SharedTransport = Arc<Mutex<MmioTransport>>;

/// One virtio device in the registry: its id (drive_id or iface_id), where
/// it sits, and handles on its transport and its model.
pub struct DeviceEntry {
    pub id: String,
    pub mmio_base: u64,
    pub irq: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub handle: VirtioHandle,
}

/// All devices of one VM.
pub struct DeviceManager {
    pub pio: Bus,
    pub mmio: Bus,
    pub serial: Arc<Mutex<Serial>>,
    pub i8042: Arc<Mutex<I8042Device>>,
    /// The ACPI sleep control and reset registers.
    pub acpi_pm: Arc<Mutex<AcpiPmDevice>>,
    pub cmos: Arc<Mutex<Cmos>>,
    /// `virtio_mmio.device=` parameters describing each virtio device.
    pub cmdline: Vec<String>,
    /// Devices to add to the event loop.
    pub subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    /// Every virtio device, in the order they were attached.
    pub registry: Vec<DeviceEntry>,
    next_irq: u32,
    next_mmio: u64,
}

impl DeviceManager {
    /// Create the legacy devices (COM1, i8042, CMOS, ACPI power registers,
    /// boot timer) and wire them.
    pub fn new(vm: &Vm, print_boot_timer: bool) -> Result<Self, Error> {
        let serial = SerialDevice::new(ConsoleOut::new(std::io::stdout()))
            .map_err(|e| Error::Create("serial", e.to_string()))?;
        vm.register_irqfd(serial.interrupt_evt(), COM1_IRQ)?;
        let serial = Arc::new(Mutex::new(serial));
        let i8042 = I8042Device::new().map_err(|e| Error::Create("i8042", e.to_string()))?;
        vm.register_irqfd(i8042.interrupt_evt(), I8042_IRQ)?;
        let i8042 = Arc::new(Mutex::new(i8042));
        let acpi_pm =
            AcpiPmDevice::new().map_err(|e| Error::Create("ACPI power", e.to_string()))?;
        let acpi_pm = Arc::new(Mutex::new(acpi_pm));

        let mut pio = Bus::new();
        pio.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN)?;
        pio.insert(i8042.clone(), I8042_PORT, I8042_PORT_LEN)?;
        let cmos = Arc::new(Mutex::new(Cmos::new()));
        pio.insert(cmos.clone(), CMOS_BASE, CMOS_PORT_LEN)?;
        pio.insert(acpi_pm.clone(), ACPI_PM_PORT, ACPI_PM_PORT_LEN)?;
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
            acpi_pm,
            cmos,
            cmdline: Vec::new(),
            subscribers: Vec::new(),
            registry: Vec::new(),
            next_irq: FIRST_VIRTIO_IRQ,
            next_mmio: VIRTIO_MMIO_START,
        })
    }

    /// Put a virtio device on the MMIO bus: allocate its window and IRQ,
    /// register its queue notifications as ioeventfds and its interrupt as
    /// an irqfd, queue it for the event loop and record it in the registry
    /// under `id`, with the typed handle `wrap` makes.
    pub fn add_virtio<D: VirtioSubscriber + Send + 'static>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        id: &str,
        device: D,
        wrap: fn(Arc<Mutex<D>>) -> VirtioHandle,
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
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.subscribers.push(device.clone());
        self.registry.push(DeviceEntry {
            id: id.to_string(),
            mmio_base: base,
            irq,
            transport,
            handle: wrap(device.clone()),
        });
        self.next_mmio += VIRTIO_MMIO_SIZE;
        self.next_irq += 1;
        Ok(device)
    }

    /// Every virtio device as the ACPI DSDT describes it.
    pub fn acpi_devices(&self) -> Vec<crate::boot::acpi::MmioDevice> {
        self.registry
            .iter()
            .map(|d| crate::boot::acpi::MmioDevice {
                base: d.mmio_base,
                size: VIRTIO_MMIO_SIZE,
                irq: d.irq,
            })
            .collect()
    }

    /// The registry entry of the device with `id`.
    pub fn find(&self, id: &str) -> Option<&DeviceEntry> {
        self.registry.iter().find(|d| d.id == id)
    }

    /// The VM has ended: remove the unix sockets its devices listen on
    /// (the VM itself is not torn down before flint exits, so the devices'
    /// own clean-up never runs).
    pub fn remove_host_sockets(&self) {
        for d in &self.registry {
            if let VirtioHandle::Vsock(v) = &d.handle {
                let _ = std::fs::remove_file(lock(v).uds_path());
            }
        }
    }

    /// The balloon, if the VM has one, with its transport.
    pub fn balloon(&self) -> Option<(&Arc<Mutex<Balloon>>, &SharedTransport)> {
        self.registry.iter().find_map(|d| match &d.handle {
            VirtioHandle::Balloon(b) => Some((b, &d.transport)),
            _ => None,
        })
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
