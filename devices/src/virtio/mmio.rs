//! virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! [`MmioTransport`] owns the register state a driver programs (feature
//! selection, queue layout, device status) and hands the device its queues once
//! the driver sets DRIVER_OK. Everything the guest writes is checked against
//! the spec's rules; a write that breaks them is ignored and counted (or, if
//! the device cannot start, answered with DEVICE_NEEDS_RESET), never a panic.
//!
//! The VMM registers each queue EventFd from [`VirtioDevice::queue_events`] as
//! an ioeventfd at `base + QUEUE_NOTIFY` (datamatch = queue index) and the
//! [`Interrupt`] EventFd as an irqfd; the QueueNotify path here is only the
//! fallback for a write that reaches the bus anyway.

use std::io;
use std::sync::{Arc, Mutex};

use crate::GuestMemoryMmap;
use log::error;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateError, Interrupt, VirtioDevice, INT_CONFIG, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::bus::{lock, BusDevice};

mod state;
pub use state::MmioState;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// virtio-mmio version 2 is the virtio 1.x (non-legacy) interface.
pub const MMIO_VERSION: u32 = 2;
/// "FLNT": what the driver reads as VendorID.
pub const VENDOR_ID: u32 = 0x464c_4e54;

// Register offsets (virtio 1.2, table 4.1).
pub const MAGIC: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const VENDOR: u64 = 0x00c;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
/// The VMM's ioeventfds go here, at the window base plus this offset.
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const SHM_SEL: u64 = 0x0ac;
pub const SHM_LEN_LOW: u64 = 0x0b0;
pub const SHM_LEN_HIGH: u64 = 0x0b4;
pub const SHM_BASE_LOW: u64 = 0x0b8;
pub const SHM_BASE_HIGH: u64 = 0x0bc;
pub const CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG: u64 = 0x100;

// Device status bits (virtio 1.2, section 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 0x01;
pub const STATUS_DRIVER: u32 = 0x02;
pub const STATUS_DRIVER_OK: u32 = 0x04;
pub const STATUS_FEATURES_OK: u32 = 0x08;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("could not create the interrupt EventFd of a virtio-mmio device: {0}")]
    Interrupt(io::Error),
    #[error("could not duplicate the EventFd of queue {index}: {source}")]
    QueueEvent { index: usize, source: io::Error },
    #[error(
        "queue {index} has maximum size {size}; it must be a power of two between 1 and 32768"
    )]
    QueueSize { index: usize, size: u16 },
    #[error("the device has {events} queue EventFds for {queues} queues")]
    QueueEventCount { events: usize, queues: usize },
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    // Constant facts about the device, cached so that most register reads
    // never wait on the device lock (held by the event loop while it works).
    device_type: u32,
    avail_features: u64,
    queue_evts: Vec<EventFd>,

    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    /// Accesses that broke the protocol (ignored) or writes that made the
    /// device need a reset.
    protocol_errors: u64,
}

