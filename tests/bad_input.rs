//! Bad input: every case ends with a one-line error naming the problem, a
//! non-zero exit, no panic, and no damage.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{run, FLINT};

fn tmp(name: &str, contents: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("flint-bad-{}-{name}", std::process::id()));
    std::fs::write(&p, contents).unwrap();
    p
}

/// Run flint and check it failed with exactly one `flint:` error line that
/// contains every needle.
fn fails_with(args: &[&str], needles: &[&str]) {
    let (status, out) = run(args, Duration::from_secs(30));
    assert!(!status.success(), "flint {args:?} succeeded:\n{out}");
    assert_eq!(status.code(), Some(1), "flint {args:?}: {status}\n{out}");
    assert!(!out.contains("panicked"), "flint {args:?} panicked:\n{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("flint: ")).collect();
    let last = errors
        .last()
        .unwrap_or_else(|| panic!("no error line:\n{out}"));
    for n in needles {
        assert!(last.contains(n), "error {last:?} lacks {n:?}");
    }
}

#[test]
fn missing_kernel_file() {
    fails_with(
        &["--kernel", "/nonexistent/vmlinux"],
        &["/nonexistent/vmlinux", "No such file"],
    );
}

#[test]
fn file_that_is_not_a_kernel() {
    let p = tmp("notkernel", b"#!/bin/sh\necho not a kernel\n");
    fails_with(
        &["--kernel", p.to_str().unwrap()],
        &["is not a Linux kernel", p.to_str().unwrap()],
    );
    std::fs::remove_file(p).unwrap();
}

#[test]
fn elf_that_is_not_an_x86_64_kernel() {
    // A 32-bit ELF header.
    let mut elf = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0];
    elf.resize(64, 0);
    let p = tmp("elf32", &elf);
    fails_with(
        &["--kernel", p.to_str().unwrap()],
        &["not a 64-bit x86 executable"],
    );
    std::fs::remove_file(p).unwrap();
}

#[test]
fn invalid_json() {
    let p = tmp(
        "invalid.json",
        b"{\"boot-source\": {\"kernel_image_path\": ",
    );
    fails_with(
        &["--config-file", p.to_str().unwrap()],
        &["invalid.json", "line"],
    );
    std::fs::remove_file(p).unwrap();
}

#[test]
fn unknown_key_is_named() {
    let p = tmp(
        "unknown.json",
        br#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "cpu_templat": "T2"}}"#,
    );
    fails_with(
        &["--config-file", p.to_str().unwrap()],
        &["unknown field `cpu_templat`"],
    );
    std::fs::remove_file(p).unwrap();
}

#[test]
fn firecracker_keys_flint_lacks_are_named() {
    let p = tmp(
        "template.json",
        br#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "cpu_template": "T2"}}"#,
    );
    fails_with(
        &["--config-file", p.to_str().unwrap()],
        &["cpu_template", "\"T2\"", "not supported by flint yet"],
    );
    std::fs::remove_file(p).unwrap();
    let p = tmp(
        "mmds.json",
        br#"{"boot-source": {"kernel_image_path": "/k"}, "mmds-config": {"network_interfaces": []}}"#,
    );
    fails_with(
        &["--config-file", p.to_str().unwrap()],
        &["\"mmds-config\"", "does not support"],
    );
    std::fs::remove_file(p).unwrap();
}

#[test]
fn missing_config_file() {
    fails_with(
        &["--config-file", "/nonexistent/vm.json"],
        &["/nonexistent/vm.json"],
    );
}

#[test]
fn vcpu_count_zero_and_too_many() {
    fails_with(
        &["--kernel", "/k", "--vcpus", "0"],
        &["vcpu_count", "got 0"],
    );
    fails_with(
        &["--kernel", "/k", "--vcpus", "100000"],
        &["vcpu_count", "100000"],
    );
    let p = tmp(
        "vcpus.json",
        br#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 0}}"#,
    );
    fails_with(&["--config-file", p.to_str().unwrap()], &["vcpu_count"]);
    std::fs::remove_file(p).unwrap();
}

#[test]
fn vcpu_count_above_the_hosts_kvm_limit() {
    // 254 is flint's own ceiling; KVM's may be lower on some hosts.
    let kernel = tmp("limit-kernel", b"not a kernel");
    let (status, out) = run(
        &["--kernel", kernel.to_str().unwrap(), "--vcpus", "254"],
        Duration::from_secs(30),
    );
    std::fs::remove_file(kernel).unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("above this host's KVM limit") || out.contains("is not a Linux kernel"),
        "{out}"
    );
}

