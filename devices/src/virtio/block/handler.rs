//! Queue processing for [`Block`]: take chains off the available ring until it
//! is empty (or the engine is full), answer them in the used ring, and
//! interrupt the guest when EVENT_IDX says it wants to hear.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use log::error;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryBackend};

use super::device::{Active, Block};
use super::engine::Completion;
use super::request::{self, Kind, Parsed, Pending, STATUS_IOERR, STATUS_OK};
use super::BlockCounters;

/// A guest can cause one log line per bad request; keep the first few and
/// then every power of two.
fn worth_logging(count: u64) -> bool {
    count.is_power_of_two()
}

impl Block {
    /// Drain the available ring. Runs on the event loop after a kick.
    pub(super) fn process_queue(&mut self) {
        let Some(act) = self.active.as_mut() else {
            return;
        };
        if self.broken {
            return;
        }
        self.stalled = false;
        let mut added = 0;
        // Whether this pass follows one that found the ring non-empty.
        let mut rearmed = false;
        loop {
            if let Err(e) = act.queues[0].disable_notification(&act.mem) {
                self.broken = true;
                crate::rate_limited!(error, "disk {}: queue unusable: {e}", self.path.display());
                break;
            }
            let mut popped = false;
            // Checked before virtio-queue sees the ring: it would log every
            // overrun itself, as often as the guest cares to cause one.
            if ring_overrun(act) {
                self.broken = true;
                self.counters.broken_rings += 1;
                if worth_logging(self.counters.broken_rings) {
                    crate::rate_limited!(
                        error,
                        "disk {}: the driver made more requests available than the queue holds; \
                         ignoring the queue until the device is reset",
                        self.path.display()
                    );
                }
                break;
            }
            while self.engine.has_room() {
                let Some(chain) = act.queues[0].pop_descriptor_chain(&act.mem) else {
                    break;
                };
                popped = true;
                self.counters.requests += 1;
                match request::parse(&act.mem, chain, &self.disk, &mut self.descs) {
                    Parsed::Broken { head, why } => {
                        self.counters.broken_chains += 1;
                        if worth_logging(self.counters.broken_chains) {
                            crate::rate_limited!(
                                warn,
                                "disk {}: broken request: {why}",
                                self.path.display()
                            );
                        }
                        if head >= act.queues[0].size() {
                            // No used entry can name it: the ring is broken.
                            self.broken = true;
                            self.counters.broken_rings += 1;
                            break;
                        }
                        add_used(act, head, 0);
                        added += 1;
                    }
                    Parsed::Done {
                        pending,
                        status,
                        why,
                    } => {
                        count_kind(&mut self.counters, pending.kind);
                        if let Some(why) = why {
                            if worth_logging(self.counters.errors + 1) {
                                crate::rate_limited!(
                                    warn,
                                    "disk {}: refused request: {why}",
                                    self.path.display()
                                );
                            }
                        }
                        finish(act, &mut self.counters, pending, status);
                        added += 1;
                    }
                    Parsed::Io { pending, op } => {
                        count_kind(&mut self.counters, pending.kind);
                        self.engine.push(op, pending, &mut self.done);
                    }
                }
            }
            self.engine.submit();
            // Page-cache hits complete inside the submit syscall: answer
            // them now rather than after an event loop round trip.
            self.engine.reap(&mut self.done);
            added += complete(act, &mut self.done, &mut self.counters);
            if self.broken {
                break;
            }
            if !self.engine.has_room() {
                // Completions call us again; notifications stay off until
                // then, which is fine: we will look at the ring anyway.
                self.stalled = true;
                break;
            }
            match act.queues[0].enable_notification(&act.mem) {
                Ok(false) => break,
                // The avail index says there is more, yet virtio-queue
                // handed out nothing (an avail ring at address 0, say):
                // looking again would spin forever.
                Ok(true) if rearmed && !popped => {
                    self.broken = true;
                    self.counters.broken_rings += 1;
                    if worth_logging(self.counters.broken_rings) {
                        crate::rate_limited!(
                            error,
                            "disk {}: the driver made requests available that the queue cannot \
                             hand out; ignoring the queue until the device is reset",
                            self.path.display()
                        );
                    }
                    break;
                }
                // More came in: the loop's first check (an overrun) and the
                // next pass look at it.
                Ok(true) => rearmed = true,
                Err(e) => {
                    self.broken = true;
                    crate::rate_limited!(
                        error,
                        "disk {}: queue unusable: {e}",
                        self.path.display()
                    );
                    break;
                }
            }
        }
        if self.broken {
            // Tell the driver; it resets the device to recover.
            if let Err(e) = act.interrupt.signal_needs_reset() {
                error!("disk {}: cannot signal the guest: {e}", self.path.display());
            }
        }
        signal(act, added, &mut self.counters);
    }

