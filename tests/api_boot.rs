//! Real guests driven over Firecracker's API. On a kvm_pvm host these
//! check what the guest kernel does by itself; the ones that need guest
//! user space re-run themselves in the lab VM there. Every response is checked against
//! src/api/openapi.json.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::api::{boot_source, expect_faults, image, socket_path, ApiVm, Client, TempFile};
use common::lab::Lab;
use common::{boot_deadline, spawn_command, FLINT};
use serde_json::{json, Value};

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(
    &[
        "go_sdk_order_boots_the_guest_kernel_and_ctrl_alt_del_ends_it",
        "go_sdk_order_boots_to_init_and_runs_a_command",
        "config_file_boot_with_the_api_up_then_pause_resume_and_drive_swap",
        "pause_stops_a_guest_loop_and_resume_restarts_it",
        "drive_swap_shows_the_new_size_and_content_to_guest_user_space",
    ],
    1500,
);

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
    if LAB.ran("go_sdk_order_boots_the_guest_kernel_and_ctrl_alt_del_ends_it") {
        return;
    }
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
    if LAB.ran("go_sdk_order_boots_to_init_and_runs_a_command") {
        return;
    }
    let disk = image("gosdk-user.img", 4, b"");
    let (mut api, _c, metrics, _log) =
        go_sdk_sequence("gosdk-user", "flint.cmd=echo,api-guest,says-hello", &disk);
    api.vm
        .wait_for("flint-guest: init reached", boot_deadline());
    // Not the kernel echoing its command line: the words come apart there.
    api.vm.wait_for("api-guest says-hello", boot_deadline());
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
    if LAB.ran("config_file_boot_with_the_api_up_then_pause_resume_and_drive_swap") {
        return;
    }
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
    // The event loop answers within milliseconds while the guest runs.
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(c.get("/").status, 200);
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("GET / while the guest boots: slowest of 50 {slowest:?}");
    assert!(slowest < Duration::from_millis(200), "{slowest:?}");

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
    if LAB.ran("pause_stops_a_guest_loop_and_resume_restarts_it") {
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
/// size and the new file's content (once its page cache of the old first
/// sector is dropped: the swap does not reach the guest's caches).
#[test]
fn drive_swap_shows_the_new_size_and_content_to_guest_user_space() {
    if LAB.ran("drive_swap_shows_the_new_size_and_content_to_guest_user_space") {
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
            "flint.cmd=head,-c,12,/dev/vda;echo;echo,waiting-for,swap;\
             while,[,$(cat,/sys/block/vda/size),=,8192,];do,sleep,0.1;done;\
             echo,size-$(cat,/sys/block/vda/size);echo,3,>/proc/sys/vm/drop_caches;\
             head,-c,12,/dev/vda;echo",
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
    // "waiting-for swap", not the kernel's echo of "waiting-for,swap".
    api.vm.wait_for("waiting-for swap", boot_deadline());
    let out = api.vm.output();
    assert!(out.contains("OLD-CONTENT!"), "{out}");
    c.ok(
        "PATCH",
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": big.path()}).to_string(),
    );
    api.vm.wait_for("size-16384", Duration::from_secs(60));
    api.vm.wait_for("NEW-CONTENT!", Duration::from_secs(60));
}
