//! Counters and the metrics file: one JSON object per line, written every
//! 60 s, on the FlushMetrics action and at exit (Firecracker's model).
//!
//! vCPU and API counters are process-wide atomics, cheap enough to bump on
//! every exit; device counters are read from the devices at flush time.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvm_ioctls::VcpuExit;
use serde_json::{json, Map, Value};

use crate::device_manager::{DeviceManager, VirtioHandle};

/// How often metrics are written without being asked.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Errors from the metrics file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metrics_path {path}: cannot open it for writing: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metrics are already configured (to {0}); they can be set only once")]
    AlreadySet(PathBuf),
    #[error("metrics are not configured: PUT /metrics first")]
    NotSet,
    #[error("cannot write metrics to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// vCPU exits by kind, all vCPUs together.
#[derive(Default)]
pub struct VcpuCounters {
    pub exit_io_in: AtomicU64,
    pub exit_io_out: AtomicU64,
    pub exit_mmio_read: AtomicU64,
    pub exit_mmio_write: AtomicU64,
    pub exit_hlt: AtomicU64,
    pub exit_internal_error: AtomicU64,
    pub exit_other: AtomicU64,
}

impl VcpuCounters {
    pub fn count_exit(&self, exit: &VcpuExit) {
        bump(match exit {
            VcpuExit::IoIn(..) => &self.exit_io_in,
            VcpuExit::IoOut(..) => &self.exit_io_out,
            VcpuExit::MmioRead(..) => &self.exit_mmio_read,
            VcpuExit::MmioWrite(..) => &self.exit_mmio_write,
            VcpuExit::Hlt => &self.exit_hlt,
            VcpuExit::InternalError => &self.exit_internal_error,
            _ => &self.exit_other,
        });
    }

    fn json(&self) -> Value {
        json!({
            "exit_io_in": get(&self.exit_io_in),
            "exit_io_out": get(&self.exit_io_out),
            "exit_mmio_read": get(&self.exit_mmio_read),
            "exit_mmio_write": get(&self.exit_mmio_write),
            "exit_hlt": get(&self.exit_hlt),
            "exit_internal_error": get(&self.exit_internal_error),
            "exit_other": get(&self.exit_other),
        })
    }
}

/// API server requests.
#[derive(Default)]
pub struct ApiCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub connections: AtomicU64,
}

impl ApiCounters {
    pub fn request(&self, ok: bool) {
        bump(&self.requests);
        if !ok {
            bump(&self.errors);
        }
    }

    pub fn connection(&self) {
        bump(&self.connections);
    }

    fn json(&self) -> Value {
        json!({
            "requests": get(&self.requests),
            "errors": get(&self.errors),
            "connections": get(&self.connections),
        })
    }
}

pub static VCPU: VcpuCounters = VcpuCounters {
    exit_io_in: AtomicU64::new(0),
    exit_io_out: AtomicU64::new(0),
    exit_mmio_read: AtomicU64::new(0),
    exit_mmio_write: AtomicU64::new(0),
    exit_hlt: AtomicU64::new(0),
    exit_internal_error: AtomicU64::new(0),
    exit_other: AtomicU64::new(0),
};

pub static API: ApiCounters = ApiCounters {
    requests: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    connections: AtomicU64::new(0),
};

