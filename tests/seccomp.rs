//! Seccomp filters with the real `flint` binary: the built-in filters are on
//! in every thread by default and the guest boots under them; a custom
//! filter file is obeyed (a forbidden call ends flint with 148 and a line
//! naming the thread and the call); `--no-seccomp` installs none; bad
//! filter files are refused before anything starts.
//!
//! The boots here stop at the guest kernel's hand-over to init, so they run
//! on a kvm_pvm host as they are.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::lab::Lab;
use common::{boot_deadline, run, spawn, spawn_guest, stop_with_sigterm, Running};

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(
    &[
        "no_seccomp_installs_no_filter_and_boots",
        "the_builtin_lists_compiled_from_json_boot_like_the_defaults",
    ],
    600,
);

const SECCOMPILER: &str = env!("CARGO_BIN_EXE_flint-seccompiler");

/// Each thread of flint with its name and its seccomp mode (0: none,
/// 2: filter), from /proc.
fn thread_modes(vm: &Running) -> Vec<(String, u32)> {
    let task = PathBuf::from(format!("/proc/{}/task", vm.child.id()));
    let mut out = Vec::new();
    for t in std::fs::read_dir(&task).expect("read /proc/PID/task") {
        let dir = t.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a Seccomp: line in /proc/PID/task/TID/status");
        out.push((comm.trim().to_string(), mode));
    }
    out
}

