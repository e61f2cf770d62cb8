//! Firecracker's REST API on a unix socket.
//!
//! [`server`] speaks HTTP/1.1 on its own threads and turns each request
//! into an [`ApiRequest`] ([`routes`]); the VMM's thread answers it
//! ([`handler`]), before `InstanceStart` from a small loop of its own and
//! afterwards from the VM's event loop. Every answer is 204 (no body) for a
//! successful PUT or PATCH, 200 with JSON for a GET, or 400 with
//! `{"fault_message": "..."}`.

pub mod handler;
pub mod routes;
pub mod server;

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use serde::Deserialize;
use serde_json::Value;

use crate::builder::MachinePatch;
use crate::config::{
    BalloonConfig, BalloonStatsUpdate, BalloonUpdate, BootSource, DriveConfig, EntropyConfig,
    LoggerConfig, MachineConfig, MetricsConfig, NetConfig, VsockConfig,
};

/// Firecracker's request body limit.
pub const MAX_BODY_BYTES: usize = 51_200;

/// `PATCH /drives/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    pub drive_id: String,
    pub path_on_host: Option<PathBuf>,
}

/// `PATCH /network-interfaces/{id}` (rate limiters are refused before
/// this is built; nothing else can change).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNet {
    pub iface_id: String,
}

/// `PUT /machine-config`: both sizes are required, as in Firecracker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachinePut {
    pub vcpu_count: u64,
    pub mem_size_mib: u64,
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub smt: bool,
    #[serde(default, deserialize_with = "crate::config::null_as_default")]
    pub track_dirty_pages: bool,
    pub cpu_template: Option<String>,
    pub huge_pages: Option<String>,
}

impl From<MachinePut> for MachineConfig {
    fn from(m: MachinePut) -> Self {
        MachineConfig {
            vcpu_count: Some(m.vcpu_count),
            mem_size_mib: Some(m.mem_size_mib),
            smt: m.smt,
            track_dirty_pages: m.track_dirty_pages,
            cpu_template: m.cpu_template,
            huge_pages: m.huge_pages,
        }
    }
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    pub action_type: ActionType,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmStateBody {
    Paused,
    Resumed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmBody {
    pub state: VmStateBody,
}

/// One request, parsed and type-checked on the API thread.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    GetInstance,
    GetVersion,
    GetVmConfig,
    GetMachine,
    PutMachine(MachineConfig),
    PatchMachine(MachinePatch),
    PutBootSource(BootSource),
    PutDrive(DriveConfig),
    PatchDrive(PartialDrive),
    PutNet(NetConfig),
    PatchNet(PartialNet),
    PutLogger(LoggerConfig),
    PutMetrics(MetricsConfig),
    Action(ActionType),
    PatchVm(VmStateBody),
    PutVsock(VsockConfig),
    PutEntropy(EntropyConfig),
    GetBalloon,
    PutBalloon(BalloonConfig),
    PatchBalloon(BalloonUpdate),
    GetBalloonStats,
    PatchBalloonStats(BalloonStatsUpdate),
    CreateSnapshot(crate::snapshot::CreateParams),
    LoadSnapshot(crate::snapshot::LoadParams),
}

impl ApiRequest {
    /// How the request is named in messages: `PUT /boot-source`.
    pub fn describe(&self) -> String {
        match self {
            ApiRequest::GetInstance => "GET /".into(),
            ApiRequest::GetVersion => "GET /version".into(),
            ApiRequest::GetVmConfig => "GET /vm/config".into(),
            ApiRequest::GetMachine => "GET /machine-config".into(),
            ApiRequest::PutMachine(_) => "PUT /machine-config".into(),
            ApiRequest::PatchMachine(_) => "PATCH /machine-config".into(),
            ApiRequest::PutBootSource(_) => "PUT /boot-source".into(),
            ApiRequest::PutDrive(d) => format!("PUT /drives/{}", d.drive_id),
            ApiRequest::PatchDrive(d) => format!("PATCH /drives/{}", d.drive_id),
            ApiRequest::PutNet(n) => format!("PUT /network-interfaces/{}", n.iface_id),
            ApiRequest::PatchNet(n) => format!("PATCH /network-interfaces/{}", n.iface_id),
            ApiRequest::PutLogger(_) => "PUT /logger".into(),
            ApiRequest::PutMetrics(_) => "PUT /metrics".into(),
            ApiRequest::Action(a) => format!("PUT /actions {a:?}"),
            ApiRequest::PatchVm(s) => format!("PATCH /vm {s:?}"),
            ApiRequest::PutVsock(_) => "PUT /vsock".into(),
            ApiRequest::PutEntropy(_) => "PUT /entropy".into(),
            ApiRequest::GetBalloon => "GET /balloon".into(),
            ApiRequest::PutBalloon(_) => "PUT /balloon".into(),
            ApiRequest::PatchBalloon(_) => "PATCH /balloon".into(),
            ApiRequest::GetBalloonStats => "GET /balloon/statistics".into(),
            ApiRequest::PatchBalloonStats(_) => "PATCH /balloon/statistics".into(),
            ApiRequest::CreateSnapshot(_) => "PUT /snapshot/create".into(),
            ApiRequest::LoadSnapshot(_) => "PUT /snapshot/load".into(),
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// 204, no body.
    NoContent,
    /// 200 with a JSON body.
    Json(Value),
    /// 400 with `{"fault_message": ...}`.
    Fault(String),
}

impl Response {
    pub fn fault(msg: impl Into<String>) -> Self {
        Response::Fault(msg.into())
    }

    pub fn status(&self) -> u16 {
        match self {
            Response::NoContent => 204,
            Response::Json(_) => 200,
            Response::Fault(_) => 400,
        }
    }

    /// The body as sent (empty for 204).
    pub fn body(&self) -> String {
        match self {
            Response::NoContent => String::new(),
            Response::Json(v) => v.to_string(),
            Response::Fault(m) => serde_json::json!({ "fault_message": m }).to_string(),
        }
    }
}

/// Firecracker's BalloonStats: the sizes, and each statistic the guest
/// has reported (absent until it has).
pub fn balloon_stats_json(s: &devices::virtio::balloon::BalloonStats) -> Value {
    let mut v = serde_json::json!({
        "target_pages": s.target_pages,
        "actual_pages": s.actual_pages,
        "target_mib": s.target_mib,
        "actual_mib": s.actual_mib,
    });
    for (key, value) in [
        ("swap_in", s.swap_in),
        ("swap_out", s.swap_out),
        ("major_faults", s.major_faults),
        ("minor_faults", s.minor_faults),
        ("free_memory", s.free_memory),
        ("total_memory", s.total_memory),
        ("available_memory", s.available_memory),
        ("disk_caches", s.disk_caches),
        ("hugetlb_allocations", s.hugetlb_allocations),
        ("hugetlb_failures", s.hugetlb_failures),
        ("oom_kill", s.oom_kill),
        ("alloc_stall", s.alloc_stall),
        ("async_scan", s.async_scan),
        ("direct_scan", s.direct_scan),
        ("async_reclaim", s.async_reclaim),
        ("direct_reclaim", s.direct_reclaim),
    ] {
        if let (Some(x), Some(obj)) = (value, v.as_object_mut()) {
            obj.insert(key.into(), x.into());
        }
    }
    v
}

/// A request handed to the VMM thread, with where its answer goes.
pub struct Job {
    pub request: ApiRequest,
    pub reply: Sender<Response>,
}