/// One metrics line: the process-wide counters and, once the VM is built,
/// the serial port's and each device's.
pub fn snapshot(dm: Option<&DeviceManager>) -> Value {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut m = Map::new();
    m.insert("utc_timestamp_ms".into(), json!(ms));
    m.insert("api_server".into(), API.json());
    m.insert("vcpu".into(), VCPU.json());
    if let Some(dm) = dm {
        let s = devices::bus::lock(&dm.serial).metrics().snapshot();
        m.insert(
            "uart".into(),
            json!({
                "tx_bytes": s.tx_bytes, "tx_lost_bytes": s.tx_lost_bytes,
                "rx_bytes": s.rx_bytes, "rx_lost_bytes": s.rx_lost_bytes,
                "irq_errors": s.irq_errors, "bad_accesses": s.bad_accesses,
            }),
        );
        for d in &dm.registry {
            let (key, v) = match &d.handle {
                VirtioHandle::Block(b) => {
                    let c = devices::bus::lock(b).counters();
                    (
                        format!("block_{}", d.id),
                        json!({
                            "requests": c.requests, "read_requests": c.read_requests,
                            "write_requests": c.write_requests, "flush_requests": c.flush_requests,
                            "bytes_read": c.bytes_read, "bytes_written": c.bytes_written,
                            "errors": c.errors, "host_io_errors": c.host_io_errors,
                            "broken_chains": c.broken_chains, "broken_rings": c.broken_rings,
                            "interrupts": c.interrupts,
                        }),
                    )
                }
                VirtioHandle::Net(n) => {
                    let c = devices::bus::lock(n).counters();
                    (
                        format!("net_{}", d.id),
                        json!({
                            "rx_frames": c.rx_frames, "rx_bytes": c.rx_bytes,
                            "rx_dropped": c.rx_dropped, "rx_malformed": c.rx_malformed,
                            "rx_backend_errors": c.rx_backend_errors,
                            "tx_frames": c.tx_frames, "tx_bytes": c.tx_bytes,
                            "tx_dropped": c.tx_dropped, "tx_malformed": c.tx_malformed,
                        }),
                    )
                }
                VirtioHandle::Rng(r) => {
                    let c = devices::bus::lock(r).counters();
                    (
                        "entropy".to_string(),
                        json!({
                            "requests": c.requests, "bytes": c.bytes,
                            "errors": c.errors, "throttled": c.throttled,
                        }),
                    )
                }
                VirtioHandle::Vsock(v) => {
                    let c = devices::bus::lock(v).counters();
                    (
                        "vsock".to_string(),
                        json!({
                            "tx_packets": c.tx_packets, "tx_bytes": c.tx_bytes,
                            "tx_malformed": c.tx_malformed, "rx_packets": c.rx_packets,
                            "rx_bytes": c.rx_bytes, "rx_malformed": c.rx_malformed,
                            "bad_address": c.bad_address,
                            "host_connections": c.host_connections,
                            "guest_connections": c.guest_connections,
                            "guest_connect_failures": c.guest_connect_failures,
                            "over_limit": c.over_limit, "resets_sent": c.resets_sent,
                        }),
                    )
                }
                VirtioHandle::Balloon(b) => {
                    let c = devices::bus::lock(b).counters();
                    (
                        "balloon".to_string(),
                        json!({
                            "inflate_requests": c.inflate_requests,
                            "deflate_requests": c.deflate_requests,
                            "pages_discarded": c.pages_discarded,
                            "pages_deflated": c.pages_deflated, "bad_pfns": c.bad_pfns,
                            "discard_errors": c.discard_errors,
                            "malformed_chains": c.malformed_chains,
                            "stats_updates": c.stats_updates,
                        }),
                    )
                }
            };
            m.insert(key, v);
        }
    }
    Value::Object(m)
}

/// The metrics destination: a file (appended to) or a FIFO.
pub struct MetricsSink {
    path: PathBuf,
    file: File,
    last: Instant,
}

impl MetricsSink {
    /// Open `path` for writing; a FIFO must have a reader (Firecracker
    /// opens it the same way, and a missing reader is the caller's error).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags_nonblock()
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(MetricsSink {
            path: path.to_owned(),
            file,
            last: Instant::now(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write one line now.
    pub fn flush(&mut self, dm: Option<&DeviceManager>) -> Result<(), Error> {
        self.last = Instant::now();
        let mut line = snapshot(dm).to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| Error::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Write a line when the interval has passed since the last one.
    pub fn flush_if_due(&mut self, dm: Option<&DeviceManager>) {
        if self.last.elapsed() >= FLUSH_INTERVAL {
            if let Err(e) = self.flush(dm) {
                log::warn!("{e}");
            }
        }
    }

    /// How long until the next periodic flush.
    pub fn due_in(&self) -> Duration {
        FLUSH_INTERVAL.saturating_sub(self.last.elapsed())
    }
}

/// `O_NONBLOCK` on open, so a FIFO without a reader fails at once (ENXIO)
/// instead of hanging the VMM.
trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_json_with_the_counters() {
        API.request(false);
        let v = snapshot(None);
        assert!(v["utc_timestamp_ms"].as_u64().unwrap() > 0);
        assert!(v["api_server"]["requests"].as_u64().unwrap() >= 1);
        assert!(v["api_server"]["errors"].as_u64().unwrap() >= 1);
        assert!(v["vcpu"]["exit_io_out"].is_u64());
    }

    #[test]
    fn sink_appends_lines() {
        let p = std::env::temp_dir().join(format!("flint-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let mut s = MetricsSink::open(&p).unwrap();
        s.flush(None).unwrap();
        s.flush(None).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for l in lines {
            let v: Value = serde_json::from_str(l).unwrap();
            assert!(v["vcpu"].is_object());
        }
        assert!(s.due_in() > Duration::from_secs(50));
        std::fs::remove_file(&p).unwrap();
    }
}
