//! The kernel loaders: ELF (vmlinux) and bzImage, with flint's own
//! decompression of the payload and its scan of the kernel's strings, over
//! any file into a small guest memory.

#![no_main]

use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use flint::boot::{bzimage, kernel_scan, loader};
use libfuzzer_sys::fuzz_target;
use devices::GuestMemoryMmap;

const MEM_SIZE: usize = 8 << 20;

thread_local! {
    /// Made once: the loaders only write into it.
    static MEM: GuestMemoryMmap = flint_fuzz::guest_mem(MEM_SIZE);
    /// The kernel "file": the loader opens it by path.
    static KERNEL: (std::fs::File, PathBuf) = flint_fuzz::memfd(0);
}

fuzz_target!(|bytes: &[u8]| {
    MEM.with(|mem| {
        KERNEL.with(|(file, path)| {
            file.set_len(0).expect("truncate the memfd");
            file.write_all_at(bytes, 0).expect("write the memfd");
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
