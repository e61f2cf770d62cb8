//! Loading the kernel image and the initrd into guest memory.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};
use devices::GuestMemoryMmap;

use super::bzimage;
use super::kernel_scan::{self, VirtioCmdline};

use crate::memory::{HIMEM_START, MMIO_GAP_START};

/// Errors from loading guest images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a Linux kernel: expected an x86-64 ELF vmlinux or a bzImage")]
    NotAKernel(PathBuf),
    #[error("cannot load kernel {path}: {source} (is guest memory large enough?)")]
    Load {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path}: {source}")]
    BzImage {
        path: PathBuf,
        source: bzimage::Error,
    },
    #[error("kernel {0} is an ELF file but not a 64-bit x86 executable")]
    WrongElf(PathBuf),
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel; give the guest more memory")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot read initrd {path} into guest memory: {source}")]
    ReadInitrd {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the kernel landed and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 64-bit entry point (startup_64).
    pub entry: GuestAddress,
    /// First byte above the kernel image.
    pub end: u64,
    /// The setup header of a bzImage, copied into the zero page.
    pub setup_header: Option<setup_header>,
    /// Whether the kernel takes `virtio_mmio.device=`.
    pub virtio_cmdline: VirtioCmdline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Elf,
    BzImage,
}

fn detect(file: &mut File) -> std::io::Result<Option<Format>> {
    let mut head = [0u8; 0x206];
    let mut n = 0;
    while let Some(rest) = head.get_mut(n..).filter(|r| !r.is_empty()) {
        match file.read(rest)? {
            0 => break,
            k => n += k,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(format_of(head.get(..n).unwrap_or_default()))
}

fn format_of(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"\x7fELF") {
        return Some(Format::Elf);
    }
    if head.get(0x202..0x206) == Some(b"HdrS") {
        return Some(Format::BzImage);
    }
    None
}

/// Load a vmlinux or bzImage into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, Error> {
    let mut file = File::open(path).map_err(|source| Error::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let format = detect(&mut file)
        .map_err(|source| Error::OpenKernel {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| Error::NotAKernel(path.to_owned()))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let load_err = |source| Error::Load {
        path: path.to_owned(),
        source,
    };
    match format {
        Format::Elf => {
            check_elf_machine(&mut file, path)?;
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load,
                end: r.kernel_end,
                setup_header: None,
                virtio_cmdline: kernel_scan::inspect(mem, &mut file),
            })
        }
        Format::BzImage => {
            if let Some(k) = load_decompressed(mem, &mut file, path)? {
                return Ok(k);
            }
            file.seek(SeekFrom::Start(0))
                .map_err(|source| Error::OpenKernel {
                    path: path.to_owned(),
                    source,
                })?;
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            // The 64-bit entry of the protected-mode kernel is 0x200 past its start.
            Ok(LoadedKernel {
                entry: r.kernel_load.unchecked_add(0x200),
                end: r.kernel_end,
                setup_header: r.setup_header,
                virtio_cmdline: VirtioCmdline::Unknown,
            })
        }
    }
}

/// Decompress a bzImage's kernel on the host and load it as an ELF, with
/// the bzImage's setup header for the zero page; `None` when the payload is
/// in a format flint does not decompress.
fn load_decompressed(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
) -> Result<Option<LoadedKernel>, Error> {
    let mut image = Vec::new();
    file.read_to_end(&mut image)
        .map_err(|source| Error::OpenKernel {
            path: path.to_owned(),
            source,
        })?;
    let elf = bzimage::extract_vmlinux(&image).map_err(|source| Error::BzImage {
        path: path.to_owned(),
        source,
    })?;
    let Some(elf) = elf else {
        return Ok(None);
    };
    let hdr = image
        .get(0x1f1..0x1f1 + std::mem::size_of::<setup_header>())
        .and_then(setup_header::from_slice)
        .copied()
        .ok_or_else(|| Error::NotAKernel(path.to_owned()))?;
    drop(image);
    let r = Elf::load(
        mem,
        None,
        &mut Cursor::new(&elf),
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|source| Error::Load {
        path: path.to_owned(),
        source,
    })?;
    log::info!("kernel {}: payload decompressed by flint", path.display());
    Ok(Some(LoadedKernel {
        entry: r.kernel_load,
        end: r.kernel_end,
        setup_header: Some(hdr),
        virtio_cmdline: kernel_scan::inspect(mem, &mut Cursor::new(&elf)),
    }))
}

