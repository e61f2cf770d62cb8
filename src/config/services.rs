//! The host services a guest can have besides disks and NICs, with
//! Firecracker's keys: `vsock`, `entropy` and `balloon`. Each is at most one
//! per VM. Nothing here opens a socket or touches KVM: the values are
//! checked here, the devices are made when the VM is built.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{flag_err, key_values, parse_on_off, Error};

/// The lowest CID a guest may have: 0-2 are the hypervisor's, the
/// reserved one and the host's.
pub const MIN_GUEST_CID: u32 = 3;

/// Firecracker's `vsock` object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Deprecated in Firecracker, accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    pub guest_cid: u32,
    /// The unix socket host processes connect to (`CONNECT <port>\n`);
    /// guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

impl VsockConfig {
    /// Check the CID and that the socket can be made where asked.
    pub fn validate(&self) -> Result<(), Error> {
        if self.guest_cid < MIN_GUEST_CID {
            return Err(Error::Vsock(format!(
                "guest_cid {} is reserved: use {MIN_GUEST_CID} or more",
                self.guest_cid
            )));
        }
        check_socket_path(&self.uds_path).map_err(Error::Vsock)?;
        self.device_config()
            .validate()
            .map_err(|e| Error::Vsock(e.to_string()))
    }

    /// What the device model is built from.
    pub fn device_config(&self) -> devices::virtio::vsock::VsockConfig {
        devices::virtio::vsock::VsockConfig {
            guest_cid: u64::from(self.guest_cid),
            uds_path: self.uds_path.clone(),
        }
    }
}

/// A socket flint will create at `path`: its directory must exist and the
/// path must be free.
fn check_socket_path(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("uds_path is empty".into());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "uds_path {}: the directory {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    if path.symlink_metadata().is_ok() {
        return Err(format!(
            "uds_path {}: the path is already in use (remove it first)",
            path.display()
        ));
    }
    Ok(())
}

/// Firecracker's TokenBucket: `size` tokens, refilled over `refill_time`
/// ms, plus a `one_time_burst` spent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

