//! KVM state: the VM and its vCPUs.

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

pub mod emulate;
pub mod state;
pub mod vcpu;
pub mod vcpu_control;
pub mod vm;
