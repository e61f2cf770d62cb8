//! The guest memory file of a snapshot: the guest's RAM ranges one after
//! the other, in address order (the layout [`crate::memory::ram_ranges`]
//! gives for the VM's size). Pages that hold only zeros are not written:
//! the file has holes there, which read back as zeros and take no disk.
//!
//! Restoring maps the file privately (MAP_PRIVATE): a page is read from
//! the file when the guest first touches it, and the guest's writes stay
//! in flint's memory, never in the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use devices::GuestMemoryMmap;
use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

const PAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the memory file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the memory file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the memory file {path} has {len} bytes; the snapshot's guest has {want} ({mib} MiB)")]
    Size {
        path: PathBuf,
        len: u64,
        want: u64,
        mib: u64,
    },
    #[error("cannot map the memory file {path}: {why}")]
    Map { path: PathBuf, why: String },
    #[error("guest memory at {0:#x} has no host address")]
    HostAddress(u64),
    #[error(
        "a Diff snapshot writes the pages changed since the last snapshot into that \
         snapshot's memory file: {path} has {len} bytes, the guest has {want}"
    )]
    DiffBase { path: PathBuf, len: u64, want: u64 },
}

/// Write every RAM range of `mem` to `path` (a temporary name beside it,
/// then a rename); the bytes written, holes excluded.
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, Error> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    super::write_replacing(path, |file| write_ranges(mem, file, &err), err)
}

fn write_ranges(
    mem: &GuestMemoryMmap,
    file: &mut File,
    err: &impl Fn(std::io::Error) -> Error,
) -> Result<u64, Error> {
    // Pages of zeros stay holes.
    let written = write_pages(mem, file, err, |_, _, page| page.iter().any(|&b| b != 0))?;
    let len: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(len).map_err(err)?;
    Ok(written)
}

/// Write each page of `mem` that `keep` (given its region, its index in
/// the region and its bytes) picks at its place in the memory file: the
/// RAM ranges one after the other. The bytes written.
fn write_pages(
    mem: &GuestMemoryMmap,
    file: &File,
    err: &impl Fn(std::io::Error) -> Error,
    keep: impl Fn(&GuestRegionMmap<AtomicBitmap>, usize, &[u8]) -> bool,
) -> Result<u64, Error> {
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| Error::HostAddress(region.start_addr().0))?;
        // SAFETY: `host` is the start of this region's live mapping of
        // `len` bytes, which `mem` keeps alive for this call; the VM is
        // paused, so nothing writes it meanwhile (the bytes are only read).
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            if keep(region, i, page) {
                file.write_all_at(page, offset + (i * PAGE) as u64)
                    .map_err(err)?;
                written += page.len() as u64;
            }
        }
        offset += len as u64;
    }
    Ok(written)
}

/// Write the pages written since the last snapshot (the guest's, from
/// KVM's dirty log `kvm_dirty`, one bitmap per region; and flint's own,
/// from the memory's bitmap) into the memory file of that snapshot at
/// `path`, which then holds this snapshot's memory; the bytes written.
/// KVM's log is folded into the memory's bitmap first, and that is only
/// cleared once the file is written and synced: a failed Diff loses
/// nothing for the next one.
pub fn save_dirty(mem: &GuestMemoryMmap, path: &Path, kvm_dirty: &[Vec<u64>]) -> Result<u64, Error> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    for (region, log) in mem.iter().zip(kvm_dirty) {
        for (w, &word) in log.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let page = w * 64 + bits.trailing_zeros() as usize;
                region.bitmap().mark_dirty(page * PAGE, PAGE);
                bits &= bits - 1;
            }
        }
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let len = file.metadata().map_err(err)?.len();
    let want: u64 = mem.iter().map(|r| r.len()).sum();
    if len != want {
        return Err(Error::DiffBase {
            path: path.to_path_buf(),
            len,
            want,
        });
    }
    let written = write_pages(mem, &file, &err, |region, i, _| {
        region.bitmap().dirty_at(i * PAGE)
    })?;
    file.sync_all().map_err(err)?;
    clear_dirty(mem);
    Ok(written)
}

/// Forget which pages flint wrote: a snapshot holds them now.
pub fn clear_dirty(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        // The region's own bitmap (the trait's `bitmap` is a view of it).
        std::ops::Deref::deref(region).bitmap().reset();
    }
}

