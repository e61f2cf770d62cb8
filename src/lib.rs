//! flint: a microVM monitor on Linux KVM.
