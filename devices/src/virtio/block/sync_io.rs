//! The synchronous engine: pread/pwrite (preadv/pwritev for several
//! buffers) straight between the image file and guest memory on the event
//! loop thread, fdatasync for FLUSH.
//!
//! The requests taken from the ring in one pass are run together at its
//! end, in order; consecutive reads (or writes) of adjacent sectors become
//! one preadv (pwritev), as QEMU's virtio-blk merges them: a sequential
//! stream costs one syscall per batch instead of one per request.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::engine::Completion;
use super::request::{IoOp, IoVecs, Pending, MAX_IOVECS};

/// Runs requests to completion on the calling thread.
#[derive(Debug)]
pub(crate) struct SyncEngine {
    file: File,
    /// Requests pushed since the last run.
    queued: Vec<(IoOp, Pending)>,
    /// The iovecs of a merged run; reused.
    merged: IoVecs,
    /// The results of a pass's requests, in order, and whether each rode
    /// in the one before's I/O; reused.
    results: Vec<(io::Result<()>, bool)>,
}

impl SyncEngine {
    pub fn new(file: File) -> Self {
        Self {
            file,
            queued: Vec::new(),
            merged: IoVecs::default(),
            results: Vec::new(),
        }
    }

    pub fn replace_file(&mut self, file: File) {
        self.file = file;
    }

    /// Requests pushed and not yet run.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Drop the requests pushed and not yet run, unanswered.
    pub fn forget(&mut self) {
        self.queued.clear();
    }

    /// Take `op` for the next run.
    pub fn push(&mut self, op: IoOp, pending: Pending) {
        self.queued.push((op, pending));
    }

    /// Run every queued request, in order, their completions into `done`.
    pub fn run(&mut self, done: &mut Vec<Completion>) {
        let mut ops = std::mem::take(&mut self.queued);
        let mut results = std::mem::take(&mut self.results);
        let mut i = 0;
        while let Some(rest) = ops.get_mut(i..).filter(|r| !r.is_empty()) {
            let n = mergeable_run(rest);
            let run = rest.get_mut(..n).unwrap_or_default();
            if n > 1 && self.execute_merged(run).is_ok() {
                results.extend((0..n).map(|k| (Ok(()), k > 0)));
            } else {
                // One request, or a merged run that failed (a bad sector,
                // the end of a shrunk file): each on its own, for its own
                // status. The merged run moved a copy of the iovecs, and a
                // request can be redone until it is answered.
                for (op, _) in run.iter_mut() {
                    results.push((execute(&self.file, op), false));
                }
            }
            i += n;
        }
        for ((_, pending), (result, merged)) in ops.drain(..).zip(results.drain(..)) {
            done.push(Completion {
                pending,
                result,
                merged,
            });
        }
        // Keep the allocations for the next pass.
        self.queued = ops;
        self.results = results;
    }

    /// One preadv/pwritev for a run of adjacent requests of one kind.
    fn execute_merged(&mut self, run: &[(IoOp, Pending)]) -> io::Result<()> {
        self.merged.clear();
        let (offset, write) = match run.first().map(|(op, _)| op) {
            Some(IoOp::Read { offset, .. }) => (*offset, false),
            Some(IoOp::Write { offset, .. }) => (*offset, true),
            _ => return Err(io::ErrorKind::InvalidInput.into()),
        };
        for (op, _) in run.iter() {
            if let IoOp::Read { iovecs, .. } | IoOp::Write { iovecs, .. } = op {
                self.merged.extend_from(iovecs);
            }
        }
        transfer(&self.file, &mut self.merged, offset, write)
    }
}

/// Run one request.
fn execute(file: &File, op: &mut IoOp) -> io::Result<()> {
    match op {
        IoOp::Read { offset, iovecs } => transfer(file, iovecs, *offset, false),
        IoOp::Write { offset, iovecs } => transfer(file, iovecs, *offset, true),
        IoOp::Flush => file.sync_data(),
    }
}

/// How many requests at the front of `ops` form one run: reads (or
/// writes) each starting where the one before ended, in at most
/// [`MAX_IOVECS`] buffers together; at least one.
fn mergeable_run(ops: &[(IoOp, Pending)]) -> usize {
    fn extent(op: &IoOp) -> Option<(bool, u64, &IoVecs)> {
        match op {
            IoOp::Read { offset, iovecs } => Some((false, *offset, iovecs)),
            IoOp::Write { offset, iovecs } => Some((true, *offset, iovecs)),
            IoOp::Flush => None,
        }
    }
    let Some((write, mut end, iov)) = ops.first().and_then(|(op, _)| extent(op)) else {
        return 1;
    };
    end += iov.remaining() as u64;
    let mut segs = iov.len();
    let mut n = 1;
    for (op, _) in ops.iter().skip(1) {
        match extent(op) {
            Some((w, offset, iov))
                if w == write && offset == end && segs + iov.len() <= MAX_IOVECS =>
            {
                end += iov.remaining() as u64;
                segs += iov.len();
                n += 1;
            }
            _ => break,
        }
    }
    n
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
