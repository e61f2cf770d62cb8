//! The device on a real TAP: frames cross the kernel in both directions with
//! the vnet header both sides agreed on. Needs CAP_NET_ADMIN and `ip` (the
//! suite runs as root); fails saying so where they are missing.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

use super::*;

/// An ethertype from the IEEE "local experimental" range, so the frame is
/// ours and no host protocol handler cares about it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// Send `frame` (Ethernet, no vnet header) out of interface `ifname`, which
/// for a TAP means into its file descriptor.
fn send_on_link(ifname: &str, frame: &[u8]) -> io::Result<()> {
    let ifindex: i32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))?
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `addr` are valid for reads of the given lengths
    // for the whole call, and `sock` is an open AF_PACKET socket.
    let n = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bring the TAP up (the host side's job, done here by the test).
fn link_up(name: &str) -> Result<(), String> {
    // Quiet the link: no IPv6 autoconfiguration frames competing with ours.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let out = Command::new("ip")
        .args(["link", "set", "dev", name, "up"])
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip link set dev {name} up` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    let name = format!("flte{}", std::process::id() % 100_000);
    let cfg = NetConfig {
        tap_name: name.clone(),
        ..config(None)
    };
    let net = Net::new(cfg).unwrap_or_else(|e| {
        panic!("creating TAP {name}: {e} (the tests need root and /dev/net/tun)")
    });
    if let Err(why) = link_up(&name) {
        panic!("cannot bring TAP {name} up: {why}");
    }
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::with_net(&mem, net);
    b.activate(b.all_features());
    let bufs = b.add_rx_buffers(16, 2048);
    b.run();

    // Guest -> host: the kernel takes the frame (a down TAP would refuse it).
    let mut tx = frame(0, 0);
    tx.extend([0xff; 6]);
    tx.extend([0x06, 1, 2, 3, 4, 5]);
    tx.extend(ETHERTYPE);
    tx.extend([0xa5; 46]);
    b.add_tx_frame(&tx, &[VNET_HDR_LEN]);
    b.kick(TX_INDEX);
    b.run();
    let c = b.counters();
    assert_eq!((c.tx_frames, c.tx_dropped, c.tx_malformed), (1, 0, 0));

    // Host -> guest: a frame sent out of the TAP lands in an RX buffer after
    // a vnet header with num_buffers = 1.
    let mut rx = vec![0x06, 1, 2, 3, 4, 5, 0x06, 9, 9, 9, 9, 9];
    rx.extend(ETHERTYPE);
    rx.extend((0..100u8).map(|i| i ^ 0x5a));
    send_on_link(&name, &rx).unwrap();
    let arrived = |drv: &Driver| {
        drv.used(RX_INDEX).iter().any(|&(head, len)| {
            let addr = bufs.iter().find(|&&(h, _)| u32::from(h) == head).unwrap().1;
            let got = drv.read(addr, len as usize);
            got.len() == VNET_HDR_LEN + rx.len()
                && got[VNET_HDR_LEN..] == rx[..]
                && got[10..12] == 1u16.to_le_bytes()
        })
    };
    assert!(
        b.run_until(3000, arrived),
        "the frame sent on {name} never reached the guest: {:?}",
        b.counters()
    );
}
