//! Firecracker's API on flint's unix socket, against the real binary.
//!
//! The API-only tests start flint with `--api-sock` and no VM: they are
//! fast and run everywhere. The boot tests drive a real guest: on a
//! kvm_pvm host they check what the guest kernel does by itself; the ones
//! that need guest user space say why they skip there. Every response any
//! of them receives is checked against src/api/openapi.json.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::api::{socket_path, ApiVm, Client};
use common::{
    artifact, boot_deadline, cmdline, skip_without_guest_user_space, spawn_command, FLINT,
};
use serde_json::{json, Value};

/// A scratch file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!("flint-api-{}-{tag}", std::process::id()));
        std::fs::write(&p, contents).unwrap();
        TempFile(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A disk image of `mib` MiB starting with `tag`.
fn image(name: &str, mib: usize, tag: &[u8]) -> TempFile {
    let mut data = vec![0u8; mib << 20];
    data[..tag.len()].copy_from_slice(tag);
    TempFile::new(name, &data)
}

fn boot_source(extra: &str) -> String {
    json!({
        "kernel_image_path": artifact("kernel"),
        "initrd_path": artifact("initrd"),
        "boot_args": cmdline(extra),
    })
    .to_string()
}

// ---- API only: no guest --------------------------------------------------

#[test]
fn get_endpoints_before_any_put_answer_the_defaults() {
    let api = ApiVm::start("defaults", &["--id", "my-vm-1"]);
    let mut c = api.client();
    let i = c.get("/").json();
    assert_eq!(i["id"], "my-vm-1");
    assert_eq!(i["state"], "Not started");
    assert_eq!(i["app_name"], "flint");
    assert!(i["vmm_version"].is_string());
    let m = c.get("/machine-config").json();
    assert_eq!(m["vcpu_count"], 1);
    assert_eq!(m["mem_size_mib"], 128);
    assert_eq!(m["smt"], false);
    assert!(c.get("/version").json()["firecracker_version"].is_string());
    let v = c.get("/vm/config").json();
    assert_eq!(v["drives"], json!([]));
    assert_eq!(v["machine-config"], m);
}

#[test]
fn puts_are_kept_and_shown_by_vm_config() {
    let api = ApiVm::start("puts", &[]);
    let mut c = api.client();
    let img = image("puts.img", 1, b"");
    c.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 4, "mem_size_mib": 512, "smt": true, "track_dirty_pages": null, "cpu_template": null}"#,
    );
    c.ok("PATCH", "/machine-config", r#"{"mem_size_mib": 256}"#);
    let m = c.get("/machine-config").json();
    assert_eq!(
        (m["vcpu_count"].clone(), m["mem_size_mib"].clone()),
        (json!(4), json!(256))
    );
    assert_eq!(m["smt"], true);
    c.ok("PUT", "/boot-source", &boot_source(""));
    let long_id = "a-drive-id-longer-than-twenty-bytes";
    c.ok(
        "PUT",
        &format!("/drives/{long_id}"),
        &json!({"drive_id": long_id, "path_on_host": img.path(), "is_root_device": false,
                "is_read_only": true, "cache_type": "Writeback", "io_engine": null,
                "rate_limiter": null, "partuuid": null})
        .to_string(),
    );
    c.ok(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02", "rx_rate_limiter": null}"#,
    );
    let v = c.get("/vm/config").json();
    assert_eq!(v["drives"][0]["drive_id"], long_id);
    assert_eq!(v["drives"][0]["cache_type"], "Writeback");
    assert_eq!(v["network-interfaces"][0]["host_dev_name"], "tap0");
    assert_eq!(
        v["boot-source"]["kernel_image_path"],
        json!(artifact("kernel"))
    );
}

/// Each case: method, path, body, and what the fault message must contain.
fn expect_faults(c: &mut Client, cases: &[(&str, &str, &str, &[&str])]) {
    for (method, path, body, needles) in cases {
        let r = c.call(method, path, Some(body));
        let msg = r.fault();
        for n in *needles {
            assert!(
                msg.contains(n),
                "{method} {path} {body}: {msg:?} lacks {n:?}"
            );
        }
    }
}

