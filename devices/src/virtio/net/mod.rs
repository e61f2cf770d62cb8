//! virtio-net (virtio 1.2, section 5.1) backed by a host TAP device.
//!
//! [`Net`] is the device model: the transport drives it through
//! [`VirtioDevice`](super::VirtioDevice), and the VMM's event loop drives its
//! queues through `event_manager::MutEventSubscriber`. Frames travel as
//! `virtio_net_hdr_v1` + Ethernet frame in both directions, which is exactly
//! what a TAP opened with `IFF_VNET_HDR` speaks, so no header translation is
//! needed: the device only copies bytes between guest buffers and the TAP.
//!
//! The TAP is created (or attached to) by name. Addresses, bridges and link
//! state belong to the host side: the device never brings the interface up,
//! so whoever sets up the host network runs `ip link set NAME up` (and
//! assigns addresses or enslaves it to a bridge) before or after the VM
//! starts.

mod device;
mod reserved;
mod rx;
mod tap;
mod tx;

#[cfg(test)]
mod tests;

use std::io;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
};

pub use device::Net;
pub use tap::{NetBackend, Tap};

/// Queue indices.
pub const RX_INDEX: usize = 0;
pub const TX_INDEX: usize = 1;
/// Both queues offer this many descriptors.
pub const QUEUE_SIZE: u16 = 256;

/// Size of `virtio_net_hdr_v1`, the header every frame carries once
/// VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF is negotiated.
pub const VNET_HDR_LEN: usize =
    std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>();
/// The legacy header without `num_buffers`, for drivers that accept neither.
pub const VNET_HDR_LEN_LEGACY: usize = 10;
/// The largest vnet header + frame the device moves: a 64 KiB GSO frame
/// (65535-byte IP packet + 14-byte Ethernet header) plus the header, rounded
/// up as Firecracker does. Larger TX frames are malformed; the RX read buffer
/// has this size.
pub const MAX_BUFFER_LEN: usize = 65562;

/// The smallest MTU the spec lets a device advertise (virtio 1.2, 5.1.4.1).
pub const MIN_MTU: u16 = 68;

/// Why a network device could not be created or configured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid MAC address {value:?}: {reason} (expected six hex pairs like 06:00:ac:10:00:02)"
    )]
    InvalidMac { value: String, reason: &'static str },
    #[error(
        "MAC address {0} is a multicast address; a network interface needs a unicast one \
         (the lowest bit of the first byte must be 0, e.g. 06:...)"
    )]
    MulticastMac(String),
    #[error("MTU {0} is too small: virtio-net needs at least {MIN_MTU}")]
    InvalidMtu(u16),
    #[error("TAP device name {name:?} is invalid: {reason}")]
    InvalidTapName { name: String, reason: &'static str },
    #[error(
        "/dev/net/tun does not exist: load the tun module (`modprobe tun`) or, in a container, \
         pass the device through"
    )]
    TunMissing,
    #[error("cannot open /dev/net/tun: {0} (it needs read and write access)")]
    OpenTun(#[source] io::Error),
    #[error(
        "creating TAP device {0} needs CAP_NET_ADMIN (run as root, or create it beforehand \
         with `ip tuntap add {0} mode tap user $USER`)"
    )]
    NeedsCapNetAdmin(String),
    #[error("TAP device {0} is in use by another process")]
    TapBusy(String),
    #[error(
        "network interface {0} exists but is not a single-queue TAP device; pick another name \
         or remove it with `ip link del {0}`"
    )]
    NotATap(String),
    #[error("cannot attach to TAP device {name}: {source}")]
    AttachTap {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot configure TAP device {name} ({what}): {source}")]
    ConfigureTap {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot create an EventFd for network interface {iface_id}: {source}")]
    EventFd {
        iface_id: String,
        #[source]
        source: io::Error,
    },
}

/// What the VMM configures per network interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface's name in the VM config; seeds the generated MAC.
    pub iface_id: String,
    /// Host TAP device to create or attach to.
    pub tap_name: String,
    /// The guest's MAC; generated from `iface_id` when absent.
    pub guest_mac: Option<[u8; 6]>,
    /// MTU advertised to the guest (VIRTIO_NET_F_MTU); the host side should
    /// set the same MTU on the TAP.
    pub mtu: Option<u16>,
}