/// Firecracker's RateLimiter: bytes (`bandwidth`) and requests (`ops`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    fn validate(&self) -> Result<(), String> {
        for (name, b) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            if let Some(b) = b {
                if b.size > 0 && b.refill_time == 0 {
                    return Err(format!(
                        "rate_limiter.{name}.refill_time must be more than 0 ms when size is set"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Firecracker's `entropy` object: a virtio-rng fed from the host's
/// getrandom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl EntropyConfig {
    pub fn validate(&self) -> Result<(), Error> {
        match &self.rate_limiter {
            Some(r) => r.validate().map_err(Error::Entropy),
            None => Ok(()),
        }
    }
}

/// Firecracker's `balloon` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// How much memory the guest should give back, in MiB.
    pub amount_mib: u32,
    /// Let the guest take pages back from the balloon when it runs out.
    pub deflate_on_oom: bool,
    /// How often the guest reports its memory statistics; 0: never.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
}

impl BalloonConfig {
    /// Check the target against the guest's memory size.
    pub fn validate(&self, mem_mib: u64) -> Result<(), Error> {
        check_balloon_target(self.amount_mib, mem_mib)
    }
}

/// A balloon target may not be more than the guest's memory.
pub fn check_balloon_target(amount_mib: u32, mem_mib: u64) -> Result<(), Error> {
    if u64::from(amount_mib) > mem_mib {
        return Err(Error::Balloon(format!(
            "amount_mib {amount_mib} is more than the guest's memory ({mem_mib} MiB)"
        )));
    }
    Ok(())
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

/// Parse `--vsock cid=N,uds=PATH`.
pub fn parse_vsock_flag(value: &str) -> Result<VsockConfig, Error> {
    const F: &str = "--vsock";
    let (mut cid, mut uds) = (None, None);
    for (k, v) in key_values(F, value)? {
        match k {
            "cid" => {
                cid = Some(
                    v.parse::<u32>()
                        .map_err(|_| flag_err(F, value, "cid is a number (3 or more)"))?,
                )
            }
            "uds" => uds = Some(PathBuf::from(v)),
            _ => return Err(flag_err(F, value, format!("unknown key {k:?}"))),
        }
    }
    Ok(VsockConfig {
        vsock_id: None,
        guest_cid: cid.ok_or_else(|| flag_err(F, value, "cid=N is required"))?,
        uds_path: uds.ok_or_else(|| flag_err(F, value, "uds=PATH is required"))?,
    })
}

/// Parse `--entropy [bytes_per_s=N]` (empty: no limit).
pub fn parse_entropy_flag(value: &str) -> Result<EntropyConfig, Error> {
    const F: &str = "--entropy";
    if value.is_empty() || value == "on" {
        return Ok(EntropyConfig::default());
    }
    let mut e = EntropyConfig::default();
    for (k, v) in key_values(F, value)? {
        match k {
            "bytes_per_s" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| flag_err(F, value, "bytes_per_s is a number"))?;
                e.rate_limiter = Some(RateLimiterConfig {
                    bandwidth: Some(TokenBucketConfig {
                        size: n,
                        one_time_burst: None,
                        refill_time: 1000,
                    }),
                    ops: None,
                });
            }
            _ => return Err(flag_err(F, value, format!("unknown key {k:?}"))),
        }
    }
    Ok(e)
}

/// Parse `--balloon mib=N[,deflate_on_oom=on][,stats=SECS]`.
pub fn parse_balloon_flag(value: &str) -> Result<BalloonConfig, Error> {
    const F: &str = "--balloon";
    let mut b = BalloonConfig {
        amount_mib: 0,
        deflate_on_oom: false,
        stats_polling_interval_s: 0,
    };
    let mut mib = false;
    for (k, v) in key_values(F, value)? {
        match k {
            "mib" => {
                b.amount_mib = v
                    .parse()
                    .map_err(|_| flag_err(F, value, "mib is a number of MiB"))?;
                mib = true;
            }
            "deflate_on_oom" => b.deflate_on_oom = parse_on_off(F, value, v)?,
            "stats" => {
                b.stats_polling_interval_s = v
                    .parse()
                    .map_err(|_| flag_err(F, value, "stats is seconds, 0 to 65535"))?
            }
            _ => return Err(flag_err(F, value, format!("unknown key {k:?}"))),
        }
    }
    if !mib {
        return Err(flag_err(F, value, "mib=N is required"));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("flint-cfg-{name}-{}", std::process::id()))
    }

    #[test]
    fn vsock_rules() {
        let ok = VsockConfig {
            vsock_id: Some("vsock0".into()),
            guest_cid: 3,
            uds_path: scratch("v.sock"),
        };
        ok.validate().unwrap();
        let low = VsockConfig {
            guest_cid: 2,
            ..ok.clone()
        };
        let e = low.validate().unwrap_err().to_string();
        assert!(e.contains("guest_cid 2 is reserved"), "{e}");
        let nodir = VsockConfig {
            uds_path: "/nonexistent-dir/v.sock".into(),
            ..ok.clone()
        };
        let e = nodir.validate().unwrap_err().to_string();
        assert!(e.contains("/nonexistent-dir does not exist"), "{e}");
        let used = scratch("used.sock");
        std::fs::write(&used, b"").unwrap();
        let e = VsockConfig {
            uds_path: used.clone(),
            ..ok
        }
        .validate()
        .unwrap_err()
        .to_string();
        std::fs::remove_file(&used).unwrap();
        assert!(e.contains("already in use"), "{e}");
    }

    #[test]
    fn firecracker_bodies_parse() {
        let v: VsockConfig =
            serde_json::from_str(r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#).unwrap();
        assert_eq!(v.guest_cid, 3);
        let e: EntropyConfig = serde_json::from_str(
            r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
        )
        .unwrap();
        assert_eq!(e.rate_limiter.unwrap().bandwidth.unwrap().size, 1000);
        let bad = EntropyConfig {
            rate_limiter: Some(RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig {
                    size: 10,
                    one_time_burst: None,
                    refill_time: 0,
                }),
                ops: None,
            }),
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("refill_time"));
        let b: BalloonConfig =
            serde_json::from_str(r#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
        assert_eq!(b.stats_polling_interval_s, 0);
        b.validate(128).unwrap();
        let e = b.validate(32).unwrap_err().to_string();
        assert!(e.contains("amount_mib 64 is more than"), "{e}");
        assert!(serde_json::from_str::<BalloonConfig>(r#"{"amount_mib": 1}"#).is_err());
    }

    #[test]
    fn flags() {
        let v = parse_vsock_flag("cid=7,uds=/run/v.sock").unwrap();
        assert_eq!((v.guest_cid, v.uds_path.to_str()), (7, Some("/run/v.sock")));
        assert!(parse_vsock_flag("uds=/x")
            .unwrap_err()
            .to_string()
            .contains("cid=N"));
        assert!(parse_vsock_flag("cid=x,uds=/x").is_err());
        assert_eq!(parse_entropy_flag("").unwrap(), EntropyConfig::default());
        let e = parse_entropy_flag("bytes_per_s=4096").unwrap();
        assert_eq!(e.rate_limiter.unwrap().bandwidth.unwrap().size, 4096);
        let b = parse_balloon_flag("mib=64,deflate_on_oom=on,stats=1").unwrap();
        assert_eq!(
            (b.amount_mib, b.deflate_on_oom, b.stats_polling_interval_s),
            (64, true, 1)
        );
        assert!(parse_balloon_flag("stats=1").is_err());
        assert!(parse_balloon_flag("mib=1,colour=red").is_err());
    }
}