#[test]
fn bad_bodies_on_every_endpoint_are_400_naming_the_problem() {
    let api = ApiVm::start("bodies", &[]);
    let mut c = api.client();
    let bodies: &[(&str, &str)] = &[
        ("PUT", "/machine-config"),
        ("PATCH", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/d1"),
        ("PATCH", "/drives/d1"),
        ("PUT", "/network-interfaces/n1"),
        ("PATCH", "/network-interfaces/n1"),
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
        ("PUT", "/actions"),
        ("PATCH", "/vm"),
    ];
    for (m, p) in bodies {
        expect_faults(
            &mut c,
            &[
                (m, p, "{\"a\": ", &["not valid JSON", "EOF"]),
                (m, p, "", &["no body"]),
                (m, p, "[1, 2]", &["must be a JSON object"]),
                (
                    m,
                    p,
                    r#"{"surprise_field": 1}"#,
                    &["unknown field `surprise_field`"],
                ),
            ],
        );
    }
    expect_faults(
        &mut c,
        &[
            // Wrong types.
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": "two", "mem_size_mib": 128}"#,
                &["vcpu_count: invalid type: string \"two\", expected u64"],
            ),
            (
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path": 7}"#,
                &["kernel_image_path: invalid type: integer `7`"],
            ),
            (
                "PUT",
                "/drives/d1",
                r#"{"drive_id": "d1", "path_on_host": "/x", "is_root_device": "yes"}"#,
                &["is_root_device: invalid type: string \"yes\", expected a boolean"],
            ),
            (
                "PUT",
                "/network-interfaces/n1",
                r#"{"iface_id": "n1", "host_dev_name": "t", "mtu": -1}"#,
                &["mtu: invalid value: integer `-1`"],
            ),
            (
                "PUT",
                "/logger",
                r#"{"show_level": 1}"#,
                &["invalid type: integer `1`, expected a boolean"],
            ),
            (
                "PUT",
                "/metrics",
                r#"{"metrics_path": false}"#,
                &["invalid type: boolean `false`"],
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type": "Reboot"}"#,
                &["unknown variant `Reboot`"],
            ),
            (
                "PATCH",
                "/vm",
                r#"{"state": "Sleeping"}"#,
                &["unknown variant `Sleeping`"],
            ),
            (
                "PATCH",
                "/machine-config",
                r#"{"smt": "on"}"#,
                &["invalid type: string \"on\""],
            ),
            // Missing required fields.
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 1}"#,
                &["missing field `mem_size_mib`"],
            ),
            (
                "PUT",
                "/boot-source",
                r#"{"boot_args": "x"}"#,
                &["missing field `kernel_image_path`"],
            ),
            (
                "PUT",
                "/drives/d1",
                r#"{"drive_id": "d1"}"#,
                &["missing field `path_on_host`"],
            ),
            (
                "PATCH",
                "/drives/d1",
                r#"{"path_on_host": "/x"}"#,
                &["missing field `drive_id`"],
            ),
            (
                "PUT",
                "/network-interfaces/n1",
                r#"{"iface_id": "n1"}"#,
                &["missing field `host_dev_name`"],
            ),
            (
                "PATCH",
                "/network-interfaces/n1",
                r#"{}"#,
                &["missing field `iface_id`"],
            ),
            (
                "PUT",
                "/metrics",
                r#"{}"#,
                &["missing field `metrics_path`"],
            ),
            ("PUT", "/actions", r#"{}"#, &["missing field `action_type`"]),
            ("PATCH", "/vm", r#"{}"#, &["missing field `state`"]),
        ],
    );
    // Nothing of it was kept.
    assert_eq!(c.get("/vm/config").json()["drives"], json!([]));
}

