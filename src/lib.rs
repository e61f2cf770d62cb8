//! flint: a microVM monitor on Linux KVM.
//!
//! The command line, the config file ([`config`]) and the REST API
//! ([`api`]) all fill one [`builder::VmResources`], which checks itself into
//! a [`config::VmConfig`]; [`vmm::Vmm`] builds the VM from it (vCPU handles,
//! device registry) and runs it until the guest ends.

pub mod api;
pub mod boot;
pub mod builder;
pub mod config;
pub mod console;
pub mod control;
pub mod device_manager;
pub mod host;
pub mod layout;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod seccomp;
pub mod snapshot;
pub mod teardown;
pub mod terminal;
pub mod timer;
pub mod virtio_devices;
pub mod vmm;
pub mod vstate;
