//! What the fuzz targets share: guest memory, and a driver that lays out a
//! split virtqueue (descriptor table, available ring) from fuzz input and
//! makes chains available in rounds, one kick per round.

pub mod net;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use virtio_queue::{Queue, QueueT};
use devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Queue `i` of a device: descriptor table at `i * QUEUE_SPACING`, the
/// available ring 4 KiB above it, the used ring 4 KiB above that (room for
/// 256 entries each).
pub const QUEUE_SPACING: u64 = 0x4000;
/// Where the fuzz input's buffer bytes go.
pub const DATA: u64 = 0x1_0000;

/// Anonymous guest memory of `size` bytes at address 0.
pub fn guest_mem(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("mmap guest memory")
}

/// Reads the input front to back; past its end every number is 0, so any
/// input decodes. tests/fuzz/seeds.py writes the same layout.
pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    pub fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let got = self.bytes(N);
        b[..got.len()].copy_from_slice(got);
        b
    }
    pub fn u8(&mut self) -> u8 {
        self.le::<1>()[0]
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }
    /// Whatever is left.
    pub fn rest(&mut self) -> &[u8] {
        self.bytes(usize::MAX)
    }
}

/// An in-memory file of `len` zero bytes and a path that opens it again
/// (`/proc/self/fd/N`): code that takes a path gets a file that leaves
/// nothing behind.
pub fn memfd(len: u64) -> (File, PathBuf) {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the
    // result is checked before it is used.
    let fd = unsafe { libc::memfd_create(c"flint-fuzz".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len).expect("size the memfd");
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    (file, path)
}

/// One descriptor as the driver writes it. Unless `raw`, the fields are
/// folded into sensible ranges (address in or just past guest memory, next
/// inside the table, only the NEXT/WRITE/INDIRECT flags) so that most
/// inputs reach the device's parsing rather than virtio-queue's checks.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub raw: bool,
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// One kick: these heads become available, then the avail index moves by
/// their count plus `skew` (a driver lying about how many it added).
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub heads: Vec<u16>,
    pub skew: u8,
}

/// One queue as a driver sets it up and uses it.
#[derive(Debug, Clone, Default)]
pub struct QueueInput {
    /// The queue size is `1 << (size_log2 % 9)`, at most the device's.
    pub size_log2: u8,
    /// Ring addresses that may lie anywhere, instead of the tidy layout.
    pub garbage_rings: Option<(u64, u64, u64)>,
    pub avail_flags: u16,
    pub used_event: u16,
    pub descs: Vec<Desc>,
    pub rounds: Vec<Round>,
}

impl QueueInput {
    /// size_log2 u8; garbage u8 (bit 0: three u64 ring addresses follow);
    /// avail_flags u16; used_event u16; n u8 descriptors of (raw u8, addr
    /// u64, len u32, flags u16, next u16); n u8 rounds of (n u8 heads of
    /// u16, skew u8). Little-endian.
    pub fn read(r: &mut Reader) -> Self {
        let size_log2 = r.u8();
        let garbage_rings = r.bool().then(|| (r.u64(), r.u64(), r.u64()));
        let avail_flags = r.u16();
        let used_event = r.u16();
        let descs = (0..r.u8())
            .map(|_| Desc {
                raw: r.bool(),
                addr: r.u64(),
                len: r.u32(),
                flags: r.u16(),
                next: r.u16(),
            })
            .collect();
        let rounds = (0..r.u8())
            .map(|_| Round {
                heads: (0..r.u8()).map(|_| r.u16()).collect(),
                skew: r.u8(),
            })
            .collect();
        QueueInput {
            size_log2,
            garbage_rings,
            avail_flags,
            used_event,
            descs,
            rounds,
        }
    }
}

/// The driver's side of one queue in guest memory.
pub struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    input: &'a QueueInput,
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    idx: u16,
}

impl<'a> Driver<'a> {
    /// Queue `index` of a device whose queues hold at most `max` entries:
    /// writes the descriptor table and the available ring's header.
    pub fn new(mem: &'a GuestMemoryMmap, index: usize, max: u16, input: &'a QueueInput) -> Self {
        let base = index as u64 * QUEUE_SPACING;
        let size = (1u16 << (input.size_log2 % 9)).min(max);
        let (desc, avail, used) =
            input
                .garbage_rings
                .unwrap_or((base, base + 0x1000, base + 0x2000));
        let mem_end = mem.last_addr().0 + 1;
        for (i, d) in input.descs.iter().take(usize::from(size)).enumerate() {
            let (addr, len, flags, next) = if d.raw {
                (d.addr, d.len, d.flags, d.next)
            } else {
                (
                    d.addr % (mem_end + 0x1000),
                    d.len % 0x2_0000,
                    d.flags & 0x7,
                    d.next % size,
                )
            };
            let at = GuestAddress(desc.wrapping_add(16 * i as u64));
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            let _ = mem.write_slice(&raw, at);
        }
        let _ = mem.write_obj(input.avail_flags, GuestAddress(avail));
        let used_event = avail.wrapping_add(4 + 2 * u64::from(size));
        let _ = mem.write_obj(input.used_event, GuestAddress(used_event));
        Driver {
            mem,
            input,
            desc,
            avail,
            used,
            size,
            idx: 0,
        }
    }

    /// The queue as the transport hands it to `activate`.
    pub fn queue(&self, max: u16) -> Queue {
        let mut q = Queue::new(max).expect("a valid maximum queue size");
        q.set_size(self.size);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// How many kicks the input asks for (at most 8).
    pub fn rounds(&self) -> usize {
        self.input.rounds.len().min(8)
    }

    /// Make round `r`'s heads available.
    pub fn publish(&mut self, r: usize) {
        let Some(round) = self.input.rounds.get(r) else {
            return;
        };
        let limit = 2 * usize::from(self.size);
        for &head in round.heads.iter().take(limit) {
            let slot = 4 + 2 * u64::from(self.idx % self.size);
            let _ = self
                .mem
                .write_obj(head, GuestAddress(self.avail.wrapping_add(slot)));
            self.idx = self.idx.wrapping_add(1);
        }
        let shown = self.idx.wrapping_add(u16::from(round.skew));
        let _ = self
            .mem
            .write_obj(shown, GuestAddress(self.avail.wrapping_add(2)));
    }
}

/// Write `data` at [`DATA`] (as much as fits).
pub fn write_data(mem: &GuestMemoryMmap, data: &[u8]) {
    let room = (mem.last_addr().0 + 1).saturating_sub(DATA) as usize;
    let _ = mem.write_slice(&data[..data.len().min(room)], GuestAddress(DATA));
}
