//! flint: a microVM monitor on Linux KVM.
//!
//! The command line, the config file ([`config`]) and the REST API
//! ([`api`]) all fill one [`builder::VmResources`], which checks itself into
//! a [`config::VmConfig`]; [`vmm::Vmm`] builds the VM from it (vCPU handles,
//! device registry) and runs it until the guest ends.

/// Modules the guest or an input file (a config, a kernel, an API request,
/// a snapshot) reaches: nothing in them may panic, so outside tests they
/// deny what can (unwrap, expect, panic, indexing and the like); a guest's
/// or a file's bad value is an error, a counted drop or a device that
/// needs a reset.
macro_rules! no_panic_modules {
    ($($m:ident),* $(,)?) => {
        $(
            #[cfg_attr(
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
            pub mod $m;
        )*
    };
}

no_panic_modules!(
    api,
    boot,
    config,
    device_manager,
    memory,
    snapshot,
    virtio_devices,
    vstate,
);

pub mod builder;
pub mod console;
pub mod control;
pub mod host;
pub mod layout;
pub mod logger;
pub mod metrics;
pub mod seccomp;
pub mod teardown;
pub mod terminal;
pub mod timer;
pub mod vmm;
