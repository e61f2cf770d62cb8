//! The I/O engine behind a block device: synchronous or io_uring, chosen at
//! build time, with a fall back to synchronous when io_uring is unavailable.

use std::fs::File;
use std::io;
use std::path::Path;

use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::io_uring::UringEngine;
use super::request::{IoOp, Pending};
use super::sync_io::SyncEngine;
use super::EngineType;

/// A finished request and how its host I/O went.
#[derive(Debug)]
pub(crate) struct Completion {
    pub pending: Pending,
    pub result: io::Result<()>,
    /// The request's data moved in the host I/O of the one before it.
    pub merged: bool,
}

#[derive(Debug)]
pub(crate) enum Engine {
    Sync(SyncEngine),
    // Boxed: the ring is large and the enum is moved around at build time.
    IoUring(Box<UringEngine>),
}

impl Engine {
    /// An engine for `file`; with io_uring, at most `depth` requests are in
    /// flight at once.
    pub fn new(kind: EngineType, file: File, path: &Path, depth: u32) -> Self {
        match kind {
            EngineType::Sync => Engine::Sync(SyncEngine::new(file)),
            EngineType::IoUring => match UringEngine::new(file, depth) {
                Ok(ring) => {
                    info!("disk {}: io_uring engine", path.display());
                    Engine::IoUring(Box::new(ring))
                }
                Err((e, file)) => {
                    warn!(
                        "disk {}: io_uring unavailable ({e}); using synchronous I/O",
                        path.display()
                    );
                    Engine::Sync(SyncEngine::new(file))
                }
            },
        }
    }

    /// Wait for every request in flight, their completions into `done`;
    /// false if the kernel would not let us wait.
    pub fn finish_in_flight(&mut self, done: &mut Vec<Completion>) -> bool {
        match self {
            Engine::Sync(s) => {
                s.run(done);
                true
            }
            Engine::IoUring(e) => e.finish_in_flight(done),
        }
    }

    /// Serve `file` from now on; call with nothing in flight
    /// ([`Engine::finish_in_flight`]), else `file` comes back.
    pub fn replace_file(&mut self, file: File) -> Result<(), File> {
        if self.in_flight() > 0 {
            return Err(file);
        }
        match self {
            Engine::Sync(e) => e.replace_file(file),
            Engine::IoUring(e) => e.replace_file(file),
        }
        Ok(())
    }

    pub fn kind(&self) -> EngineType {
        match self {
            Engine::Sync(_) => EngineType::Sync,
            Engine::IoUring(_) => EngineType::IoUring,
        }
    }

    /// Whether another request may be started now.
    pub fn has_room(&self) -> bool {
        match self {
            Engine::Sync(_) => true,
            Engine::IoUring(r) => r.has_room(),
        }
    }

    /// Start `op`; a synchronous engine runs it (with the others pushed
    /// since) at the next [`Engine::reap`].
    pub fn push(&mut self, op: IoOp, pending: Pending, done: &mut Vec<Completion>) {
        match self {
            Engine::Sync(s) => s.push(op, pending),
            Engine::IoUring(r) => r.push(op, pending, done),
        }
    }

    /// Hand what was pushed to the kernel.
    pub fn submit(&mut self) {
        if let Engine::IoUring(r) = self {
            r.submit();
        }
    }

    /// Collect finished requests into `done` (a synchronous engine runs
    /// what was pushed now).
    pub fn reap(&mut self, done: &mut Vec<Completion>) {
        match self {
            Engine::Sync(s) => s.run(done),
            Engine::IoUring(r) => r.reap(done),
        }
    }

    /// Wait for every request in flight and forget them: after this no host
    /// I/O touches guest memory. False if that could not be ensured.
    pub fn drain(&mut self) -> bool {
        match self {
            Engine::Sync(s) => {
                s.forget();
                true
            }
            Engine::IoUring(r) => r.drain(),
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        match self {
            Engine::Sync(s) => s.queued(),
            Engine::IoUring(r) => r.in_flight(),
        }
    }

    /// The EventFd that becomes readable when completions are ready.
    pub fn completion_event(&self) -> Option<&EventFd> {
        match self {
            Engine::Sync(_) => None,
            Engine::IoUring(r) => Some(r.event()),
        }
    }
}
