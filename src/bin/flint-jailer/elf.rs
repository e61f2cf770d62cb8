//! The files a dynamically linked executable needs at run time: its ELF
//! interpreter (PT_INTERP) and the shared libraries named by DT_NEEDED,
//! followed transitively and resolved in the standard library directories,
//! so that they can be copied into the jail at the same paths.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where shared libraries are looked up, in order (Debian's multiarch
/// directories, then /lib64).
pub const LIBRARY_DIRS: [&str; 3] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
];

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a 64-bit little-endian ELF file ({what})")]
    Format { path: PathBuf, what: &'static str },
    #[error("{path} needs the shared library {name}, which is in none of {dirs}")]
    NotFound {
        path: PathBuf,
        name: String,
        dirs: String,
    },
}

/// What an ELF file asks of the dynamic loader.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// PT_INTERP: the loader's absolute path (none for a static binary).
    pub interp: Option<String>,
    /// DT_NEEDED names, in order.
    pub needed: Vec<String>,
}

struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

fn u16_at(d: &[u8], at: u64) -> Option<u16> {
    let at = usize::try_from(at).ok()?;
    Some(u16::from_le_bytes(
        d.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(d: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(d: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    Some(u64::from_le_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The NUL-terminated string at file offset `at`.
fn str_at(d: &[u8], at: u64) -> Option<String> {
    let rest = d.get(usize::try_from(at).ok()?..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Parse the program headers and the dynamic section of an ELF64 image.
pub fn parse(data: &[u8]) -> Result<Needs, &'static str> {
    if data.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("no ELF magic");
    }
    if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return Err("not ELFCLASS64/ELFDATA2LSB");
    }
    let bad = "truncated program headers";
    let phoff = u64_at(data, 0x20).ok_or(bad)?;
    let phentsize = u64::from(u16_at(data, 0x36).ok_or(bad)?);
    let phnum = u64::from(u16_at(data, 0x38).ok_or(bad)?);
    let mut phdrs = Vec::new();
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        phdrs.push(Phdr {
            kind: u32_at(data, at).ok_or(bad)?,
            offset: u64_at(data, at + 8).ok_or(bad)?,
            vaddr: u64_at(data, at + 16).ok_or(bad)?,
            filesz: u64_at(data, at + 32).ok_or(bad)?,
        });
    }
    let mut needs = Needs::default();
    if let Some(p) = phdrs.iter().find(|p| p.kind == PT_INTERP) {
        needs.interp = Some(str_at(data, p.offset).ok_or("bad PT_INTERP")?);
    }
    let Some(dynamic) = phdrs.iter().find(|p| p.kind == PT_DYNAMIC) else {
        return Ok(needs);
    };
    let bad = "truncated dynamic section";
    let (mut strtab, mut names) = (None, Vec::new());
    for i in 0..dynamic.filesz / 16 {
        let at = dynamic.offset + i * 16;
        let tag = u64_at(data, at).ok_or(bad)?;
        let val = u64_at(data, at + 8).ok_or(bad)?;
        match tag {
            DT_NULL => break,
            DT_NEEDED => names.push(val),
            DT_STRTAB => strtab = Some(val),
            _ => {}
        }
    }
    if names.is_empty() {
        return Ok(needs);
    }
    // DT_STRTAB is an address; the PT_LOAD segment holding it gives its
    // place in the file.
    let strtab = strtab.ok_or("DT_NEEDED without DT_STRTAB")?;
    let seg = phdrs
        .iter()
        .find(|p| p.kind == PT_LOAD && p.vaddr <= strtab && strtab < p.vaddr + p.filesz)
        .ok_or("DT_STRTAB outside every PT_LOAD segment")?;
    let strtab = strtab - seg.vaddr + seg.offset;
    for n in names {
        needs
            .needed
            .push(str_at(data, strtab + n).ok_or("bad DT_NEEDED string")?);
    }
    Ok(needs)
}

fn read_needs(path: &Path) -> Result<Needs, Error> {
    let data = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&data).map_err(|what| Error::Format {
        path: path.to_owned(),
        what,
    })
}

/// The host files (absolute paths, as found: copy each to the same path
/// inside the jail) that `exec` needs to run: its interpreter and every
/// shared library it needs, directly or through another library.
pub fn runtime_files(exec: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut found = BTreeSet::new();
    let mut todo = vec![exec.to_owned()];
    while let Some(file) = todo.pop() {
        let needs = read_needs(&file)?;
        if let Some(interp) = needs.interp {
            found.insert(PathBuf::from(interp));
        }
        for name in needs.needed {
            let path = if name.contains('/') {
                Some(PathBuf::from(&name))
            } else {
                LIBRARY_DIRS
                    .iter()
                    .map(|d| Path::new(d).join(&name))
                    .find(|p| p.is_file())
            };
            let Some(path) = path else {
                return Err(Error::NotFound {
                    path: file,
                    name,
                    dirs: LIBRARY_DIRS.join(", "),
                });
            };
            if found.insert(path.clone()) {
                todo.push(path);
            }
        }
    }
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built flint binary (target/debug/flint beside this test's
    /// deps/ directory); this test binary itself, linked the same way,
    /// when flint was not built.
    fn flint() -> PathBuf {
        let me = std::env::current_exe().unwrap();
        let built = me.parent().and_then(Path::parent).map(|d| d.join("flint"));
        built.filter(|p| p.is_file()).unwrap_or(me)
    }

    #[test]
    fn reads_flints_interpreter_and_libraries() {
        let needs = read_needs(&flint()).unwrap();
        assert_eq!(needs.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(needs.needed.iter().any(|n| n == "libc.so.6"), "{needs:?}");
        assert!(
            needs.needed.iter().any(|n| n == "libgcc_s.so.1"),
            "{needs:?}"
        );
    }

    #[test]
    fn resolves_what_flint_needs_in_the_library_dirs() {
        let files = runtime_files(&flint()).unwrap();
        let has = |p: &str| files.iter().any(|f| f == Path::new(p));
        assert!(has("/lib64/ld-linux-x86-64.so.2"), "{files:?}");
        assert!(has("/lib/x86_64-linux-gnu/libc.so.6"), "{files:?}");
        assert!(has("/lib/x86_64-linux-gnu/libgcc_s.so.1"), "{files:?}");
        assert!(files.iter().all(|f| f.is_file()), "{files:?}");
    }

    #[test]
    fn refuses_what_is_not_elf64() {
        assert_eq!(parse(b"#!/bin/sh\n"), Err("no ELF magic"));
        assert_eq!(parse(b"\x7fELF\x01\x01"), Err("not ELFCLASS64/ELFDATA2LSB"));
        let mut short = b"\x7fELF\x02\x01".to_vec();
        short.resize(0x30, 0);
        assert_eq!(parse(&short), Err("truncated program headers"));
    }

    #[test]
    fn a_static_image_needs_nothing() {
        let mut img = vec![0u8; 64];
        img[..6].copy_from_slice(b"\x7fELF\x02\x01");
        assert_eq!(parse(&img), Ok(Needs::default()));
    }
}
