//! Where the guest's serial output goes: stdout, watched for the boot phases
//! that only the console shows.

use std::io::{self, Write};

use crate::timer::{self, Phase};

/// The kernel's line when it hands over to init: "Run /init as init process".
const HANDOVER_PREFIX: &[u8] = b"Run ";
const HANDOVER_SUFFIX: &[u8] = b" as init process";
/// Enough of a line to hold the hand-over message with a long init path.
const LINE_MAX: usize = 256;

/// Serial output sink: writes through to `out` and records the first byte
/// and the kernel's init hand-over.
pub struct ConsoleOut<W: Write> {
    out: W,
    line: Vec<u8>,
    handover_seen: bool,
}

impl<W: Write> ConsoleOut<W> {
    pub fn new(out: W) -> Self {
        ConsoleOut {
            out,
            line: Vec::with_capacity(LINE_MAX),
            handover_seen: false,
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
        if !buf.is_empty() {
            timer::mark(Phase::FirstConsoleByte);
            self.watch(buf);
        }
        // Guest output is shown as it comes: the UART hands over one byte
        // per register write, and an interactive guest must see its prompt.
        self.out.write_all(buf)?;
        self.out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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
    fn writes_through_and_watches() {
        let mut c = ConsoleOut::new(Vec::new());
        c.write_all(b"hello\n[ 0.1] Run /pa").unwrap();
        assert!(!c.handover_seen);
        c.write_all(b"use as init process\nmore").unwrap();
        assert!(c.handover_seen);
        assert_eq!(c.out, b"hello\n[ 0.1] Run /pause as init process\nmore");
    }
}
