//! flint's configuration: the JSON file (Firecracker's key names), the command
//! line flags that override it, and validation. Nothing here touches KVM.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

pub mod services;
pub use services::{
    BalloonConfig, BalloonStatsUpdate, BalloonUpdate, EntropyConfig, RateLimiterConfig,
    TokenBucketConfig, VsockConfig,
};

/// The command line flint gives the guest kernel unless told otherwise.
///
/// `reboot=k` makes a guest reboot go through the i8042 reset line (which
/// ends flint), `panic=1` turns a guest panic into a reboot, and the 8250 and
/// i8042 options stop the kernel probing for hardware that is not there.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 \
     8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEM_MIB: u64 = 128;
/// The MP table and xAPIC IDs give room for 254 CPUs (255 is broadcast).
pub const MAX_VCPUS: u8 = 254;

/// Errors in the configuration, each naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "no kernel given: use --kernel PATH or boot-source.kernel_image_path in a config file"
    )]
    NoKernel,
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    #[error("mem_size_mib must be at least 16, got {0}")]
    MemTooSmall(u64),
    #[error("mem_size_mib {0} is beyond what flint can map (at most {max} MiB)", max = MAX_MEM_MIB)]
    MemTooLarge(u64),
    #[error("with smt, vcpu_count must be 1 or an even number, got {0}")]
    SmtOddVcpus(u64),
    #[error("machine-config.{field} {value:?} is not supported by flint yet (only \"None\")")]
    MachineOption { field: &'static str, value: String },
    #[error("flint does not support {0} yet")]
    Unsupported(String),
    #[error("drive_id {0:?} is used by more than one drive")]
    DuplicateDrive(String),
    #[error(
        "{field} {value:?} is not valid: use 1 to 64 characters, each a letter, a digit, '_' or '-'"
    )]
    BadId { field: &'static str, value: String },
    #[error("drives {0:?} and {1:?} are both marked is_root_device; at most one root device")]
    TwoRoots(String, String),
    #[error("iface_id {0:?} is used by more than one network interface")]
    DuplicateIface(String),
    #[error("host_dev_name {0:?} is used by more than one network interface")]
    DuplicateTap(String),
    #[error("network interface {iface:?}: {source}")]
    Mac {
        iface: String,
        source: devices::virtio::net::Error,
    },
    #[error("vsock: {0}")]
    Vsock(String),
    #[error("entropy: {0}")]
    Entropy(String),
    #[error("balloon: {0}")]
    Balloon(String),
    #[error("bad {flag} value {value:?}: {why}")]
    Flag {
        flag: &'static str,
        value: String,
        why: String,
    },
}

/// The most guest memory flint will map (32 TiB): guest RAM must stay inside
/// the 46-bit guest-physical space every x86-64 KVM host supports. The host's
/// own RAM is the tighter limit in practice; the VMM checks that one.
pub const MAX_MEM_MIB: u64 = 1 << 25; // 32 TiB

/// A field that may be absent or `null` (Firecracker's clients send both)
/// and then takes its default.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Firecracker top-level keys for features flint does not have yet.
pub const UNSUPPORTED_KEYS: [&str; 5] = [
    "mmds-config",
    "cpu-config",
    "pmem",
    "memory-hotplug",
    "serial",
];

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config")]
    pub machine_config: Option<MachineConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub drives: Vec<DriveConfig>,
    #[serde(
        rename = "network-interfaces",
        default,
        deserialize_with = "null_as_default"
    )]
    pub network_interfaces: Vec<NetConfig>,
    pub logger: Option<LoggerConfig>,
    pub metrics: Option<MetricsConfig>,
    pub vsock: Option<VsockConfig>,
    pub entropy: Option<EntropyConfig>,
    pub balloon: Option<BalloonConfig>,
    // Keys of features flint lacks: accepted by the parser so the error can
    // say what is missing instead of "unknown field".
    #[serde(rename = "mmds-config")]
    pub mmds_config: Option<serde_json::Value>,
    #[serde(rename = "cpu-config")]
    pub cpu_config: Option<serde_json::Value>,
    pub pmem: Option<serde_json::Value>,
    #[serde(rename = "memory-hotplug")]
    pub memory_hotplug: Option<serde_json::Value>,
    pub serial: Option<serde_json::Value>,
}