#[test]
fn lifecycle_and_resource_rules_before_the_start() {
    let api = ApiVm::start("rules", &[]);
    let mut c = api.client();
    let img = image("rules.img", 1, b"");
    let other = image("rules2.img", 1, b"");
    let drive = |id: &str, path: &str, root: bool| {
        json!({"drive_id": id, "path_on_host": path, "is_root_device": root}).to_string()
    };
    c.ok("PUT", "/drives/root", &drive("root", img.path(), true));
    c.ok(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap-a"}"#,
    );
    let big = format!("{}", u64::MAX);
    expect_faults(
        &mut c,
        &[
            (
                "PATCH",
                "/drives/root",
                r#"{"drive_id": "root", "path_on_host": "/x"}"#,
                &["PATCH /drives/root", "not allowed before InstanceStart"],
            ),
            (
                "PATCH",
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0"}"#,
                &["not allowed before InstanceStart"],
            ),
            (
                "PATCH",
                "/vm",
                r#"{"state": "Paused"}"#,
                &["not started yet"],
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type": "SendCtrlAltDel"}"#,
                &["not started yet"],
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type": "FlushMetrics"}"#,
                &["metrics are not configured"],
            ),
            (
                "PUT",
                "/drives/second",
                &drive("second", other.path(), true),
                &["\"root\"", "\"second\"", "both marked is_root_device"],
            ),
            (
                "PUT",
                "/drives/gone",
                &drive("gone", "/nonexistent/disk.img", false),
                &["path_on_host", "/nonexistent/disk.img", "No such file"],
            ),
            (
                "PUT",
                "/network-interfaces/eth1",
                r#"{"iface_id": "eth1", "host_dev_name": "tap-a"}"#,
                &["host_dev_name \"tap-a\" is used by more than one"],
            ),
            (
                "PUT",
                "/network-interfaces/eth1",
                r#"{"iface_id": "eth1", "host_dev_name": "tap-b", "guest_mac": "zz"}"#,
                &["eth1", "zz"],
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 0}"#,
                &["mem_size_mib must be at least 16, got 0"],
            ),
            (
                "PUT",
                "/machine-config",
                &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {big}}}"#),
                &["mem_size_mib", &big, "beyond what flint can map"],
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 18446744073709551616}"#,
                &["mem_size_mib", "expected u64"],
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 0, "mem_size_mib": 128}"#,
                &["vcpu_count must be between 1 and 254, got 0"],
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#,
                &["smt", "1 or an even number, got 3"],
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}"#,
                &["cpu_template \"T2\" is not supported by flint yet"],
            ),
            (
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
                &["kernel_image_path", "/nonexistent/vmlinux"],
            ),
            (
                "PUT",
                "/drives/a",
                &drive("b", img.path(), false),
                &["drive_id in the body (\"b\") differs from the id in the path (\"a\")"],
            ),
            (
                "PUT",
                "/network-interfaces/a",
                r#"{"iface_id": "b", "host_dev_name": "t"}"#,
                &["iface_id in the body (\"b\") differs"],
            ),
            (
                "PUT",
                "/drives/bad!id",
                &drive("bad!id", img.path(), false),
                &["\"bad!id\"", "not valid", "a letter, a digit, '_' or '-'"],
            ),
            (
                "PUT",
                "/drives/x",
                &json!({"drive_id": "x", "path_on_host": img.path(),
                                           "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}})
                .to_string(),
                &["rate_limiter", "does not support rate limiters yet"],
            ),
            ("PUT", "/logger", r#"{"level": "Loud"}"#, &["\"Loud\""]),
            (
                "PUT",
                "/metrics",
                r#"{"metrics_path": "/nonexistent/dir/m.json"}"#,
                &["/nonexistent/dir/m.json", "cannot open"],
            ),
        ],
    );
    // InstanceStart without a boot source says what is missing and the
    // API goes on serving.
    let msg = c
        .put("/actions", r#"{"action_type": "InstanceStart"}"#)
        .fault();
    assert!(
        msg.contains("InstanceStart") && msg.contains("PUT /boot-source first"),
        "{msg}"
    );
    // A kernel file that is not a kernel: the VMM's own error, and still
    // not started.
    let junk = TempFile::new("junk-kernel", b"not a kernel at all");
    c.ok(
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": junk.path()}).to_string(),
    );
    let msg = c
        .put("/actions", r#"{"action_type": "InstanceStart"}"#)
        .fault();
    assert!(
        msg.contains(junk.path()) && msg.contains("not a Linux kernel"),
        "{msg}"
    );
    assert_eq!(c.get("/").json()["state"], "Not started");
}

#[test]
fn unknown_paths_methods_and_missing_features_are_400_never_404() {
    let api = ApiVm::start("paths", &[]);
    let mut c = api.client();
    expect_faults(
        &mut c,
        &[
            (
                "GET",
                "/nothing-here",
                "",
                &["Invalid request method and/or path: GET /nothing-here"],
            ),
            (
                "GET",
                "/drives",
                "",
                &["Invalid request method and/or path"],
            ),
            (
                "DELETE",
                "/drives/a",
                "",
                &["method DELETE is not allowed", "PUT, PATCH"],
            ),
            ("POST", "/actions", "{}", &["method POST is not allowed"]),
            ("PUT", "/", "{}", &["method PUT is not allowed"]),
            ("GET", "/boot-source", "", &["method GET is not allowed"]),
            ("PUT", "/vsock", "{}", &["flint does not support vsock yet"]),
            (
                "PUT",
                "/balloon",
                "{}",
                &["flint does not support the balloon device yet"],
            ),
            ("GET", "/balloon/statistics", "", &["balloon"]),
            ("PUT", "/mmds", "{}", &["MMDS"]),
            ("PUT", "/mmds/config", "{}", &["MMDS"]),
            ("PUT", "/entropy", "{}", &["entropy"]),
            ("PUT", "/snapshot/create", "{}", &["snapshots"]),
            ("PUT", "/snapshot/load", "{}", &["snapshots"]),
            ("PUT", "/cpu-config", "{}", &["CPU templates"]),
            ("PUT", "/pmem/p0", "{}", &["virtio-pmem"]),
            ("PUT", "/serial", "{}", &["serial"]),
            ("PUT", "/hotplug/memory", "{}", &["memory hotplug"]),
        ],
    );
}

#[test]
fn a_body_over_the_limit_is_refused() {
    let api = ApiVm::start("limit", &[]);
    let mut c = api.client();
    let big = format!(
        r#"{{"kernel_image_path": "/k", "boot_args": "{}"}}"#,
        "x".repeat(51_200)
    );
    let msg = c.put("/boot-source", &big).fault();
    assert!(msg.contains("over the limit of 51200 bytes"), "{msg}");
    // Just under the limit is parsed (and fails only on the path).
    let fits = format!(
        r#"{{"kernel_image_path": "/nonexistent/k", "boot_args": "{}"}}"#,
        "x".repeat(51_000)
    );
    let mut c = api.client();
    let msg = c.put("/boot-source", &fits).fault();
    assert!(msg.contains("/nonexistent/k"), "{msg}");
}

#[test]
fn a_half_request_does_not_stop_other_clients() {
    let api = ApiVm::start("half", &[]);
    let mut stuck = UnixStream::connect(&api.sock).unwrap();
    stuck
        .write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vcpu")
        .unwrap();
    let mut head_only = UnixStream::connect(&api.sock).unwrap();
    head_only.write_all(b"GET /machine-con").unwrap();
    for _ in 0..20 {
        let mut c = api.client();
        let t0 = Instant::now();
        assert_eq!(c.get("/").status, 200);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
    drop(stuck);
    drop(head_only);
    assert_eq!(api.client().get("/machine-config").status, 200);
}

#[test]
fn a_thousand_requests_on_one_connection_each_within_milliseconds() {
    let api = ApiVm::start("thousand", &[]);
    let mut c = api.client();
    let mut slowest = Duration::ZERO;
    let t0 = Instant::now();
    for i in 0..1000 {
        let t = Instant::now();
        let r = if i % 2 == 0 {
            c.get("/machine-config")
        } else {
            c.patch(
                "/machine-config",
                &format!(r#"{{"vcpu_count": {}}}"#, i % 4 + 1),
            )
        };
        slowest = slowest.max(t.elapsed());
        assert!(r.status == 200 || r.status == 204, "request {i}: {r:?}");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    let total = t0.elapsed();
    eprintln!("1000 requests on one connection: {total:?}, slowest {slowest:?}");
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}");
    // Pipelined: two requests in one write, two answers in order.
    c.send_raw(
        b"GET /version HTTP/1.1\r\n\r\nPATCH /machine-config HTTP/1.1\r\nContent-Length: 17\r\n\r\n{\"vcpu_count\": 2}",
    );
    assert_eq!(c.read_reply().status, 200);
    assert_eq!(c.read_reply().status, 204);
    assert_eq!(c.get("/machine-config").json()["vcpu_count"], 2);
}

#[test]
fn an_existing_socket_path_is_a_clear_error() {
    let f = TempFile::new("taken.sock", b"");
    let (status, out) = common::run(&["--api-sock", f.path()], Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains(f.path()) && out.contains("already exists"),
        "{out}"
    );
    let (status, out) = common::run(
        &["--api-sock", "/nonexistent/dir/api.sock"],
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("/nonexistent/dir/api.sock") && out.contains("cannot bind"),
        "{out}"
    );
    // --no-api needs a config file (usage error); a bad --id too.
    let (status, out) = common::run(&["--no-api"], Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("--config-file"), "{out}");
    let (status, out) = common::run(&["--id", "no spaces"], Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("a letter, a digit or '-'"), "{out}");
}

#[test]
fn a_signal_before_the_start_ends_flint_and_removes_the_socket() {
    let mut api = ApiVm::start("signal", &[]);
    api.vm.signal(libc::SIGTERM);
    let status = api.vm.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", api.vm.output());
    assert!(!api.sock.exists());
}

// ---- With a guest --------------------------------------------------------

/// firecracker-go-sdk's default handlers, in their order, against flint in
/// a network namespace of its own (for the TAP). Returns the VM, the
/// client and the metrics and log files.
fn go_sdk_sequence(
    tag: &str,
    boot_extra: &str,
    drive: &TempFile,
) -> (ApiVm, Client, TempFile, TempFile) {
    let sock = socket_path(tag);
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        FLINT,
        "--api-sock",
        sock.to_str().unwrap(),
        "--id",
        "go-sdk-vm",
    ]);
    let mut api = ApiVm {
        vm: spawn_command(cmd),
        sock,
    };
    let ready = api.wait_ready(Duration::from_secs(10));
    eprintln!("{tag}: API answered {ready:?} after the first try");
    let mut c = api.client();
    let metrics = TempFile::new(&format!("{tag}-metrics.json"), b"");
    let log = TempFile::new(&format!("{tag}-flint.log"), b"");
    c.ok(
        "PUT",
        "/logger",
        &json!({"log_path": log.path(), "level": "Info", "show_level": true,
                                   "show_log_origin": false})
        .to_string(),
    );
    c.ok(
        "PUT",
        "/metrics",
        &json!({"metrics_path": metrics.path()}).to_string(),
    );
    c.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false}"#,
    );
    let m = c.get("/machine-config").json();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(2), Some(256))
    );
    c.ok("PUT", "/boot-source", &boot_source(boot_extra));
    c.ok(
        "PUT",
        "/drives/1",
        &json!({"drive_id": "1", "path_on_host": drive.path(),
                                     "is_root_device": false, "is_read_only": false})
        .to_string(),
    );
    c.ok(
        "PUT",
        "/network-interfaces/1",
        r#"{"iface_id": "1", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}"#,
    );
    let t0 = Instant::now();
    c.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    eprintln!("{tag}: InstanceStart answered in {:?}", t0.elapsed());
    (api, c, metrics, log)
}

