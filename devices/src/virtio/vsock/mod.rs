//! virtio-vsock (virtio 1.2, section 5.10) with Firecracker's hybrid host
//! side: guest sockets meet host processes on unix sockets.
//!
//! - Host to guest: a host process connects to `uds_path` and writes
//!   `CONNECT <port>\n`; once the guest accepts, the device answers
//!   `OK <host_port>\n` and the stream carries the connection's bytes.
//! - Guest to host: a guest connection to CID 2, port `P` becomes a
//!   connection to the unix socket `<uds_path>_P`, which a host process
//!   must be listening on.
//!
//! Modules:
//! - [`device`]: [`Vsock`], the [`VirtioDevice`](super::VirtioDevice) and
//!   event-loop subscriber, and the queue loops.
//! - [`packet`]: the packet header, reading TX chains, filling RX chains.
//! - [`muxer`]: routes packets between the guest and the connections.
//! - [`connection`]: one stream's state machine and credit accounting.
//! - [`unix`]: the host side: the listening socket, `CONNECT` lines,
//!   connecting to `<uds_path>_P`.

mod connection;
mod device;
mod muxer;
pub mod packet;
mod unix;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use device::Vsock;

/// Queue indices.
pub const RX_INDEX: usize = 0;
pub const TX_INDEX: usize = 1;
pub const EVENT_INDEX: usize = 2;
/// Every queue offers this many descriptors.
pub const QUEUE_SIZE: u16 = 256;

/// The host's CID, the only destination the guest can reach.
pub const HOST_CID: u64 = 2;
/// The lowest CID a guest may have: 0-2 are the hypervisor, local and host.
pub const MIN_GUEST_CID: u64 = 3;
/// The highest: guests use only the low 32 bits, and u32::MAX is
/// VMADDR_CID_ANY.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// `struct virtio_vsock_hdr` is 44 bytes, all fields little-endian.
pub const HDR_LEN: usize = 44;
/// The largest payload one packet may carry; longer ones are malformed.
pub const MAX_PKT_LEN: u32 = 64 * 1024;

/// `type`: the only socket type this device implements.
pub const TYPE_STREAM: u16 = 1;

/// `op` values.
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Receive buffer the device offers each connection (its `buf_alloc`):
/// guest data the host socket has not taken yet waits here, up to this much.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Tell the guest about freed buffer space once this much has been
/// forwarded since the last header it saw, so a sender blocked on credit
/// resumes without asking.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// Host ports the device picks for host-initiated connections start here
/// (as in Firecracker), far from the ports guests usually listen on.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Open connections (and host streams still sending CONNECT) at most; more
/// are refused, so neither side can run the VMM out of file descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// Longest `CONNECT <port>\n` line accepted; a longer one closes the stream.
pub const MAX_CONNECT_LINE: usize = 32;

/// Why a vsock device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "guest CID {0} is invalid: it must be between {MIN_GUEST_CID} and {MAX_GUEST_CID} \
         (0-2 are reserved for the hypervisor, loopback and host)"
    )]
    InvalidCid(u64),
    #[error("vsock socket path is empty; give the path of a unix socket to create")]
    EmptyPath,
    #[error(
        "vsock socket path {0} already exists; remove it (a previous VM may have left it) \
         or pick another path"
    )]
    PathExists(PathBuf),
    #[error("vsock socket path {0}: its directory does not exist")]
    DirMissing(PathBuf),
    #[error(
        "vsock socket path {path} is {len} bytes long; unix socket paths hold at most {max} \
         (and `<path>_<port>` must fit too)"
    )]
    PathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create an EventFd for vsock device {path}: {source}")]
    EventFd {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `virtio_vsock_event.id` of TRANSPORT_RESET: the guest drops every
/// connection (virtio 1.2, section 5.10.6.6).
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// A vsock device's own state. Connections cannot outlive the VMM process
/// that held their host sockets: a restored device sends the guest a
/// TRANSPORT_RESET event when it is activated, and the guest drops them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockState {
    /// Restore refuses a device built for another CID.
    pub guest_cid: u64,
    pub counters: VsockCounters,
}

/// What the VMM configures for the vsock device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID.
    pub guest_cid: u64,
    /// Unix socket the device listens on for host-initiated connections;
    /// guest-initiated ones go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

impl VsockConfig {
    /// Check the CID and the path's shape (not the file system).
    pub fn validate(&self) -> Result<(), Error> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.guest_cid) {
            return Err(Error::InvalidCid(self.guest_cid));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(Error::EmptyPath);
        }
        // sun_path holds 108 bytes with the terminating NUL; leave room for
        // "_4294967295" so every guest port maps to a usable path.
        let max = 107 - 11;
        let len = self.uds_path.as_os_str().len();
        if len > max {
            return Err(Error::PathTooLong {
                path: self.uds_path.clone(),
                len,
                max,
            });
        }
        Ok(())
    }
}

/// What the device has done since it was built (they survive resets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockCounters {
    /// Packets the guest sent (well-formed TX chains).
    pub tx_packets: u64,
    /// Payload bytes from the guest written to host streams.
    pub tx_bytes: u64,
    /// TX chains dropped as malformed (short, writable, outside memory,
    /// `len` past the chain or over 64 KiB, not a stream packet).
    pub tx_malformed: u64,
    /// Packets put in the guest's RX buffers.
    pub rx_packets: u64,
    /// Payload bytes from host streams delivered to the guest.
    pub rx_bytes: u64,
    /// RX chains returned unused: read-only, outside memory, or smaller
    /// than a header.
    pub rx_malformed: u64,
    /// Guest packets with a source CID other than its own or a destination
    /// other than the host.
    pub bad_address: u64,
    /// Guest packets for a connection that does not exist (answered RST).
    pub unknown_connection: u64,
    /// Connections the host opened (CONNECT lines accepted).
    pub host_connections: u64,
    /// Host streams closed for a bad CONNECT line.
    pub bad_connect_lines: u64,
    /// Connections the guest opened to a listening `<uds_path>_<port>`.
    pub guest_connections: u64,
    /// Guest connection requests refused because nothing listens there.
    pub guest_connect_failures: u64,
    /// Connections refused (host streams closed, guest requests reset)
    /// because MAX_CONNECTIONS were open.
    pub over_limit: u64,
    /// Connections reset because the guest broke the protocol (data beyond
    /// its credit, an unexpected op).
    pub protocol_errors: u64,
    /// RST packets sent to the guest.
    pub resets_sent: u64,
}

impl std::fmt::Display for VsockCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets ({} bytes) from the guest, {} to it ({} bytes), {} + {} malformed \
             TX/RX chains, {} misaddressed, {} for unknown connections, {} host and {} guest \
             connections, {} bad CONNECT lines, {} refused guest connects, {} over the limit, \
             {} protocol errors, {} resets sent",
            self.tx_packets,
            self.tx_bytes,
            self.rx_packets,
            self.rx_bytes,
            self.tx_malformed,
            self.rx_malformed,
            self.bad_address,
            self.unknown_connection,
            self.host_connections,
            self.guest_connections,
            self.bad_connect_lines,
            self.guest_connect_failures,
            self.over_limit,
            self.protocol_errors,
            self.resets_sent
        )
    }
}
