//! The snapshot state file: a versioned, self-describing, checksummed
//! container for a microVM's state (its memory goes to a file of its own).
//!
//! ```text
//! offset  size  field
//!      0     8  magic "FLINTSNP"
//!      8     2  format version, little endian (FORMAT_VERSION)
//!     10     2  reserved, zero
//!     12     4  header length H, little endian
//!     16     H  header: JSON {"flint_version", "cpu_vendor"}
//!   16+H     8  body length B, little endian
//!   24+H     B  body: the state, JSON
//! 24+H+B     4  CRC-32 (IEEE) of every byte before it, little endian
//! ```
//!
//! Everything is checked before the body is decoded: the magic, the
//! lengths against the file's size, the checksum, then the version and the
//! CPU vendor; a flipped byte anywhere fails one of those. The header is
//! JSON so that a reader of any version can say which flint made a file it
//! refuses. Files are written to a temporary name beside the target and
//! renamed into place: a failed write leaves no half file under the name.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"FLINTSNP";
/// The one format version this flint writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Larger headers or bodies are not snapshot files of flint's (the body
/// holds registers and device state: kilobytes per vCPU).
const MAX_SECTION: u64 = 64 << 20;
const FIXED: usize = 8 + 2 + 2 + 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read snapshot file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write snapshot file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a flint snapshot file (its first 8 bytes are not \"FLINTSNP\")")]
    Magic,
    #[error("the snapshot file is truncated: it has {len} bytes, its {what} needs {needs}")]
    Truncated {
        what: &'static str,
        len: usize,
        needs: u64,
    },
    #[error(
        "the snapshot file is corrupted: checksum {stored:#010x} stored, {computed:#010x} computed"
    )]
    Checksum { stored: u32, computed: u32 },
    #[error(
        "the snapshot file has format version {file} (made by flint {made_by}); this flint {ours} reads version {FORMAT_VERSION}"
    )]
    Version {
        file: u16,
        made_by: String,
        ours: &'static str,
    },
    #[error("the snapshot was made on a {file} CPU; this host's CPU is {host}")]
    Vendor { file: String, host: String },
    #[error("the snapshot file's {what} is malformed: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot encode the snapshot's {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// Who made a snapshot file, and for which CPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub flint_version: String,
    pub cpu_vendor: String,
}

impl Header {
    /// This flint on this host.
    pub fn here() -> Header {
        Header {
            flint_version: env!("CARGO_PKG_VERSION").to_string(),
            cpu_vendor: cpu_vendor(),
        }
    }
}

