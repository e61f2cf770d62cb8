//! A network backend that hands out the input's frames and swallows (or
//! refuses) what the device sends.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use devices::virtio::net::NetBackend;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub struct FakeBackend {
    frames: VecDeque<Vec<u8>>,
    fail_writes: bool,
    fd: EventFd,
}

impl FakeBackend {
    pub fn new(frames: Vec<Vec<u8>>, fail_writes: bool) -> Self {
        FakeBackend {
            frames: frames.into(),
            fail_writes,
            fd: EventFd::new(EFD_NONBLOCK).expect("an EventFd"),
        }
    }
}

impl AsRawFd for FakeBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for FakeBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self
            .frames
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        // A datagram socket or TAP cuts what does not fit.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }
    unsafe fn write_iovecs(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        if self.fail_writes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(iov.iter().map(|v| v.iov_len).sum())
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
    fn set_vnet_hdr_len(&mut self, _len: usize) -> io::Result<()> {
        Ok(())
    }
}
