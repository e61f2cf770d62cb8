//! Packets: the 44-byte `virtio_vsock_hdr`, reading a guest's TX chain into
//! header + payload, and writing header + payload into an RX chain. Header
//! and payload may be cut across descriptors anywhere.

use crate::GuestMemoryMmap;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{HDR_LEN, MAX_PKT_LEN, TYPE_STREAM};

/// Why a chain could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("a device-writable descriptor in a TX chain")]
    WritableInTx,
    #[error("a read-only descriptor in an RX chain")]
    ReadOnlyInRx,
    #[error("a buffer outside guest memory")]
    OutsideMemory,
    #[error("{0} bytes, shorter than the 44-byte header")]
    TooShort(usize),
    #[error("an RX chain of {0} bytes, no room for data after the 44-byte header")]
    NoRoom(usize),
    #[error("payload length {0} is over the {MAX_PKT_LEN}-byte limit")]
    TooLong(u32),
    #[error("payload length {len} is more than the {room} bytes the chain holds")]
    LenBeyondChain { len: u32, room: usize },
    #[error("socket type {0}, only stream (1) is supported")]
    BadType(u16),
}

/// `struct virtio_vsock_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..)
        .and_then(<[u8]>::first_chunk)
        .map_or(0, |c| u32::from_le_bytes(*c))
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let le64 = |at: usize| u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32);
        let le16 = |at: usize| {
            b.get(at..)
                .and_then(<[u8]>::first_chunk)
                .map_or(0, |c| u16::from_le_bytes(*c))
        };
        Header {
            src_cid: le64(0),
            dst_cid: le64(8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: le16(28),
            op: le16(30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The answer to this packet with `op`: addresses swapped, no payload.
    pub fn reply(&self, op: u16) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op,
            ..Header::default()
        }
    }
}

/// Guest buffers of one chain, each checked to lie in guest memory.
#[derive(Debug)]
pub struct Segments {
    pub head: u16,
    segs: Vec<(GuestAddress, usize)>,
    pub capacity: usize,
}

impl Segments {
    /// Collect a chain's descriptors, all readable (`writable` false) or all
    /// device-writable (`writable` true).
    pub fn collect(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        writable: bool,
    ) -> Result<Segments, (u16, PacketError)> {
        let head = chain.head_index();
        let mut segs = Vec::new();
        let mut capacity = 0usize;
        for desc in chain {
            match (desc.is_write_only(), writable) {
                (true, false) => return Err((head, PacketError::WritableInTx)),
                (false, true) => return Err((head, PacketError::ReadOnlyInRx)),
                _ => {}
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
                return Err((head, PacketError::OutsideMemory));
            }
            segs.push((desc.addr(), len));
            capacity += len;
        }
        Ok(Segments {
            head,
            segs,
            capacity,
        })
    }

    /// Copy `out.len()` bytes starting `skip` bytes into the chain.
    fn read(&self, mem: &GuestMemoryMmap, mut skip: usize, out: &mut [u8]) -> bool {
        let mut done = 0;
        for &(addr, len) in &self.segs {
            if done == out.len() {
                break;
            }
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min(out.len() - done);
            // `skip` < `len`, and the range was checked in `collect`.
            let (Some(at), Some(dst)) = (
                addr.0.checked_add(skip as u64).map(GuestAddress),
                out.get_mut(done..done + n),
            ) else {
                return false;
            };
            if mem.read_slice(dst, at).is_err() {
                return false;
            }
            done += n;
            skip = 0;
        }
        done == out.len()
    }

    /// Write `parts` one after the other from the start of the chain.
    /// Returns the bytes written (all of them, when they fit).
    fn write(&self, mem: &GuestMemoryMmap, parts: &[&[u8]]) -> usize {
        let mut segs = self.segs.iter().copied();
        let mut cur: Option<(GuestAddress, usize)> = None;
        let mut written = 0;
        for part in parts {
            let mut off = 0;
            while off < part.len() {
                let (addr, room) = match cur.take().or_else(|| segs.next()) {
                    Some(seg) => seg,
                    None => return written,
                };
                let n = room.min(part.len() - off);
                let Some(src) = part.get(off..off + n) else {
                    return written;
                };
                if mem.write_slice(src, addr).is_err() {
                    return written;
                }
                off += n;
                written += n;
                if n < room {
                    let Some(next) = addr.0.checked_add(n as u64) else {
                        return written;
                    };
                    cur = Some((GuestAddress(next), room - n));
                }
            }
        }
        written
    }
}

