//! The VMM thread's side of the API: what each request does before
//! `InstanceStart` (fill [`VmResources`]) and after it (act on the [`Vmm`]).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Sender, TryRecvError};
use std::time::Duration;

use serde_json::json;

use super::server::ApiChannel;
use super::{ActionType, ApiRequest, Job, Response, VmStateBody};
use crate::builder::VmResources;
use crate::config::LoggerConfig;
use crate::logger;
use crate::metrics::{self, MetricsSink};
use crate::vmm::{VmState, Vmm};

/// What the API knows besides the VM itself.
pub struct ApiState {
    pub resources: VmResources,
    pub instance_id: String,
    /// The metrics sink until the VM is built; the [`Vmm`] owns it after.
    pub metrics: Option<MetricsSink>,
}

/// Firecracker's InstanceInfo.state.
fn state_name(state: Option<VmState>) -> &'static str {
    match state {
        None | Some(VmState::Built) => "Not started",
        Some(VmState::Running) => "Running",
        Some(VmState::Paused) => "Paused",
    }
}

impl ApiState {
    pub fn new(resources: VmResources, instance_id: String) -> Self {
        ApiState {
            resources,
            instance_id,
            metrics: None,
        }
    }

    fn instance_info(&self, state: Option<VmState>) -> Response {
        Response::Json(json!({
            "id": self.instance_id,
            "state": state_name(state),
            "vmm_version": env!("CARGO_PKG_VERSION"),
            "app_name": "flint",
        }))
    }

    /// The requests that mean the same before and after the start.
    fn common(&self, req: &ApiRequest, state: Option<VmState>) -> Option<Response> {
        Some(match req {
            ApiRequest::GetInstance => self.instance_info(state),
            ApiRequest::GetVersion => Response::Json(json!({
                "firecracker_version": env!("CARGO_PKG_VERSION"),
            })),
            ApiRequest::GetVmConfig => Response::Json(self.resources.full_json()),
            ApiRequest::GetMachine => Response::Json(self.resources.machine_json()),
            ApiRequest::GetBalloon => match &self.resources.balloon {
                Some(b) => Response::Json(json!(b)),
                None => Response::fault(format!("{}: {NO_BALLOON}", req.describe())),
            },
            _ => return None,
        })
    }

    /// Configure the logger as `PUT /logger` or `--log-path` say.
    pub fn set_logger(&mut self, cfg: LoggerConfig) -> Result<(), String> {
        logger::configure(&logger::Settings {
            path: cfg.log_path.clone(),
            // Firecracker's default level for a log file is Info.
            level: cfg
                .level
                .clone()
                .or_else(|| cfg.log_path.as_ref().map(|_| "Info".to_string())),
            show_level: cfg.show_level,
            show_origin: cfg.show_log_origin,
            instance_id: self.instance_id.clone(),
        })
        .map_err(|e| e.to_string())?;
        self.resources.logger = Some(cfg);
        Ok(())
    }

    /// Send metrics to `path` from now on (once per process).
    pub fn set_metrics(&mut self, path: &std::path::Path) -> Result<(), String> {
        if let Some(m) = &self.metrics {
            return Err(metrics::Error::AlreadySet(m.path().to_owned()).to_string());
        }
        if let Some(m) = &self.resources.metrics {
            return Err(metrics::Error::AlreadySet(m.metrics_path.clone()).to_string());
        }
        self.metrics = Some(MetricsSink::open(path).map_err(|e| e.to_string())?);
        self.resources.metrics = Some(crate::config::MetricsConfig {
            metrics_path: path.to_owned(),
        });
        Ok(())
    }
}

const NO_BALLOON: &str = "no balloon device is configured (PUT /balloon before InstanceStart)";

/// What a request before the start leads to.
pub enum Preboot {
    Reply(Response),
    /// `InstanceStart`: the caller builds the VM and answers.
    Start,
    /// `PUT /snapshot/load`: the caller restores the VM and answers.
    Load(crate::snapshot::LoadParams),
}

fn result(what: &str, r: Result<(), impl std::fmt::Display>) -> Response {
    match r {
        Ok(()) => Response::NoContent,
        Err(e) => Response::Fault(format!("{what}: {e}")),
    }
}