impl MmioTransport {
    /// Wrap `device`, whose queues will live in `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let interrupt = Arc::new(Interrupt::new().map_err(MmioError::Interrupt)?);
        let (device_type, avail_features, queues, queue_evts) = {
            let d = lock(&device);
            let sizes = d.queue_max_sizes();
            let evts = d.queue_events();
            if evts.len() != sizes.len() {
                return Err(MmioError::QueueEventCount {
                    events: evts.len(),
                    queues: sizes.len(),
                });
            }
            let queues = sizes
                .iter()
                .enumerate()
                .map(|(index, &size)| {
                    Queue::new(size).map_err(|_| MmioError::QueueSize { index, size })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let queue_evts = evts
                .iter()
                .enumerate()
                .map(|(index, e)| {
                    e.try_clone()
                        .map_err(|source| MmioError::QueueEvent { index, source })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (d.device_type(), d.avail_features(), queues, queue_evts)
        };
        Ok(Self {
            device,
            mem,
            interrupt,
            device_type,
            avail_features,
            queue_evts,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            protocol_errors: 0,
        })
    }

    /// The device model, for the VMM to register its queue EventFds and to
    /// add it to the event loop.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// The interrupt whose EventFd the VMM registers as an irqfd.
    /// The device's configuration space changed (a drive got a new size):
    /// bump ConfigGeneration and, once the driver runs the device, raise a
    /// configuration-change interrupt (virtio 1.2, section 2.5.1).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & STATUS_DRIVER_OK != 0 {
            if let Err(e) = self.interrupt.trigger(INT_CONFIG) {
                error!("virtio-mmio: cannot signal a configuration change: {e}");
            }
        }
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// Device status as the driver last left it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// How many guest accesses broke the protocol so far.
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn violation(&mut self, what: &str, offset: u64, value: u32) {
        self.protocol_errors += 1;
        crate::rate_limited!(
            warn,
            "virtio-mmio (device type {}): ignored {what} at {offset:#x} (value {value:#x}, status {:#x})",
            self.device_type, self.status
        );
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            MAGIC => MAGIC_VALUE,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device_type,
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS if self.interrupt.needs_reset() => self.status | STATUS_DEVICE_NEEDS_RESET,
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: the spec's answer is a length of -1.
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            // Write-only or reserved registers.
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES => self.write_driver_features(v),
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM | QUEUE_READY | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW
            | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                self.write_queue_register(offset, v)
            }
            QUEUE_NOTIFY => self.notify(v),
            INTERRUPT_ACK => self.interrupt.ack(v),
            STATUS => self.write_status(v),
            // No shared memory regions to select.
            SHM_SEL => {}
            _ => self.violation("write to a read-only or unknown register", offset, v),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & (STATUS_FEATURES_OK | STATUS_FAILED) != 0 {
            return self.violation("feature write after FEATURES_OK", DRIVER_FEATURES, v);
        }
        let v = u64::from(v);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
            // Feature bits beyond 63 do not exist; a driver that sets any of
            // them asks for something no device offers.
            _ if v != 0 => self.violation("feature bits beyond 63", DRIVER_FEATURES, v as u32),
            _ => {}
        }
    }