/// Read a guest TX chain: its header, and its payload into `payload`
/// (resized to `len`). On error, also the header when one could be read,
/// so the caller can answer it.
pub fn read_tx(
    segs: &Segments,
    mem: &GuestMemoryMmap,
    payload: &mut Vec<u8>,
) -> Result<Header, (Option<Header>, PacketError)> {
    let mut raw = [0u8; HDR_LEN];
    if segs.capacity < HDR_LEN {
        return Err((None, PacketError::TooShort(segs.capacity)));
    }
    if !segs.read(mem, 0, &mut raw) {
        return Err((None, PacketError::OutsideMemory));
    }
    let hdr = Header::from_bytes(&raw);
    parse_payload(hdr, segs, mem, payload).map_err(|e| (Some(hdr), e))?;
    Ok(hdr)
}

fn parse_payload(
    hdr: Header,
    segs: &Segments,
    mem: &GuestMemoryMmap,
    payload: &mut Vec<u8>,
) -> Result<(), PacketError> {
    if hdr.type_ != TYPE_STREAM {
        return Err(PacketError::BadType(hdr.type_));
    }
    if hdr.len > MAX_PKT_LEN {
        return Err(PacketError::TooLong(hdr.len));
    }
    let room = segs.capacity - HDR_LEN;
    let len = hdr.len as usize;
    if len > room {
        return Err(PacketError::LenBeyondChain { len: hdr.len, room });
    }
    payload.resize(len, 0);
    if !segs.read(mem, HDR_LEN, payload) {
        return Err(PacketError::OutsideMemory);
    }
    Ok(())
}

/// Check a guest RX chain: writable, in memory, room for a header and at
/// least one data byte (every packet must fit any buffer, so data never
/// waits for a bigger one; drivers post 4 KiB or more).
pub fn check_rx(segs: Segments) -> Result<Segments, (u16, PacketError)> {
    if segs.capacity <= HDR_LEN {
        return Err((segs.head, PacketError::NoRoom(segs.capacity)));
    }
    Ok(segs)
}

/// Fill an RX chain with `hdr` and `payload` (the caller sized the payload
/// to the chain). Returns the length for the used ring.
pub fn write_rx(segs: &Segments, mem: &GuestMemoryMmap, hdr: &Header, payload: &[u8]) -> u32 {
    let written = segs.write(mem, &[&hdr.to_bytes(), payload]);
    // At most HDR_LEN + MAX_PKT_LEN.
    u32::try_from(written).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::*;

    fn sample(op: u16) -> Header {
        Header {
            src_cid: 0x1122_3344_5566_7788,
            dst_cid: 2,
            src_port: 0xdead_beef,
            dst_port: 1234,
            len: 7,
            type_: TYPE_STREAM,
            op,
            flags: 3,
            buf_alloc: 0x0004_0000,
            fwd_cnt: 0x8000_0001,
        }
    }

    #[test]
    fn header_layout_is_little_endian_and_44_bytes() {
        let b = sample(OP_RW).to_bytes();
        assert_eq!(b.len(), 44);
        assert_eq!(b[0..8], [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(b[8..16], [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b[16..20], [0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(b[20..24], [0xd2, 0x04, 0, 0]);
        assert_eq!(b[24..28], [7, 0, 0, 0]);
        assert_eq!(b[28..30], [1, 0]);
        assert_eq!(b[30..32], [5, 0]);
        assert_eq!(b[32..36], [3, 0, 0, 0]);
        assert_eq!(b[36..40], [0, 0, 4, 0]);
        assert_eq!(b[40..44], [1, 0, 0, 0x80]);
    }

    #[test]
    fn every_op_round_trips() {
        for op in [
            OP_REQUEST,
            OP_RESPONSE,
            OP_RST,
            OP_SHUTDOWN,
            OP_RW,
            OP_CREDIT_UPDATE,
            OP_CREDIT_REQUEST,
        ] {
            let h = sample(op);
            let b = h.to_bytes();
            assert_eq!(u16::from_le_bytes([b[30], b[31]]), op);
            assert_eq!(Header::from_bytes(&b), h);
        }
    }

    #[test]
    fn reply_swaps_addresses_and_clears_the_rest() {
        let r = sample(OP_RW).reply(OP_RST);
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 0x1122_3344_5566_7788, 1234, 0xdead_beef)
        );
        assert_eq!((r.op, r.type_, r.len, r.flags), (OP_RST, TYPE_STREAM, 0, 0));
        assert_eq!((r.buf_alloc, r.fwd_cnt), (0, 0));
    }
}
