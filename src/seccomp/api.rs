//! The `api` list: the API server thread installs it before it accepts;
//! the connection threads it starts (`api-conn`) inherit it. They parse
//! HTTP, hand each request to the main thread over a channel, wake it with
//! an eventfd and write the answer back.

use super::values::*;
use super::{sys, Allow};

const PRCTLS: &[(u64, &str)] = &[(libc::PR_SET_NAME as u64, "PR_SET_NAME")];

const SIGNALS: &[(u64, &str)] = &[(SIGABRT, "SIGABRT")];

const FCNTLS: &[(u64, &str)] = &[
    (libc::F_GETFD as u64, "F_GETFD"),
    (libc::F_DUPFD_CLOEXEC as u64, "F_DUPFD_CLOEXEC"),
];

pub(super) const ALLOW: &[Allow] = &[
    sys!(SYS_accept4, "accepting API connections"),
    sys!(SYS_read, "reading requests"),
    sys!(SYS_recvfrom, "reading requests"),
    sys!(
        SYS_write,
        "answers, waking the main thread (eventfd), log lines on stderr"
    ),
    sys!(SYS_sendto, "answers"),
    sys!(SYS_writev, "answers"),
    sys!(SYS_close, "closing connections"),
    sys!(SYS_shutdown, "closing connections"),
    sys!(SYS_fcntl, "std's descriptor checks", arg 1 in FCNTLS),
    // A thread per connection.
    sys!(SYS_clone3, "starting a connection thread"),
    sys!(SYS_clone, "starting a connection thread (older libc)"),
    sys!(SYS_rseq, "thread start (glibc)"),
    sys!(SYS_set_robust_list, "thread start (glibc)"),
    sys!(SYS_sched_getaffinity, "thread start (std)"),
    sys!(SYS_prctl, "naming the thread", arg 0 in PRCTLS),
    sys!(SYS_mmap, "thread stacks; the allocator"),
    sys!(SYS_munmap, "thread stacks; the allocator"),
    sys!(
        SYS_mprotect,
        "thread stack guard pages; glibc grows a thread's arena with mprotect"
    ),
    sys!(SYS_mremap, "the allocator"),
    sys!(SYS_brk, "the allocator"),
    sys!(SYS_madvise, "the allocator; thread exit"),
    sys!(SYS_futex, "the request channel, thread joins"),
    sys!(SYS_getrandom, "hash map seeds"),
    sys!(SYS_clock_gettime, "timestamps (when the vDSO is not used)"),
    sys!(SYS_sched_yield, "spin loops in std's locks"),
    sys!(SYS_getpid, "abort"),
    sys!(SYS_gettid, "thread start; abort"),
    sys!(SYS_tgkill, "abort", arg 2 in SIGNALS),
    sys!(SYS_rt_sigprocmask, "thread start; abort"),
    sys!(SYS_rt_sigreturn, "returning from signal handlers"),
    sys!(SYS_sigaltstack, "std's signal stack per thread"),
    sys!(
        SYS_restart_syscall,
        "a system call restarted after a signal"
    ),
    sys!(SYS_exit, "a connection thread ends"),
    sys!(SYS_exit_group, "flint exits"),
];