    fn write_queue_register(&mut self, offset: u64, v: u32) {
        // The driver lays out queues between FEATURES_OK and DRIVER_OK
        // (virtio 1.2, section 3.1.1, steps 7-8).
        if !self.has(STATUS_FEATURES_OK) || self.status & (STATUS_DRIVER_OK | STATUS_FAILED) != 0 {
            return self.violation("queue register write outside queue setup", offset, v);
        }
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return self.violation("queue register write with invalid QueueSel", offset, v);
        };
        match offset {
            QUEUE_NUM => {
                let ok = u16::try_from(v)
                    .ok()
                    .filter(|n| n.is_power_of_two() && *n <= q.max_size())
                    .map(|n| q.try_set_size(n).is_ok());
                if ok != Some(true) {
                    self.violation(
                        "queue size that is not a power of two <= QueueNumMax",
                        offset,
                        v,
                    );
                }
            }
            QUEUE_READY => q.set_ready(v == 1),
            _ => {
                let high = offset % 8 == 4;
                let ok = match offset & !4 {
                    QUEUE_DESC_LOW => q
                        .try_set_desc_table_address(with_half(q.desc_table(), high, v))
                        .is_ok(),
                    QUEUE_DRIVER_LOW => q
                        .try_set_avail_ring_address(with_half(q.avail_ring(), high, v))
                        .is_ok(),
                    _ => q
                        .try_set_used_ring_address(with_half(q.used_ring(), high, v))
                        .is_ok(),
                };
                if !ok {
                    self.violation("misaligned queue address", offset, v);
                }
            }
        }
    }

    fn notify(&mut self, v: u32) {
        let Some(evt) = self.queue_evts.get(v as usize) else {
            return self.violation(
                "notification of a queue that does not exist",
                QUEUE_NOTIFY,
                v,
            );
        };
        if let Err(e) = evt.write(1) {
            error!("virtio-mmio: could not signal queue {v}: {e}");
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            return self.reset();
        }
        let old = self.status;
        // A driver only ever adds bits; clearing one is only done by a reset.
        if v & old != old {
            return self.violation("status write that clears bits", STATUS, v);
        }
        let added = v & !old;
        let needs = |bit: u32, prerequisite: u32| added & bit == 0 || v & prerequisite != 0;
        if !(needs(STATUS_DRIVER, STATUS_ACKNOWLEDGE)
            && needs(STATUS_FEATURES_OK, STATUS_DRIVER)
            && needs(STATUS_DRIVER_OK, STATUS_FEATURES_OK))
        {
            return self.violation("status bits set out of order", STATUS, v);
        }
        if added & STATUS_DEVICE_NEEDS_RESET != 0 {
            return self.violation("driver setting DEVICE_NEEDS_RESET", STATUS, v);
        }

        let mut new = v;
        if added & STATUS_FEATURES_OK != 0 && !self.accept_features() {
            // The driver reads Status back and sees FEATURES_OK missing.
            new &= !STATUS_FEATURES_OK;
            if new & STATUS_DRIVER_OK != 0 {
                new &= !STATUS_DRIVER_OK;
            }
        }
        self.status = new;
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_DRIVER_OK != 0 {
            if let Err(e) = self.activate() {
                error!(
                    "virtio-mmio: could not activate device type {}: {e}",
                    self.device_type
                );
                self.set_needs_reset();
            }
        }
    }

    /// FEATURES_OK: accept the driver's features if the device offered them
    /// all and the driver speaks virtio 1.x.
    fn accept_features(&mut self) -> bool {
        let unknown = self.driver_features & !self.avail_features;
        if unknown != 0 || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            self.violation(
                "FEATURES_OK with unoffered features or without VERSION_1",
                STATUS,
                STATUS_FEATURES_OK,
            );
            return false;
        }
        lock(&self.device).ack_features(self.driver_features);
        true
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        // The device gets the ready queues from index 0 on; a driver that
        // leaves a hole gets the prefix before it, and the device decides
        // whether that is enough.
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                break;
            }
            if !q.is_valid(&self.mem) {
                return Err(ActivateError::InvalidQueue(index));
            }
            // The transport keeps its copy so QueueReady still reads back.
            let mut copy =
                Queue::try_from(q.state()).map_err(|_| ActivateError::InvalidQueue(index))?;
            copy.set_event_idx(event_idx);
            queues.push(copy);
        }
        lock(&self.device).activate(self.mem.clone(), self.interrupt.clone(), queues)
    }

    fn set_needs_reset(&mut self) {
        self.protocol_errors += 1;
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        // The spec asks for a configuration change notification so the driver
        // notices (virtio 1.2, section 2.1.2).
        if let Err(e) = self.interrupt.trigger(INT_CONFIG) {
            error!("virtio-mmio: could not raise the interrupt: {e}");
        }
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
        self.interrupt.clear_needs_reset();
    }
}