    /// Answer requests the engine has finished.
    pub(super) fn process_completions(&mut self) {
        if self.answer_completions() && self.stalled {
            self.process_queue();
        }
    }

    /// Answer requests the engine has finished without taking new ones;
    /// false if the device is not active (they are dropped then).
    pub(super) fn answer_completions(&mut self) -> bool {
        self.engine.reap(&mut self.done);
        let Some(act) = self.active.as_mut() else {
            self.done.clear();
            return false;
        };
        let added = complete(act, &mut self.done, &mut self.counters);
        signal(act, added, &mut self.counters);
        true
    }
}

/// The available index is further ahead than a queue can hold: the driver
/// is broken, and virtio-queue will not hand out chains.
fn ring_overrun(act: &Active) -> bool {
    match act.queues[0].avail_idx(&act.mem, Ordering::Acquire) {
        Ok(idx) => (idx - Wrapping(act.queues[0].next_avail())).0 > act.queues[0].size(),
        Err(_) => true,
    }
}

fn count_kind(c: &mut BlockCounters, kind: Kind) {
    match kind {
        Kind::Read => c.read_requests += 1,
        Kind::Write => c.write_requests += 1,
        Kind::Flush => c.flush_requests += 1,
        Kind::GetId | Kind::Other => {}
    }
}

fn add_used(act: &mut Active, head: u16, len: u32) {
    if let Err(e) = act.queues[0].add_used(&act.mem, head, len) {
        crate::rate_limited!(
            error,
            "virtio-blk: cannot return descriptor {head} to the driver: {e}"
        );
    }
}

/// Write the status byte and return the chain.
fn finish(act: &mut Active, counters: &mut BlockCounters, pending: Pending, status: u8) {
    let len = if status == STATUS_OK {
        pending.used_len
    } else {
        counters.errors += 1;
        1
    };
    // The address was checked when the request was parsed.
    let written = match act.mem.get_slice(pending.status_addr, 1) {
        Ok(s) => s.write_obj(status, 0).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = written {
        error!("virtio-blk: cannot write a request status: {e}");
    }
    add_used(act, pending.head, len);
}

/// Answer every finished request in `done`; returns how many.
fn complete(act: &mut Active, done: &mut Vec<Completion>, counters: &mut BlockCounters) -> usize {
    let n = done.len();
    for Completion {
        pending,
        result,
        merged,
    } in done.drain(..)
    {
        counters.merged_requests += u64::from(merged);
        let status = match result {
            Ok(()) => {
                match pending.kind {
                    Kind::Read => counters.bytes_read += pending.bytes,
                    Kind::Write => counters.bytes_written += pending.bytes,
                    _ => {}
                }
                STATUS_OK
            }
            Err(e) => {
                counters.host_io_errors += 1;
                if worth_logging(counters.host_io_errors) {
                    error!(
                        "virtio-blk: {:?} request failed on the host: {e}",
                        pending.kind
                    );
                }
                STATUS_IOERR
            }
        };
        finish(act, counters, pending, status);
    }
    n
}

/// Interrupt the guest if it asked to hear about these `added` entries.
fn signal(act: &mut Active, added: usize, counters: &mut BlockCounters) {
    if added == 0 {
        return;
    }
    if act.notify(0, "virtio-blk") {
        counters.interrupts += 1;
    }
}
