//! One virtio-blk request: parse and validate a descriptor chain.
//!
//! Everything here is guest-controlled input. The layout expected is the one
//! every driver uses: a 16-byte readable header descriptor, data descriptors
//! (device-writable for IN and GET_ID, readable for OUT), and a writable
//! status descriptor last. A chain whose status byte cannot be written is
//! "broken" and goes back with used length 0; any other problem is answered
//! with VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP.

use crate::GuestMemoryMmap;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{CacheType, ID_BYTES, SECTOR_SIZE};

pub(crate) const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub(crate) const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub(crate) const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

pub(crate) use crate::virtio::iovec::{IoVecs, MAX_IOVECS};
const HEADER_LEN: u32 = 16;

/// Why a request was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("chain of {0} descriptors has no room for a header and a status")]
    ChainTooShort(usize),
    #[error("status descriptor is not device-writable")]
    StatusNotWritable,
    #[error("status descriptor has length 0")]
    StatusEmpty,
    #[error("status byte at {0:#x} is outside guest memory")]
    StatusOutsideMemory(u64),
    #[error("header descriptor is device-writable")]
    HeaderNotReadable,
    #[error("header descriptor has {0} bytes, not 16")]
    HeaderLength(u32),
    #[error("header at {0:#x} is outside guest memory")]
    HeaderOutsideMemory(u64),
    #[error("data descriptor has the wrong direction for request type {0}")]
    DataDirection(u32),
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    #[error("sectors {sector}+{len} bytes go past the end of the {capacity}-byte disk")]
    OutOfRange {
        sector: u64,
        len: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("data buffer {addr:#x}+{len:#x} is outside guest memory")]
    DataOutsideMemory { addr: u64, len: u32 },
    #[error("data spans more than {MAX_IOVECS} memory segments")]
    TooManySegments,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
}

/// Facts about the disk that requests are checked against.
#[derive(Clone, Debug)]
pub(crate) struct Disk {
    /// Size in bytes, a multiple of [`SECTOR_SIZE`].
    pub capacity: u64,
    pub read_only: bool,
    pub cache: CacheType,
    pub id: [u8; ID_BYTES],
}

/// Request kinds, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Flush,
    GetId,
    Other,
}

/// The host I/O a request needs.
#[derive(Debug)]
pub(crate) enum IoOp {
    Read { offset: u64, iovecs: IoVecs },
    Write { offset: u64, iovecs: IoVecs },
    Flush,
}

/// What the device owes the guest when a request finishes.
#[derive(Debug)]
pub(crate) struct Pending {
    pub head: u16,
    pub status_addr: GuestAddress,
    /// Used length on success: bytes written into the chain, status included.
    pub used_len: u32,
    pub kind: Kind,
    /// Data bytes moved on success, for the counters.
    pub bytes: u64,
}

/// The outcome of parsing one chain.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// No status byte to answer with: add to the used ring with length 0.
    Broken { head: u16, why: RequestError },
    /// Answered without host I/O.
    Done {
        pending: Pending,
        status: u8,
        why: Option<RequestError>,
    },
    /// Needs the engine.
    Io { pending: Pending, op: IoOp },
}

/// Parse the chain, which lives in `mem`; `descs` is scratch space reused
/// between requests.
pub(crate) fn parse(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &Disk,
    descs: &mut Vec<Descriptor>,
) -> Parsed {
    let head = chain.head_index();
    descs.clear();
    descs.extend(chain);

    let broken = |why| Parsed::Broken { head, why };
    let Some((status, rest)) = descs.split_last() else {
        return broken(RequestError::ChainTooShort(0));
    };
    let Some((header, data)) = rest.split_first() else {
        return broken(RequestError::ChainTooShort(1));
    };
    if !status.is_write_only() {
        return broken(RequestError::StatusNotWritable);
    }
    if status.len() == 0 {
        return broken(RequestError::StatusEmpty);
    }
    if !GuestMemoryBackend::check_range(mem, status.addr(), 1) {
        return broken(RequestError::StatusOutsideMemory(status.addr().0));
    }

    let mut pending = Pending {
        head,
        status_addr: status.addr(),
        used_len: 1,
        kind: Kind::Other,
        bytes: 0,
    };
    let (kind, sector) = match read_header(mem, header) {
        Ok(h) => h,
        Err(why) => return done(pending, STATUS_IOERR, Some(why)),
    };
    pending.kind = match kind {
        VIRTIO_BLK_T_IN => Kind::Read,
        VIRTIO_BLK_T_OUT => Kind::Write,
        VIRTIO_BLK_T_FLUSH => Kind::Flush,
        VIRTIO_BLK_T_GET_ID => Kind::GetId,
        other => {
            return done(
                pending,
                STATUS_UNSUPP,
                Some(RequestError::Unsupported(other)),
            )
        }
    };
    match pending.kind {
        Kind::Read | Kind::Write => match data_io(mem, disk, kind, sector, data) {
            Ok((offset, iovecs, len)) => {
                pending.bytes = len;
                if len == 0 {
                    return done(pending, STATUS_OK, None);
                }
                let op = if pending.kind == Kind::Read {
                    // The chain's total length fits in u32 (virtio-queue
                    // stops a chain that does not), so this cannot saturate.
                    pending.used_len = u32::try_from(len + 1).unwrap_or(u32::MAX);
                    IoOp::Read { offset, iovecs }
                } else {
                    IoOp::Write { offset, iovecs }
                };
                Parsed::Io { pending, op }
            }
            Err(why) => done(pending, STATUS_IOERR, Some(why)),
        },
        Kind::Flush if disk.cache == CacheType::Unsafe => done(pending, STATUS_OK, None),
        Kind::Flush => Parsed::Io {
            pending,
            op: IoOp::Flush,
        },
        _ => match write_id(mem, &disk.id, data) {
            Ok(n) => {
                pending.used_len = n + 1;
                done(pending, STATUS_OK, None)
            }
            Err(why) => done(pending, STATUS_IOERR, Some(why)),
        },
    }
}

