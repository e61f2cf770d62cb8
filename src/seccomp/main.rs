//! The `main` thread's list. Its filter goes on after the VM is built and
//! the vCPUs are started, right before the event loop: building the VM
//! (opening /dev/kvm and the images, KVM_CREATE_*, mmap of guest memory,
//! creating eventfds, timerfds, the signalfd) needs none of this list.
//! What is left: the event loop and its device back ends, the API's
//! requests (served on this thread), the metrics and log files, and the
//! way out, including the teardown helper (`teardown.rs`), which is a
//! `clone` child and so runs under this same filter.

use super::values::*;
use super::{sys, Allow};

const IOCTLS: &[(u64, &str)] = &[
    (FIONBIO, "FIONBIO"),
    (FIOCLEX, "FIOCLEX"),
    (TCGETS, "TCGETS"),
    (TCSETS, "TCSETS"),
    (TUNSETOFFLOAD, "TUNSETOFFLOAD"),
    (TUNSETVNETHDRSZ, "TUNSETVNETHDRSZ"),
    (KVM_IRQ_LINE, "KVM_IRQ_LINE"),
    (KVM_IRQ_LINE_STATUS, "KVM_IRQ_LINE_STATUS"),
    (KVM_IRQFD, "KVM_IRQFD"),
    (KVM_IOEVENTFD, "KVM_IOEVENTFD"),
    // PUT /snapshot/create: the VM's interrupt controllers, PIT and clock.
    (KVM_GET_IRQCHIP, "KVM_GET_IRQCHIP"),
    (KVM_GET_PIT2, "KVM_GET_PIT2"),
    (KVM_GET_CLOCK, "KVM_GET_CLOCK"),
    // A Diff snapshot: the pages the guest wrote.
    (KVM_GET_DIRTY_LOG, "KVM_GET_DIRTY_LOG"),
];

const FCNTLS: &[(u64, &str)] = &[
    (libc::F_DUPFD_CLOEXEC as u64, "F_DUPFD_CLOEXEC"),
    (libc::F_GETFD as u64, "F_GETFD"),
    (libc::F_SETFD as u64, "F_SETFD"),
    (libc::F_GETFL as u64, "F_GETFL"),
    (libc::F_SETFL as u64, "F_SETFL"),
];

/// The teardown helper's clone: CLONE_VM | CLONE_FILES | SIGCHLD.
const CLONE_FLAGS: &[(u64, &str)] = &[(
    (libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD) as u64,
    "CLONE_VM|CLONE_FILES|SIGCHLD",
)];

const PRCTLS: &[(u64, &str)] = &[(libc::PR_SET_PDEATHSIG as u64, "PR_SET_PDEATHSIG")];

const SIGNALS: &[(u64, &str)] = &[(KICK_SIGNAL, "SIGRTMIN"), (SIGABRT, "SIGABRT")];

const UNIX_ONLY: &[(u64, &str)] = &[(libc::AF_UNIX as u64, "AF_UNIX")];

