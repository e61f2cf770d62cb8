//! Where the guest's serial output goes: stdout, watched for the boot phases
//! that only the console shows.

use std::io::{self, Write};

use crate::timer::{self, Phase};

/// The kernel's line when it hands over to init: "Run /init as init process".
const HANDOVER_PREFIX: &[u8] = b"Run ";
const HANDOVER_SUFFIX: &[u8] = b" as init process";
/// Enough of a line to hold the hand-over message with a long init path.
const LINE_MAX: usize = 256;

/// Longest stretch of output held back waiting for a newline.
const PENDING_MAX: usize = 4096;

/// Serial output sink: writes through to `out` a line at a time and records
/// the first byte and the kernel's init hand-over.
///
/// The UART hands over one byte per guest register write and vm-superio
/// flushes after each; writing each byte to stdout would cost a system call
/// per character of the boot log. Complete lines go out at once; the VMM's
/// event loop calls [`ConsoleOut::flush_pending`] for a partial line (a
/// shell prompt, an echoed key) within a few milliseconds.
pub struct ConsoleOut<W: Write> {
    out: W,
    line: Vec<u8>,
    handover_seen: bool,
    pending: Vec<u8>,
}

impl<W: Write> ConsoleOut<W> {
    pub fn new(out: W) -> Self {
        ConsoleOut {
            out,
            line: Vec::with_capacity(LINE_MAX),
            handover_seen: false,
            pending: Vec::new(),
        }
    }

    fn watch(&mut self, bytes: &[u8]) {
        if self.handover_seen {
            return;
        }
        for &b in bytes {
            if b == b'\n' {
                if is_handover_line(&self.line) {
                    timer::mark(Phase::InitHandover);
                    self.handover_seen = true;
                    self.line = Vec::new();
                    return;
                }
                self.line.clear();
            } else if self.line.len() < LINE_MAX {
                self.line.push(b);
            }
        }
    }

    /// Write out whatever is held back; the event loop calls this
    /// periodically and the VMM at exit.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let r = self
            .out
            .write_all(&self.pending)
            .and_then(|_| self.out.flush());
        self.pending.clear();
        r
    }
}

/// Whether a console line (maybe with a printk timestamp) is the kernel's
/// hand-over to init.
pub fn is_handover_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.ends_with(HANDOVER_SUFFIX)
        && line
            .windows(HANDOVER_PREFIX.len())
            .any(|w| w == HANDOVER_PREFIX)
}

impl<W: Write> Write for ConsoleOut<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        timer::mark(Phase::FirstConsoleByte);
        self.watch(buf);
        self.pending.extend_from_slice(buf);
        let complete = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if self.pending.len() >= PENDING_MAX => self.pending.len(),
            None => return Ok(buf.len()),
        };
        let r = self
            .out
            .write_all(&self.pending[..complete])
            .and_then(|_| self.out.flush());
        self.pending.drain(..complete);
        r.map(|_| buf.len())
    }

    /// vm-superio flushes after every byte; output goes out by lines (see
    /// the type's documentation), so this is deliberately a no-op.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_lines() {
        assert!(is_handover_line(
            b"[    1.234567] Run /init as init process"
        ));
        assert!(is_handover_line(b"Run /sbin/init as init process\r"));
        assert!(!is_handover_line(b"Run /init as init process failed"));
        assert!(!is_handover_line(b"Starting init"));
    }

    #[test]
    fn writes_lines_and_watches() {
        let mut c = ConsoleOut::new(Vec::new());
        c.write_all(b"hello\n[ 0.1] Run /pa").unwrap();
        assert!(!c.handover_seen);
        assert_eq!(c.out, b"hello\n");
        c.write_all(b"use as init process\nmore").unwrap();
        assert!(c.handover_seen);
        assert_eq!(c.out, b"hello\n[ 0.1] Run /pause as init process\n");
        c.flush().unwrap();
        assert!(
            !c.out.ends_with(b"more"),
            "flush() must not write the partial line"
        );
        c.flush_pending().unwrap();
        assert_eq!(c.out, b"hello\n[ 0.1] Run /pause as init process\nmore");
    }

    #[test]
    fn long_lines_are_not_held_forever() {
        let mut c = ConsoleOut::new(Vec::new());
        c.write_all(&vec![b'x'; PENDING_MAX]).unwrap();
        assert_eq!(c.out.len(), PENDING_MAX);
        assert!(c.pending.is_empty());
    }
}