/// A network device's own state. Frames in flight are not part of it: a
/// frame read from the TAP and waiting for guest buffers is dropped (the
/// RX chains reserved for it go back to the ring), as a network may drop
/// any frame. The VMM opens the TAP again for the restored device.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetState {
    /// The interface's name in the VM config (for the VMM; not checked).
    pub iface_id: String,
    /// The MAC the guest saw; the restored device shows the same.
    pub mac: [u8; 6],
    /// The MTU advertised; restore refuses a device built with another.
    pub mtu: Option<u16>,
    pub counters: NetCounters,
}

/// Frame counters of one device. Bytes count Ethernet frames, without the
/// vnet header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames read from the backend that never reached the guest: shorter
    /// than a vnet header, or larger than the guest's buffers can ever hold.
    pub rx_dropped: u64,
    /// RX chains the guest got back unused because they were malformed
    /// (readable descriptors, buffers outside guest memory, no space).
    pub rx_malformed: u64,
    /// Backend read failures (the TAP went away or reported an error).
    pub rx_backend_errors: u64,
    /// Frames written to the backend.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Well-formed frames the backend refused (for instance while the TAP
    /// is down).
    pub tx_dropped: u64,
    /// TX chains dropped because they were malformed.
    pub tx_malformed: u64,
}

/// Parse a MAC written as six colon-separated hex pairs ("06:00:ac:10:00:02").
/// Multicast addresses are refused: the guest's NIC needs a unicast address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], Error> {
    let bad = |reason| Error::InvalidMac {
        value: s.to_string(),
        reason,
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().ok_or_else(|| bad("fewer than six bytes"))?;
        if part.len() != 2 {
            return Err(bad("each byte must be exactly two hex digits"));
        }
        // from_str_radix alone would also take a sign ("+f").
        if !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not a hex digit"));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad("not a hex digit"))?;
    }
    if parts.next().is_some() {
        return Err(bad("more than six bytes"));
    }
    validate_mac(mac)?;
    Ok(mac)
}

/// Refuse MACs a NIC cannot own.
pub fn validate_mac(mac: [u8; 6]) -> Result<(), Error> {
    if mac[0] & 1 != 0 {
        return Err(Error::MulticastMac(format_mac(&mac)));
    }
    if mac == [0; 6] {
        return Err(Error::InvalidMac {
            value: format_mac(&mac),
            reason: "the all-zero address is not a valid interface address",
        });
    }
    Ok(())
}

/// A stable MAC for `iface_id`: the same id gives the same MAC across runs
/// and builds (FNV-1a, not std's hasher, whose output may change between Rust
/// releases). The first byte 0x06 marks it locally administered and unicast.
pub fn generate_mac(iface_id: &str) -> [u8; 6] {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = iface_id.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    let h = hash.to_le_bytes();
    [0x06, h[0], h[1], h[2], h[3], h[4]]
}

/// "aa:bb:cc:dd:ee:ff".
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The TUNSETOFFLOAD flags matching the receive offloads the guest accepted:
/// the TAP may only hand us checksum-less or GSO frames the guest can take.
/// TSO and UFO require checksum offload, in the spec and in the kernel.
pub fn tap_offload_flags(acked_features: u64) -> u32 {
    let has = |bit: u32| acked_features & (1u64 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_UFO) {
            flags |= libc::TUN_F_UFO;
        }
    }
    flags
}

/// Log a guest-caused problem with exponential backoff (1st, 2nd, 4th, 8th,
/// ... occurrence), so a misbehaving guest cannot flood the host log while
/// the first occurrence is still reported.
fn log_rate_limited(count: u64, msg: std::fmt::Arguments) {
    if count.is_power_of_two() {
        log::warn!("{msg} ({count} so far)");
    }
}
