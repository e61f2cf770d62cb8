//! Device models for flint. Nothing here depends on KVM: devices expose their
//! EventFds and the VMM wires them to the hypervisor, so every model can be
//! tested on any host.

pub mod bus;
pub mod legacy;
pub mod log_limit;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
