//! `flint-uffd-server`: a page server for snapshots loaded with the Uffd
//! memory backend (`PUT /snapshot/load` with `mem_backend.backend_type`
//! `Uffd`, or `flint --restore STATE --mem-uffd SOCKET`).
//!
//! It listens on SOCKET, takes one flint's userfaultfd and memory layout
//! (Firecracker's protocol, `flint::snapshot::uffd`), maps the memory file
//! read-only, and fills each page the guest first touches from it: a
//! whole page with UFFDIO_COPY, or UFFDIO_ZEROPAGE where the file has only
//! zeros. It ends when flint closes the connection (flint exited), and
//! then says how many pages it served.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flint::snapshot::uffd::{self, Mapping, MSG_SIZE};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const PAGE: usize = 4096;

/// Serve a snapshot's memory file to one flint over userfaultfd.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The unix socket to listen on (flint's --mem-uffd, or the load
    /// request's mem_backend.backend_path); it must not exist yet, and is
    /// removed at the end.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The snapshot's memory file (PUT /snapshot/create's mem_file_path).
    #[arg(long, value_name = "FILE")]
    mem_file: PathBuf,
}

/// The memory file, mapped read-only.
struct Image {
    base: *const u8,
    len: usize,
}

impl Image {
    fn map(file: &File) -> Result<Image, String> {
        let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
        if len == 0 {
            return Err("the memory file is empty".into());
        }
        // SAFETY: a new private read-only mapping of the whole file; the
        // result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Image {
            base: base as *const u8,
            len,
        })
    }

    /// The page at `offset`, if the file holds all of it.
    fn page(&self, offset: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        if start.checked_add(PAGE)? > self.len {
            return None;
        }
        // SAFETY: `start + PAGE <= len`, inside the live read-only mapping.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(start), PAGE) })
    }
}

#[derive(Default)]
struct Served {
    copied: u64,
    zeroed: u64,
}

fn serve(cli: &Cli) -> Result<Served, String> {
    let file = File::open(&cli.mem_file).map_err(|e| {
        format!(
            "cannot open the memory file {}: {e}",
            cli.mem_file.display()
        )
    })?;
    let image = Image::map(&file).map_err(|e| format!("{}: {e}", cli.mem_file.display()))?;
    let listener = UnixListener::bind(&cli.socket)
        .map_err(|e| format!("cannot listen on {}: {e}", cli.socket.display()))?;
    let (stream, _) = listener
        .accept()
        .map_err(|e| format!("accept on {}: {e}", cli.socket.display()))?;
    let _ = std::fs::remove_file(&cli.socket);
    let mut body = vec![0u8; 64 << 10];
    let (n, fd) = stream
        .recv_with_fd(&mut body[..])
        .map_err(|e| format!("receiving flint's message: {e}"))?;
    let uffd = fd.ok_or("flint's message carried no userfaultfd")?;
    let mappings: Vec<Mapping> = serde_json::from_slice(body.get(..n).unwrap_or_default())
        .map_err(|e| format!("flint's memory layout: {e}"))?;
    for m in &mappings {
        let end = m.offset.checked_add(m.size as u64);
        if end.is_none_or(|e| e > image.len as u64) {
            return Err(format!(
                "the memory file ({} bytes) is smaller than flint's memory layout needs \
                 (a range of {} bytes at offset {})",
                image.len, m.size, m.offset
            ));
        }
    }
    eprintln!(
        "flint-uffd-server: serving {} ({} MiB) to flint in {} range(s)",
        cli.mem_file.display(),
        image.len >> 20,
        mappings.len()
    );
    let mut served = Served::default();
    let zeros = [0u8; PAGE];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes the two pollfds of `fds`.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if fds[1].revents != 0 && peer_gone(&stream) {
            return Ok(served);
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        let mut msg = [0u8; MSG_SIZE];
        match (&uffd).read(&mut msg) {
            Ok(MSG_SIZE) => {}
            Ok(_) => return Ok(served),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(format!("reading the userfaultfd: {e}")),
        }
        let Some(addr) = uffd::fault_address(&msg) else {
            continue;
        };
        let page = addr & !(PAGE as u64 - 1);
        let Some(m) = mappings.iter().find(|m| {
            page >= m.base_host_virt_addr && page - m.base_host_virt_addr < m.size as u64
        }) else {
            return Err(format!(
                "a fault at {addr:#x}, outside flint's memory layout"
            ));
        };
        let data = image
            .page(m.offset + (page - m.base_host_virt_addr))
            .unwrap_or(&zeros);
        let result = if data.iter().all(|&b| b == 0) {
            served.zeroed += 1;
            uffd::zero(&uffd, page, PAGE)
        } else {
            served.copied += 1;
            // SAFETY: `data` is a readable page.
            unsafe { uffd::copy(&uffd, page, data.as_ptr(), PAGE) }
        };
        result.map_err(|e| format!("filling the page at {page:#x}: {e}"))?;
    }
}

/// Whether flint closed its end (it exited): a read finds no more data.
fn peer_gone(stream: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!((&*stream).read(&mut b), Ok(0) | Err(_))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match serve(&cli) {
        Ok(s) => {
            eprintln!(
                "flint-uffd-server: flint is gone; served {} pages ({} KiB): {} copied, {} zero",
                s.copied + s.zeroed,
                (s.copied + s.zeroed) * (PAGE as u64 / 1024),
                s.copied,
                s.zeroed
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = std::fs::remove_file(&cli.socket);
            eprintln!("flint-uffd-server: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_past_the_file_are_not_served_from_it() {
        let path = std::env::temp_dir().join(format!("flint-uffd-image-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 2 * PAGE]).unwrap();
        let image = Image::map(&File::open(&path).unwrap()).unwrap();
        assert_eq!(image.page(PAGE as u64).unwrap()[0], 7);
        assert!(image.page(2 * PAGE as u64).is_none());
        assert!(image.page(PAGE as u64 + 1).is_none());
        assert!(image.page(u64::MAX).is_none());
        std::fs::remove_file(&path).unwrap();
    }
}
