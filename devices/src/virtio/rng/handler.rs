//! Queue processing for [`Rng`]: take chains off the available ring until it
//! is empty or the rate limiter says stop, fill each chain's buffers with
//! random bytes, and interrupt the guest when it wants to hear.

use std::io;

use crate::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::device::Rng;
use super::MAX_REQUEST_BYTES;
use crate::rate_limiter::Reduction;
use crate::virtio::timer;

impl Rng {
    /// Drain the available ring. Runs on the event loop.
    pub(super) fn process_queue(&mut self) {
        let now = self.now();
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let mut added = false;
        'ring: loop {
            if let Err(e) = act.queues[0].disable_notification(&act.mem) {
                crate::rate_limited!(error, "entropy device: queue unusable: {e}");
                break;
            }
            let mut popped = false;
            while let Some(chain) = act.queues[0].pop_descriptor_chain(&act.mem) {
                popped = true;
                let head = chain.head_index();
                let len = match writable_buffers(chain, &act.mem, &mut self.bufs) {
                    Ok(len) => len,
                    Err(why) => {
                        self.counters.requests += 1;
                        self.counters.errors += 1;
                        crate::rate_limited!(warn, "entropy device: refused a request: {why}");
                        add_used(&mut act.queues[0], &act.mem, head, 0);
                        added = true;
                        continue;
                    }
                };
                if let Some(bucket) = self.bucket.as_mut().filter(|_| len > 0) {
                    if let Reduction::Wait(after) = bucket.reduce(len as u64, now) {
                        match timer::arm_once(&mut self.timer, after) {
                            Ok(()) => {
                                // Put the chain back; the timer brings us here
                                // again. Notifications stay off: kicks would
                                // only be ignored.
                                act.queues[0].go_to_previous_position();
                                self.counters.throttled += 1;
                                self.throttled = true;
                                break 'ring;
                            }
                            // Without a timer nothing would resume the
                            // queue: serve the request rather than stall.
                            Err(e) => log::error!(
                                "entropy device: cannot arm the rate limiter's timer: {e}"
                            ),
                        }
                    }
                }
                self.counters.requests += 1;
                let scratch = self.scratch.get_mut(..len).ok_or_else(too_large);
                let written = match scratch.and_then(|s| fill(s, &self.bufs, &act.mem)) {
                    Ok(()) => {
                        self.counters.bytes += len as u64;
                        len as u32
                    }
                    Err(e) => {
                        self.counters.errors += 1;
                        crate::rate_limited!(error, "entropy device: request failed: {e}");
                        0
                    }
                };
                add_used(&mut act.queues[0], &act.mem, head, written);
                added = true;
            }
            match act.queues[0].enable_notification(&act.mem) {
                // More chains arrived while notifications were off. An empty
                // round means the avail index is corrupt: stop, don't spin.
                Ok(true) if popped => {}
                Ok(_) => break,
                Err(e) => {
                    crate::rate_limited!(error, "entropy device: queue unusable: {e}");
                    break;
                }
            }
        }
        if added {
            act.notify(0, "entropy device");
        }
    }
}

/// Collect the chain's buffers into `bufs`, up to [`MAX_REQUEST_BYTES`] in
/// all; returns how many bytes they take. Every descriptor must be
/// device-writable and inside guest memory.
fn writable_buffers(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    bufs: &mut Vec<(GuestAddress, usize)>,
) -> Result<usize, &'static str> {
    bufs.clear();
    let mut total = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err("device-readable descriptor in the chain");
        }
        let len = desc.len() as usize;
        if !mem.check_range(desc.addr(), len) {
            return Err("buffer outside guest memory");
        }
        let take = len.min(MAX_REQUEST_BYTES - total);
        if take > 0 {
            bufs.push((desc.addr(), take));
            total += take;
        }
    }
    Ok(total)
}

/// `writable_buffers` caps a request at the scratch buffer's size; this is
/// the error should that ever not hold.
fn too_large() -> io::Error {
    io::Error::other("request larger than the scratch buffer")
}

/// Fill `scratch` from the host's entropy and copy it into `bufs`.
fn fill(
    scratch: &mut [u8],
    bufs: &[(GuestAddress, usize)],
    mem: &GuestMemoryMmap,
) -> io::Result<()> {
    getrandom(scratch)?;
    let mut off = 0;
    for &(addr, len) in bufs {
        let src = scratch.get(off..off + len).ok_or_else(too_large)?;
        mem.write_slice(src, addr).map_err(io::Error::other)?;
        off += len;
    }
    Ok(())
}

/// Fill `buf` from the kernel's CSPRNG, through short reads and signals.
pub(super) fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let Some(rest) = buf.get_mut(done..) else {
            break;
        };
        // SAFETY: `rest` is a live, exclusively borrowed byte slice; the
        // kernel writes at most `rest.len()` bytes at its start.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::Error::other("getrandom returned no bytes")),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn add_used(queue: &mut virtio_queue::Queue, mem: &GuestMemoryMmap, head: u16, len: u32) {
    if let Err(e) = queue.add_used(mem, head, len) {
        crate::rate_limited!(
            error,
            "entropy device: cannot return descriptor {head} to the driver: {e}"
        );
    }
}
