//! The io_uring engine: requests are pushed as SQEs while the queue is
//! drained, submitted with one syscall per batch, and completed when the
//! ring's EventFd (registered with the event loop) says CQEs are ready.
//!
//! Each in-flight request owns a slot whose index is the SQE's user data; the
//! slot keeps the iovecs alive until the CQE arrives. There are as many slots
//! as SQ entries, so pushing never finds the SQ full, and the CQ (twice the
//! SQ) never overflows.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};
use log::error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::engine::Completion;
use super::request::{IoOp, Pending};

#[derive(Debug)]
struct InFlight {
    pending: Pending,
    op: IoOp,
}

pub(crate) struct UringEngine {
    ring: IoUring,
    file: File,
    evt: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Reused between reaps: (user data, result) of ready CQEs.
    cqes: Vec<(u64, i32)>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl UringEngine {
    /// Set up a ring of `entries` and check that the kernel runs a NOP on it
    /// (seccomp or io_uring_disabled can allow setup and refuse the rest).
    /// On failure the file comes back for the synchronous engine.
    pub fn new(file: File, entries: u32) -> Result<Self, (io::Error, File)> {
        let setup = || -> io::Result<(IoUring, EventFd)> {
            let mut ring = IoUring::new(entries)?;
            let evt = EventFd::new(EFD_NONBLOCK)?;
            ring.submitter().register_eventfd(evt.as_raw_fd())?;
            let nop = opcode::Nop::new().build().user_data(u64::MAX);
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&nop) }
                .map_err(|_| io::Error::other("io_uring submission queue full at setup"))?;
            ring.submit_and_wait(1)?;
            let res = ring.completion().next().map(|c| c.result());
            if res != Some(0) {
                return Err(io::Error::other(format!("io_uring NOP returned {res:?}")));
            }
            // The NOP's completion signalled the EventFd; start clean.
            let _ = evt.read();
            Ok((ring, evt))
        };
        match setup() {
            Ok((ring, evt)) => {
                let n = ring.params().sq_entries() as usize;
                Ok(Self {
                    ring,
                    file,
                    evt,
                    slots: (0..n).map(|_| None).collect(),
                    free: (0..n).rev().collect(),
                    cqes: Vec::with_capacity(2 * n),
                })
            }
            Err(e) => Err((e, file)),
        }
    }

    pub fn event(&self) -> &EventFd {
        &self.evt
    }

    /// Serve a different file from now on; only with nothing in flight.
    pub fn replace_file(&mut self, file: File) {
        self.file = file;
    }

    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn sqe(&self, op: &IoOp, slot: usize) -> squeue::Entry {
        let fd = types::Fd(self.file.as_raw_fd());
        // One buffer (most requests): READ/WRITE, which spare the kernel
        // importing an iovec array.
        let entry = match op {
            IoOp::Read { offset, iovecs } => match iovecs.as_slice() {
                [one] => opcode::Read::new(fd, one.iov_base.cast(), one.iov_len as u32)
                    .offset(*offset)
                    .build(),
                v => opcode::Readv::new(fd, v.as_ptr(), v.len() as u32)
                    .offset(*offset)
                    .build(),
            },
            IoOp::Write { offset, iovecs } => match iovecs.as_slice() {
                [one] => opcode::Write::new(fd, one.iov_base.cast(), one.iov_len as u32)
                    .offset(*offset)
                    .build(),
                v => opcode::Writev::new(fd, v.as_ptr(), v.len() as u32)
                    .offset(*offset)
                    .build(),
            },
            IoOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        entry.user_data(slot as u64)
    }

    /// Queue the SQE for the request in `slot`.
    fn queue(&mut self, slot: usize) -> io::Result<()> {
        let Some(Some(inflight)) = self.slots.get(slot) else {
            return Err(io::Error::other("empty io_uring slot"));
        };
        let entry = self.sqe(&inflight.op, slot);
        // SAFETY: the iovec array and the guest buffers it points to live in
        // `self.slots[slot]` and the device's guest memory until this
        // request's CQE is reaped; `drain` waits for every CQE before either
        // can go away.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            return Ok(());
        }
        // Not reached with one slot per SQ entry, but cheap to survive.
        self.submit();
        // SAFETY: as above.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    pub fn push(&mut self, op: IoOp, pending: Pending, done: &mut Vec<Completion>) {
        let Some(slot) = self.free.pop() else {
            let result = Err(io::Error::other("too many requests in flight"));
            return done.push(Completion {
                pending,
                result,
                merged: false,
            });
        };
        let Some(entry) = self.slots.get_mut(slot) else {
            let result = Err(io::Error::other("io_uring slot out of range"));
            return done.push(Completion {
                pending,
                result,
                merged: false,
            });
        };
        *entry = Some(InFlight { pending, op });
        if let Err(e) = self.queue(slot) {
            self.finish(slot, Err(e), done);
        }
    }

    pub fn submit(&mut self) {
        while !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EAGAIN/EBUSY: the SQEs stay queued and go with the next
                // submit, which the next completion triggers.
                Err(e) => {
                    if self.in_flight() == 0 {
                        error!("io_uring submit failed with nothing in flight: {e}");
                    }
                    return;
                }
            }
        }
    }

    fn finish(&mut self, slot: usize, result: io::Result<()>, done: &mut Vec<Completion>) {
        if let Some(inflight) = self.slots.get_mut(slot).and_then(Option::take) {
            self.free.push(slot);
            done.push(Completion {
                pending: inflight.pending,
                result,
                merged: false,
            });
        }
    }

    pub fn reap(&mut self, done: &mut Vec<Completion>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let mut resubmitted = false;
        for &(user_data, res) in &cqes {
            let slot = usize::try_from(user_data).unwrap_or(usize::MAX);
            let Some(Some(inflight)) = self.slots.get_mut(slot) else {
                error!("io_uring completion for unknown request {user_data:#x}");
                continue;
            };
            let result = match (&mut inflight.op, res) {
                (_, r) if r < 0 => Some(Err(io::Error::from_raw_os_error(-r))),
                (IoOp::Read { offset, iovecs } | IoOp::Write { offset, iovecs }, n) => {
                    // n >= 0 here.
                    let n = n as usize;
                    iovecs.advance(n);
                    if iovecs.remaining() == 0 {
                        Some(Ok(()))
                    } else if n == 0 {
                        Some(Err(io::ErrorKind::UnexpectedEof.into()))
                    } else {
                        // A short transfer: go on from where it stopped.
                        *offset += n as u64;
                        None
                    }
                }
                (IoOp::Flush, _) => Some(Ok(())),
            };
            let result = match result {
                Some(r) => r,
                None => match self.queue(slot) {
                    Ok(()) => {
                        resubmitted = true;
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            self.finish(slot, result, done);
        }
        self.cqes = cqes;
        if resubmitted {
            self.submit();
        }
    }

    /// Wait for all requests in flight and hand their completions over;
    /// false if the kernel would not let us wait.
    pub fn finish_in_flight(&mut self, done: &mut Vec<Completion>) -> bool {
        while self.in_flight() > 0 {
            self.submit();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error!("io_uring: cannot wait for in-flight requests: {e}");
                    return false;
                }
            }
            self.reap(done);
        }
        true
    }

    /// Wait for all requests in flight and drop them; false if the kernel
    /// would not let us wait, and some may still be running.
    pub fn drain(&mut self) -> bool {
        // On failure the slots keep their iovecs; the caller keeps guest
        // memory mapped.
        if !self.finish_in_flight(&mut Vec::new()) {
            return false;
        }
        let _ = self.evt.read();
        true
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // Normally already drained by the device; this is the backstop.
        self.drain();
    }
}