/// Handle a request before `InstanceStart`.
pub fn preboot(st: &mut ApiState, req: ApiRequest) -> Preboot {
    if let Some(r) = st.common(&req, None) {
        return Preboot::Reply(r);
    }
    let what = req.describe();
    let r = match req {
        ApiRequest::PutMachine(m) => result(&what, st.resources.set_machine_config(m)),
        ApiRequest::PatchMachine(m) => result(&what, st.resources.patch_machine_config(m)),
        ApiRequest::PutBootSource(b) => result(&what, st.resources.set_boot_source(b)),
        ApiRequest::PutDrive(d) => result(&what, st.resources.put_drive(d)),
        ApiRequest::PutNet(n) => result(&what, st.resources.put_net(n)),
        ApiRequest::PutLogger(l) => result(&what, st.set_logger(l)),
        ApiRequest::PutMetrics(m) => result(&what, st.set_metrics(&m.metrics_path)),
        ApiRequest::PutVsock(v) => result(&what, st.resources.set_vsock(v)),
        ApiRequest::PutEntropy(e) => result(&what, st.resources.set_entropy(e)),
        ApiRequest::PutBalloon(b) => result(&what, st.resources.set_balloon(b)),
        ApiRequest::PatchBalloon(_)
        | ApiRequest::PatchBalloonStats(_)
        | ApiRequest::GetBalloonStats => Response::Fault(format!(
            "{what}: the microVM is not started yet; before InstanceStart, PUT /balloon \
             sets the balloon"
        )),
        ApiRequest::PatchDrive(_) | ApiRequest::PatchNet(_) => Response::Fault(format!(
            "{what}: not allowed before InstanceStart; PUT the whole object instead"
        )),
        ApiRequest::PatchVm(_) => Response::Fault(format!(
            "{what}: the microVM is not started yet; InstanceStart first"
        )),
        ApiRequest::Action(ActionType::InstanceStart) => return Preboot::Start,
        ApiRequest::CreateSnapshot(_) => Response::Fault(format!(
            "{what}: the microVM is not started yet; there is nothing to snapshot"
        )),
        ApiRequest::LoadSnapshot(p) => match st.resources.configured() {
            Some(what_set) => Response::Fault(format!(
                "{what}: loading a snapshot is not allowed after configuring \
                 boot-specific resources ({what_set} is set): a snapshot brings its own"
            )),
            None => return Preboot::Load(p),
        },
        ApiRequest::Action(ActionType::SendCtrlAltDel) => Response::Fault(format!(
            "{what}: the microVM is not started yet; InstanceStart first"
        )),
        ApiRequest::Action(ActionType::FlushMetrics) => match &mut st.metrics {
            Some(m) => result(&what, m.flush(None)),
            None => Response::Fault(format!("{what}: {}", metrics::Error::NotSet)),
        },
        // Answered by common() above.
        ApiRequest::GetInstance
        | ApiRequest::GetVersion
        | ApiRequest::GetVmConfig
        | ApiRequest::GetMachine
        | ApiRequest::GetBalloon => Response::Fault(format!("{what}: not answered")),
    };
    Preboot::Reply(r)
}