impl FileConfig {
    /// The first key naming a feature flint does not have yet.
    pub fn unsupported_key(&self) -> Option<&'static str> {
        let set = [
            &self.mmds_config,
            &self.cpu_config,
            &self.pmem,
            &self.memory_hotplug,
            &self.serial,
        ];
        set.iter()
            .zip(UNSUPPORTED_KEYS)
            .find(|(v, _)| v.as_ref().is_some_and(|v| !v.is_null()))
            .map(|(_, k)| k)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: Option<u64>,
    pub mem_size_mib: Option<u64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub smt: bool,
    /// KVM's dirty-page log and flint's own dirty bitmap kept, so that
    /// `PUT /snapshot/create` can take Diff snapshots.
    #[serde(default, deserialize_with = "null_as_default")]
    pub track_dirty_pages: bool,
    /// Only "None" (or absent): flint has no CPU templates.
    pub cpu_template: Option<String>,
    /// Only "None" (or absent): flint backs memory with 4 KiB pages.
    pub huge_pages: Option<String>,
}

impl MachineConfig {
    /// Check what can be checked without the rest of the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, v) in [
            ("cpu_template", &self.cpu_template),
            ("huge_pages", &self.huge_pages),
        ] {
            if let Some(v) = v {
                if v != "None" {
                    return Err(Error::MachineOption {
                        field,
                        value: v.clone(),
                    });
                }
            }
        }
        let vcpus = self.vcpu_count.unwrap_or(u64::from(DEFAULT_VCPUS));
        if vcpus == 0 || vcpus > u64::from(MAX_VCPUS) {
            return Err(Error::VcpuCount(vcpus));
        }
        if self.smt && vcpus > 1 && vcpus % 2 != 0 {
            return Err(Error::SmtOddVcpus(vcpus));
        }
        let mem_mib = self.mem_size_mib.unwrap_or(DEFAULT_MEM_MIB);
        if mem_mib < 16 {
            return Err(Error::MemTooSmall(mem_mib));
        }
        if mem_mib > MAX_MEM_MIB {
            return Err(Error::MemTooLarge(mem_mib));
        }
        Ok(())
    }
}

/// Firecracker's `logger` object.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub show_level: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub show_log_origin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Firecracker's `metrics` object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: PathBuf,
}

/// Whether `id` is a valid drive, interface or instance id: 1 to 64
/// letters, digits, '_' or '-'.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How a guest flush reaches the host. The one default for every way a
/// drive is described (flags, file, API) is `Unsafe`, as Firecracker's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum CacheType {
    /// Flushes are acknowledged without touching the host file.
    #[default]
    Unsafe,
    /// A guest flush becomes an fsync of the host file.
    Writeback,
}

/// Which engine serves a drive's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum IoEngine {
    #[default]
    Sync,
    Async,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_root_device: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_read_only: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub cache_type: CacheType,
    #[serde(default, deserialize_with = "null_as_default")]
    pub io_engine: IoEngine,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// Flags given on the command line; each overrides the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    /// Words for the end of the command line (the default or `cmdline`).
    pub append: Option<String>,
    pub vcpus: Option<u64>,
    pub mem_mib: Option<u64>,
    pub drives: Vec<DriveConfig>,
    pub nets: Vec<NetConfig>,
    pub vsock: Option<VsockConfig>,
    pub entropy: Option<EntropyConfig>,
    pub balloon: Option<BalloonConfig>,
}

/// A complete, validated VM description.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_mib: u64,
    /// Two threads per core in the guest's CPU topology.
    pub smt: bool,
    /// KVM's dirty-page log on, for Diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    pub drives: Vec<DriveConfig>,
    pub nets: Vec<NetConfig>,
    pub vsock: Option<VsockConfig>,
    pub entropy: Option<EntropyConfig>,
    pub balloon: Option<BalloonConfig>,
}

/// Parse a JSON config document.
pub fn parse_file_config(path: &Path, text: &str) -> Result<FileConfig, Error> {
    serde_json::from_str(text).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })
}

/// Read and parse a JSON config file.
pub fn load_file(path: &Path) -> Result<FileConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse_file_config(path, &text)
}