pub(super) const ALLOW: &[Allow] = &[
    // The event loop.
    sys!(SYS_epoll_wait, "the event loop waits for its descriptors"),
    sys!(SYS_epoll_pwait, "the event loop (libc may use epoll_pwait)"),
    sys!(
        SYS_epoll_ctl,
        "vsock connections and device activation add and remove descriptors"
    ),
    sys!(
        SYS_read,
        "eventfds, timerfds, the signalfd, the TAP, vsock and API sockets, console input"
    ),
    sys!(
        SYS_write,
        "eventfds, serial output, the TAP, vsock sockets, metrics and log files, stderr"
    ),
    sys!(SYS_readv, "TAP receive, vsock sockets"),
    sys!(SYS_writev, "TAP transmit, vsock sockets"),
    sys!(SYS_pread64, "virtio-block reads (sync engine)"),
    sys!(SYS_pwrite64, "virtio-block writes (sync engine)"),
    sys!(SYS_preadv, "virtio-block reads (sync engine)"),
    sys!(SYS_pwritev, "virtio-block writes (sync engine)"),
    sys!(SYS_lseek, "virtio-block: the disk size on PATCH /drives"),
    sys!(SYS_fsync, "virtio-block flush"),
    sys!(SYS_fdatasync, "virtio-block flush"),
    sys!(
        SYS_io_uring_enter,
        "virtio-block async engine: submit and reap"
    ),
    sys!(
        SYS_io_uring_setup,
        "virtio-block async engine: a drive re-opened by PATCH /drives"
    ),
    sys!(
        SYS_io_uring_register,
        "virtio-block async engine: its completion eventfd"
    ),
    sys!(
        SYS_timerfd_settime,
        "device timers (balloon statistics, rate limits), the shutdown timeout"
    ),
    sys!(SYS_timerfd_gettime, "device timers"),
    sys!(
        SYS_eventfd2,
        "descriptors made while running (device activation)"
    ),
    sys!(
        SYS_poll,
        "waiting for the API's answer channel with a timeout"
    ),
    sys!(SYS_ppoll, "the same through libc"),
    // Sockets: vsock (host-initiated connections are accepted here; guest
    // connections to host port P connect to the unix socket PATH_P).
    sys!(SYS_accept4, "vsock: accepting host connections"),
    sys!(SYS_socket, "vsock: connecting to PATH_P for a guest connection", arg 0 in UNIX_ONLY),
    sys!(
        SYS_connect,
        "vsock: connecting to PATH_P for a guest connection"
    ),
    sys!(SYS_recvfrom, "vsock and API sockets"),
    sys!(SYS_sendto, "vsock and API sockets"),
    sys!(SYS_recvmsg, "vsock sockets"),
    sys!(SYS_sendmsg, "vsock sockets"),
    sys!(SYS_shutdown, "vsock: half-closing a connection"),
    sys!(
        SYS_getsockopt,
        "vsock: the result of a non-blocking connect"
    ),
    // Files.
    sys!(
        SYS_openat,
        "PATCH /drives re-opens a drive; metrics and log files"
    ),
    sys!(
        SYS_close,
        "closing connections, replaced drives, dropped descriptors"
    ),
    sys!(SYS_statx, "PATCH /drives: the new file's size"),
    sys!(
        SYS_newfstatat,
        "PATCH /drives: the new file's size (older libc)"
    ),
    sys!(SYS_fstat, "PATCH /drives: the new file's size (older libc)"),
    sys!(
        SYS_unlink,
        "removing the API and vsock sockets on the way out; a snapshot's temporary file after a failure"
    ),
    sys!(
        SYS_ftruncate,
        "PUT /snapshot/create: the memory file's length (its zero pages are holes)"
    ),
    sys!(
        SYS_rename,
        "PUT /snapshot/create: the state and memory files are renamed into place"
    ),
    sys!(SYS_fcntl, "descriptor flags: dup with CLOEXEC, non-blocking mode", arg 1 in FCNTLS),
    sys!(SYS_ioctl, "terminal mode, non-blocking sockets, TAP offloads, interrupts, a snapshot's KVM_GET_*", arg 1 in IOCTLS),
    // Memory, threads and signals, as Rust's std and the allocator use them.
    sys!(SYS_mmap, "the allocator; the teardown helper's stack"),
    sys!(SYS_munmap, "the allocator"),
    sys!(SYS_mremap, "the allocator (growing large buffers)"),
    sys!(SYS_brk, "the allocator"),
    sys!(
        SYS_madvise,
        "the allocator; the balloon returns guest pages (MADV_DONTNEED)"
    ),
    sys!(SYS_mprotect, "the allocator"),
    sys!(
        SYS_futex,
        "mutexes and channels shared with the vCPU and API threads"
    ),
    sys!(
        SYS_getrandom,
        "hash map seeds; the virtio-rng device's entropy"
    ),
    sys!(
        SYS_clock_gettime,
        "timers and boot phases (when the vDSO is not used)"
    ),
    sys!(SYS_clock_nanosleep, "short waits while stopping the vCPUs"),
    sys!(SYS_nanosleep, "short waits while stopping the vCPUs"),
    sys!(SYS_sched_yield, "spin loops in std's locks"),
    sys!(SYS_getpid, "the teardown helper's parent id; abort"),
    sys!(SYS_gettid, "abort"),
    sys!(SYS_tgkill, "kicking vCPU threads out of KVM_RUN; abort", arg 2 in SIGNALS),
    sys!(SYS_rt_sigprocmask, "abort; signal masks"),
    sys!(SYS_rt_sigreturn, "returning from signal handlers"),
    sys!(SYS_sigaltstack, "std's signal stack"),
    sys!(
        SYS_restart_syscall,
        "a system call restarted after a signal"
    ),
    // The way out.
    sys!(SYS_clone, "the teardown helper (teardown.rs)", arg 0 in CLONE_FLAGS),
    sys!(SYS_prctl, "the teardown helper: die with flint", arg 0 in PRCTLS),
    sys!(SYS_getppid, "the teardown helper: is flint still there"),
    sys!(SYS_pause, "the teardown helper waits to be killed"),
    sys!(SYS_exit, "a thread ends"),
    sys!(SYS_exit_group, "flint exits"),
];