fn metrics_lines(f: &TempFile) -> Vec<Value> {
    std::fs::read_to_string(&f.0)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("metrics line {l:?}: {e}")))
        .collect()
}

/// On any host: the guest kernel boots after InstanceStart over the API,
/// the metrics file gets JSON lines, SendCtrlAltDel ends the VM with 0.
#[test]
fn go_sdk_order_boots_the_guest_kernel_and_ctrl_alt_del_ends_it() {
    let disk = image("gosdk.img", 4, b"");
    let (mut api, mut c, metrics, log) = go_sdk_sequence("gosdk", "rdinit=/pause", &disk);
    assert_eq!(c.get("/").json()["state"], "Running");
    api.vm
        .wait_for("Run /pause as init process", boot_deadline());
    let out = api.vm.output();
    assert!(out.contains("[vda] 8192 512-byte logical blocks"), "{out}");
    c.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    c.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    let status = api.vm.wait_exit(Duration::from_secs(240));
    let out = api.vm.output();
    assert!(out.contains("reboot: Restarting system"), "{out}");
    assert_eq!(status.code(), Some(0), "{out}");
    // One line for FlushMetrics, one at exit.
    let lines = metrics_lines(&metrics);
    assert!(lines.len() >= 2, "{lines:?}");
    let last = lines.last().unwrap();
    assert!(last["vcpu"]["exit_io_out"].as_u64().unwrap() > 0, "{last}");
    assert!(last["uart"]["tx_bytes"].as_u64().unwrap() > 1000, "{last}");
    assert!(last["block_1"]["requests"].as_u64().unwrap() > 0, "{last}");
    assert!(last["net_1"].is_object(), "{last}");
    assert!(
        last["api_server"]["requests"].as_u64().unwrap() >= 10,
        "{last}"
    );
    let log_text = std::fs::read_to_string(&log.0).unwrap();
    assert!(
        log_text.contains("[go-sdk-vm] [info] InstanceStart"),
        "{log_text}"
    );
}

