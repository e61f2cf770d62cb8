//! Firecracker's API on flint's unix socket, against the real binary, with
//! no guest: these start flint with `--api-sock` and no VM, and are fast.
//! tests/api_boot.rs drives real guests over the API. Every response is
//! checked against src/api/openapi.json.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::api::{boot_source, expect_faults, image, ApiVm, TempFile};
use common::artifact;
use serde_json::json;

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
            ("PUT", "/mmds", "{}", &["MMDS"]),
            ("PUT", "/mmds/config", "{}", &["MMDS"]),
            (
                "PUT",
                "/snapshot/create",
                "{}",
                &["missing field `snapshot_path`"],
            ),
            ("GET", "/snapshot/load", "", &["method GET is not allowed"]),
            (
                "PUT",
                "/snapshot/create",
                r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
                &["not started yet"],
            ),
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
