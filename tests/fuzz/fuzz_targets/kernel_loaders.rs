//! The kernel loaders: ELF (vmlinux) and bzImage, with flint's own
//! decompression of the payload and its scan of the kernel's strings, over
//! any file into a small guest memory.

#![no_main]

use std::io::{Cursor, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use flint::boot::{bzimage, kernel_scan, loader};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;

const MEM_SIZE: usize = 8 << 20;

thread_local! {
    /// Made once: the loaders only write into it.
    static MEM: GuestMemoryMmap = flint_fuzz::guest_mem(MEM_SIZE);
    /// The kernel "file": an in-memory file the loader opens by path.
    static KERNEL: (std::fs::File, PathBuf) = {
        // SAFETY: memfd_create takes a NUL-terminated name and flags; the
        // result is checked before it is used.
        let fd = unsafe { libc::memfd_create(c"flint-fuzz-kernel".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create failed");
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        (file, path)
    };
}

fuzz_target!(|bytes: &[u8]| {
    MEM.with(|mem| {
        KERNEL.with(|(file, path)| {
            let mut f = file;
            f.set_len(0).expect("truncate the memfd");
            f.write_all(bytes).expect("write the memfd");
            // The loader opens the path anew, so its offset starts at 0.
            let _ = loader::load_kernel(mem, path);
        });
        let _ = bzimage::payload(bytes);
        let _ = bzimage::unlz4_legacy(bytes);
        let _ = kernel_scan::rodata_ranges(&mut Cursor::new(bytes));
        let _ = kernel_scan::inspect(mem, &mut Cursor::new(bytes));
        if bytes.len() >= 24 {
            let n = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
            let _ = loader::initrd_address(n(0), n(8), n(16));
        }
    });
});
