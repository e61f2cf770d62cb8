//! [`VmResources`]: what the VM will be, filled the same way from the
//! command line, the config file and the API, then checked and turned into
//! a [`VmConfig`] for the VMM to build.
//!
//! Each setter checks its own value against what is already there (a
//! second root drive, a TAP used twice, a path that does not exist) so an
//! API client hears about a mistake in the answer to the request that made
//! it; [`VmResources::build`] checks the whole once more.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{
    self, validate_drives, validate_nets, BalloonConfig, BootSource, DriveConfig, EntropyConfig,
    Error, FileConfig, LoggerConfig, MachineConfig, MetricsConfig, NetConfig, Overrides, VmConfig,
    VsockConfig,
};

/// `PATCH /machine-config`: only the fields given change.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachinePatch {
    pub vcpu_count: Option<u64>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub cpu_template: Option<String>,
    pub huge_pages: Option<String>,
}

/// The VM being described; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct VmResources {
    pub boot_source: Option<BootSource>,
    pub machine: MachineConfig,
    pub drives: Vec<DriveConfig>,
    pub nets: Vec<NetConfig>,
    pub logger: Option<LoggerConfig>,
    pub metrics: Option<MetricsConfig>,
    pub vsock: Option<VsockConfig>,
    pub entropy: Option<EntropyConfig>,
    pub balloon: Option<BalloonConfig>,
}

fn must_exist(field: &'static str, path: &Path) -> Result<(), Error> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| Error::Flag {
            flag: field,
            value: path.display().to_string(),
            why: e.to_string(),
        })
}

