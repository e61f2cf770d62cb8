//! Compiled filter files, as Firecracker's `seccompiler-bin` writes them:
//! a map from thread kind to BPF program, bincode-encoded with fixed-width
//! little-endian integers:
//!
//! ```text
//! u64 number of entries, then per entry:
//!   u64 name length, the name's UTF-8 bytes,
//!   u64 number of instructions, then per instruction:
//!     u16 code, u8 jt, u8 jf, u32 k
//! ```
//!
//! Written and read by hand here: the format is this small, and flint
//! needs no serializer for it.

use std::collections::HashMap;

use seccompiler::{sock_filter, BpfMap, BpfProgram};

/// The largest file flint reads (Firecracker's limit).
pub const MAX_FILE_BYTES: usize = 100_000;
/// The kernel's limit on a program's length (BPF_MAXINSNS).
pub const MAX_INSTRUCTIONS: u64 = 4096;

/// Names of system calls none of the built-in lists has, for the SIGSYS
/// message.
pub(super) const EXTRA_NAMES: &[(i64, &str)] = &[
    (libc::SYS_open, "open"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_execve, "execve"),
    (libc::SYS_fork, "fork"),
    (libc::SYS_vfork, "vfork"),
    (libc::SYS_kill, "kill"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_listen, "listen"),
    (libc::SYS_setuid, "setuid"),
    (libc::SYS_chmod, "chmod"),
];

/// The file's bytes for `map` (entries in name order, so the output is
/// the same from run to run).
pub fn encode(map: &BpfMap) -> Vec<u8> {
    let mut out = Vec::new();
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    out.extend_from_slice(&(names.len() as u64).to_le_bytes());
    for name in names {
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        let prog = &map[name];
        out.extend_from_slice(&(prog.len() as u64).to_le_bytes());
        for i in prog {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
        if self.bytes.len() - self.at < n {
            return Err(format!(
                "truncated: {what} at byte {} needs {n} bytes, the file has {} left",
                self.at,
                self.bytes.len() - self.at
            ));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// The map in a file's bytes, or what is wrong with them.
pub fn decode(bytes: &[u8]) -> Result<BpfMap, String> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_FILE_BYTES} a filter file may have",
            bytes.len()
        ));
    }
    let mut r = Reader { bytes, at: 0 };
    let count = r.u64("the number of filters")?;
    // Each entry takes at least 24 bytes: no more room than that, whatever
    // a garbled count says.
    let mut map = HashMap::with_capacity((count as usize).min(bytes.len() / 24));
    for _ in 0..count {
        let len = r.u64("a filter's name length")?;
        if len > 64 {
            return Err(format!(
                "not a compiled filter file: a filter name of {len} bytes at byte {}",
                r.at - 8
            ));
        }
        let at = r.at;
        let name = std::str::from_utf8(r.take(len as usize, "a filter's name")?)
            .map_err(|_| format!("a filter name at byte {at} is not UTF-8"))?
            .to_string();
        let n = r.u64("the number of instructions")?;
        if n == 0 || n > MAX_INSTRUCTIONS {
            return Err(format!(
                "filter {name:?} has {n} instructions (a program has 1 to {MAX_INSTRUCTIONS})"
            ));
        }
        let mut prog: BpfProgram = Vec::with_capacity((n as usize).min(bytes.len() / 8));
        for _ in 0..n {
            let b = r.take(8, &format!("an instruction of filter {name:?}"))?;
            prog.push(sock_filter {
                code: u16::from_le_bytes([b[0], b[1]]),
                jt: b[2],
                jf: b[3],
                k: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            });
        }
        if map.insert(name.clone(), prog).is_some() {
            return Err(format!("filter {name:?} appears twice"));
        }
    }
    if r.at != bytes.len() {
        return Err(format!(
            "{} bytes of garbage after the last filter (byte {} on)",
            bytes.len() - r.at,
            r.at
        ));
    }
    Ok(map)
}