fn done(pending: Pending, status: u8, why: Option<RequestError>) -> Parsed {
    Parsed::Done {
        pending,
        status,
        why,
    }
}

/// The request type and sector from the header descriptor.
fn read_header(mem: &GuestMemoryMmap, desc: &Descriptor) -> Result<(u32, u64), RequestError> {
    if desc.is_write_only() {
        return Err(RequestError::HeaderNotReadable);
    }
    if desc.len() != HEADER_LEN {
        return Err(RequestError::HeaderLength(desc.len()));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    // One region almost always holds the header; the generic path is for
    // the rest.
    let fast = mem
        .get_slice(desc.addr(), h.len())
        .is_ok_and(|s| s.read_slice(&mut h, 0).is_ok());
    if !fast {
        mem.read_slice(&mut h, desc.addr())
            .map_err(|_| RequestError::HeaderOutsideMemory(desc.addr().0))?;
    }
    // struct virtio_blk_outhdr { le32 type; le32 ioprio; le64 sector; }
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Ok((kind, sector))
}

/// Check an IN/OUT request and map its data buffers: (file offset, iovecs,
/// length).
fn data_io(
    mem: &GuestMemoryMmap,
    disk: &Disk,
    kind: u32,
    sector: u64,
    data: &[Descriptor],
) -> Result<(u64, IoVecs, u64), RequestError> {
    let is_read = kind == VIRTIO_BLK_T_IN;
    if !is_read && disk.read_only {
        return Err(RequestError::ReadOnly);
    }
    if data.iter().any(|d| d.is_write_only() != is_read) {
        return Err(RequestError::DataDirection(kind));
    }
    let len: u64 = data.iter().map(|d| u64::from(d.len())).sum();
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::UnalignedLength(len));
    }
    let out_of_range = RequestError::OutOfRange {
        sector,
        len,
        capacity: disk.capacity,
    };
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(out_of_range.clone())?;
    match offset.checked_add(len) {
        Some(end) if end <= disk.capacity => {}
        _ => return Err(out_of_range),
    }

    let mut vecs = IoVecs::with_capacity(data.len());
    for d in data {
        // A read fills the guest's buffer behind vm-memory's back (preadv,
        // io_uring): push_guest marks its pages dirty, for Diff snapshots.
        vecs.push_guest(mem, d.addr(), d.len() as usize, is_read)
            .map_err(|_| RequestError::DataOutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            })?;
        if vecs.len() > MAX_IOVECS {
            return Err(RequestError::TooManySegments);
        }
    }
    Ok((offset, vecs, len))
}

/// GET_ID: copy the (zero-padded) id into the writable data buffers, at most
/// 20 bytes; returns how many bytes were written.
fn write_id(
    mem: &GuestMemoryMmap,
    id: &[u8; ID_BYTES],
    data: &[Descriptor],
) -> Result<u32, RequestError> {
    if data.iter().any(|d| !d.is_write_only()) {
        return Err(RequestError::DataDirection(VIRTIO_BLK_T_GET_ID));
    }
    let mut written = 0usize;
    for d in data {
        let Some(rest) = id.get(written..) else {
            break;
        };
        let n = (d.len() as usize).min(rest.len());
        if n == 0 {
            continue;
        }
        mem.write_slice(rest.get(..n).unwrap_or_default(), d.addr())
            .map_err(|_| RequestError::DataOutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            })?;
        written += n;
    }
    // At most ID_BYTES.
    Ok(written as u32)
}
