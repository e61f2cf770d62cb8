//! Snapshots of a microVM: its state in a checksummed, versioned file
//! ([`format`]), its memory in a file of its own ([`memory`]); and the
//! bodies of Firecracker's `PUT /snapshot/create` and `PUT /snapshot/load`.
//!
//! A snapshot is taken of a paused VM. Restoring builds the VM the state
//! file's configuration describes (the same devices at the same places),
//! maps the memory file privately (or hands the guest's memory to a page
//! server over userfaultfd, [`uffd`]), and puts every vCPU and device back as
//! it was; disks and TAP devices are opened again by name, so they must
//! still exist (a TAP may be renamed with `network_overrides`).

pub mod devices;
pub mod format;
pub mod memory;
pub mod uffd;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::vstate::state::{VcpuState, VmState};
use devices::DevicesState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] format::Error),
    #[error(transparent)]
    Memory(#[from] memory::Error),
    #[error(transparent)]
    Devices(#[from] devices::Error),
    #[error("the snapshot holds {file} vCPU states for a VM of {config} vCPUs")]
    VcpuCount { file: usize, config: u8 },
    #[error("network_overrides: the snapshot has no network interface {0:?}")]
    NoIface(String),
    #[error(
        "snapshot_type Diff needs dirty-page tracking: set track_dirty_pages in PUT \
         /machine-config (or in PUT /snapshot/load), then take a Full snapshot first"
    )]
    Diff,
    #[error(transparent)]
    Uffd(#[from] uffd::Error),
    #[error("give the memory file as mem_backend (or mem_file_path), not both or neither")]
    MemFile,
}

/// Write `path` by way of a temporary file beside it: `fill` writes the
/// file, which is then synced and renamed into place; on any failure the
/// temporary file is removed and nothing is left under `path`.
pub(crate) fn write_replacing<T, E>(
    path: &Path,
    fill: impl FnOnce(&mut File) -> Result<T, E>,
    io_err: impl Fn(std::io::Error) -> E,
) -> Result<T, E> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = File::create(&tmp).map_err(&io_err).and_then(|mut f| {
        let t = fill(&mut f)?;
        f.sync_all().map_err(&io_err)?;
        std::fs::rename(&tmp, path).map_err(&io_err)?;
        Ok(t)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Everything of a microVM but its memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct MicrovmState {
    /// What the VM was built from: restoring builds the same devices.
    pub config: VmConfig,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: DevicesState,
}

impl MicrovmState {
    /// The parts agree with each other.
    pub fn check(&self) -> Result<(), Error> {
        if self.vcpus.len() != usize::from(self.config.vcpus) {
            return Err(Error::VcpuCount {
                file: self.vcpus.len(),
                config: self.config.vcpus,
            });
        }
        Ok(())
    }

    /// Point network interfaces at other TAP devices.
    pub fn apply_overrides(&mut self, overrides: &[NetworkOverride]) -> Result<(), Error> {
        for o in overrides {
            let net = self
                .config
                .nets
                .iter_mut()
                .find(|n| n.iface_id == o.iface_id)
                .ok_or_else(|| Error::NoIface(o.iface_id.clone()))?;
            net.host_dev_name = o.host_dev_name.clone();
        }
        Ok(())
    }
}

/// Firecracker's `snapshot_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// The body of `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
    /// Firecracker's (deprecated) target version: ignored.
    #[serde(default)]
    pub version: Option<String>,
}

/// Firecracker's `mem_backend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BackendType {
    File,
    Uffd,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: BackendType,
    pub backend_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// The body of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadParams {
    pub snapshot_path: PathBuf,
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Firecracker's older way to give the memory file.
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
}

/// Where a restored VM's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemSource<'a> {
    /// The memory file, mapped privately ([`memory::map`]).
    File(&'a Path),
    /// A page server listening on this unix socket ([`uffd`]).
    Uffd(&'a Path),
}

impl LoadParams {
    /// The memory backend: `mem_backend`, or the older `mem_file_path`.
    pub fn mem_source(&self) -> Result<MemSource<'_>, Error> {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(b), None) => Ok(match b.backend_type {
                BackendType::File => MemSource::File(&b.backend_path),
                BackendType::Uffd => MemSource::Uffd(&b.backend_path),
            }),
            (None, Some(p)) => Ok(MemSource::File(p)),
            _ => Err(Error::MemFile),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_bodies() {
        let c: CreateParams = serde_json::from_str(
            r#"{"snapshot_type": "Full", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
        )
        .unwrap();
        assert_eq!(c.snapshot_type, SnapshotType::Full);
        let l: LoadParams = serde_json::from_str(
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"},
                "resume_vm": true, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}]}"#,
        )
        .unwrap();
        assert_eq!(l.mem_source().unwrap(), MemSource::File(Path::new("/m")));
        assert!(l.resume_vm);
        let old: LoadParams =
            serde_json::from_str(r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#).unwrap();
        assert_eq!(old.mem_source().unwrap(), MemSource::File(Path::new("/m")));
        let uffd: LoadParams = serde_json::from_str(
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#,
        )
        .unwrap();
        assert_eq!(uffd.mem_source().unwrap(), MemSource::Uffd(Path::new("/u")));
        let neither: LoadParams = serde_json::from_str(r#"{"snapshot_path": "/s"}"#).unwrap();
        assert!(matches!(neither.mem_source(), Err(Error::MemFile)));
    }
}
