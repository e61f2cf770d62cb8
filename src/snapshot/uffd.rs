//! The Uffd memory backend of `PUT /snapshot/load`, with Firecracker's
//! protocol: flint maps the guest's RAM as anonymous memory, registers it
//! with a new userfaultfd (missing-page faults), connects to the unix
//! socket at `backend_path` and sends, in one message, the userfaultfd (as
//! SCM_RIGHTS) and a JSON array of [`Mapping`]s: where each RAM range lies
//! in flint's address space and where its bytes lie in the memory file.
//! From then on the process on the other end (a page server, such as
//! `flint-uffd-server`) fills each page the guest or a device first
//! touches, with UFFDIO_COPY or UFFDIO_ZEROPAGE.
//!
//! The server's side (reading fault messages, copying pages) is here too,
//! for `flint-uffd-server`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use devices::GuestMemoryMmap;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot create a userfaultfd: {0} (as a user other than root, this needs \
         vm.unprivileged_userfaultfd=1 or access to /dev/userfaultfd)"
    )]
    Create(io::Error),
    #[error("the kernel's userfaultfd API refused flint's handshake: {0}")]
    Api(io::Error),
    #[error("cannot register guest memory at {addr:#x} with the userfaultfd: {source}")]
    Register { addr: u64, source: io::Error },
    #[error("guest memory at {0:#x} has no host address")]
    HostAddress(u64),
    #[error("cannot connect to the page server's socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot send the userfaultfd and the memory layout to {path}: {source}")]
    Send { path: PathBuf, source: io::Error },
}

/// One RAM range as the page server sees it (Firecracker's
/// `GuestRegionUffdMapping`): its bytes go to `base_host_virt_addr` in
/// flint, `size` of them, from `offset` in the memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub base_host_virt_addr: u64,
    pub size: usize,
    pub offset: u64,
    /// The page size of the mapping, in bytes.
    pub page_size: usize,
    /// The same, under the older (misnamed: it is in bytes too) field
    /// that Firecracker still sends.
    #[serde(default)]
    pub page_size_kib: usize,
}

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

const UFFD_API: u64 = 0xaa;
const UFFDIO: u32 = 0xaa;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `uffd_msg.event` of a page fault.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// The size of `struct uffd_msg`.
pub const MSG_SIZE: usize = 32;

vmm_sys_util::ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3f, UffdioApi);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, UffdioCopy);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_ZEROPAGE, UFFDIO, 0x04, UffdioZeropage);

const PAGE: usize = 4096;

/// The userfaultfd and the connection of a page server that fills guest
/// memory.
pub struct Handed {
    /// Must live as long as the guest memory: were every copy of it
    /// closed, the kernel would fill the pages not yet served with zeros.
    pub uffd: File,
    /// The server's connection: its end means no page will be served any
    /// more ([`ServerWatch`]).
    pub stream: UnixStream,
}

/// Register `mem`'s RAM (file order = address order, as the memory file
/// lays it out) with a new userfaultfd and hand both to the page server
/// listening at `socket`.
pub fn hand_over(mem: &GuestMemoryMmap, socket: &Path) -> Result<Handed, Error> {
    let uffd = create()?;
    let mut mappings = Vec::new();
    let mut offset = 0u64;
    for region in mem.iter() {
        let start = region.start_addr().0;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| Error::HostAddress(start))? as u64;
        let len = region.len();
        let mut reg = UffdioRegister {
            range: UffdioRange { start: host, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `uffdio_register`,
        // which `reg` is; the range is this region's live mapping.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&uffd, UFFDIO_REGISTER(), &mut reg) };
        if r < 0 {
            return Err(Error::Register {
                addr: start,
                source: io::Error::last_os_error(),
            });
        }
        mappings.push(Mapping {
            base_host_virt_addr: host,
            size: len as usize,
            offset,
            page_size: PAGE,
            page_size_kib: PAGE,
        });
        offset += len;
    }
    let stream = UnixStream::connect(socket).map_err(|source| Error::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    // Serializing plain numbers cannot fail.
    let body = serde_json::to_vec(&mappings).unwrap_or_default();
    stream
        .send_with_fd(&body[..], uffd.as_raw_fd())
        .map_err(|e| Error::Send {
            path: socket.to_path_buf(),
            source: io::Error::from_raw_os_error(e.errno()),
        })?;
    Ok(Handed { uffd, stream })
}

/// Watches a page server's connection from the event loop: the server
/// sends nothing after the hand-over, so the connection becoming readable
/// means it closed (the server ended), and a guest whose memory is no
/// longer served would hang at its next new page: `gone` stops the VM.
pub struct ServerWatch {
    stream: UnixStream,
    gone: Option<Box<dyn FnOnce() + Send>>,
}

impl ServerWatch {
    pub fn new(stream: UnixStream, gone: Box<dyn FnOnce() + Send>) -> ServerWatch {
        ServerWatch {
            stream,
            gone: Some(gone),
        }
    }
}

impl MutEventSubscriber for ServerWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.stream, EventSet::IN)) {
            log::warn!("cannot watch the page server's connection: {e}");
        }
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let _ = ops.remove(Events::new(&self.stream, EventSet::IN));
        if let Some(gone) = self.gone.take() {
            gone();
        }
    }
}

