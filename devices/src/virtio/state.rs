//! Device state for snapshots: plain data a device hands out and takes back,
//! serialisable with serde, so a VM can be saved in one process and resumed
//! in another.
//!
//! A virtio device's state has two parts: what its transport holds (status,
//! features, queue layout and positions; see
//! [`MmioState`](super::mmio::MmioState)) and what the device model itself
//! holds ([`DeviceState`], from [`VirtioDevice::save_state`]). The transport
//! carries both, so the VMM keeps one `MmioState` per virtio device.
//!
//! [`VirtioDevice::save_state`]: super::VirtioDevice::save_state

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

use super::balloon::BalloonState;
use super::block::BlockState;
use super::net::NetState;
use super::rng::RngState;
use super::vsock::VsockState;

/// Why a saved state could not be put back. The target is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the device is in use by a driver; restore into a newly built device")]
    InUse,
    #[error("the saved state is of virtio device type {saved}, this device is of type {here}")]
    DeviceType { saved: u32, here: u32 },
    #[error("the saved state has {saved} queues, this device has {here}")]
    QueueCount { saved: usize, here: usize },
    #[error("saved queue {index} has size {size}; this device allows a power of two up to {max}")]
    QueueSize { index: usize, size: u16, max: u16 },
    #[error("saved queue {index} has a misaligned address or lies outside guest memory")]
    QueueAddress { index: usize },
    #[error("the saved driver features {saved:#x} include bits this device does not offer (it offers {offered:#x})")]
    Features { saved: u64, offered: u64 },
    #[error("the saved device state is for a {saved} device, this is a {here} device")]
    WrongDevice {
        saved: &'static str,
        here: &'static str,
    },
    #[error("the saved {what} is {saved}, this device has {here}; build the device with the saved configuration")]
    Mismatch {
        what: &'static str,
        saved: String,
        here: String,
    },
    #[error("{0}")]
    Device(String),
    #[error("could not activate the restored device: {0}")]
    Activate(#[from] super::ActivateError),
}

/// The state of one virtio device model, apart from what its transport holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A device with nothing of its own to keep.
    None,
    Block(BlockState),
    Net(NetState),
    Rng(RngState),
    // Boxed: the guest's statistics make it the largest by far.
    Balloon(Box<BalloonState>),
    Vsock(VsockState),
}

impl DeviceState {
    /// What kind of device this state belongs to, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::None => "stateless",
            DeviceState::Block(_) => "block",
            DeviceState::Net(_) => "net",
            DeviceState::Rng(_) => "rng",
            DeviceState::Balloon(_) => "balloon",
            DeviceState::Vsock(_) => "vsock",
        }
    }

    /// The error for a state handed to the wrong kind of device.
    pub fn wrong_device(&self, here: &'static str) -> StateError {
        StateError::WrongDevice {
            saved: self.kind(),
            here,
        }
    }
}

/// One queue as the driver laid it out and as far as the device got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Size the driver chose (QueueNum).
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// The next available ring entry the device will take.
    pub next_avail: u16,
    /// The next used ring entry the device will fill.
    pub next_used: u16,
}

impl From<&QueueState> for QueueSnapshot {
    fn from(q: &QueueState) -> Self {
        QueueSnapshot {
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
        }
    }
}

impl QueueSnapshot {
    /// The virtio-queue state of this queue in a device whose maximum size
    /// is `max_size`.
    pub fn to_queue_state(&self, max_size: u16, event_idx: bool) -> QueueState {
        QueueState {
            max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        }
    }
}
