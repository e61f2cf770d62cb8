//! The devices' part of a snapshot: each virtio device's transport and
//! model state under its id, and the legacy devices' registers.
//!
//! Restoring happens on devices built from the snapshot's configuration,
//! in the same order (so at the same MMIO windows and interrupt lines,
//! with their ioeventfds and irqfds registered), after the vCPUs' state is
//! back: an interrupt a device raises again then lands on the restored
//! interrupt controllers.

use serde::{Deserialize, Serialize};

use devices::bus::lock;
use devices::legacy::{CmosState, I8042State, SerialDevice, SerialState};
use devices::virtio::mmio::MmioState;

use crate::console::ConsoleOut;
use crate::device_manager::DeviceManager;
use crate::layout::COM1_IRQ;
use crate::vstate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device {id:?}: cannot take its state: {why}")]
    Save { id: String, why: String },
    #[error("device {id:?}: cannot restore it: {why}")]
    Restore { id: String, why: String },
    #[error(
        "the snapshot has {saved} virtio devices ({saved_ids}), the VM built from its configuration has {here}"
    )]
    Count {
        saved: usize,
        saved_ids: String,
        here: usize,
    },
    #[error("the snapshot's virtio device {saved:?} is where this VM has {here:?}")]
    Order { saved: String, here: String },
    #[error("the {what}: cannot restore it: {why}")]
    Legacy { what: &'static str, why: String },
}

/// One virtio device: its id (drive_id, iface_id, or the device's kind)
/// and its transport's and model's state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VirtioState {
    pub id: String,
    pub state: MmioState,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DevicesState {
    pub serial: SerialState,
    pub i8042: I8042State,
    pub cmos: CmosState,
    /// In the order the devices were attached.
    pub virtio: Vec<VirtioState>,
}

impl DeviceManager {
    /// Every device's state; the vCPUs must be paused. Devices finish host
    /// I/O they started first, so no request is half done in the state.
    pub fn save_state(&self) -> Result<DevicesState, Error> {
        let mut virtio = Vec::with_capacity(self.registry.len());
        for e in &self.registry {
            let mut t = lock(&e.transport);
            t.prepare_save().map_err(|err| Error::Save {
                id: e.id.clone(),
                why: err.to_string(),
            })?;
            virtio.push(VirtioState {
                id: e.id.clone(),
                state: t.state(),
            });
        }
        Ok(DevicesState {
            serial: lock(&self.serial).state(),
            i8042: lock(&self.i8042).state(),
            cmos: lock(&self.cmos).state(),
            virtio,
        })
    }

    /// Put `s` back on devices built from the same configuration, on `vm`.
    pub fn restore_state(&mut self, s: &DevicesState, vm: &Vm) -> Result<(), Error> {
        let legacy = |what: &'static str| move |e: String| Error::Legacy { what, why: e };
        // The UART is made anew from its state, with a new interrupt line.
        let serial = SerialDevice::from_state(&s.serial, ConsoleOut::new(std::io::stdout()))
            .map_err(|e| legacy("serial port")(e.to_string()))?;
        vm.register_irqfd(serial.interrupt_evt(), COM1_IRQ)
            .map_err(|e| legacy("serial port")(e.to_string()))?;
        *lock(&self.serial) = serial;
        lock(&self.i8042)
            .restore(&s.i8042)
            .map_err(|e| legacy("i8042")(e.to_string()))?;
        lock(&self.cmos)
            .restore(&s.cmos)
            .map_err(|e| legacy("CMOS")(e.to_string()))?;
        if s.virtio.len() != self.registry.len() {
            return Err(Error::Count {
                saved: s.virtio.len(),
                saved_ids: s
                    .virtio
                    .iter()
                    .map(|v| v.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                here: self.registry.len(),
            });
        }
        for (e, v) in self.registry.iter().zip(&s.virtio) {
            if e.id != v.id {
                return Err(Error::Order {
                    saved: v.id.clone(),
                    here: e.id.clone(),
                });
            }
            lock(&e.transport)
                .restore(&v.state)
                .map_err(|err| Error::Restore {
                    id: e.id.clone(),
                    why: err.to_string(),
                })?;
        }
        Ok(())
    }
}