/// The CPU vendor string (CPUID leaf 0), e.g. "GenuineIntel".
pub fn cpu_vendor() -> String {
    // `__cpuid` is safe from Rust 1.87 on, unsafe in the 1.85 flint supports.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 0 exists on every x86_64 CPU and has no side effects.
    let r = unsafe { std::arch::x86_64::__cpuid(0) };
    let mut v = Vec::with_capacity(12);
    for reg in [r.ebx, r.edx, r.ecx] {
        v.extend_from_slice(&reg.to_le_bytes());
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// The file's bytes for `state`, made by `header`'s flint.
pub fn encode<T: Serialize>(header: &Header, state: &T) -> Result<Vec<u8>, Error> {
    encode_version(FORMAT_VERSION, header, state)
}

fn encode_version<T: Serialize>(
    version: u16,
    header: &Header,
    state: &T,
) -> Result<Vec<u8>, Error> {
    let h = serde_json::to_vec(header).map_err(|source| Error::Encode {
        what: "header",
        source,
    })?;
    let b = serde_json::to_vec(state).map_err(|source| Error::Encode {
        what: "state",
        source,
    })?;
    let mut out = Vec::with_capacity(FIXED + h.len() + 8 + b.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(&b);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// `len` bytes of `data` from `at`, or Truncated naming `what`.
fn take<'a>(data: &'a [u8], at: usize, len: u64, what: &'static str) -> Result<&'a [u8], Error> {
    let truncated = || Error::Truncated {
        what,
        len: data.len(),
        needs: at as u64 + len,
    };
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| at.checked_add(l))
        .ok_or_else(truncated)?;
    data.get(at..end).ok_or_else(truncated)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u64::from_le_bytes(a)
}

/// Check `data` as a snapshot file made for this host (`host_vendor`) and
/// decode its state.
pub fn decode<T: DeserializeOwned>(data: &[u8], host_vendor: &str) -> Result<(Header, T), Error> {
    if data.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(if data.len() < MAGIC.len() && MAGIC.starts_with(data) {
            Error::Truncated {
                what: "magic",
                len: data.len(),
                needs: MAGIC.len() as u64,
            }
        } else {
            Error::Magic
        });
    }
    let fixed = take(data, 0, FIXED as u64, "fixed header")?;
    let version = le_u64(fixed.get(8..10).unwrap_or_default()) as u16;
    let h_len = le_u64(fixed.get(12..16).unwrap_or_default());
    let header_bytes = take(data, FIXED, h_len.min(MAX_SECTION + 1), "header")?;
    let at = FIXED + header_bytes.len();
    let b_len = le_u64(take(data, at, 8, "body length")?);
    let body = take(data, at + 8, b_len.min(MAX_SECTION + 1), "state")?;
    let end = at + 8 + body.len();
    let stored = le_u64(take(data, end, 4, "checksum")?) as u32;
    let computed = crc32fast::hash(data.get(..end).unwrap_or_default());
    if stored != computed || data.len() != end + 4 {
        return Err(Error::Checksum { stored, computed });
    }
    let header: Header = serde_json::from_slice(header_bytes).map_err(|source| Error::Decode {
        what: "header",
        source,
    })?;
    if version != FORMAT_VERSION {
        return Err(Error::Version {
            file: version,
            made_by: header.flint_version,
            ours: env!("CARGO_PKG_VERSION"),
        });
    }
    if header.cpu_vendor != host_vendor {
        return Err(Error::Vendor {
            file: header.cpu_vendor,
            host: host_vendor.to_string(),
        });
    }
    let state = serde_json::from_slice(body).map_err(|source| Error::Decode {
        what: "state",
        source,
    })?;
    Ok((header, state))
}

/// Write `state` to `path` (a temporary file beside it, then a rename).
pub fn write<T: Serialize>(path: &Path, state: &T) -> Result<(), Error> {
    let bytes = encode(&Header::here(), state)?;
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    super::write_replacing(path, |f| f.write_all(&bytes).map_err(err), err)
}

/// Read the snapshot file at `path` (checked as [`decode`] does, for this
/// host's CPU); the file is only read.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<(Header, T), Error> {
    let err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    // Larger than a header and a state can be: not one of flint's files.
    if meta.len() > 2 * MAX_SECTION + 64 {
        return Err(Error::Magic);
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    std::io::Read::read_to_end(&mut file, &mut data).map_err(err)?;
    decode(&data, &cpu_vendor())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        regs: Vec<u64>,
        name: String,
        xsave: Vec<u8>,
    }

    fn state() -> State {
        State {
            regs: vec![0, 1, u64::MAX, 0xffff_ffff_8100_0000],
            name: "vcpu0".into(),
            xsave: (0..=255).collect(),
        }
    }

    fn header() -> Header {
        Header {
            flint_version: "0.1.0".into(),
            cpu_vendor: "AuthenticAMD".into(),
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&header(), &state()).unwrap();
        let (h, s): (Header, State) = decode(&bytes, "AuthenticAMD").unwrap();
        assert_eq!((h, s), (header(), state()));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let bytes = encode(&header(), &state()).unwrap();
        for at in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[at] ^= bit;
                let r = decode::<State>(&bad, "AuthenticAMD");
                assert!(r.is_err(), "byte {at} bit {bit:#x} went unnoticed");
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(&header(), &state()).unwrap();
        for len in 0..bytes.len() {
            let r = decode::<State>(&bytes[..len], "AuthenticAMD");
            assert!(
                matches!(r, Err(Error::Truncated { .. } | Error::Checksum { .. })),
                "{len}: {r:?}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<State>(&longer, "AuthenticAMD"),
            Err(Error::Checksum { .. })
        ));
    }

    #[test]
    fn a_newer_version_is_refused_naming_both() {
        let mut h = header();
        h.flint_version = "9.9.9".into();
        let bytes = encode_version(FORMAT_VERSION + 1, &h, &state()).unwrap();
        let e = decode::<State>(&bytes, "AuthenticAMD").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("format version {}", FORMAT_VERSION + 1))
                && msg.contains("flint 9.9.9")
                && msg.contains(&format!("reads version {FORMAT_VERSION}")),
            "{msg}"
        );
    }

    #[test]
    fn another_cpu_vendor_is_refused() {
        let bytes = encode(&header(), &state()).unwrap();
        let e = decode::<State>(&bytes, "GenuineIntel").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the snapshot was made on a AuthenticAMD CPU; this host's CPU is GenuineIntel"
        );
    }

    #[test]
    fn not_a_snapshot_and_huge_lengths() {
        assert!(matches!(
            decode::<State>(b"ELF\x7f....", "x"),
            Err(Error::Magic)
        ));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&1u16.to_le_bytes());
        huge.extend_from_slice(&0u16.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode::<State>(&huge, "x"),
            Err(Error::Truncated { what: "header", .. })
        ));
    }

    #[test]
    fn write_then_read_and_a_failed_write_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("flint-snapfmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.snap");
        write(&path, &state()).unwrap();
        let before = std::fs::read(&path).unwrap();
        let (h, s): (Header, State) = read(&path).unwrap();
        assert_eq!((h, s), (Header::here(), state()));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "reading modifies nothing"
        );
        let missing = dir.join("no-such-dir").join("vm.snap");
        let e = write(&missing, &state()).unwrap_err();
        assert!(e.to_string().contains("no-such-dir"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_hosts_vendor_is_a_cpuid_string() {
        let v = cpu_vendor();
        assert_eq!(v.len(), 12, "{v:?}");
    }
}