/// linux-loader checks the ELF header's layout but not the machine; a 32-bit
/// or foreign ELF would load and then crash the guest at once.
fn check_elf_machine(file: &mut File, path: &Path) -> Result<(), Error> {
    let mut ident = [0u8; 20];
    let ok = file.read_exact(&mut ident).is_ok()
        && ident[4] == 2 // ELFCLASS64
        && u16::from_le_bytes([ident[18], ident[19]]) == 62; // EM_X86_64
    file.seek(SeekFrom::Start(0))
        .map_err(|source| Error::OpenKernel {
            path: path.to_owned(),
            source,
        })?;
    if ok {
        Ok(())
    } else {
        Err(Error::WrongElf(path.to_owned()))
    }
}

/// Where an initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

/// Highest page-aligned address at which `size` bytes fit below `top`,
/// staying above `floor`.
pub fn initrd_address(size: u64, floor: u64, top: u64) -> Option<u64> {
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= floor).then_some(addr)
}

/// Load the initrd at the top of RAM below the MMIO gap (the kernel only
/// takes an initrd below 4 GiB), above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<LoadedInitrd, Error> {
    let mut file = File::open(path).map_err(|source| Error::OpenInitrd {
        path: path.to_owned(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| Error::OpenInitrd {
            path: path.to_owned(),
            source,
        })?
        .len();
    let ram_top = mem
        .last_addr()
        .raw_value()
        .saturating_add(1)
        .min(MMIO_GAP_START);
    let top = ram_top.min(initrd_addr_max.saturating_add(1));
    let addr = initrd_address(size, kernel_end, top).ok_or(Error::InitrdTooLarge {
        path: path.to_owned(),
        size,
        limit: top,
    })?;
    read_file_into(mem, &mut file, addr, size).map_err(|source| Error::ReadInitrd {
        path: path.to_owned(),
        source,
    })?;
    Ok(LoadedInitrd { addr, size })
}

fn read_file_into<F: ReadVolatile>(
    mem: &GuestMemoryMmap,
    file: &mut F,
    addr: u64,
    size: u64,
) -> Result<(), vm_memory::GuestMemoryError> {
    mem.read_exact_volatile_from(GuestAddress(addr), file, size as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(format_of(b"\x7fELF\x02\x01"), Some(Format::Elf));
        let mut bz = vec![0u8; 0x206];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(format_of(&bz), Some(Format::BzImage));
        assert_eq!(format_of(b"#!/bin/sh\n"), None);
        assert_eq!(format_of(&[]), None);
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        assert_eq!(
            initrd_address(0x1800, 0x100000, 0x800_0000),
            Some(0x7ffe000)
        );
        assert_eq!(
            initrd_address(0x1000, 0x7fff000, 0x800_0000),
            Some(0x7fff000)
        );
        assert_eq!(initrd_address(0x2000, 0x7fff000, 0x800_0000), None);
        assert_eq!(initrd_address(u64::MAX, 0, 0x800_0000), None);
    }

    #[test]
    fn refuses_files_that_are_not_kernels() {
        let mem = crate::memory::create(32).unwrap();
        let path = std::env::temp_dir().join(format!("flint-notkernel-{}", std::process::id()));
        std::fs::write(&path, b"this is not a kernel").unwrap();
        let e = load_kernel(&mem, &path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(e, Error::NotAKernel(_)), "{e}");
        let e = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinux"));
    }
}
