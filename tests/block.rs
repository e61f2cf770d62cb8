//! virtio-block with the real `flint` binary: the guest's root disk and data
//! disks on host image files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::lab::Lab;
use common::{artifact, boot_deadline, sha256, spawn_guest, stop_with_sigterm};

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(
    &[
        "root_disk_is_mounted_read_write_and_left_consistent",
        "read_only_root_is_mounted_read_only_and_unchanged",
        "two_drives_at_once",
        "guest_written_data_reaches_the_host_and_survives_a_reboot",
    ],
    1200,
);

/// A private copy of the default guest's root disk (the guest writes it).
fn rootfs_copy(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("flint-block-{}-{tag}.ext4", std::process::id()));
    std::fs::copy(artifact("rootfs"), &p).unwrap();
    p
}

fn dumpe2fs_field(image: &Path, field: &str) -> String {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("dumpe2fs has no {field:?}:\n{text}"))
        .trim()
        .to_string()
}

/// sha256 of the first `len` bytes of `path` (all of it without `len`).
fn file_sha256(path: &Path, len: Option<u64>) -> String {
    let data = std::fs::read(path).unwrap();
    match len {
        Some(n) => sha256(&data[..n as usize]),
        None => sha256(&data),
    }
}

/// Boot with `drives` and the /pause init, wait for `needles`, then end the
/// VM with SIGTERM (Ctrl-Alt-Del) and expect status 0; returns the output.
fn boot_pause(drives: &[String], needles: &[&str]) -> String {
    let mut args = Vec::new();
    for d in drives {
        args.extend(["--drive", d.as_str()]);
    }
    let mut vm = spawn_guest(false, Some("init=/pause"), &args);
    for n in needles {
        vm.wait_for(n, boot_deadline());
    }
    stop_with_sigterm(&mut vm, Duration::from_secs(120))
}

#[test]
fn root_disk_is_mounted_read_write_and_left_consistent() {
    if LAB.ran("root_disk_is_mounted_read_write_and_left_consistent") {
        return;
    }
    let image = rootfs_copy("rw");
    assert_eq!(dumpe2fs_field(&image, "Mount count"), "0");
    assert_eq!(dumpe2fs_field(&image, "Last mount time"), "n/a");
    boot_pause(
        &[format!("path={},root=on", image.display())],
        &[
            "VFS: Mounted root (ext4 filesystem) on device",
            "Run /pause as init process",
        ],
    );
    // ext4 records each read-write mount in the superblock.
    assert_eq!(dumpe2fs_field(&image, "Mount count"), "1");
    assert_ne!(dumpe2fs_field(&image, "Last mount time"), "n/a");
    let fsck = Command::new("e2fsck")
        .arg("-n")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -n: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    std::fs::remove_file(image).unwrap();
}

#[test]
fn read_only_root_is_mounted_read_only_and_unchanged() {
    if LAB.ran("read_only_root_is_mounted_read_only_and_unchanged") {
        return;
    }
    let image = rootfs_copy("ro");
    let before = file_sha256(&image, None);
    let out = boot_pause(
        &[format!("path={},root=on,ro=on", image.display())],
        &[
            "VFS: Mounted root (ext4 filesystem) readonly",
            "Run /pause as init process",
        ],
    );
    assert!(out.contains("[vda]"), "{out}");
    assert_eq!(
        file_sha256(&image, None),
        before,
        "the read-only image changed"
    );
    std::fs::remove_file(image).unwrap();
}

#[test]
fn two_drives_at_once() {
    if LAB.ran("two_drives_at_once") {
        return;
    }
    let image = rootfs_copy("two");
    let data = std::env::temp_dir().join(format!("flint-block-{}-data.img", std::process::id()));
    std::fs::write(&data, vec![0u8; 8 << 20]).unwrap();
    let out = boot_pause(
        &[
            format!("path={},root=on,id=root", image.display()),
            format!("path={},id=data,ro=on", data.display()),
        ],
        &[
            "[vda] 131072 512-byte logical blocks",
            "[vdb] 16384 512-byte logical blocks",
            "Run /pause as init process",
        ],
    );
    assert!(
        out.contains("VFS: Mounted root (ext4 filesystem) on device"),
        "{out}"
    );
    std::fs::remove_file(image).unwrap();
    std::fs::remove_file(data).unwrap();
}

#[test]
fn guest_written_data_reaches_the_host_and_survives_a_reboot() {
    if LAB.ran("guest_written_data_reaches_the_host_and_survives_a_reboot") {
        return;
    }
    let image = rootfs_copy("data");
    let data = std::env::temp_dir().join(format!("flint-block-{}-rw.img", std::process::id()));
    std::fs::write(&data, vec![0u8; 16 << 20]).unwrap();
    let run = |cmd: &str| {
        let extra = format!("flint.cmd={cmd}");
        let root = format!("path={},root=on", image.display());
        let disk = format!("path={},id=data,cache=writeback", data.display());
        let mut vm = spawn_guest(false, Some(&extra), &["--drive", &root, "--drive", &disk]);
        vm.wait_for("flint-guest: cmd exit 0", boot_deadline());
        let status = vm.wait_exit(Duration::from_secs(60));
        let out = vm.output();
        assert_eq!(status.code(), Some(0), "{out}");
        out
    };
    // 4 MiB of random data written by the guest, then its checksum as the
    // guest reads it back.
    let out = run("dd,if=/dev/urandom,of=/dev/vdb,bs=1M,count=4,conv=fsync&&head,-c,4194304,/dev/vdb|sha256sum");
    let host = file_sha256(&data, Some(4 << 20));
    assert!(
        out.contains(&host),
        "guest checksum differs from host {host}:\n{out}"
    );
    // A second boot reads the same bytes.
    let out = run("head,-c,4194304,/dev/vdb|sha256sum");
    assert!(
        out.contains(&host),
        "data changed across reboot, host {host}:\n{out}"
    );
    std::fs::remove_file(image).unwrap();
    std::fs::remove_file(data).unwrap();
}