/// With guest user space: init runs the command and ends the VM.
#[test]
fn go_sdk_order_boots_to_init_and_runs_a_command() {
    if skip_without_guest_user_space("go_sdk_order_boots_to_init_and_runs_a_command") {
        return;
    }
    let disk = image("gosdk-user.img", 4, b"");
    let (mut api, _c, metrics, _log) =
        go_sdk_sequence("gosdk-user", "flint.cmd=echo,api-guest-says-hello", &disk);
    api.vm
        .wait_for("flint-guest: init reached", boot_deadline());
    api.vm.wait_for("api-guest-says-hello", boot_deadline());
    api.vm.wait_for("flint-guest: cmd exit 0", boot_deadline());
    let status = api.vm.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", api.vm.output());
    assert!(!metrics_lines(&metrics).is_empty());
}

/// Kata's way: the VM boots from the config file at once, the API is up,
/// GET / polled until Running. Then, on the running VM: what is refused
/// after the start, pause and resume, and a drive swap the guest kernel
/// sees.
#[test]
fn config_file_boot_with_the_api_up_then_pause_resume_and_drive_swap() {
    let small = image("swap-small.img", 4, b"OLD-CONTENT!");
    let big = image("swap-big.img", 8, b"NEW-CONTENT!");
    let cfg = TempFile::new(
        "kata.json",
        json!({
            "boot-source": serde_json::from_str::<Value>(&boot_source("rdinit=/pause")).unwrap(),
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
            "drives": [{"drive_id": "data", "path_on_host": small.path(), "is_root_device": false}],
            "logger": {"level": "Warning"},
            "vsock": null
        })
        .to_string()
        .as_bytes(),
    );
    let mut api = ApiVm::start(
        "kata",
        &["--config-file", cfg.path(), "--shutdown-timeout", "200"],
    );
    let mut c = api.client();
    let t0 = Instant::now();
    while c.get("/").json()["state"] != "Running" {
        assert!(t0.elapsed() < Duration::from_secs(30), "never Running");
        std::thread::sleep(Duration::from_millis(10));
    }
    expect_faults(
        &mut c,
        &[
            (
                "PUT",
                "/boot-source",
                &boot_source(""),
                &["PUT /boot-source", "not allowed after InstanceStart"],
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
                &["not allowed after InstanceStart"],
            ),
            (
                "PATCH",
                "/machine-config",
                r#"{"vcpu_count": 2}"#,
                &["not allowed after InstanceStart"],
            ),
            (
                "PUT",
                "/drives/data",
                &json!({"drive_id": "data", "path_on_host": big.path()}).to_string(),
                &["not allowed after InstanceStart"],
            ),
            (
                "PUT",
                "/network-interfaces/n",
                r#"{"iface_id": "n", "host_dev_name": "t"}"#,
                &["not allowed after InstanceStart"],
            ),
            (
                "PUT",
                "/metrics",
                r#"{"metrics_path": "/tmp/x"}"#,
                &["not allowed after InstanceStart"],
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type": "InstanceStart"}"#,
                &["already started"],
            ),
            (
                "PATCH",
                "/drives/nope",
                r#"{"drive_id": "nope", "path_on_host": "/x"}"#,
                &["no drive with id \"nope\""],
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type": "FlushMetrics"}"#,
                &["metrics are not configured"],
            ),
        ],
    );
    assert_eq!(c.get("/vm/config").json()["drives"][0]["drive_id"], "data");

    // Pause while the kernel is printing its boot log: the console stops.
    api.vm.wait_for("Linux version", boot_deadline());
    c.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(c.get("/").json()["state"], "Paused");
    std::thread::sleep(Duration::from_millis(300));
    let frozen = api.vm.output();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(api.vm.output(), frozen, "the guest went on while paused");
    c.ok("PATCH", "/vm", r#"{"state": "Paused"}"#); // already paused: fine
    c.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(c.get("/").json()["state"], "Running");
    api.vm
        .wait_for("Run /pause as init process", boot_deadline());
    assert!(api
        .vm
        .output()
        .contains("[vda] 8192 512-byte logical blocks"));

    // Swap the drive for a bigger file: the guest kernel reads the new size.
    let msg = c
        .patch(
            "/drives/data",
            r#"{"drive_id": "data", "path_on_host": "/nonexistent/new.img"}"#,
        )
        .fault();
    assert!(msg.contains("/nonexistent/new.img"), "{msg}");
    c.ok(
        "PATCH",
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": big.path()}).to_string(),
    );
    api.vm.wait_for(
        "new size: 16384 512-byte logical blocks",
        Duration::from_secs(120),
    );
    assert_eq!(
        c.get("/vm/config").json()["drives"][0]["path_on_host"],
        json!(big.path())
    );
    c.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    let status = api.vm.wait_exit(Duration::from_secs(240));
    let out = api.vm.output();
    assert!(out.contains("reboot: Restarting system"), "{out}");
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(!api.sock.exists(), "the socket is removed at exit");
}

/// With guest user space: a loop printing a counter stops while paused
/// and goes on after Resumed.
#[test]
fn pause_stops_a_guest_loop_and_resume_restarts_it() {
    if skip_without_guest_user_space("pause_stops_a_guest_loop_and_resume_restarts_it") {
        return;
    }
    let api = ApiVm::start("pause-user", &[]);
    let mut c = api.client();
    c.ok(
        "PUT",
        "/boot-source",
        &boot_source("flint.cmd=i=0;while,true;do,echo,tick-$i;i=$((i+1));sleep,0.1;done"),
    );
    c.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let mut api = api;
    api.vm.wait_for("tick-10", boot_deadline());
    c.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let last_tick = |out: &str| {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("tick-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = last_tick(&api.vm.output());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        last_tick(&api.vm.output()),
        before,
        "ticks went on while paused"
    );
    c.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    api.vm
        .wait_for(&format!("tick-{}", before + 5), Duration::from_secs(30));
}

/// With guest user space: after PATCH /drives the guest reads the new
/// size and the new file's content.
#[test]
fn drive_swap_shows_the_new_size_and_content_to_guest_user_space() {
    if skip_without_guest_user_space(
        "drive_swap_shows_the_new_size_and_content_to_guest_user_space",
    ) {
        return;
    }
    let small = image("swap-u-small.img", 4, b"OLD-CONTENT!");
    let big = image("swap-u-big.img", 8, b"NEW-CONTENT!");
    let api = ApiVm::start("swap-user", &[]);
    let mut c = api.client();
    c.ok(
        "PUT",
        "/boot-source",
        &boot_source(
            "flint.cmd=head,-c,12,/dev/vda;echo;echo,waiting-for-swap;\
             while,[,$(cat,/sys/block/vda/size),=,8192,];do,sleep,0.1;done;\
             echo,size-$(cat,/sys/block/vda/size);head,-c,12,/dev/vda;echo",
        ),
    );
    c.ok(
        "PUT",
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": small.path(),
                                        "is_root_device": false})
        .to_string(),
    );
    c.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let mut api = api;
    api.vm.wait_for("waiting-for-swap", boot_deadline());
    assert!(api.vm.output().contains("OLD-CONTENT!"));
    c.ok(
        "PATCH",
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": big.path()}).to_string(),
    );
    api.vm.wait_for("size-16384", Duration::from_secs(60));
    api.vm.wait_for("NEW-CONTENT!", Duration::from_secs(60));
}
