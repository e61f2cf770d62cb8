//! Whether a loaded kernel takes `virtio_mmio.device=` on its command line.
//!
//! The parameter exists only in kernels with virtio_mmio built in and
//! CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES; its name is then a string in the
//! kernel's `.rodata`. flint looks for that string in guest memory right
//! after loading the ELF kernel: only in `.rodata` when the section headers
//! say where it is (a few hundred KiB), else in every loaded segment. No
//! copy of the kernel is made and nothing outside the loaded bytes is read.

use std::io::{self, Read, Seek, SeekFrom};

use vm_memory::{GuestAddress, GuestMemoryBackend};
use devices::GuestMemoryMmap;

/// The name of the built-in virtio_mmio driver's device parameter.
pub const VIRTIO_MMIO_PARAM: &[u8] = b"virtio_mmio.device";

/// What flint knows about the kernel's `virtio_mmio.device=` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioCmdline {
    /// The kernel has it: virtio devices go on its command line.
    Supported,
    /// flint read the kernel and it has no such parameter.
    Absent,
    /// flint could not read the kernel (the guest decompresses it).
    Unknown,
}

const PT_LOAD: u32 = 1;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const SHDR_LEN: usize = 64;
/// Sanity bounds on header counts: a vmlinux has a handful of segments
/// and well under a hundred sections.
const MAX_PHDRS: usize = 64;
const MAX_SHDRS: usize = 4096;

/// A loaded segment: where its file bytes went in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
}

// Callers read fixed offsets of whole headers; a field beyond `b` reads 0.
fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..)
        .and_then(<[u8]>::first_chunk)
        .map_or(0, |c| u16::from_le_bytes(*c))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..)
        .and_then(<[u8]>::first_chunk)
        .map_or(0, |c| u32::from_le_bytes(*c))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..)
        .and_then(<[u8]>::first_chunk)
        .map_or(0, |c| u64::from_le_bytes(*c))
}

fn read_at<R: Read + Seek>(r: &mut R, off: u64, len: usize) -> io::Result<Vec<u8>> {
    r.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// The guest-memory ranges (address, length) that hold a 64-bit ELF
/// kernel's read-only data once it is loaded at its physical addresses:
/// `.rodata` alone when the section headers locate it inside a loaded
/// segment, otherwise every loaded segment's file bytes.
pub fn rodata_ranges<R: Read + Seek>(elf: &mut R) -> io::Result<Vec<(u64, u64)>> {
    let eh = read_at(elf, 0, EHDR_LEN)?;
    let (phoff, phnum) = (u64_at(&eh, 0x20), usize::from(u16_at(&eh, 0x38)));
    let (shoff, shnum) = (u64_at(&eh, 0x28), usize::from(u16_at(&eh, 0x3c)));
    let shstrndx = usize::from(u16_at(&eh, 0x3e));
    if phnum > MAX_PHDRS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many segments",
        ));
    }
    let ph = read_at(elf, phoff, phnum * PHDR_LEN)?;
    let segments: Vec<Segment> = ph
        .chunks_exact(PHDR_LEN)
        .filter(|p| u32_at(p, 0) == PT_LOAD)
        .map(|p| Segment {
            offset: u64_at(p, 0x08),
            paddr: u64_at(p, 0x18),
            filesz: u64_at(p, 0x20),
        })
        .filter(|s| s.filesz > 0)
        .collect();
    let all = || segments.iter().map(|s| (s.paddr, s.filesz)).collect();
    let rodata = match rodata_section(elf, shoff, shnum, shstrndx) {
        Ok(Some(r)) => r,
        _ => return Ok(all()),
    };
    Ok(locate(&segments, rodata).map_or_else(all, |r| vec![r]))
}

