//! The synchronous engine: pread/pwrite (preadv/pwritev for several
//! buffers) straight between the image file and guest memory on the event
//! loop thread, fdatasync for FLUSH.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::request::{IoOp, IoVecs, MAX_IOVECS};

/// Runs each request to completion before returning.
#[derive(Debug)]
pub(crate) struct SyncEngine {
    file: File,
}

impl SyncEngine {
    pub fn new(file: File) -> Self {
        Self { file }
    }

    pub fn replace_file(&mut self, file: File) {
        self.file = file;
    }

    pub fn execute(&self, op: &mut IoOp) -> io::Result<()> {
        match op {
            IoOp::Read { offset, iovecs } => transfer(&self.file, iovecs, *offset, false),
            IoOp::Write { offset, iovecs } => transfer(&self.file, iovecs, *offset, true),
            IoOp::Flush => self.file.sync_data(),
        }
    }
}

/// Move all of `iovecs` at `offset`, resuming after short transfers (a
/// signal, a file that shrank under us).
pub(crate) fn transfer(
    file: &File,
    iovecs: &mut IoVecs,
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    while iovecs.remaining() > 0 {
        let v = iovecs.as_slice();
        let count = v.len().min(MAX_IOVECS) as libc::c_int;
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = file.as_raw_fd();
        // One buffer (most requests): pread/pwrite, which skip copying
        // and checking an iovec array in the kernel.
        let n = match (v, write) {
            // SAFETY: the iovec describes guest memory checked by vm-memory
            // when the request was parsed, mapped while the device holds
            // the guest memory; the kernel only reads from it.
            ([one], true) => unsafe { libc::pwrite(fd, one.iov_base, one.iov_len, off) },
            // SAFETY: as above; the kernel writes into guest memory, which
            // the guest handed to the device for exactly this purpose.
            ([one], false) => unsafe { libc::pread(fd, one.iov_base, one.iov_len, off) },
            // SAFETY: as for pwrite, for each of the iovecs.
            (_, true) => unsafe { libc::pwritev(fd, v.as_ptr(), count, off) },
            // SAFETY: as for pread, for each of the iovecs.
            (_, false) => unsafe { libc::preadv(fd, v.as_ptr(), count, off) },
        };
        match n {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                // n > 0 here, so the cast is lossless.
                let n = n as usize;
                iovecs.advance(n);
                offset += n as u64;
            }
        }
    }
    Ok(())
}
