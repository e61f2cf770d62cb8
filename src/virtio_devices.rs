//! Turning the configured drives, network interfaces and host services
//! (entropy, balloon) into virtio devices.

use devices::rate_limiter::TokenBucketConfig;
use devices::virtio::balloon::{self, Balloon};
use devices::virtio::block::{self, Block, BlockConfig};
use devices::virtio::net::{self, Net};
use devices::virtio::rng::{self, Rng, RngConfig};
use devices::virtio::vsock::{self, Vsock};
use devices::GuestMemoryMmap;

use crate::config::{
    BalloonConfig, CacheType, DriveConfig, EntropyConfig, IoEngine, NetConfig, VmConfig,
};
use crate::device_manager::{self, DeviceManager, VirtioHandle};
use crate::vstate::vm::Vm;

/// Errors from creating virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Devices(#[from] device_manager::Error),
    #[error("drive {id:?}: {source}")]
    Block {
        id: String,
        source: block::BlockError,
    },
    #[error("network interface {id:?}: {source}")]
    Net { id: String, source: net::Error },
    #[error(transparent)]
    Rng(#[from] rng::Error),
    #[error(transparent)]
    Vsock(#[from] vsock::Error),
    #[error("balloon: {0}")]
    Balloon(#[from] balloon::Error),
}

/// The registry ids of the single-instance devices (Firecracker's names).
pub const ENTROPY_ID: &str = "entropy";
pub const BALLOON_ID: &str = "balloon";
pub const VSOCK_ID: &str = "vsock";

fn rng_config(e: &EntropyConfig) -> RngConfig {
    RngConfig {
        rate_limiter: e
            .rate_limiter
            .and_then(|r| r.bandwidth)
            .map(|b| TokenBucketConfig {
                size: b.size,
                refill_time_ms: b.refill_time,
                one_time_burst: b.one_time_burst.unwrap_or(0),
            }),
    }
}

fn balloon_config(b: &BalloonConfig) -> balloon::BalloonConfig {
    balloon::BalloonConfig {
        amount_mib: b.amount_mib,
        deflate_on_oom: b.deflate_on_oom,
        stats_polling_interval_s: b.stats_polling_interval_s,
    }
}

fn block_config(d: &DriveConfig) -> BlockConfig {
    BlockConfig {
        drive_id: d.drive_id.clone(),
        path: d.path_on_host.clone(),
        read_only: d.is_read_only,
        cache: match d.cache_type {
            CacheType::Unsafe => block::CacheType::Unsafe,
            CacheType::Writeback => block::CacheType::Writeback,
        },
        engine: match d.io_engine {
            IoEngine::Sync => block::EngineType::Sync,
            IoEngine::Async => block::EngineType::IoUring,
        },
    }
}

fn net_config(n: &NetConfig) -> Result<net::NetConfig, Error> {
    let guest_mac = n
        .guest_mac
        .as_deref()
        .map(net::parse_mac)
        .transpose()
        .map_err(|source| Error::Net {
            id: n.iface_id.clone(),
            source,
        })?;
    Ok(net::NetConfig {
        iface_id: n.iface_id.clone(),
        tap_name: n.host_dev_name.clone(),
        guest_mac,
        mtu: n.mtu,
    })
}

/// The `root=` parameter for a root drive: the root drive is attached
/// first, so it is always /dev/vda.
pub fn root_param(d: &DriveConfig) -> String {
    format!("root=/dev/vda {}", if d.is_read_only { "ro" } else { "rw" })
}

/// Create and attach every drive (the root drive first) and interface;
/// returns the `root=` parameter when a drive is the root device.
pub fn attach(
    cfg: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    dm: &mut DeviceManager,
) -> Result<Option<String>, Error> {
    let mut drives: Vec<&DriveConfig> = cfg.drives.iter().collect();
    drives.sort_by_key(|d| !d.is_root_device);
    for d in &drives {
        let dev = Block::new(&block_config(d)).map_err(|source| Error::Block {
            id: d.drive_id.clone(),
            source,
        })?;
        dm.add_virtio(vm, mem, &d.drive_id, dev, VirtioHandle::Block)?;
    }
    for n in &cfg.nets {
        let dev = Net::new(net_config(n)?).map_err(|source| Error::Net {
            id: n.iface_id.clone(),
            source,
        })?;
        dm.add_virtio(vm, mem, &n.iface_id, dev, VirtioHandle::Net)?;
    }
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::new(&v.device_config())?;
        dm.add_virtio(vm, mem, VSOCK_ID, dev, VirtioHandle::Vsock)?;
    }
    if let Some(e) = &cfg.entropy {
        let dev = Rng::new(&rng_config(e))?;
        dm.add_virtio(vm, mem, ENTROPY_ID, dev, VirtioHandle::Rng)?;
    }
    if let Some(b) = &cfg.balloon {
        let dev = Balloon::new(&balloon_config(b))?;
        dm.add_virtio(vm, mem, BALLOON_ID, dev, VirtioHandle::Balloon)?;
    }
    Ok(drives
        .first()
        .filter(|d| d.is_root_device)
        .map(|d| root_param(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(ro: bool) -> DriveConfig {
        DriveConfig {
            drive_id: "root".into(),
            path_on_host: "/r".into(),
            is_root_device: true,
            is_read_only: ro,
            cache_type: CacheType::Writeback,
            io_engine: IoEngine::Async,
        }
    }

    #[test]
    fn root_parameter() {
        assert_eq!(root_param(&drive(false)), "root=/dev/vda rw");
        assert_eq!(root_param(&drive(true)), "root=/dev/vda ro");
    }

    #[test]
    fn configs_map_across() {
        let b = block_config(&drive(true));
        assert!(b.read_only);
        assert_eq!(b.cache, block::CacheType::Writeback);
        assert_eq!(b.engine, block::EngineType::IoUring);
        let n = net_config(&NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("06:00:00:00:00:01".into()),
            mtu: Some(1500),
        })
        .unwrap();
        assert_eq!(n.guest_mac, Some([6, 0, 0, 0, 0, 1]));
        let bad = net_config(&NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("not-a-mac".into()),
            mtu: None,
        });
        assert!(bad.unwrap_err().to_string().contains("eth0"));
    }
}