/// The file range (offset, size) of the `.rodata` section, if any.
fn rodata_section<R: Read + Seek>(
    elf: &mut R,
    shoff: u64,
    shnum: usize,
    shstrndx: usize,
) -> io::Result<Option<(u64, u64)>> {
    if shoff == 0 || shnum == 0 || shnum > MAX_SHDRS || shstrndx >= shnum {
        return Ok(None);
    }
    let sh = read_at(elf, shoff, shnum * SHDR_LEN)?;
    let section = |i: usize| sh.get(i * SHDR_LEN..(i + 1) * SHDR_LEN).unwrap_or_default();
    let strtab = section(shstrndx);
    let (str_off, str_size) = (u64_at(strtab, 0x18), u64_at(strtab, 0x20));
    if str_size > 1 << 20 {
        return Ok(None);
    }
    let names = read_at(elf, str_off, str_size as usize)?;
    for s in sh.chunks_exact(SHDR_LEN) {
        let name = u32_at(s, 0) as usize;
        if names.get(name..name + 8) == Some(b".rodata\0") {
            return Ok(Some((u64_at(s, 0x18), u64_at(s, 0x20))));
        }
    }
    Ok(None)
}

/// Where the file range `(offset, size)` lies in guest memory, if one
/// loaded segment holds all of it.
fn locate(segments: &[Segment], (offset, size): (u64, u64)) -> Option<(u64, u64)> {
    let end = offset.checked_add(size)?;
    segments.iter().find_map(|s| {
        let seg_end = s.offset.checked_add(s.filesz)?;
        if offset < s.offset || end > seg_end {
            return None;
        }
        Some((s.paddr.checked_add(offset - s.offset)?, size))
    })
}

/// Whether `needle` occurs in any of the guest-memory `ranges`. A range
/// outside guest memory counts as not containing it.
pub fn guest_contains(mem: &GuestMemoryMmap, ranges: &[(u64, u64)], needle: &[u8]) -> bool {
    ranges.iter().any(|&(addr, len)| {
        let Ok(slice) = mem.get_slice(GuestAddress(addr), len as usize) else {
            return false;
        };
        let guard = slice.ptr_guard();
        // SAFETY: the guard's pointer and length describe mapped guest
        // memory that lives as long as `mem`, which outlives this borrow.
        // No vCPU runs yet and the loader has finished, so nothing writes
        // these bytes while they are read.
        let bytes = unsafe { std::slice::from_raw_parts(guard.as_ptr(), guard.len()) };
        memchr::memmem::find(bytes, needle).is_some()
    })
}

