//! The `vcpu` list, installed by each vCPU thread before its first
//! KVM_RUN. Besides KVM_RUN and the register access of the exit handlers
//! (instruction emulation, #BP reinjection), a vCPU thread runs the device
//! registers its MMIO and port I/O exits reach: serial output, i8042 reset,
//! virtio transport writes (queue notifications, interrupts, device
//! activation and reset, feature negotiation that re-applies TAP offloads),
//! and so it writes eventfds, sets timerfds, and may touch a device's back
//! end (block I/O, the TAP) while it holds the device's lock.

use super::values::*;
use super::{sys, Allow};

const IOCTLS: &[(u64, &str)] = &[
    (KVM_RUN, "KVM_RUN"),
    (KVM_GET_REGS, "KVM_GET_REGS"),
    (KVM_SET_REGS, "KVM_SET_REGS"),
    (KVM_GET_SREGS, "KVM_GET_SREGS"),
    (KVM_TRANSLATE, "KVM_TRANSLATE"),
    (KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS"),
    (KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS"),
    (KVM_IRQ_LINE, "KVM_IRQ_LINE"),
    (KVM_IRQ_LINE_STATUS, "KVM_IRQ_LINE_STATUS"),
    // PUT /snapshot/create: the paused vCPU's state.
    (KVM_GET_MP_STATE, "KVM_GET_MP_STATE"),
    (KVM_GET_CPUID2, "KVM_GET_CPUID2"),
    (KVM_GET_XSAVE, "KVM_GET_XSAVE"),
    (KVM_GET_XCRS, "KVM_GET_XCRS"),
    (KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS"),
    (KVM_GET_LAPIC, "KVM_GET_LAPIC"),
    (KVM_GET_MSRS, "KVM_GET_MSRS"),
    (KVM_GET_TSC_KHZ, "KVM_GET_TSC_KHZ"),
    (TUNSETOFFLOAD, "TUNSETOFFLOAD"),
    (TUNSETVNETHDRSZ, "TUNSETVNETHDRSZ"),
    (FIONBIO, "FIONBIO"),
    (TCSETS, "TCSETS"),
];

const SIGNALS: &[(u64, &str)] = &[(SIGABRT, "SIGABRT")];

const FCNTLS: &[(u64, &str)] = &[(libc::F_GETFD as u64, "F_GETFD")];

pub(super) const ALLOW: &[Allow] = &[
    sys!(SYS_ioctl, "KVM_RUN, exit handling, TAP offloads, a snapshot's KVM_GET_*; TCSETS restores the terminal on a panic", arg 1 in IOCTLS),
    sys!(SYS_read, "eventfds drained by device reset and activation"),
    sys!(
        SYS_write,
        "serial output, eventfds (stop, activation, interrupts), log lines on stderr"
    ),
    sys!(
        SYS_readv,
        "device back ends run under the device lock (TAP)"
    ),
    sys!(
        SYS_writev,
        "device back ends run under the device lock (TAP)"
    ),
    sys!(
        SYS_pread64,
        "virtio-block requests processed on a notification"
    ),
    sys!(
        SYS_pwrite64,
        "virtio-block requests processed on a notification"
    ),
    sys!(
        SYS_preadv,
        "virtio-block requests processed on a notification"
    ),
    sys!(
        SYS_pwritev,
        "virtio-block requests processed on a notification"
    ),
    sys!(SYS_fsync, "virtio-block flush"),
    sys!(SYS_fdatasync, "virtio-block flush"),
    sys!(SYS_io_uring_enter, "virtio-block async engine"),
    sys!(
        SYS_timerfd_settime,
        "device timers set and cleared by register writes"
    ),
    sys!(
        SYS_close,
        "descriptors dropped by a device reset; the vCPU's own at its end"
    ),
    sys!(SYS_fcntl, "std checks a descriptor before closing it (debug builds)", arg 1 in FCNTLS),
    sys!(SYS_futex, "device mutexes, the control channel"),
    sys!(SYS_mmap, "the allocator"),
    sys!(SYS_munmap, "the allocator; thread exit"),
    sys!(SYS_mremap, "the allocator"),
    sys!(
        SYS_mprotect,
        "the allocator (glibc grows a thread's arena with mprotect)"
    ),
    sys!(SYS_brk, "the allocator"),
    sys!(SYS_madvise, "the allocator; thread exit"),
    sys!(SYS_getrandom, "hash map seeds"),
    sys!(SYS_clock_gettime, "timestamps (when the vDSO is not used)"),
    sys!(SYS_sched_yield, "spin loops in std's locks"),
    sys!(SYS_getpid, "abort"),
    sys!(SYS_gettid, "abort"),
    sys!(SYS_tgkill, "abort", arg 2 in SIGNALS),
    sys!(SYS_rt_sigprocmask, "abort"),
    sys!(SYS_rt_sigreturn, "returning from the kick handler"),
    sys!(SYS_sigaltstack, "std's signal stack, freed at thread exit"),
    sys!(SYS_restart_syscall, "a system call restarted after a kick"),
    sys!(SYS_exit, "the thread ends"),
    sys!(SYS_exit_group, "flint exits"),
];
