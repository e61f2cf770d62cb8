//! The host side: the listening unix socket, the `CONNECT <port>\n` line a
//! host process opens a connection with, and the `<uds_path>_<port>`
//! sockets guest connections go to.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::{Error, MAX_CONNECT_LINE};

/// The listening socket, and which file it is, so that only our own
/// socket is removed when the device goes away.
#[derive(Debug)]
pub(super) struct Listener {
    pub(super) sock: UnixListener,
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl Listener {
    /// Create and listen on `path`, which must not exist yet.
    pub(super) fn bind(path: &Path) -> Result<Listener, Error> {
        if path.symlink_metadata().is_ok() {
            return Err(Error::PathExists(path.to_path_buf()));
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(Error::DirMissing(path.to_path_buf()));
        }
        let bind_err = |source| Error::Bind {
            path: path.to_path_buf(),
            source,
        };
        let sock = UnixListener::bind(path).map_err(bind_err)?;
        let meta = path.metadata().map_err(bind_err)?;
        let listener = Listener {
            sock,
            path: path.to_path_buf(),
            dev_ino: (meta.dev(), meta.ino()),
        };
        listener.sock.set_nonblocking(true).map_err(bind_err)?;
        Ok(listener)
    }

    /// Take one waiting host connection, non-blocking; None when there is
    /// none left.
    pub(super) fn accept(&self) -> io::Result<Option<UnixStream>> {
        loop {
            match self.sock.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    return Ok(Some(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Leave the path alone if someone replaced our socket.
        if let Ok(meta) = self.path.symlink_metadata() {
            if (meta.dev(), meta.ino()) == self.dev_ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Where a guest connection to host port `port` goes: `<uds_path>_<port>`.
pub(super) fn guest_port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds_path.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connect to the host process serving guest port `port`. Connecting to a
/// unix socket does not wait for the other side to accept, so this does
/// not stall the event loop (only a full backlog could, briefly).
pub(super) fn connect_guest_port(uds_path: &Path, port: u32) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(guest_port_path(uds_path, port))?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// A host stream that has not finished its `CONNECT` line.
#[derive(Debug)]
pub(super) struct PendingHost {
    pub(super) stream: UnixStream,
    line: Vec<u8>,
}

/// How far a `CONNECT` line has come.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// Wait for more bytes.
    Incomplete,
    Port(u32),
    /// Close the stream: the line is bad, or the host hung up.
    Bad(&'static str),
}

impl PendingHost {
    pub(super) fn new(stream: UnixStream) -> PendingHost {
        PendingHost {
            stream,
            line: Vec::with_capacity(MAX_CONNECT_LINE),
        }
    }

    /// Read what has arrived of the line, a byte at a time so that no byte
    /// after the newline (the connection's data) is taken from the stream.
    pub(super) fn read_line(&mut self) -> Line {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return Line::Bad("the host closed the stream before a full line"),
                Ok(_) => {
                    if byte[0] == b'\n' {
                        return match parse_connect_line(&self.line) {
                            Some(port) => Line::Port(port),
                            None => Line::Bad("not `CONNECT <port>`"),
                        };
                    }
                    if self.line.len() >= MAX_CONNECT_LINE {
                        return Line::Bad("no newline within 32 bytes");
                    }
                    self.line.push(byte[0]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Line::Incomplete,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Line::Bad("reading the stream failed"),
            }
        }
    }
}

/// The port of a `CONNECT <port>` line (without its newline; a trailing
/// `\r` is allowed). The port is decimal, without sign or spaces.
pub(super) fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT ",
            b"CONNECT +5",
            b"CONNECT 5 ",
            b"connect 5",
            b"CONNECT x",
            b"CONNECT  5",
            b"",
        ] {
            assert_eq!(parse_connect_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn guest_port_paths() {
        assert_eq!(
            guest_port_path(Path::new("/run/v.sock"), 1024),
            PathBuf::from("/run/v.sock_1024")
        );
    }

    #[test]
    fn pending_line_stops_at_the_newline() {
        let (mut host, dev) = UnixStream::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        let mut p = PendingHost::new(dev);
        io::Write::write_all(&mut host, b"CONN").unwrap();
        assert_eq!(p.read_line(), Line::Incomplete);
        io::Write::write_all(&mut host, b"ECT 7\ndata").unwrap();
        assert_eq!(p.read_line(), Line::Port(7));
        let mut rest = [0u8; 4];
        p.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"data");

        let (mut host, dev) = UnixStream::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        let mut p = PendingHost::new(dev);
        io::Write::write_all(&mut host, &[b'C'; 40]).unwrap();
        assert!(matches!(p.read_line(), Line::Bad(_)));
        drop(host);
    }
}
