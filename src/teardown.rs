//! Leaving quickly. KVM tears a VM down when its last file descriptor
//! closes, and with an in-kernel irqchip that waits for RCU grace periods:
//! 15-30 ms on some hosts, all of it after the guest has already ended.
//! Before exiting, flint starts a tiny helper that shares its descriptor
//! table and memory (CLONE_FILES | CLONE_VM) and is killed when flint exits
//! (PR_SET_PDEATHSIG). The last reference, and so the teardown, is then the
//! helper's: flint's caller gets the exit status without waiting for it.

use std::os::raw::{c_int, c_void};

const HELPER_STACK: usize = 16 * 1024;

/// The helper: wait to be killed with flint. Runs on a bare stack in memory
/// shared with flint, so it only makes system calls.
extern "C" fn helper(parent: *mut c_void) -> c_int {
    // SAFETY: plain system calls without pointers into shared state.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // flint may have exited before the line above took effect.
        if libc::getppid() != parent as libc::pid_t {
            libc::_exit(0);
        }
        loop {
            libc::pause();
        }
    }
}

/// Hand the VM's teardown to a helper process; call right before exiting.
/// Does nothing when the helper cannot be started (the exit is then only
/// slower).
pub fn hand_off() {
    let stack: &'static mut [u8] = Box::leak(vec![0u8; HELPER_STACK].into_boxed_slice());
    // SAFETY: the stack top is inside the leaked allocation, aligned down to
    // 16 bytes as the ABI wants.
    let top = unsafe { stack.as_mut_ptr().add(HELPER_STACK) } as usize & !0xf;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    // SAFETY: `helper` only makes system calls and never returns into Rust
    // code; its stack is leaked, so it outlives every use; sharing memory and
    // descriptors is the point.
    unsafe {
        libc::clone(
            helper,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD,
            me as usize as *mut c_void,
        )
    };
}
