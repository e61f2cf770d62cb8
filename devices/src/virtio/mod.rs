//! virtio devices and their MMIO transport.
//!
//! A device model implements [`VirtioDevice`]; [`mmio::MmioTransport`] wraps it
//! and is put on the MMIO bus. Queue kicks reach the device through its queue
//! EventFds (registered by the VMM as ioeventfds) and the device signals the
//! guest through [`Interrupt`] (whose EventFd the VMM registers as an irqfd).
//! Queue work runs on the VMM's event loop: each device is also an
//! `event_manager::MutEventSubscriber`.
//!
//! Snapshots: [`mmio::MmioTransport::prepare_save`] and `state` take a
//! device's state with the vCPUs paused, `restore` puts it into a device
//! built again from the same configuration (see [`mmio::MmioState`] for
//! the order of steps); a device adds its own part through
//! [`VirtioDevice::save_state`] and [`VirtioDevice::restore_state`].

pub mod active;
pub mod balloon;
pub mod block;
pub mod common;
pub mod iovec;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod state;
pub mod timer;
pub mod vsock;

#[cfg(test)]
pub(crate) mod testing;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use common::VirtioCommon;
pub use state::{DeviceState, QueueSnapshot, StateError};

/// virtio device IDs (virtio 1.2, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;

/// Feature bits common to every device.
pub const VIRTIO_F_VERSION_1: u32 = 32;
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// InterruptStatus bits.
pub const INT_VRING: u32 = 0x1;
pub const INT_CONFIG: u32 = 0x2;

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
    #[error("device backend failed: {0}")]
    Backend(String),
    #[error("could not signal the event loop: {0}")]
    Signal(io::Error),
}

/// The interrupt line of one virtio-mmio device: the InterruptStatus bits the
/// driver reads, and the EventFd that raises the line (a KVM irqfd).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
    needs_reset: AtomicBool,
}

impl Interrupt {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(EFD_NONBLOCK)?,
            needs_reset: AtomicBool::new(false),
        })
    }

    /// Set `bits` in InterruptStatus and raise the line.
    pub fn trigger(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// InterruptStatus as the driver reads it.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the driver clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device hit an error it cannot recover from without the driver
    /// (a corrupt ring): the transport shows DEVICE_NEEDS_RESET in Status
    /// until the driver resets the device, and the driver is told with a
    /// configuration change interrupt (virtio 1.2, section 2.1.2).
    pub fn signal_needs_reset(&self) -> io::Result<()> {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(INT_CONFIG)
    }

    /// Whether the device asked for a reset since the last one.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The driver reset the device.
    pub fn clear_needs_reset(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Put back InterruptStatus and the reset request of a saved device.
    /// Pending bits raise the line again: the guest may not have seen them,
    /// and a spurious interrupt costs less than a lost one.
    pub fn restore(&self, status: u32, needs_reset: bool) -> io::Result<()> {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
        if status != 0 {
            self.evt.write(1)?;
        }
        Ok(())
    }

    /// The EventFd to register as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// A virtio device model behind a transport.
///
/// A device implements `common`, `common_mut` and the methods about its
/// own work; identity, queues and features come from its [`VirtioCommon`]
/// through the provided methods, which a device overrides only to add to
/// them.
pub trait VirtioDevice: Send {
    /// What the device holds like every other.
    fn common(&self) -> &VirtioCommon;
    /// The same, to record the driver's features.
    fn common_mut(&mut self) -> &mut VirtioCommon;
    /// virtio device ID ([`TYPE_NET`], [`TYPE_BLOCK`], [`TYPE_VSOCK`], ...).
    fn device_type(&self) -> u32 {
        self.common().device_type()
    }
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        self.common().queue_max_sizes()
    }
    /// One EventFd per queue, written when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd] {
        self.common().queue_events()
    }
    /// Features the device offers.
    fn avail_features(&self) -> u64 {
        self.common().avail_features()
    }
    /// The features the driver accepted (a subset of `avail_features`), given
    /// when the driver sets FEATURES_OK.
    fn ack_features(&mut self, features: u64) {
        self.common_mut().ack(features);
    }
    /// Read the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start processing `queues`. Called on a vCPU
    /// thread, so a device only records what it needs and lets its event loop
    /// subscriber do the work.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: std::sync::Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;
    /// The driver wrote 0 to Status: drop the queues and go back to the
    /// state before activation.
    fn reset(&mut self);

    /// The queues the device got at activation, as they stand now (empty
    /// before activation). A chain the device took from the available ring
    /// and holds unanswered is counted back into the ring: `next_avail`
    /// points at it, so a restored device takes it again. A device that
    /// keeps queues must override this; the transport saves its own copies
    /// otherwise, whose positions stop at activation.
    fn queue_states(&self) -> Vec<QueueState> {
        Vec::new()
    }

    /// Called with the vCPUs paused, before the state is taken: finish
    /// whatever the device has started on the guest's behalf (host I/O in
    /// flight) so the used ring agrees with `queue_states`.
    fn prepare_save(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    /// The device's own state, beyond what the transport holds.
    fn save_state(&self) -> DeviceState {
        DeviceState::None
    }

    /// Put back what `save_state` gave, on a device built from the same
    /// configuration and not yet activated: the transport calls this before
    /// it activates the device again. On error nothing has changed.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::None => Ok(()),
            other => Err(other.wrong_device("stateless")),
        }
    }
}

