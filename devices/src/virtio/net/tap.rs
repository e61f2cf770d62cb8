//! The host side of a network device: a TAP, or anything else that moves
//! whole frames behind a pollable fd.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};

use super::Error;

/// Frames move as `vnet header + Ethernet frame`, one per call, through a
/// non-blocking fd the event loop polls for readability.
pub trait NetBackend: AsRawFd + Send {
    /// Read one frame into `buf`; `WouldBlock` when none is queued.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame gathered from `iov` (guest buffers).
    ///
    /// # Safety
    /// Every iovec must describe memory that is valid for reads for the
    /// whole call.
    unsafe fn write_iovecs(&mut self, iov: &[libc::iovec]) -> io::Result<usize>;
    /// Set which offloads frames read from the backend may use (`TUN_F_*`).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
    /// Set the vnet header length both directions use (10 or 12).
    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()>;
}

mod ioctls {
    use std::os::raw::{c_int, c_uint};
    const TUNTAP: c_uint = 0x54;
    vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
    vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
    vmm_sys_util::ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);
}

/// `struct ifreq` with the `ifr_flags` member of its union; the padding
/// covers the rest of the union (24 bytes on 64-bit, the largest member).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUN_PATH: &str = "/dev/net/tun";

/// A TAP device opened with `IFF_VNET_HDR`, non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attach to TAP `name`, creating it when it does not exist (which needs
    /// CAP_NET_ADMIN). A TAP created here disappears when it is closed; one
    /// made beforehand with `ip tuntap add` persists. The link is left as it
    /// is: the host side brings it up.
    pub fn open(name: &str) -> Result<Tap, Error> {
        let ifr_name = ifname(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::TunMissing,
                _ => Error::OpenTun(e),
            })?;

        // IFF_NO_PI: frames carry no extra packet-info prefix. IFF_ONE_QUEUE
        // is not set: the kernel ignores it since 3.8.
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        let ifr = IfReqFlags {
            name: ifr_name,
            // The flag values fit in the 16-bit ifr_flags field.
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        // SAFETY: `file` is an open /dev/net/tun fd and TUNSETIFF reads a
        // `struct ifreq`, whose name and flags `ifr` lays out as the kernel
        // expects; the kernel reads at most sizeof(struct ifreq) bytes, all
        // inside `ifr`. The return value is checked.
        let ret = unsafe { ioctl_with_ref(&file, ioctls::TUNSETIFF(), &ifr) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) => Error::NeedsCapNetAdmin(name),
                Some(libc::EBUSY) => Error::TapBusy(name),
                Some(libc::EINVAL) => Error::NotATap(name),
                _ => Error::AttachTap { name, source: err },
            });
        }

        let mut tap = Tap {
            file,
            name: name.to_string(),
        };
        // The TAP must not pass up checksum-less or GSO frames before the
        // guest says it can take them.
        let configure = |what, res: io::Result<()>| {
            res.map_err(|source| Error::ConfigureTap {
                name: name.to_string(),
                what,
                source,
            })
        };
        configure("TUNSETVNETHDRSZ", tap.set_vnet_hdr_len(super::VNET_HDR_LEN))?;
        configure("TUNSETOFFLOAD", tap.set_offload(0))?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Check `name` as the kernel's dev_valid_name() would, and NUL-pad it.
fn ifname(name: &str) -> Result<[u8; libc::IFNAMSIZ], Error> {
    let bad = |reason| Error::InvalidTapName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(bad("interface names are at most 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad("\".\" and \"..\" are reserved"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return Err(bad("it may not contain '/', ':', NUL or whitespace"));
    }
    let mut out = [0u8; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b;
    }
    Ok(out)
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    unsafe fn write_iovecs(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the caller vouches for the buffers; the kernel only reads
        // them.
        unsafe { writev(self.file.as_raw_fd(), iov) }
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: `file` is a TAP fd and TUNSETOFFLOAD takes its argument by
        // value, so no memory is shared with the kernel. Checked below.
        let ret = unsafe {
            ioctl_with_val(
                &self.file,
                ioctls::TUNSETOFFLOAD(),
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()> {
        let len =
            libc::c_int::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `file` is a TAP fd and TUNSETVNETHDRSZ reads one c_int
        // through the pointer, which `len` provides for the whole call.
        let ret = unsafe { ioctl_with_ref(&self.file, ioctls::TUNSETVNETHDRSZ(), &len) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// writev(2) on `fd`.
///
/// # Safety
/// Every iovec must describe memory valid for reads during the call.
pub unsafe fn writev(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    let count = libc::c_int::try_from(iov.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: the caller vouches for the buffers; `count` iovecs are there.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_checked_before_touching_the_kernel() {
        for (name, why) in [
            ("", "empty"),
            ("a-name-of-16-byt", "15 bytes"),
            ("..", "reserved"),
            ("tap/0", "'/'"),
            ("tap 0", "whitespace"),
        ] {
            match Tap::open(name) {
                Err(e @ Error::InvalidTapName { .. }) => {
                    assert!(e.to_string().contains(why), "{name:?}: {e}")
                }
                other => panic!("{name:?}: expected InvalidTapName, got {other:?}"),
            }
        }
        assert!(ifname("exactly15bytes_").is_ok());
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let e = Error::NeedsCapNetAdmin("tap7".into()).to_string();
        assert!(e.contains("CAP_NET_ADMIN"), "{e}");
        assert!(e.contains("ip tuntap add tap7 mode tap user $USER"), "{e}");
        let e = Error::TapBusy("tap7".into()).to_string();
        assert_eq!(e, "TAP device tap7 is in use by another process");
    }

    /// A unique name per test process and call, within 15 bytes.
    fn unique_tap_name(tag: &str) -> String {
        format!("flt{tag}{}", std::process::id() % 100_000)
    }

    /// Open a TAP for real; the test suite runs as root with /dev/net/tun.
    fn open_tap(name: &str) -> Tap {
        Tap::open(name).unwrap_or_else(|e| {
            panic!("opening TAP {name}: {e} (the tests need root and /dev/net/tun)")
        })
    }

    #[test]
    fn tap_is_created_configured_and_exclusive() {
        let name = unique_tap_name("a");
        let mut tap = open_tap(&name);
        assert_eq!(tap.name(), name);
        let sys = format!("/sys/class/net/{name}");
        assert!(std::path::Path::new(&sys).exists(), "{sys} missing");

        // Every offload combination the device can ask for is accepted.
        for flags in [
            0,
            libc::TUN_F_CSUM,
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO,
        ] {
            tap.set_offload(flags).unwrap();
        }
        tap.set_vnet_hdr_len(super::super::VNET_HDR_LEN_LEGACY)
            .unwrap();
        tap.set_vnet_hdr_len(super::super::VNET_HDR_LEN).unwrap();

        // Nothing arrives on a TAP that is down: reads must not block.
        let mut buf = [0u8; 64];
        let err = tap.read_frame(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        // A single-queue TAP has one owner.
        match Tap::open(&name) {
            Err(e @ Error::TapBusy(_)) => assert!(e.to_string().contains(&name)),
            other => panic!("second open: expected TapBusy, got {other:?}"),
        }

        // A TAP we created is not persistent: closing it removes it.
        drop(tap);
        assert!(!std::path::Path::new(&sys).exists(), "{sys} left behind");
    }

    #[test]
    fn a_non_tap_interface_is_refused() {
        // The loopback device always exists and is no TAP.
        match Tap::open("lo") {
            Err(Error::NotATap(n)) => assert_eq!(n, "lo"),
            other => panic!("expected NotATap (the tests need root and {TUN_PATH}), got {other:?}"),
        }
    }
}