/// The mode of flint's own threads, leaving out kernel helpers KVM adds
/// to the process (kvm-nx-lpage-recovery).
fn flint_thread_modes(vm: &Running) -> Vec<(String, u32)> {
    thread_modes(vm)
        .into_iter()
        .filter(|(name, _)| !name.starts_with("kvm"))
        .collect()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flint-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Compile `json` with flint-seccompiler into a filter file.
fn compile(json: &serde_json::Value, name: &str) -> PathBuf {
    let input = temp(&format!("{name}.json"));
    let output = temp(&format!("{name}.bpf"));
    std::fs::write(&input, serde_json::to_vec_pretty(json).unwrap()).unwrap();
    let out = Command::new(SECCOMPILER)
        .arg("--input-file")
        .arg(&input)
        .arg("--output-file")
        .arg(&output)
        .output()
        .expect("run flint-seccompiler");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    output
}

fn builtin_json() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/seccomp/x86_64.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn default_filters_are_on_in_every_thread_and_the_guest_boots_to_init() {
    let mut vm = spawn_guest(true, Some("rdinit=/pause"), &[]);
    vm.wait_for("Run /pause as init process", boot_deadline());
    let modes = flint_thread_modes(&vm);
    assert!(
        modes.iter().any(|(n, _)| n == "vcpu0") && modes.len() >= 2,
        "{modes:?}"
    );
    assert!(modes.iter().all(|(_, m)| *m == 2), "{modes:?}");
    // SIGTERM, Ctrl-Alt-Del, the guest's reboot through the i8042, and
    // flint's way out, all under the filters.
    let out = stop_with_sigterm(&mut vm, Duration::from_secs(120));
    assert!(!out.contains("seccomp"), "{out}");
}

#[test]
fn no_seccomp_installs_no_filter_and_boots() {
    if LAB.ran("no_seccomp_installs_no_filter_and_boots") {
        return;
    }
    let mut vm = spawn_guest(true, Some("rdinit=/pause"), &["--no-seccomp"]);
    vm.wait_for("Run /pause as init process", boot_deadline());
    let modes = flint_thread_modes(&vm);
    assert!(modes.iter().any(|(n, _)| n == "vcpu0"), "{modes:?}");
    assert!(modes.iter().all(|(_, m)| *m == 0), "{modes:?}");
    stop_with_sigterm(&mut vm, Duration::from_secs(120));
}

#[test]
fn api_thread_runs_under_its_filter_and_serves() {
    let sock = common::api::socket_path("seccomp");
    let mut vm = spawn(&["--api-sock", sock.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Several connections: each one is a thread the api thread starts
    // under its filter.
    for _ in 0..3 {
        let mut c = common::api::Client::connect(&sock).unwrap();
        let r = c.get("/");
        assert_eq!(r.status, 200, "{r:?}");
        let r = c.put(
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
        );
        assert_eq!(r.status, 204, "{r:?}");
    }
    let modes = flint_thread_modes(&vm);
    let api = modes.iter().find(|(n, _)| n == "api");
    assert_eq!(api.map(|a| a.1), Some(2), "{modes:?}");
    vm.signal(libc::SIGTERM);
    let status = vm.wait_exit(Duration::from_secs(30));
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(!out.contains("seccomp"), "{out}");
}

#[test]
fn a_custom_filter_without_ioctl_for_vcpus_stops_flint_with_148_at_the_first_kvm_run() {
    let mut json = builtin_json();
    let rules = json["vcpu"]["filter"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| r["syscall"] != "ioctl");
    assert!(rules.len() < before, "the built-in vcpu list has ioctl");
    let file = compile(&json, "vcpu-without-ioctl");
    let kernel = common::artifact("kernel");
    let (status, out) = run(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--seccomp-filter",
            file.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(status.code(), Some(148), "{out}");
    assert!(
        out.contains(
            "flint: seccomp: thread vcpu0 made a forbidden system call 16 (ioctl); stopping"
        ),
        "{out}"
    );
    // Nothing ran in the guest.
    assert!(!out.contains("Linux version"), "{out}");
}

#[test]
fn the_builtin_lists_compiled_from_json_boot_like_the_defaults() {
    if LAB.ran("the_builtin_lists_compiled_from_json_boot_like_the_defaults") {
        return;
    }
    let file = compile(&builtin_json(), "builtin");
    let mut vm = spawn_guest(
        true,
        Some("rdinit=/pause"),
        &["--seccomp-filter", file.to_str().unwrap()],
    );
    vm.wait_for("Run /pause as init process", boot_deadline());
    let modes = flint_thread_modes(&vm);
    assert!(modes.iter().all(|(_, m)| *m == 2), "{modes:?}");
    stop_with_sigterm(&mut vm, Duration::from_secs(120));
}

/// flint with `args` and the default kernel must exit 1 at once with a
/// message containing each of `needles`.
fn refused(args: &[&str], code: i32, needles: &[&str]) {
    let kernel = common::artifact("kernel");
    let mut all = vec!["--kernel", kernel.to_str().unwrap()];
    all.extend_from_slice(args);
    let (status, out) = run(&all, Duration::from_secs(30));
    assert_eq!(status.code(), Some(code), "{out}");
    for n in needles {
        assert!(out.contains(n), "no {n:?} in:\n{out}");
    }
    assert!(!out.contains("Linux version"), "{out}");
}

#[test]
fn bad_filter_files_are_refused_before_anything_starts() {
    let missing = temp("does-not-exist.bpf");
    let m = missing.to_str().unwrap();
    refused(&["--seccomp-filter", m], 1, &[m, "No such file"]);

    let garbled = temp("garbled.bpf");
    std::fs::write(&garbled, b"{\"main\": \"not a compiled filter\"}").unwrap();
    let g = garbled.to_str().unwrap();
    refused(
        &["--seccomp-filter", g],
        1,
        &[g, "not a compiled filter file"],
    );

    let good = std::fs::read(compile(&builtin_json(), "to-truncate")).unwrap();
    let truncated = temp("truncated.bpf");
    std::fs::write(&truncated, &good[..good.len() - 3]).unwrap();
    let t = truncated.to_str().unwrap();
    refused(&["--seccomp-filter", t], 1, &[t, "truncated"]);

    let mut json = builtin_json();
    json.as_object_mut().unwrap().remove("api");
    // flint-seccompiler refuses to write such a file...
    let input = temp("no-api.json");
    std::fs::write(&input, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = Command::new(SECCOMPILER)
        .arg("--input-file")
        .arg(&input)
        .arg("--output-file")
        .arg(temp("no-api.bpf"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no filter named \"api\""),
        "{out:?}"
    );
    // ...and flint refuses one another tool wrote: the good file with its
    // "api" entry renamed.
    let renamed = temp("renamed.bpf");
    let at = good.windows(3).position(|w| w == b"api").unwrap();
    let mut bytes = good.clone();
    bytes[at..at + 3].copy_from_slice(b"xyz");
    std::fs::write(&renamed, &bytes).unwrap();
    let r = renamed.to_str().unwrap();
    refused(
        &["--seccomp-filter", r],
        1,
        &[r, "no filter for the \"api\" threads", "main, vcpu, xyz"],
    );

    // Both flags: a usage error.
    refused(
        &["--no-seccomp", "--seccomp-filter", r],
        2,
        &["--no-seccomp"],
    );
}
