//! Taking the kernel out of a bzImage on the host.
//!
//! A bzImage is a small real-mode setup, a decompressor, and the kernel
//! (an ELF vmlinux) compressed. Booting it as is makes the guest run the
//! decompressor; on a host that emulates guest kernel code that costs tens
//! of seconds, against milliseconds here. So when the payload uses a
//! format flint knows (LZ4 or gzip), flint decompresses it and loads the
//! ELF kernel directly; otherwise the guest decompresses as usual.

use std::io::Read;

/// Offsets in the setup header (Linux boot protocol).
const SETUP_SECTS: usize = 0x1f1;
const HDR_MAGIC: usize = 0x202;
const HDR_VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// payload_offset/length exist from boot protocol 2.08.
const MIN_VERSION: u16 = 0x0208;
/// LZ4 "legacy" frame, as the kernel's build writes it (`lz4 -l`).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// No kernel is bigger than this decompressed; anything claiming more is
/// a corrupt or hostile image.
const MAX_KERNEL: usize = 512 << 20;

/// Errors from decompressing a bzImage payload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the bzImage payload (offset {offset:#x}, {len} bytes) lies outside the file")]
    PayloadBounds { offset: usize, len: usize },
    #[error("corrupt {format} payload: {why}")]
    Corrupt { format: &'static str, why: String },
    #[error("the decompressed payload is not an ELF kernel")]
    NotElf,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage, if its header describes one.
pub fn payload(image: &[u8]) -> Result<Option<&[u8]>, Error> {
    if image.get(HDR_MAGIC..HDR_MAGIC + 4) != Some(b"HdrS")
        || u16_at(image, HDR_VERSION).unwrap_or(0) < MIN_VERSION
    {
        return Ok(None);
    }
    let sects = match image.get(SETUP_SECTS).copied().unwrap_or(0) {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (sects + 1) * 512;
    let (Some(off), Some(len)) = (u32_at(image, PAYLOAD_OFFSET), u32_at(image, PAYLOAD_LENGTH))
    else {
        return Ok(None);
    };
    let offset = pm_start + off as usize;
    let len = len as usize;
    image
        .get(offset..offset.saturating_add(len))
        .map(Some)
        .ok_or(Error::PayloadBounds { offset, len })
}

fn corrupt(format: &'static str, why: impl ToString) -> Error {
    Error::Corrupt {
        format,
        why: why.to_string(),
    }
}

/// Decode the LZ4 legacy frame the kernel build writes: the magic, then
/// blocks of (u32 size, data), each at most 8 MiB decompressed; the build
/// appends the total decompressed size as a final u32.
pub fn unlz4_legacy(data: &[u8]) -> Result<Vec<u8>, Error> {
    const F: &str = "LZ4";
    if u32_at(data, 0) != Some(LZ4_LEGACY_MAGIC) {
        return Err(corrupt(F, "no legacy frame magic"));
    }
    let expected = data
        .len()
        .checked_sub(4)
        .and_then(|at| u32_at(data, at))
        .map(|n| n as usize)
        .filter(|&n| n <= MAX_KERNEL);
    let mut out = Vec::with_capacity(expected.unwrap_or(0));
    let mut pos = 4;
    while let Some(n) = u32_at(data, pos) {
        pos += 4;
        if n == LZ4_LEGACY_MAGIC {
            continue;
        }
        let n = n as usize;
        let Some(block) = data.get(pos..pos + n) else {
            // The trailing size word, not a block.
            break;
        };
        pos += n;
        let start = out.len();
        if start + LZ4_LEGACY_BLOCK > MAX_KERNEL {
            return Err(corrupt(F, "decompresses to more than 512 MiB"));
        }
        out.resize(start + LZ4_LEGACY_BLOCK, 0);
        let got = lz4_flex::block::decompress_into(block, out.get_mut(start..).unwrap_or_default())
            .map_err(|e| corrupt(F, e))?;
        out.truncate(start + got);
    }
    if let Some(n) = expected {
        if n != out.len() {
            return Err(corrupt(
                F,
                format!("{} bytes decompressed, the image says {n}", out.len()),
            ));
        }
    }
    Ok(out)
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(MAX_KERNEL as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt("gzip", e))?;
    if out.len() > MAX_KERNEL {
        return Err(corrupt("gzip", "decompresses to more than 512 MiB"));
    }
    Ok(out)
}

/// The ELF kernel inside a bzImage, when flint can decompress it; `None`
/// when the image has no payload flint understands (the guest will
/// decompress it itself).
pub fn extract_vmlinux(image: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let Some(data) = payload(image)? else {
        return Ok(None);
    };
    let elf = if u32_at(data, 0) == Some(LZ4_LEGACY_MAGIC) {
        unlz4_legacy(data)?
    } else if data.starts_with(&GZIP_MAGIC) {
        gunzip(data)?
    } else {
        return Ok(None);
    };
    if !elf.starts_with(b"\x7fELF") {
        return Err(Error::NotElf);
    }
    Ok(Some(elf))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal bzImage around `payload`: one setup sector, boot protocol
    /// 2.15, payload right at the start of the protected-mode part.
    pub fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 1024];
        img[SETUP_SECTS] = 1;
        img[HDR_MAGIC..HDR_MAGIC + 4].copy_from_slice(b"HdrS");
        img[HDR_VERSION..HDR_VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0u32.to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        img
    }

    pub fn lz4_legacy(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn elf_blob(len: usize) -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01".to_vec();
        v.extend((0..len).map(|i| (i * 7 % 251) as u8));
        v
    }

    #[test]
    fn lz4_payload_round_trip() {
        let elf = elf_blob(100_000);
        let img = fake_bzimage(&lz4_legacy(&elf));
        assert_eq!(extract_vmlinux(&img).unwrap(), Some(elf));
    }

    #[test]
    fn gzip_payload_round_trip() {
        let elf = elf_blob(50_000);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&elf).unwrap();
        let img = fake_bzimage(&enc.finish().unwrap());
        assert_eq!(extract_vmlinux(&img).unwrap(), Some(elf));
    }

    #[test]
    fn unknown_formats_are_left_to_the_guest() {
        let img = fake_bzimage(&[0xfd, b'7', b'z', b'X', b'Z', 0]);
        assert_eq!(extract_vmlinux(&img).unwrap(), None);
        assert_eq!(extract_vmlinux(b"not a bzimage").unwrap(), None);
    }

    #[test]
    fn corrupt_payloads_are_errors() {
        let mut p = lz4_legacy(&elf_blob(10_000));
        let n = p.len();
        p[n - 4] ^= 1; // wrong trailing size
        assert!(matches!(
            extract_vmlinux(&fake_bzimage(&p)),
            Err(Error::Corrupt { .. })
        ));
        let mut p = lz4_legacy(&elf_blob(10_000));
        p[10] ^= 0xff;
        p[11] ^= 0xff;
        assert!(extract_vmlinux(&fake_bzimage(&p)).is_err());
        let mut img = fake_bzimage(&lz4_legacy(&elf_blob(10)));
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            extract_vmlinux(&img),
            Err(Error::PayloadBounds { .. })
        ));
        let img = fake_bzimage(&lz4_legacy(b"not elf at all"));
        assert_eq!(extract_vmlinux(&img), Err(Error::NotElf));
    }
}