/// Handle a request once the VM is built.
pub fn running(st: &mut ApiState, vmm: &mut Vmm, req: ApiRequest) -> Response {
    if let Some(r) = st.common(&req, Some(vmm.state())) {
        return r;
    }
    let what = req.describe();
    match req {
        ApiRequest::PutMachine(_)
        | ApiRequest::PatchMachine(_)
        | ApiRequest::PutBootSource(_)
        | ApiRequest::PutDrive(_)
        | ApiRequest::PutNet(_)
        | ApiRequest::PutLogger(_)
        | ApiRequest::PutMetrics(_)
        | ApiRequest::PutVsock(_)
        | ApiRequest::PutEntropy(_)
        | ApiRequest::PutBalloon(_) => Response::Fault(format!(
            "{what}: not allowed after InstanceStart: the microVM is already running"
        )),
        ApiRequest::PatchBalloon(u) => {
            let Some(b) = &mut st.resources.balloon else {
                return Response::fault(format!("{what}: {NO_BALLOON}"));
            };
            let r = vmm.update_balloon(u.amount_mib);
            if r.is_ok() {
                b.amount_mib = u.amount_mib;
            }
            result(&what, r)
        }
        ApiRequest::PatchBalloonStats(u) => {
            let Some(b) = &mut st.resources.balloon else {
                return Response::fault(format!("{what}: {NO_BALLOON}"));
            };
            let r = vmm.update_balloon_stats_interval(u.stats_polling_interval_s);
            if r.is_ok() {
                b.stats_polling_interval_s = u.stats_polling_interval_s;
            }
            result(&what, r)
        }
        ApiRequest::GetBalloonStats => match vmm.balloon_stats() {
            Ok(v) => Response::Json(v),
            Err(e) => Response::Fault(format!("{what}: {e}")),
        },
        ApiRequest::Action(ActionType::InstanceStart) => {
            Response::Fault(format!("{what}: the microVM is already started"))
        }
        ApiRequest::Action(ActionType::SendCtrlAltDel) => result(&what, vmm.send_ctrl_alt_del()),
        ApiRequest::Action(ActionType::FlushMetrics) => result(&what, vmm.flush_metrics()),
        ApiRequest::PatchVm(VmStateBody::Paused) => result(&what, vmm.pause()),
        ApiRequest::CreateSnapshot(p) => result(&what, vmm.snapshot(&p)),
        ApiRequest::LoadSnapshot(_) => Response::Fault(format!(
            "{what}: a snapshot is loaded only into a flint that has not started a microVM"
        )),
        ApiRequest::PatchVm(VmStateBody::Resumed) => result(&what, vmm.resume()),
        ApiRequest::PatchDrive(d) => {
            if !st.resources.drives.iter().any(|x| x.drive_id == d.drive_id) {
                return Response::Fault(format!("{what}: no drive with id {:?}", d.drive_id));
            }
            let Some(path) = d.path_on_host else {
                // Only rate limiters could change otherwise, and those are
                // refused when the request is parsed.
                return Response::NoContent;
            };
            let r = vmm.swap_drive(&d.drive_id, &path);
            if r.is_ok() {
                if let Some(x) = st
                    .resources
                    .drives
                    .iter_mut()
                    .find(|x| x.drive_id == d.drive_id)
                {
                    x.path_on_host = path;
                }
            }
            result(&what, r)
        }
        ApiRequest::PatchNet(n) => {
            if st.resources.nets.iter().any(|x| x.iface_id == n.iface_id) {
                Response::NoContent
            } else {
                Response::Fault(format!(
                    "{what}: no network interface with id {:?}",
                    n.iface_id
                ))
            }
        }
        // Answered by common() above.
        ApiRequest::GetInstance
        | ApiRequest::GetVersion
        | ApiRequest::GetVmConfig
        | ApiRequest::GetMachine
        | ApiRequest::GetBalloon => Response::Fault(format!("{what}: not answered")),
    }
}

/// How the wait for `InstanceStart` ended.
pub enum StartWait {
    /// `InstanceStart` arrived: answer on the sender once the VM is built.
    Start(Sender<Response>),
    /// `PUT /snapshot/load` arrived: answer once the VM is restored.
    Load(crate::snapshot::LoadParams, Sender<Response>),
    /// A shutdown signal arrived first.
    Signal(i32),
    /// The API thread is gone.
    Closed,
}