#[test]
fn memory_zero_and_absurd() {
    fails_with(
        &["--kernel", "/k", "--memory", "0"],
        &["mem_size_mib", "got 0"],
    );
    fails_with(
        &["--kernel", "/k", "--memory", "99999999999"],
        &["mem_size_mib", "99999999999"],
    );
    // Within flint's address space but beyond this host's RAM.
    fails_with(
        &["--kernel", "/k", "--memory", "16777216"],
        &["mem_size_mib 16777216", "this host has"],
    );
}

#[test]
fn command_line_too_long() {
    let kernel = tmp("cmdline-kernel", b"not a kernel either");
    let long = "a".repeat(4096);
    fails_with(
        &["--kernel", kernel.to_str().unwrap(), "--cmdline", &long],
        &["command line", "at most 2047"],
    );
    std::fs::remove_file(kernel).unwrap();
}

#[test]
fn bad_flags() {
    fails_with(
        &["--kernel", "/k", "--drive", "id=x"],
        &["--drive", "path=FILE"],
    );
    fails_with(
        &["--kernel", "/k", "--drive", "path=/x,colour=red"],
        &["colour"],
    );
    fails_with(
        &["--kernel", "/k", "--net", "mac=00:11:22:33:44:55"],
        &["--net", "tap=NAME"],
    );
}

#[test]
fn usage_errors_exit_2() {
    let (status, out) = run(&["--vcpus", "many"], Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{out}");
    let (status, out) = run(&["--help"], Duration::from_secs(10));
    assert!(status.success() && out.contains("--config-file"), "{out}");
    let (status, out) = run(&["--version"], Duration::from_secs(10));
    assert!(
        status.success() && out.contains(env!("CARGO_PKG_VERSION")),
        "{out}"
    );
    let _ = FLINT;
}

#[test]
fn vsock_entropy_and_balloon_are_checked_before_anything_is_built() {
    let sock = std::env::temp_dir().join(format!("flint-bad-{}-v.sock", std::process::id()));
    let spec = format!("cid=2,uds={}", sock.display());
    fails_with(
        &["--kernel", "/k", "--vsock", &spec],
        &["vsock", "guest_cid 2 is reserved"],
    );
    fails_with(
        &[
            "--kernel",
            "/k",
            "--vsock",
            "cid=3,uds=/nonexistent-dir/v.sock",
        ],
        &["vsock", "/nonexistent-dir does not exist"],
    );
    std::fs::write(&sock, b"").unwrap();
    let spec = format!("cid=3,uds={}", sock.display());
    fails_with(
        &["--kernel", "/k", "--vsock", &spec],
        &["already in use", sock.to_str().unwrap()],
    );
    // The file that was in the way is left as it was.
    assert!(sock.exists());
    std::fs::remove_file(&sock).unwrap();
    fails_with(
        &["--kernel", "/k", "--vsock", "cid=3"],
        &["--vsock", "uds=PATH is required"],
    );
    fails_with(
        &["--kernel", "/k", "--memory", "64", "--balloon", "mib=65"],
        &[
            "balloon",
            "amount_mib 65 is more than the guest's memory (64 MiB)",
        ],
    );
    fails_with(
        &["--kernel", "/k", "--entropy", "bytes_per_s=lots"],
        &["--entropy", "bytes_per_s is a number"],
    );
    // A second vsock on the command line is a usage error.
    let (status, out) = run(
        &[
            "--kernel",
            "/k",
            "--vsock",
            "cid=3,uds=/tmp/a",
            "--vsock",
            "cid=4,uds=/tmp/b",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("--vsock"), "{out}");
    // And in a config file a second "vsock" key is an error that names it.
    let p = tmp(
        "vsock2.json",
        br#"{"boot-source": {"kernel_image_path": "/k"},
             "vsock": {"guest_cid": 3, "uds_path": "/tmp/a"},
             "vsock": {"guest_cid": 4, "uds_path": "/tmp/b"}}"#,
    );
    fails_with(
        &["--config-file", p.to_str().unwrap()],
        &["duplicate field `vsock`"],
    );
    std::fs::remove_file(p).unwrap();
}