/// Check that every queue the driver set up lies in guest memory; the
/// error names the first one that does not. Each device runs this in
/// `activate` (the transport checks at QueueReady too, but a device must
/// not trust its caller).
pub fn check_queues<'a>(
    queues: impl IntoIterator<Item = &'a Queue>,
    mem: &GuestMemoryMmap,
) -> Result<(), ActivateError> {
    use virtio_queue::QueueT;
    match queues.into_iter().position(|q| !q.is_valid(mem)) {
        Some(i) => Err(ActivateError::InvalidQueue(i)),
        None => Ok(()),
    }
}

/// After adding used buffers to `queue`: raise the vring interrupt if the
/// driver wants one (with EVENT_IDX that is a real question). Returns
/// whether it was raised. If used_event cannot be read, interrupt anyway:
/// a spurious interrupt costs less than a lost one.
pub fn notify_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    name: &str,
) -> bool {
    use virtio_queue::QueueT;
    let wanted = match queue.needs_notification(mem) {
        Ok(w) => w,
        Err(e) => {
            crate::rate_limited!(error, "{name}: cannot read the queue's used_event: {e}");
            true
        }
    };
    if wanted {
        if let Err(e) = interrupt.trigger(INT_VRING) {
            crate::rate_limited!(error, "{name}: cannot interrupt the guest: {e}");
        }
    }
    wanted
}

/// Read `data.len()` bytes at `offset` of a little-endian config image,
/// zero-filling anything beyond its end (the spec leaves such reads undefined;
/// zeros are the kind answer).
pub fn read_config_bytes(image: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(rest) = image.get(start..) {
        for (d, s) in data.iter_mut().zip(rest) {
            *d = *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_status_and_ack() {
        let irq = Interrupt::new().unwrap();
        irq.trigger(INT_VRING).unwrap();
        irq.trigger(INT_CONFIG).unwrap();
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
        assert!(!irq.needs_reset());
        irq.signal_needs_reset().unwrap();
        assert!(irq.needs_reset());
        irq.clear_needs_reset();
        assert!(!irq.needs_reset());
    }

    #[test]
    fn queues_outside_memory_are_named() {
        use virtio_queue::QueueT;
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)]).unwrap();
        let queue = |used: u64| {
            let mut q = Queue::new(16).unwrap();
            q.set_desc_table_address(Some(0x1000), Some(0));
            q.set_avail_ring_address(Some(0x2000), Some(0));
            q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
            q.set_ready(true);
            q
        };
        let (good, bad) = (queue(0x3000), queue(0x10_0000));
        assert!(check_queues([&good], &mem).is_ok());
        assert!(matches!(
            check_queues([&good, &bad], &mem),
            Err(ActivateError::InvalidQueue(1))
        ));
    }

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let image = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&image, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&image, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