/// `addr` with its low (or high) 32 bits replaced by `v`.
fn with_half(addr: u64, high: bool, v: u32) -> GuestAddress {
    let v = u64::from(v);
    GuestAddress(if high {
        (addr & 0xffff_ffff) | (v << 32)
    } else {
        (addr & !0xffff_ffff) | v
    })
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            return lock(&self.device).read_config(offset - CONFIG, data);
        }
        match <[u8; 4]>::try_from(&mut *data) {
            Ok(_) if offset % 4 == 0 => {
                let v = self.read_register(offset);
                data.copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                data.fill(0);
                self.violation("register read that is not 32-bit aligned", offset, 0);
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            return lock(&self.device).write_config(offset - CONFIG, data);
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => self.violation("register write that is not 32-bit aligned", offset, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{VirtioCommon, INT_VRING};

    const FAKE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | 0b101;

    #[derive(Default)]
    struct Record {
        acked: Option<u64>,
        activated: Option<(usize, bool)>,
        resets: usize,
        config: Vec<u8>,
    }

    struct FakeDevice {
        common: VirtioCommon,
        fail_activate: bool,
        rec: Arc<Mutex<Record>>,
    }

    impl VirtioDevice for FakeDevice {
        fn common(&self) -> &VirtioCommon {
            &self.common
        }
        fn common_mut(&mut self) -> &mut VirtioCommon {
            &mut self.common
        }
        fn ack_features(&mut self, features: u64) {
            self.rec.lock().unwrap().acked = Some(features);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
        }
        fn write_config(&mut self, _offset: u64, data: &[u8]) {
            self.rec.lock().unwrap().config = data.to_vec();
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _interrupt: Arc<Interrupt>,
            queues: Vec<Queue>,
        ) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::Backend("told to fail".into()));
            }
            let event_idx = queues.iter().all(|q| q.event_idx_enabled());
            self.rec.lock().unwrap().activated = Some((queues.len(), event_idx));
            Ok(())
        }
        fn reset(&mut self) {
            self.rec.lock().unwrap().resets += 1;
        }
    }

    fn transport(fail_activate: bool) -> (MmioTransport, Arc<Mutex<Record>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let rec = Arc::new(Mutex::new(Record::default()));
        let dev = FakeDevice {
            common: VirtioCommon::new(
                super::super::TYPE_BLOCK,
                FAKE_FEATURES,
                vec![16, 8],
                vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
            ),
            fail_activate,
            rec: rec.clone(),
        };
        (
            MmioTransport::new(mem, Arc::new(Mutex::new(dev))).unwrap(),
            rec,
        )
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(0, offset, &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(0, offset, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        wr(t, STATUS, STATUS_ACKNOWLEDGE);
        wr(t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, DRIVER_FEATURES_SEL, 0);
        wr(t, DRIVER_FEATURES, features as u32);
        wr(t, DRIVER_FEATURES_SEL, 1);
        wr(t, DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        rd(t, STATUS)
    }

    // Queue q at 0x1000 * (q + 1): descriptors, then avail, then used.
    fn setup_queue(t: &mut MmioTransport, q: u32, size: u32) {
        let base = 0x1000 * (q + 1) * 4;
        wr(t, QUEUE_SEL, q);
        wr(t, QUEUE_NUM, size);
        wr(t, QUEUE_DESC_LOW, base);
        wr(t, QUEUE_DESC_HIGH, 0);
        wr(t, QUEUE_DRIVER_LOW, base + 0x1000);
        wr(t, QUEUE_DRIVER_HIGH, 0);
        wr(t, QUEUE_DEVICE_LOW, base + 0x2000);
        wr(t, QUEUE_DEVICE_HIGH, 0);
        wr(t, QUEUE_READY, 1);
    }

    const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport(false);
        assert_eq!(rd(&mut t, MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, VERSION), 2);
        assert_eq!(rd(&mut t, DEVICE_ID), super::super::TYPE_BLOCK);
        assert_eq!(rd(&mut t, VENDOR), VENDOR_ID);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 16);
        wr(&mut t, QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 8);
        wr(&mut t, QUEUE_SEL, 2);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 0);
        assert_eq!(rd(&mut t, SHM_LEN_LOW), u32::MAX);
        assert_eq!(
            rd(&mut t, DEVICE_FEATURES),
            (1 << VIRTIO_RING_F_EVENT_IDX) | 0b101
        );
        wr(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 1);
        wr(&mut t, DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 0);
        // Config space, any width, forwarded to the device.
        let mut b = [0u8; 2];
        t.read(0, CONFIG + 3, &mut b);
        assert_eq!(b, [4, 5]);
        t.write(0, CONFIG + 1, &[9]);
        assert_eq!(t.protocol_errors(), 0);
    }

    #[test]
    fn features_negotiated_in_two_halves() {
        let (mut t, rec) = transport(false);
        let want = (1 << VIRTIO_F_VERSION_1) | 0b100;
        assert_eq!(
            negotiate(&mut t, want) & STATUS_FEATURES_OK,
            STATUS_FEATURES_OK
        );
        assert_eq!(rec.lock().unwrap().acked, Some(want));
        // Too late to change features now.
        wr(&mut t, DRIVER_FEATURES_SEL, 0);
        wr(&mut t, DRIVER_FEATURES, 0xffff_ffff);
        assert_eq!(t.driver_features, want);
        assert_eq!(t.protocol_errors(), 1);
    }

    #[test]
    fn features_ok_refused_without_version_1_or_with_unknown_bits() {
        let (mut t, rec) = transport(false);
        assert_eq!(negotiate(&mut t, 0b1) & STATUS_FEATURES_OK, 0);
        assert_eq!(rec.lock().unwrap().acked, None);
        wr(&mut t, STATUS, 0);
        let unknown = (1 << VIRTIO_F_VERSION_1) | (1 << 40);
        assert_eq!(negotiate(&mut t, unknown) & STATUS_FEATURES_OK, 0);
        // DRIVER_OK on top of a refused FEATURES_OK does not activate.
        wr(&mut t, STATUS, ALL_OK);
        assert_eq!(rd(&mut t, STATUS) & STATUS_DRIVER_OK, 0);
        assert_eq!(rec.lock().unwrap().activated, None);
    }

    #[test]
    fn queue_setup_and_activation() {
        let (mut t, rec) = transport(false);
        negotiate(&mut t, FAKE_FEATURES);
        setup_queue(&mut t, 0, 16);
        setup_queue(&mut t, 1, 4);
        assert_eq!(rd(&mut t, QUEUE_READY), 1);
        wr(&mut t, STATUS, ALL_OK);
        assert_eq!(rd(&mut t, STATUS), ALL_OK);
        assert_eq!(rec.lock().unwrap().activated, Some((2, true)));
        assert_eq!(t.queues[1].size(), 4);
        assert_eq!(t.protocol_errors(), 0);

        // QueueNotify reaches the queue's EventFd.
        wr(&mut t, QUEUE_NOTIFY, 1);
        let d = t.device();
        assert_eq!(lock(&d).queue_events()[1].read().unwrap(), 1);
    }

    #[test]
    fn activation_failure_needs_reset() {
        let (mut t, _) = transport(true);
        negotiate(&mut t, FAKE_FEATURES);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, STATUS, ALL_OK);
        assert_eq!(
            rd(&mut t, STATUS) & STATUS_DEVICE_NEEDS_RESET,
            STATUS_DEVICE_NEEDS_RESET
        );
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), INT_CONFIG);
    }

    #[test]
    fn device_can_ask_for_a_reset() {
        let (mut t, _) = transport(false);
        negotiate(&mut t, FAKE_FEATURES);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, STATUS, ALL_OK);
        assert_eq!(rd(&mut t, STATUS), ALL_OK);
        t.interrupt().signal_needs_reset().unwrap();
        assert_eq!(rd(&mut t, STATUS), ALL_OK | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
        wr(&mut t, STATUS, 0);
        assert_eq!(rd(&mut t, STATUS), 0);
    }

    #[test]
    fn queue_outside_memory_needs_reset() {
        let (mut t, rec) = transport(false);
        negotiate(&mut t, FAKE_FEATURES);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, QUEUE_DEVICE_LOW, 0xffff_0000);
        wr(&mut t, STATUS, ALL_OK);
        assert_ne!(rd(&mut t, STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(rec.lock().unwrap().activated, None);
    }

    #[test]
    fn reset_clears_everything() {
        let (mut t, rec) = transport(false);
        negotiate(&mut t, FAKE_FEATURES);
        setup_queue(&mut t, 0, 8);
        wr(&mut t, STATUS, ALL_OK);
        t.interrupt().trigger(INT_VRING).unwrap();
        wr(&mut t, STATUS, 0);
        assert_eq!(rd(&mut t, STATUS), 0);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 0);
        assert_eq!(rec.lock().unwrap().resets, 1);
        assert_eq!(t.driver_features, 0);
        wr(&mut t, QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, QUEUE_READY), 0);
        assert_eq!(t.queues[0].size(), 16);
        assert_eq!(t.queues[0].desc_table(), 0);
        // And the device can be brought up again.
        negotiate(&mut t, FAKE_FEATURES);
        setup_queue(&mut t, 0, 8);
        wr(&mut t, STATUS, ALL_OK);
        assert_eq!(rd(&mut t, STATUS), ALL_OK);
    }

    #[test]
    fn interrupt_ack_clears_bits() {
        let (mut t, _) = transport(false);
        t.interrupt().trigger(INT_VRING | INT_CONFIG).unwrap();
        wr(&mut t, INTERRUPT_ACK, INT_VRING);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), INT_CONFIG);
    }

    #[test]
    fn garbage_is_ignored_and_counted() {
        let (mut t, rec) = transport(false);
        // Wrong widths and misaligned offsets.
        let mut b1 = [0xffu8; 1];
        t.read(0, MAGIC, &mut b1);
        assert_eq!(b1, [0]);
        let mut b8 = [0xffu8; 8];
        t.read(0, MAGIC, &mut b8);
        assert_eq!(b8, [0; 8]);
        t.read(0, 2, &mut [0u8; 4]);
        t.write(0, STATUS, &[1]);
        t.write(0, STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        t.write(0, STATUS + 1, &[1, 0, 0, 0]);
        assert_eq!(rd(&mut t, STATUS), 0);
        // Unknown and read-only offsets.
        wr(&mut t, 0x0f0, 1);
        wr(&mut t, MAGIC, 1);
        assert_eq!(rd(&mut t, 0x0f0), 0);
        // Queue writes before FEATURES_OK.
        wr(&mut t, QUEUE_NUM, 4);
        assert_eq!(t.queues[0].size(), 16);
        // Status bits out of order.
        wr(&mut t, STATUS, STATUS_DRIVER_OK);
        assert_eq!(rd(&mut t, STATUS), 0);
        negotiate(&mut t, FAKE_FEATURES);
        // Bad QueueNum, bad QueueSel, notify of a missing queue.
        for n in [0, 3, 32, 0x1_0000, u32::MAX] {
            wr(&mut t, QUEUE_NUM, n);
        }
        assert_eq!(t.queues[0].size(), 16);
        wr(&mut t, QUEUE_SEL, 7);
        wr(&mut t, QUEUE_NUM, 4);
        wr(&mut t, QUEUE_READY, 1);
        wr(&mut t, QUEUE_NOTIFY, 7);
        wr(&mut t, QUEUE_NOTIFY, u32::MAX);
        wr(&mut t, QUEUE_SEL, 0);
        wr(&mut t, QUEUE_DESC_LOW, 0x1001);
        wr(&mut t, QUEUE_DRIVER_LOW, 0x1001);
        wr(&mut t, QUEUE_DEVICE_LOW, 0x1002);
        assert_eq!(t.queues[0].desc_table(), 0);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, STATUS, ALL_OK);
        assert_eq!(rd(&mut t, STATUS), ALL_OK);
        // Queue writes after DRIVER_OK are refused.
        wr(&mut t, QUEUE_SEL, 0);
        wr(&mut t, QUEUE_DESC_LOW, 0x8000);
        wr(&mut t, QUEUE_READY, 0);
        assert_eq!(t.queues[0].desc_table(), 0x4000);
        assert_eq!(rd(&mut t, QUEUE_READY), 1);
        // Clearing status bits without a reset.
        wr(&mut t, STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(rd(&mut t, STATUS), ALL_OK);
        assert!(t.protocol_errors() >= 21, "{}", t.protocol_errors());
        assert_eq!(rec.lock().unwrap().activated, Some((1, true)));
        // Random widths everywhere in the window never panic.
        for offset in (0..MMIO_WINDOW_SIZE).step_by(3) {
            for len in [1usize, 2, 4, 8] {
                let mut d = vec![0xa5u8; len];
                t.read(0, offset, &mut d);
                t.write(0, offset, &d);
            }
        }
    }
}