/// Serve requests until `InstanceStart` (or a signal, read from the
/// signalfd `signals`). Wakes on the API's EventFd, and for periodic
/// metrics.
pub fn serve_until_start(
    chan: &ApiChannel,
    st: &mut ApiState,
    signals: &mut std::fs::File,
) -> StartWait {
    loop {
        loop {
            match chan.jobs.try_recv() {
                Ok(Job { request, reply }) => match preboot(st, request) {
                    Preboot::Reply(r) => {
                        let _ = reply.send(r);
                    }
                    Preboot::Start => return StartWait::Start(reply),
                    Preboot::Load(p) => return StartWait::Load(p, reply),
                },
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return StartWait::Closed,
            }
        }
        if let Some(m) = &mut st.metrics {
            m.flush_if_due(None);
        }
        let timeout = st.metrics.as_ref().map_or(-1, |m| {
            m.due_in().max(Duration::from_millis(1)).as_millis() as i32
        });
        let mut fds = [
            libc::pollfd {
                fd: chan.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = chan.wake.read();
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let mut info = [0u8; 128]; // struct signalfd_siginfo
            if let Ok(n) = signals.read(&mut info) {
                if n >= 4 {
                    return StartWait::Signal(i32::from_ne_bytes([
                        info[0], info[1], info[2], info[3],
                    ]));
                }
            }
        }
    }
}

/// Answer every queued request against the running VM.
pub fn serve_running(chan: &ApiChannel, st: &mut ApiState, vmm: &mut Vmm) {
    while let Ok(Job { request, reply }) = chan.jobs.try_recv() {
        let r = running(st, vmm, request);
        let _ = reply.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routes;

    fn pre(st: &mut ApiState, method: &str, path: &str, body: &str) -> Response {
        let req = routes::parse(method, path, body.as_bytes()).unwrap();
        match preboot(st, req) {
            Preboot::Reply(r) => r,
            Preboot::Start => Response::fault("START"),
            Preboot::Load(_) => Response::fault("LOAD"),
        }
    }

    #[test]
    fn before_the_start() {
        let mut st = ApiState::new(VmResources::default(), "vm-1".into());
        let r = pre(&mut st, "GET", "/", "");
        let Response::Json(v) = r else {
            panic!("{r:?}")
        };
        assert_eq!(v["state"], "Not started");
        assert_eq!(v["id"], "vm-1");
        let r = pre(&mut st, "GET", "/machine-config", "");
        assert_eq!(r, Response::Json(st.resources.machine_json()));
        let r = pre(
            &mut st,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 0}"#,
        );
        assert_eq!(
            r,
            Response::fault("PUT /machine-config: mem_size_mib must be at least 16, got 0")
        );
        for (method, path, body, needle) in [
            (
                "PATCH",
                "/drives/a",
                r#"{"drive_id": "a", "path_on_host": "/x"}"#,
                "before InstanceStart",
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type": "SendCtrlAltDel"}"#,
                "not started",
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type": "FlushMetrics"}"#,
                "not configured",
            ),
        ] {
            let r = pre(&mut st, method, path, body);
            assert!(
                matches!(&r, Response::Fault(m) if m.contains(needle)),
                "{method} {path}: {r:?}"
            );
        }
        let r = pre(
            &mut st,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        );
        assert_eq!(r, Response::fault("START"));
    }

    #[test]
    fn logger_writes_the_file_with_id_and_level() {
        let p = std::env::temp_dir().join(format!("flint-api-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let mut st = ApiState::new(VmResources::default(), "log-vm".into());
        let body = format!(r#"{{"log_path": "{}", "show_level": true}}"#, p.display());
        assert_eq!(pre(&mut st, "PUT", "/logger", &body), Response::NoContent);
        log::info!("a line for the file");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("[log-vm] [info] a line for the file"),
            "{text:?}"
        );
        let r = pre(
            &mut st,
            "PUT",
            "/logger",
            r#"{"log_path": "/nonexistent/d/f.log"}"#,
        );
        assert!(
            matches!(&r, Response::Fault(m) if m.contains("/nonexistent/d/f.log")),
            "{r:?}"
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn metrics_once() {
        let p = std::env::temp_dir().join(format!("flint-api-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let mut st = ApiState::new(VmResources::default(), "x".into());
        let body = format!(r#"{{"metrics_path": "{}"}}"#, p.display());
        assert_eq!(pre(&mut st, "PUT", "/metrics", &body), Response::NoContent);
        let r = pre(&mut st, "PUT", "/metrics", &body);
        assert!(
            matches!(&r, Response::Fault(m) if m.contains("only once")),
            "{r:?}"
        );
        let r = pre(
            &mut st,
            "PUT",
            "/actions",
            r#"{"action_type": "FlushMetrics"}"#,
        );
        assert_eq!(r, Response::NoContent);
        let text = std::fs::read_to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert!(v["api_server"].is_object());
        std::fs::remove_file(&p).unwrap();
    }
}