/// Look for [`VIRTIO_MMIO_PARAM`] in the kernel `elf` just loaded into `mem`.
pub fn inspect<R: Read + Seek>(mem: &GuestMemoryMmap, elf: &mut R) -> VirtioCmdline {
    match rodata_ranges(elf) {
        Ok(ranges) if guest_contains(mem, &ranges, VIRTIO_MMIO_PARAM) => VirtioCmdline::Supported,
        Ok(_) => VirtioCmdline::Absent,
        Err(e) => {
            log::debug!("cannot read the kernel's ELF headers: {e}");
            VirtioCmdline::Unknown
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::Bytes;

    /// A minimal ELF64 with one PT_LOAD segment (file offset 0x1000 to
    /// paddr `paddr`, `body` bytes) and, when `with_sections`, a `.rodata`
    /// section covering `rodata` (offsets relative to the body).
    pub fn tiny_elf(paddr: u64, body: &[u8], rodata: Option<(u64, u64)>) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let p = 64;
        f[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[p + 0x08..p + 0x10].copy_from_slice(&0x1000u64.to_le_bytes());
        f[p + 0x18..p + 0x20].copy_from_slice(&paddr.to_le_bytes());
        f[p + 0x20..p + 0x28].copy_from_slice(&(body.len() as u64).to_le_bytes());
        f.extend_from_slice(body);
        if let Some((off, size)) = rodata {
            let names = b"\0.shstrtab\0.rodata\0";
            let str_off = f.len() as u64;
            f.extend_from_slice(names);
            let shoff = f.len() as u64;
            let mut sh = vec![0u8; 3 * SHDR_LEN];
            // [0] null, [1] .shstrtab, [2] .rodata
            sh[SHDR_LEN..SHDR_LEN + 4].copy_from_slice(&1u32.to_le_bytes());
            sh[SHDR_LEN + 0x18..SHDR_LEN + 0x20].copy_from_slice(&str_off.to_le_bytes());
            sh[SHDR_LEN + 0x20..SHDR_LEN + 0x28]
                .copy_from_slice(&(names.len() as u64).to_le_bytes());
            let r = 2 * SHDR_LEN;
            sh[r..r + 4].copy_from_slice(&11u32.to_le_bytes());
            sh[r + 0x18..r + 0x20].copy_from_slice(&(0x1000 + off).to_le_bytes());
            sh[r + 0x20..r + 0x28].copy_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&sh);
            f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
            f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
            f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        }
        f
    }

    fn load(mem: &GuestMemoryMmap, elf: &[u8], paddr: u64) {
        mem.write_slice(&elf[0x1000..], GuestAddress(paddr))
            .unwrap();
    }

    #[test]
    fn fields_beyond_the_buffer_read_zero() {
        let b = [1u8, 2, 3, 4, 5];
        assert_eq!(u16_at(&b, 3), 0x0504);
        assert_eq!(u16_at(&b, 4), 0);
        assert_eq!(u32_at(&b, 1), 0x0504_0302);
        assert_eq!(u32_at(&b, 2), 0);
        assert_eq!(u64_at(&b, 0), 0);
        assert_eq!(u64_at(&b, usize::MAX), 0);
    }

    #[test]
    fn finds_the_parameter_in_rodata() {
        let mem = crate::memory::create(32).unwrap();
        let mut body = vec![0u8; 0x3000];
        body[0x2100..0x2100 + VIRTIO_MMIO_PARAM.len()].copy_from_slice(VIRTIO_MMIO_PARAM);
        let elf = tiny_elf(0x100_0000, &body, Some((0x2000, 0x1000)));
        load(&mem, &elf, 0x100_0000);
        let ranges = rodata_ranges(&mut Cursor::new(&elf)).unwrap();
        assert_eq!(ranges, vec![(0x100_2000, 0x1000)]);
        assert_eq!(
            inspect(&mem, &mut Cursor::new(&elf)),
            VirtioCmdline::Supported
        );
    }

    #[test]
    fn only_rodata_is_searched_when_known() {
        let mem = crate::memory::create(32).unwrap();
        let mut body = vec![0u8; 0x3000];
        // In the text, not in .rodata: not the parameter's name.
        body[0x100..0x100 + VIRTIO_MMIO_PARAM.len()].copy_from_slice(VIRTIO_MMIO_PARAM);
        let elf = tiny_elf(0x100_0000, &body, Some((0x2000, 0x1000)));
        load(&mem, &elf, 0x100_0000);
        assert_eq!(inspect(&mem, &mut Cursor::new(&elf)), VirtioCmdline::Absent);
    }

    #[test]
    fn without_sections_every_segment_is_searched() {
        let mem = crate::memory::create(32).unwrap();
        let mut body = vec![0u8; 0x3000];
        let at = 0x2ff0 - VIRTIO_MMIO_PARAM.len();
        body[at..at + VIRTIO_MMIO_PARAM.len()].copy_from_slice(VIRTIO_MMIO_PARAM);
        let elf = tiny_elf(0x100_0000, &body, None);
        load(&mem, &elf, 0x100_0000);
        assert_eq!(
            rodata_ranges(&mut Cursor::new(&elf)).unwrap(),
            vec![(0x100_0000, 0x3000)]
        );
        assert_eq!(
            inspect(&mem, &mut Cursor::new(&elf)),
            VirtioCmdline::Supported
        );
        let plain = tiny_elf(0x100_0000, &[0u8; 0x3000], None);
        load(&mem, &plain, 0x100_0000);
        assert_eq!(
            inspect(&mem, &mut Cursor::new(&plain)),
            VirtioCmdline::Absent
        );
    }

    #[test]
    fn unreadable_headers_are_unknown() {
        let mem = crate::memory::create(32).unwrap();
        assert_eq!(
            inspect(&mem, &mut Cursor::new(b"\x7fELF".to_vec())),
            VirtioCmdline::Unknown
        );
        // A range beyond guest memory is simply not searched.
        assert!(!guest_contains(&mem, &[(1 << 40, 16)], b"x"));
    }
}