/// Merge the file and the flags (flags win; drives and interfaces from both
/// are kept) and validate the result.
pub fn resolve(file: FileConfig, flags: Overrides) -> Result<VmConfig, Error> {
    if let Some(key) = file.unsupported_key() {
        return Err(Error::Unsupported(format!("the config file key {key:?}")));
    }
    let boot = file.boot_source.unwrap_or_default();
    let machine = file.machine_config.unwrap_or_default();
    machine.validate()?;
    let kernel = flags
        .kernel
        .or_else(|| {
            (!boot.kernel_image_path.as_os_str().is_empty()).then_some(boot.kernel_image_path)
        })
        .ok_or(Error::NoKernel)?;
    let vcpus = flags
        .vcpus
        .or(machine.vcpu_count)
        .unwrap_or(DEFAULT_VCPUS as u64);
    if vcpus == 0 || vcpus > MAX_VCPUS as u64 {
        return Err(Error::VcpuCount(vcpus));
    }
    if machine.smt && vcpus > 1 && vcpus % 2 != 0 {
        return Err(Error::SmtOddVcpus(vcpus));
    }
    let mem_mib = flags
        .mem_mib
        .or(machine.mem_size_mib)
        .unwrap_or(DEFAULT_MEM_MIB);
    if mem_mib < 16 {
        return Err(Error::MemTooSmall(mem_mib));
    }
    if mem_mib > MAX_MEM_MIB {
        return Err(Error::MemTooLarge(mem_mib));
    }
    let mut drives = file.drives;
    drives.extend(flags.drives);
    let mut nets = file.network_interfaces;
    nets.extend(flags.nets);
    validate_drives(&drives)?;
    validate_nets(&nets)?;
    let vsock = flags.vsock.or(file.vsock);
    if let Some(v) = &vsock {
        v.validate()?;
    }
    let entropy = flags.entropy.or(file.entropy);
    if let Some(e) = &entropy {
        e.validate()?;
    }
    let balloon = flags.balloon.or(file.balloon);
    if let Some(b) = &balloon {
        b.validate(mem_mib)?;
    }
    Ok(VmConfig {
        kernel,
        initrd: flags.initrd.or(boot.initrd_path),
        cmdline: flags
            .cmdline
            .or(boot.boot_args)
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
        vcpus: vcpus as u8,
        mem_mib,
        smt: machine.smt,
        track_dirty_pages: machine.track_dirty_pages,
        drives,
        nets,
        vsock,
        entropy,
        balloon,
    })
}

pub fn validate_drives(drives: &[DriveConfig]) -> Result<(), Error> {
    let mut root: Option<&str> = None;
    for (i, d) in drives.iter().enumerate() {
        if !valid_id(&d.drive_id) {
            return Err(Error::BadId {
                field: "drive_id",
                value: d.drive_id.clone(),
            });
        }
        if drives.iter().take(i).any(|o| o.drive_id == d.drive_id) {
            return Err(Error::DuplicateDrive(d.drive_id.clone()));
        }
        if d.is_root_device {
            if let Some(r) = root {
                return Err(Error::TwoRoots(r.to_string(), d.drive_id.clone()));
            }
            root = Some(&d.drive_id);
        }
    }
    Ok(())
}