/// Map `path` privately as the guest RAM `ranges` (in file order); the
/// file must be exactly as long as the ranges together.
pub fn map(
    path: &Path,
    ranges: &[(GuestAddress, usize)],
    mib: u64,
) -> Result<GuestMemoryMmap, Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let want: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    if len != want {
        return Err(Error::Size {
            path: path.to_path_buf(),
            len,
            want,
            mib,
        });
    }
    let map_err = |why: String| Error::Map {
        path: path.to_path_buf(),
        why,
    };
    let file = std::sync::Arc::new(file);
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for &(addr, size) in ranges {
        let mapping = MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::with_len(size))
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| map_err(format!("the range at {:#x} overflows", addr.0)))?;
        regions.push(region);
        offset += size as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flint-snapmem-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn saved_memory_maps_back_with_holes_for_zero_pages() {
        let d = dir("rt");
        let ranges = [(GuestAddress(0), 1 << 20), (GuestAddress(4 << 20), 1 << 20)];
        let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
        mem.write_slice(b"first", GuestAddress(0x1234)).unwrap();
        mem.write_slice(b"second", GuestAddress((4 << 20) + 0xff000))
            .unwrap();
        let path = d.join("mem");
        let written = save(&mem, &path).unwrap();
        assert_eq!(written, 2 * PAGE as u64, "only the two pages with data");
        let back = map(&path, &ranges, 2).unwrap();
        let mut buf = [0u8; 6];
        back.read_slice(&mut buf[..5], GuestAddress(0x1234))
            .unwrap();
        assert_eq!(&buf[..5], b"first");
        back.read_slice(&mut buf, GuestAddress((4 << 20) + 0xff000))
            .unwrap();
        assert_eq!(&buf, b"second");
        // The guest's writes stay in memory: the file is not changed.
        let before = std::fs::read(&path).unwrap();
        back.write_slice(b"changed", GuestAddress(0x1234)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_diff_writes_the_pages_kvm_or_flint_dirtied_onto_the_base_file() {
        let d = dir("diff");
        let ranges = [(GuestAddress(0), 64 * PAGE), (GuestAddress(1 << 20), 64 * PAGE)];
        let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
        mem.write_slice(b"base", GuestAddress(0)).unwrap();
        let path = d.join("mem");
        save(&mem, &path).unwrap();
        clear_dirty(&mem);
        // flint writes page 3 of the first range through vm-memory...
        mem.write_slice(b"device", GuestAddress(3 * PAGE as u64))
            .unwrap();
        // ...and "the guest" pages 5 (first range) and 2 (second): written
        // here behind the bitmap's back, reported in KVM's log.
        let raw = |addr: u64, data: &[u8]| {
            let host = mem.get_host_address(GuestAddress(addr)).unwrap();
            // SAFETY: `host` points into `mem`'s live mapping with room.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), host, data.len()) };
        };
        raw(5 * PAGE as u64, b"guest5");
        raw((1 << 20) + 2 * PAGE as u64, b"guest2");
        raw(7 * PAGE as u64, b"unlogged");
        let kvm = vec![vec![1u64 << 5], vec![1u64 << 2]];
        let written = save_dirty(&mem, &path, &kvm).unwrap();
        assert_eq!(written, 3 * PAGE as u64);
        let back = map(&path, &ranges, 1).unwrap();
        let read = |addr: u64, n: usize| {
            let mut b = vec![0u8; n];
            back.read_slice(&mut b, GuestAddress(addr)).unwrap();
            b
        };
        assert_eq!(read(0, 4), b"base");
        assert_eq!(read(3 * PAGE as u64, 6), b"device");
        assert_eq!(read(5 * PAGE as u64, 6), b"guest5");
        assert_eq!(read((1 << 20) + 2 * PAGE as u64, 6), b"guest2");
        // Neither log had page 7: it is not part of the Diff.
        assert_eq!(read(7 * PAGE as u64, 8), vec![0u8; 8]);
        // Written and synced: the next Diff starts clean.
        let written = save_dirty(&mem, &path, &[vec![0], vec![0]]).unwrap();
        assert_eq!(written, 0);
        // A base file of another size is refused and left alone, and
        // what was dirty stays dirty for the next attempt.
        mem.write_slice(b"again", GuestAddress(9 * PAGE as u64))
            .unwrap();
        let short = d.join("short");
        std::fs::write(&short, vec![1u8; PAGE]).unwrap();
        let e = save_dirty(&mem, &short, &[vec![0], vec![0]]).unwrap_err();
        assert!(e.to_string().contains("has 4096 bytes, the guest has 524288"), "{e}");
        assert_eq!(std::fs::read(&short).unwrap(), vec![1u8; PAGE]);
        assert_eq!(save_dirty(&mem, &path, &[vec![0], vec![0]]).unwrap(), PAGE as u64);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_of_the_wrong_size_is_refused() {
        let d = dir("size");
        let path = d.join("mem");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let e = map(&path, &[(GuestAddress(0), 1 << 20)], 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the memory file {} has 4096 bytes; the snapshot's guest has 1048576 (1 MiB)",
                path.display()
            )
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