/// A new userfaultfd (close-on-exec, non-blocking), its API agreed.
fn create() -> Result<File, Error> {
    // SAFETY: userfaultfd takes only flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(Error::Create(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor nothing else owns (a file
    // descriptor number always fits an i32).
    let uffd = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `uffdio_api`, which `api` is.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&uffd, UFFDIO_API(), &mut api) };
    if r < 0 {
        return Err(Error::Api(io::Error::last_os_error()));
    }
    Ok(uffd)
}

/// The faulting address of a `uffd_msg`, if it is a page fault.
pub fn fault_address(msg: &[u8; MSG_SIZE]) -> Option<u64> {
    if msg[0] != UFFD_EVENT_PAGEFAULT {
        return None;
    }
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&msg[16..24]);
    Some(u64::from_ne_bytes(addr))
}

/// Fill the `len` bytes at `dst` (page-aligned, registered with `uffd`)
/// with the bytes at `src` in this process and wake the faulting thread.
/// A page that another fault filled first (EEXIST) is not an error.
///
/// # Safety
/// `src` must be readable for `len` bytes.
pub unsafe fn copy(uffd: &File, dst: u64, src: *const u8, len: usize) -> io::Result<()> {
    let mut c = UffdioCopy {
        dst,
        src: src as u64,
        len: len as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads and writes a `uffdio_copy`, which `c` is;
    // the kernel reads `len` bytes at `src`, which the caller vouches for,
    // and writes only into the registered range at `dst`.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(uffd, UFFDIO_COPY(), &mut c) };
    settled(r)
}

/// Fill the `len` bytes at `dst` with zeros and wake the faulting thread.
pub fn zero(uffd: &File, dst: u64, len: usize) -> io::Result<()> {
    let mut z = UffdioZeropage {
        range: UffdioRange {
            start: dst,
            len: len as u64,
        },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE reads and writes a `uffdio_zeropage`, which
    // `z` is; the kernel maps zero pages only into the registered range.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(uffd, UFFDIO_ZEROPAGE(), &mut z) };
    settled(r)
}

fn settled(r: i32) -> io::Result<()> {
    if r >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From linux/userfaultfd.h as built for x86-64.
        assert_eq!(UFFDIO_API(), 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER(), 0xc020_aa00);
        assert_eq!(UFFDIO_COPY(), 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE(), 0xc020_aa04);
    }

    #[test]
    fn the_layout_message_uses_firecrackers_names() {
        let m = Mapping {
            base_host_virt_addr: 0x7f00_0000_0000,
            size: 1 << 20,
            offset: 4096,
            page_size: 4096,
            page_size_kib: 4096,
        };
        let v: serde_json::Value = serde_json::to_value([&m]).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"base_host_virt_addr": 0x7f00_0000_0000u64, "size": 1048576,
                                "offset": 4096, "page_size": 4096, "page_size_kib": 4096}])
        );
    }

    #[test]
    fn fault_messages_are_read() {
        let mut msg = [0u8; MSG_SIZE];
        msg[0] = UFFD_EVENT_PAGEFAULT;
        msg[16..24].copy_from_slice(&0x1234_5000u64.to_ne_bytes());
        assert_eq!(fault_address(&msg), Some(0x1234_5000));
        msg[0] = 0x15; // UFFD_EVENT_REMOVE
        assert_eq!(fault_address(&msg), None);
    }
}
