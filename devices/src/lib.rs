//! Device models for flint. Nothing here depends on KVM: devices expose their
//! EventFds and the VMM wires them to the hypervisor, so every model can be
//! tested on any host.
//!
//! For snapshots every device with state hands it out as plain serde data
//! and takes it back: a virtio device with its transport as
//! [`virtio::mmio::MmioState`], the legacy devices each with their own
//! type. The VMM pauses the vCPUs first and wires a restored device's
//! EventFds as it does a new one's.

// The guest and input files reach this code: it must not panic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod bus;
pub mod legacy;
pub mod log_limit;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

/// The guest's memory as flint maps it. Every write through it (a device
/// filling a guest buffer, a used ring) marks its page in a dirty bitmap
/// (one bit per 4 KiB page: 4 KiB of bitmap for 128 MiB of guest), which
/// a Diff snapshot reads beside KVM's dirty log of the guest's own writes.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