impl VmResources {
    /// The first boot-specific resource set, if any (a snapshot brings
    /// its own).
    pub fn configured(&self) -> Option<&'static str> {
        if self.boot_source.is_some() {
            Some("boot-source")
        } else if !self.drives.is_empty() {
            Some("a drive")
        } else if !self.nets.is_empty() {
            Some("a network interface")
        } else if self.vsock.is_some() {
            Some("vsock")
        } else if self.entropy.is_some() {
            Some("entropy")
        } else if self.balloon.is_some() {
            Some("balloon")
        } else {
            None
        }
    }

    /// Start from a parsed config file.
    pub fn from_file(file: FileConfig) -> Result<Self, Error> {
        if let Some(key) = file.unsupported_key() {
            return Err(Error::Unsupported(format!("the config file key {key:?}")));
        }
        Ok(VmResources {
            boot_source: file.boot_source,
            machine: file.machine_config.unwrap_or_default(),
            drives: file.drives,
            nets: file.network_interfaces,
            logger: file.logger,
            metrics: file.metrics,
            vsock: file.vsock,
            entropy: file.entropy,
            balloon: file.balloon,
        })
    }

    /// Apply the command-line flags: scalars replace, drives and
    /// interfaces add.
    pub fn apply_flags(&mut self, flags: Overrides) {
        if flags.kernel.is_some()
            || flags.initrd.is_some()
            || flags.cmdline.is_some()
            || flags.append.is_some()
        {
            let b = self.boot_source.get_or_insert_with(BootSource::default);
            if let Some(k) = flags.kernel {
                b.kernel_image_path = k;
            }
            if flags.initrd.is_some() {
                b.initrd_path = flags.initrd;
            }
            if flags.cmdline.is_some() {
                b.boot_args = flags.cmdline;
            }
            if let Some(extra) = flags.append {
                let base = b.boot_args.as_deref().unwrap_or(config::DEFAULT_CMDLINE);
                b.boot_args = Some(format!("{} {}", base.trim_end(), extra.trim()));
            }
        }
        if flags.vcpus.is_some() {
            self.machine.vcpu_count = flags.vcpus;
        }
        if flags.mem_mib.is_some() {
            self.machine.mem_size_mib = flags.mem_mib;
        }
        self.drives.extend(flags.drives);
        self.nets.extend(flags.nets);
        if flags.vsock.is_some() {
            self.vsock = flags.vsock;
        }
        if flags.entropy.is_some() {
            self.entropy = flags.entropy;
        }
        if flags.balloon.is_some() {
            self.balloon = flags.balloon;
        }
    }

    fn as_file(&self) -> FileConfig {
        FileConfig {
            boot_source: self.boot_source.clone(),
            machine_config: Some(self.machine.clone()),
            drives: self.drives.clone(),
            network_interfaces: self.nets.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy,
            balloon: self.balloon,
            ..Default::default()
        }
    }

    /// Check everything and produce the VM description.
    pub fn build(&self) -> Result<VmConfig, Error> {
        config::resolve(self.as_file(), Overrides::default())
    }

    /// Set the kernel, command line and initrd; the files must exist.
    pub fn set_boot_source(&mut self, b: BootSource) -> Result<(), Error> {
        must_exist("kernel_image_path", &b.kernel_image_path)?;
        if let Some(i) = &b.initrd_path {
            must_exist("initrd_path", i)?;
        }
        self.boot_source = Some(b);
        Ok(())
    }

    /// Replace the machine configuration (absent fields take defaults).
    pub fn set_machine_config(&mut self, m: MachineConfig) -> Result<(), Error> {
        m.validate()?;
        self.machine = m;
        Ok(())
    }

    /// Change only the fields given.
    pub fn patch_machine_config(&mut self, m: MachinePatch) -> Result<(), Error> {
        let mut next = self.machine.clone();
        if m.vcpu_count.is_some() {
            next.vcpu_count = m.vcpu_count;
        }
        if m.mem_size_mib.is_some() {
            next.mem_size_mib = m.mem_size_mib;
        }
        if let Some(smt) = m.smt {
            next.smt = smt;
        }
        if let Some(t) = m.track_dirty_pages {
            next.track_dirty_pages = t;
        }
        if m.cpu_template.is_some() {
            next.cpu_template = m.cpu_template;
        }
        if m.huge_pages.is_some() {
            next.huge_pages = m.huge_pages;
        }
        self.set_machine_config(next)
    }

    /// Add a drive, or replace the one with the same id.
    pub fn put_drive(&mut self, d: DriveConfig) -> Result<(), Error> {
        must_exist("path_on_host", &d.path_on_host)?;
        let mut next = self.drives.clone();
        match next.iter_mut().find(|o| o.drive_id == d.drive_id) {
            Some(o) => *o = d,
            None => next.push(d),
        }
        validate_drives(&next)?;
        self.drives = next;
        Ok(())
    }

    /// Add a network interface, or replace the one with the same id.
    pub fn put_net(&mut self, n: NetConfig) -> Result<(), Error> {
        let mut next = self.nets.clone();
        match next.iter_mut().find(|o| o.iface_id == n.iface_id) {
            Some(o) => *o = n,
            None => next.push(n),
        }
        validate_nets(&next)?;
        self.nets = next;
        Ok(())
    }

    /// `PUT /vsock`: the one vsock device, replaced if given again.
    pub fn set_vsock(&mut self, v: VsockConfig) -> Result<(), Error> {
        v.validate()?;
        self.vsock = Some(v);
        Ok(())
    }

    /// `PUT /entropy`: the one entropy device, replaced if given again.
    pub fn set_entropy(&mut self, e: EntropyConfig) -> Result<(), Error> {
        e.validate()?;
        self.entropy = Some(e);
        Ok(())
    }

    /// `PUT /balloon` before the start.
    pub fn set_balloon(&mut self, b: BalloonConfig) -> Result<(), Error> {
        b.validate(self.mem_mib())?;
        self.balloon = Some(b);
        Ok(())
    }

    /// The guest memory size in force, default included.
    pub fn mem_mib(&self) -> u64 {
        self.machine.mem_size_mib.unwrap_or(config::DEFAULT_MEM_MIB)
    }

    /// `GET /machine-config`: the values in force, defaults included.
    pub fn machine_json(&self) -> Value {
        json!({
            "vcpu_count": self.machine.vcpu_count.unwrap_or(u64::from(config::DEFAULT_VCPUS)),
            "mem_size_mib": self.machine.mem_size_mib.unwrap_or(config::DEFAULT_MEM_MIB),
            "smt": self.machine.smt,
            "track_dirty_pages": self.machine.track_dirty_pages,
            "huge_pages": "None",
        })
    }

    /// `GET /vm/config`: Firecracker's FullVmConfiguration.
    pub fn full_json(&self) -> Value {
        let mut v = json!({
            "machine-config": self.machine_json(),
            "drives": self.drives,
            "network-interfaces": self.nets,
        });
        if let Some(b) = &self.boot_source {
            v["boot-source"] = json!(b);
        }
        if let Some(l) = &self.logger {
            v["logger"] = json!(l);
        }
        if let Some(m) = &self.metrics {
            v["metrics"] = json!(m);
        }
        if let Some(x) = &self.vsock {
            v["vsock"] = json!(x);
        }
        if let Some(x) = &self.entropy {
            v["entropy"] = json!(x);
        }
        if let Some(x) = &self.balloon {
            v["balloon"] = json!(x);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CacheType, IoEngine};

    fn drive(id: &str, path: &str, root: bool) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: path.into(),
            is_root_device: root,
            is_read_only: false,
            cache_type: CacheType::Unsafe,
            io_engine: IoEngine::Sync,
        }
    }

    fn net(id: &str, tap: &str) -> NetConfig {
        NetConfig {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: None,
            mtu: None,
        }
    }

    #[test]
    fn flags_and_file_fill_the_same_resources() {
        let file = config::parse_file_config(
            Path::new("vm.json"),
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 2},
                "logger": {"level": "Info", "log_path": null}, "metrics": {"metrics_path": "/m"}}"#,
        )
        .unwrap();
        let mut r = VmResources::from_file(file).unwrap();
        r.apply_flags(Overrides {
            mem_mib: Some(64),
            cmdline: Some("console=ttyS0".into()),
            ..Default::default()
        });
        let c = r.build().unwrap();
        assert_eq!(
            (c.vcpus, c.mem_mib, c.cmdline.as_str()),
            (2, 64, "console=ttyS0")
        );
        assert_eq!(r.logger.as_ref().unwrap().level.as_deref(), Some("Info"));
        assert_eq!(r.full_json()["metrics"]["metrics_path"], "/m");
    }

    #[test]
    fn unsupported_keys_are_named() {
        let file = config::parse_file_config(
            Path::new("vm.json"),
            r#"{"mmds-config": {"network_interfaces": []}}"#,
        )
        .unwrap();
        let e = VmResources::from_file(file).unwrap_err().to_string();
        assert!(
            e.contains("mmds-config") && e.contains("not support"),
            "{e}"
        );
        // null means absent.
        let file =
            config::parse_file_config(Path::new("vm.json"), r#"{"mmds-config": null}"#).unwrap();
        assert!(VmResources::from_file(file).is_ok());
    }

    #[test]
    fn services_from_the_file_and_their_checks() {
        let file = config::parse_file_config(
            Path::new("vm.json"),
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "vsock": {"guest_cid": 3, "uds_path": "/tmp/flint-builder-test-v.sock"},
                "entropy": {}, "balloon": {"amount_mib": 16, "deflate_on_oom": false}}"#,
        )
        .unwrap();
        let mut r = VmResources::from_file(file).unwrap();
        let c = r.build().unwrap();
        assert_eq!(c.vsock.unwrap().guest_cid, 3);
        assert!(c.entropy.is_some());
        assert_eq!(c.balloon.unwrap().amount_mib, 16);
        assert_eq!(r.full_json()["balloon"]["amount_mib"], 16);
        let e = r
            .set_balloon(BalloonConfig {
                amount_mib: 4096,
                deflate_on_oom: false,
                stats_polling_interval_s: 0,
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("more than the guest's memory"),
            "{e}"
        );
        let e = r
            .set_vsock(VsockConfig {
                vsock_id: None,
                guest_cid: 1,
                uds_path: "/tmp/x.sock".into(),
            })
            .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        assert_eq!(
            r.vsock.as_ref().unwrap().guest_cid,
            3,
            "a refused one is not kept"
        );
    }

    #[test]
    fn drives_are_checked_as_they_come() {
        let mut r = VmResources::default();
        let e = r
            .put_drive(drive("a", "/nonexistent/x", false))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x"), "{e}");
        r.put_drive(drive("root", "/dev/null", true)).unwrap();
        let e = r.put_drive(drive("b", "/dev/null", true)).unwrap_err();
        assert!(matches!(e, Error::TwoRoots(..)), "{e}");
        assert_eq!(r.drives.len(), 1, "a refused drive is not kept");
        // Same id: replaced, so the root may move.
        r.put_drive(drive("root", "/dev/null", false)).unwrap();
        r.put_drive(drive("b", "/dev/null", true)).unwrap();
        assert_eq!(r.drives.len(), 2);
    }

    #[test]
    fn a_tap_serves_one_interface() {
        let mut r = VmResources::default();
        r.put_net(net("eth0", "tap0")).unwrap();
        let e = r.put_net(net("eth1", "tap0")).unwrap_err();
        assert!(matches!(e, Error::DuplicateTap(_)), "{e}");
        r.put_net(net("eth0", "tap1")).unwrap();
        r.put_net(net("eth1", "tap0")).unwrap();
    }

    #[test]
    fn machine_config_defaults_and_limits() {
        let mut r = VmResources::default();
        assert_eq!(r.machine_json()["vcpu_count"], 1);
        assert_eq!(r.machine_json()["mem_size_mib"], 128);
        let m = |v: u64, mem: u64, smt: bool| MachineConfig {
            vcpu_count: Some(v),
            mem_size_mib: Some(mem),
            smt,
            ..Default::default()
        };
        assert!(matches!(
            r.set_machine_config(m(1, 0, false)),
            Err(Error::MemTooSmall(0))
        ));
        assert!(matches!(
            r.set_machine_config(m(1, u64::MAX, false)),
            Err(Error::MemTooLarge(_))
        ));
        assert!(matches!(
            r.set_machine_config(m(3, 128, true)),
            Err(Error::SmtOddVcpus(3))
        ));
        r.set_machine_config(m(4, 256, true)).unwrap();
        r.patch_machine_config(MachinePatch {
            mem_size_mib: Some(512),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.machine_json()["vcpu_count"], 4);
        assert_eq!(
            r.machine_json()["smt"],
            true,
            "a PATCH keeps what it does not name"
        );
        assert_eq!(r.machine_json()["mem_size_mib"], 512);
        assert!(r.build().is_err(), "no kernel yet");
    }
}
