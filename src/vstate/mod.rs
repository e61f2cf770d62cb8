//! KVM state: the VM and its vCPUs.

pub mod emulate;
pub mod state;
pub mod vcpu;
pub mod vcpu_control;
pub mod vm;
