//! Queue processing for [`Balloon`]: inflate and deflate chains are handled
//! and returned at once; the statistics buffer is parsed and held until the
//! next poll.

use crate::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::Bytes;

use super::device::Balloon;
use super::inflate;
use super::{DEFLATE_INDEX, INFLATE_INDEX};
use crate::virtio::notify_used;

/// Bytes of a statistics buffer looked at: far more than the 16 entries a
/// driver knows today.
const MAX_STATS_BYTES: usize = 4096;

impl Balloon {
    pub(super) fn process_inflate(&mut self) {
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let mem = &act.q.mem;
        let counters = &mut self.counters;
        let added = drain(&mut act.q.queues[INFLATE_INDEX], mem, "inflate", |chain| {
            counters.inflate_requests += 1;
            inflate::inflate(chain, mem, counters);
            Some(0)
        });
        if added {
            act.q.notify(INFLATE_INDEX, "balloon inflate queue");
        }
    }

    pub(super) fn process_deflate(&mut self) {
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let mem = &act.q.mem;
        let counters = &mut self.counters;
        let added = drain(&mut act.q.queues[DEFLATE_INDEX], mem, "deflate", |chain| {
            counters.deflate_requests += 1;
            inflate::deflate(chain, mem, counters);
            Some(0)
        });
        if added {
            act.q.notify(DEFLATE_INDEX, "balloon deflate queue");
        }
    }

    /// A new statistics buffer: parse it and hold it until the next poll.
    pub(super) fn process_stats(&mut self) {
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = act.stats.as_mut() else {
            return;
        };
        let mem = &act.q.mem;
        let (stats, counters, held) = (&mut self.stats, &mut self.counters, &mut self.stats_head);
        // Buffers the device gives back now: a compliant driver never posts
        // a second one while the device holds the first.
        let mut extra = Vec::new();
        drain(queue, mem, "statistics", |chain| {
            let head = chain.head_index();
            if let Some(prev) = held.replace(head) {
                counters.malformed_chains += 1;
                crate::rate_limited!(
                    warn,
                    "balloon: the driver posted a statistics buffer while the device held one"
                );
                extra.push(prev);
            }
            let mut buf = [0u8; MAX_STATS_BYTES];
            let (len, ok) = gather(chain, mem, &mut buf);
            if !ok {
                counters.malformed_chains += 1;
            }
            stats.update_from(buf.get(..len).unwrap_or_default());
            counters.stats_updates += 1;
            None
        });
        for &head in &extra {
            add_used(queue, mem, head, "statistics");
        }
        if !extra.is_empty() {
            notify_used(queue, mem, &act.q.interrupt, "balloon statistics queue");
        }
    }

    /// Give the held statistics buffer back: the driver refills it with
    /// fresh numbers and posts it again.
    pub(super) fn return_stats_buffer(&mut self) {
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = act.stats.as_mut() else {
            return;
        };
        let Some(head) = self.stats_head.take() else {
            log::debug!("balloon: statistics poll without a buffer from the driver");
            return;
        };
        add_used(queue, &act.q.mem, head, "statistics");
        notify_used(
            queue,
            &act.q.mem,
            &act.q.interrupt,
            "balloon statistics queue",
        );
    }
}

/// Take every available chain off `queue` (disable notifications, drain,
/// re-enable). `handle` returns the used length to answer with, or `None`
/// to keep the chain. Returns whether any chain went into the used ring.
fn drain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    name: &str,
    mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> Option<u32>,
) -> bool {
    let mut added = false;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            crate::rate_limited!(error, "balloon: {name} queue unusable: {e}");
            return added;
        }
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped = true;
            let head = chain.head_index();
            if let Some(len) = handle(chain) {
                if let Err(e) = queue.add_used(mem, head, len) {
                    crate::rate_limited!(error, "balloon: cannot return a {name} chain: {e}");
                    return added;
                }
                added = true;
            }
        }
        match queue.enable_notification(mem) {
            // More chains arrived while notifications were off. An empty
            // round means the avail index is corrupt: stop, don't spin.
            Ok(true) if popped => {}
            Ok(_) => return added,
            Err(e) => {
                crate::rate_limited!(error, "balloon: {name} queue unusable: {e}");
                return added;
            }
        }
    }
}

/// Copy the chain's device-readable bytes into `buf` (up to its size).
/// Returns the length and whether the chain was well formed.
fn gather(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> (usize, bool) {
    let mut len = 0;
    for desc in chain {
        if desc.is_write_only() {
            return (len, false);
        }
        let n = (desc.len() as usize).min(buf.len().saturating_sub(len));
        let Some(dst) = buf.get_mut(len..len + n) else {
            return (len, false);
        };
        if mem.read_slice(dst, desc.addr()).is_err() {
            return (len, false);
        }
        len += n;
    }
    (len, true)
}

fn add_used(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, name: &str) {
    if let Err(e) = queue.add_used(mem, head, 0) {
        crate::rate_limited!(error, "balloon: cannot return a {name} buffer: {e}");
    }
}