pub fn validate_nets(nets: &[NetConfig]) -> Result<(), Error> {
    for (i, n) in nets.iter().enumerate() {
        if !valid_id(&n.iface_id) {
            return Err(Error::BadId {
                field: "iface_id",
                value: n.iface_id.clone(),
            });
        }
        if nets.iter().take(i).any(|o| o.iface_id == n.iface_id) {
            return Err(Error::DuplicateIface(n.iface_id.clone()));
        }
        if nets
            .iter()
            .take(i)
            .any(|o| o.host_dev_name == n.host_dev_name)
        {
            return Err(Error::DuplicateTap(n.host_dev_name.clone()));
        }
        // Checked here, with the rest of the configuration, so a typo is
        // reported before any VM is built.
        if let Some(mac) = &n.guest_mac {
            devices::virtio::net::parse_mac(mac).map_err(|source| Error::Mac {
                iface: n.iface_id.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

pub(crate) fn flag_err(flag: &'static str, value: &str, why: impl Into<String>) -> Error {
    Error::Flag {
        flag,
        value: value.to_string(),
        why: why.into(),
    }
}

pub(crate) fn parse_on_off(flag: &'static str, value: &str, v: &str) -> Result<bool, Error> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(flag_err(flag, value, format!("{v:?} is not on/off"))),
    }
}

/// Split `k=v,k=v` into pairs.
pub(crate) fn key_values<'a>(
    flag: &'static str,
    value: &'a str,
) -> Result<Vec<(&'a str, &'a str)>, Error> {
    value
        .split(',')
        .map(|kv| {
            kv.split_once('=')
                .ok_or_else(|| flag_err(flag, value, format!("{kv:?} is not KEY=VALUE")))
        })
        .collect()
}

/// Parse `--drive path=FILE[,id=ID][,ro=on][,root=on][,cache=writeback][,engine=async]`.
/// Without `id`, drives are named `drive0`, `drive1`... by position.
pub fn parse_drive_flag(value: &str, index: usize) -> Result<DriveConfig, Error> {
    const F: &str = "--drive";
    let mut d = DriveConfig {
        drive_id: format!("drive{index}"),
        path_on_host: PathBuf::new(),
        is_root_device: false,
        is_read_only: false,
        cache_type: CacheType::default(),
        io_engine: IoEngine::default(),
    };
    for (k, v) in key_values(F, value)? {
        match k {
            "path" => d.path_on_host = PathBuf::from(v),
            "id" => d.drive_id = v.to_string(),
            "ro" => d.is_read_only = parse_on_off(F, value, v)?,
            "root" => d.is_root_device = parse_on_off(F, value, v)?,
            "cache" => {
                d.cache_type = match v.to_ascii_lowercase().as_str() {
                    "unsafe" => CacheType::Unsafe,
                    "writeback" => CacheType::Writeback,
                    _ => return Err(flag_err(F, value, "cache is unsafe or writeback")),
                }
            }
            "engine" => {
                d.io_engine = match v.to_ascii_lowercase().as_str() {
                    "sync" => IoEngine::Sync,
                    "async" | "io_uring" => IoEngine::Async,
                    _ => return Err(flag_err(F, value, "engine is sync or async")),
                }
            }
            _ => return Err(flag_err(F, value, format!("unknown key {k:?}"))),
        }
    }
    if d.path_on_host.as_os_str().is_empty() {
        return Err(flag_err(F, value, "path=FILE is required"));
    }
    Ok(d)
}

/// Parse `--net tap=NAME[,mac=MAC][,id=ID][,mtu=N]`.
pub fn parse_net_flag(value: &str, index: usize) -> Result<NetConfig, Error> {
    const F: &str = "--net";
    let mut n = NetConfig {
        iface_id: format!("eth{index}"),
        host_dev_name: String::new(),
        guest_mac: None,
        mtu: None,
    };
    for (k, v) in key_values(F, value)? {
        match k {
            "tap" => n.host_dev_name = v.to_string(),
            "mac" => n.guest_mac = Some(v.to_string()),
            "id" => n.iface_id = v.to_string(),
            "mtu" => {
                n.mtu = Some(
                    v.parse()
                        .map_err(|_| flag_err(F, value, "mtu is a number up to 65535"))?,
                )
            }
            _ => return Err(flag_err(F, value, format!("unknown key {k:?}"))),
        }
    }
    if n.host_dev_name.is_empty() {
        return Err(flag_err(F, value, "tap=NAME is required"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, Error> {
        parse_file_config(Path::new("vm.json"), text)
    }

    #[test]
    fn firecracker_style_file() {
        let f = parse(
            r#"{
              "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"},
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
              "drives": [{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false, "cache_type": "Writeback"}],
              "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}]
            }"#,
        )
        .unwrap();
        let c = resolve(f, Overrides::default()).unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!((c.vcpus, c.mem_mib), (2, 256));
        assert_eq!(c.drives[0].cache_type, CacheType::Writeback);
        assert!(c.drives[0].is_root_device);
        assert_eq!(c.nets[0].host_dev_name, "tap0");
    }

    #[test]
    fn the_example_file_parses() {
        let f = parse(include_str!("../../resources/vm-config.example.json")).unwrap();
        let c = resolve(f, Overrides::default()).unwrap();
        assert_eq!((c.vcpus, c.mem_mib), (2, 256));
        assert_eq!(c.drives.len(), 1);
        assert_eq!(c.nets[0].mtu, Some(1500));
    }

    #[test]
    fn flags_override_the_file() {
        let f = parse(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 2}}"#,
        )
        .unwrap();
        let c = resolve(
            f,
            Overrides {
                kernel: Some("/other".into()),
                vcpus: Some(4),
                mem_mib: Some(64),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/other"));
        assert_eq!((c.vcpus, c.mem_mib), (4, 64));
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse(r#"{"boot-source": {"kernel_image_path": "/k", "bootargs": "x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `bootargs`"), "{e}");
        let e = parse(r#"{"machine_config": {}}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `machine_config`"), "{e}");
    }

    #[test]
    fn invalid_json_says_where() {
        let e = parse("{\"boot-source\": ").unwrap_err().to_string();
        assert!(e.contains("vm.json") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn sizes_are_checked() {
        let k = || Overrides {
            kernel: Some("/k".into()),
            ..Default::default()
        };
        let with = |vcpus: Option<u64>, mem: Option<u64>| {
            resolve(
                FileConfig::default(),
                Overrides {
                    vcpus,
                    mem_mib: mem,
                    ..k()
                },
            )
        };
        assert!(matches!(with(Some(0), None), Err(Error::VcpuCount(0))));
        assert!(matches!(with(Some(255), None), Err(Error::VcpuCount(255))));
        assert!(matches!(with(None, Some(0)), Err(Error::MemTooSmall(0))));
        assert!(matches!(
            with(None, Some(1 << 40)),
            Err(Error::MemTooLarge(_))
        ));
        assert!(with(Some(254), Some(16)).is_ok());
        assert!(matches!(
            resolve(FileConfig::default(), Overrides::default()),
            Err(Error::NoKernel)
        ));
    }

    #[test]
    fn drive_rules() {
        let d = |id: &str, root: bool| DriveConfig {
            drive_id: id.into(),
            path_on_host: "/x".into(),
            is_root_device: root,
            is_read_only: false,
            cache_type: CacheType::Unsafe,
            io_engine: IoEngine::Sync,
        };
        assert!(matches!(
            validate_drives(&[d("a", false), d("a", false)]),
            Err(Error::DuplicateDrive(_))
        ));
        assert!(matches!(
            validate_drives(&[d("a", true), d("b", true)]),
            Err(Error::TwoRoots(..))
        ));
        assert!(matches!(
            validate_drives(&[d("", false)]),
            Err(Error::BadId { .. })
        ));
        let long = "a".repeat(30);
        assert!(validate_drives(&[d(&long, false)]).is_ok());
        assert!(validate_drives(&[d(&"a".repeat(65), false)]).is_err());
        assert!(validate_drives(&[d("bad/id", false)]).is_err());
        assert!(validate_drives(&[d("a", true), d("b", false)]).is_ok());
    }

    #[test]
    fn drive_flag() {
        let d = parse_drive_flag("path=/r.ext4,id=root,ro=on,root=on,cache=writeback", 0).unwrap();
        assert_eq!(d.drive_id, "root");
        assert!(d.is_read_only && d.is_root_device);
        assert_eq!(d.cache_type, CacheType::Writeback);
        assert_eq!(parse_drive_flag("path=/x", 3).unwrap().drive_id, "drive3");
        assert!(parse_drive_flag("id=x", 0)
            .unwrap_err()
            .to_string()
            .contains("path=FILE"));
        assert!(parse_drive_flag("path=/x,bogus=1", 0)
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        assert!(parse_drive_flag("path=/x,ro=maybe", 0).is_err());
    }

    #[test]
    fn net_flag() {
        let n = parse_net_flag("tap=tap0,mac=06:00:00:00:00:02,mtu=1400", 1).unwrap();
        assert_eq!(n.iface_id, "eth1");
        assert_eq!(n.mtu, Some(1400));
        assert!(parse_net_flag("mac=x", 0).is_err());
        let dup = vec![
            n.clone(),
            NetConfig {
                iface_id: "other".into(),
                ..n
            },
        ];
        assert!(matches!(validate_nets(&dup), Err(Error::DuplicateTap(_))));
    }
}
