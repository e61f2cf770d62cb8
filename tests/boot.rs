//! Booting the default guest with the real `flint` binary.
//!
//! On a kvm_pvm host the first test checks what the guest kernel does by
//! itself there (its hand-over to init, its reboot); the others, which need
//! guest user space or would take over a minute each on that host, run
//! inside the lab VM (`common::lab`), and directly on hardware KVM.

mod common;

use std::time::Duration;

use common::lab::Lab;
use common::{boot_deadline, spawn_guest, stop_with_sigterm};

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(
    &[
        "two_vcpus_are_brought_up",
        "sigterm_reboots_the_guest_through_ctrl_alt_del",
        "init_runs_a_command_and_ends_the_vm",
        "bzimage_kernel_boots_to_init",
        "memory_of_4096_mib_crosses_the_32_bit_hole_and_holds_data_at_its_top",
        "eight_vcpus_come_online_and_each_runs_a_task",
        "kernel_command_line_of_2047_bytes_reaches_the_guest_intact",
        "sigterm_during_guest_user_space_reboots_the_guest_cleanly",
        "guest_that_ignores_ctrl_alt_del_is_stopped_after_the_shutdown_timeout",
    ],
    1800,
);

#[test]
fn default_guest_reaches_init_and_flint_exits_0_on_reboot() {
    let mut vm = spawn_guest(true, None, &["--boot-timer"]);
    vm.wait_for("Run /init as init process", boot_deadline());
    // On hardware KVM init ends the VM with a reboot; on PVM init dies at
    // its first system call and the kernel panics and reboots (panic=1).
    // Either way: 0.
    let status = vm.wait_exit(Duration::from_secs(120));
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    for phase in [
        "config-parsed",
        "vm-built",
        "first-kvm-run",
        "first-console-byte",
        "init-handover",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("flint: boot-phase {phase} ")))
            .unwrap_or_else(|| panic!("no {phase} line:\n{out}"));
        assert!(line.ends_with(" ms"), "{line}");
    }
}

#[test]
fn two_vcpus_are_brought_up() {
    if LAB.ran("two_vcpus_are_brought_up") {
        return;
    }
    let mut vm = spawn_guest(true, Some("rdinit=/pause"), &["--vcpus", "2"]);
    vm.wait_for("smp: Brought up 1 node, 2 CPUs", boot_deadline());
    vm.wait_for("Run /pause as init process", boot_deadline());
}

#[test]
fn sigterm_reboots_the_guest_through_ctrl_alt_del() {
    if LAB.ran("sigterm_reboots_the_guest_through_ctrl_alt_del") {
        return;
    }
    let mut vm = spawn_guest(true, Some("rdinit=/pause"), &[]);
    vm.wait_for("Run /pause as init process", boot_deadline());
    let out = stop_with_sigterm(&mut vm, Duration::from_secs(120));
    assert!(out.contains("Ctrl-Alt-Del"), "{out}");
}

#[test]
fn init_runs_a_command_and_ends_the_vm() {
    if LAB.ran("init_runs_a_command_and_ends_the_vm") {
        return;
    }
    let mut vm = spawn_guest(
        true,
        Some("flint.cmd=echo,flint-says-$((6*7))"),
        &["--boot-timer"],
    );
    vm.wait_for("flint-guest: init reached", boot_deadline());
    // Computed by the guest's shell: the kernel's echo of its command line
    // does not match.
    vm.wait_for("flint-says-42", boot_deadline());
    vm.wait_for("flint-guest: cmd exit 0", boot_deadline());
    let status = vm.wait_exit(Duration::from_secs(60));
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.lines().any(|l| l.trim_end() == "flint-says-42"),
        "the command's output is not a line of its own:\n{out}"
    );
    let timer = out
        .lines()
        .find(|l| l.starts_with("flint: boot-phase boot-timer "))
        .unwrap_or_else(|| panic!("no boot-timer line:\n{out}"));
    assert!(
        timer.ends_with(" ms"),
        "the guest's boot-timer write was not seen: {timer}"
    );
}

#[test]
fn bzimage_kernel_boots_to_init() {
    if LAB.ran("bzimage_kernel_boots_to_init") {
        return;
    }
    let bzimage = common::artifact("bzimage");
    let initrd = common::artifact("initrd");
    let cl = common::cmdline("rdinit=/pause");
    let mut vm = common::spawn(&[
        "--kernel",
        bzimage.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cl,
        "--log-level",
        "info",
    ]);
    vm.wait_for("payload decompressed by flint", Duration::from_secs(30));
    vm.wait_for("Run /pause as init process", boot_deadline());
    stop_with_sigterm(&mut vm, Duration::from_secs(120));
}

/// A raw disk image holding `script`, padded with newlines to whole sectors,
/// for the guest to run with `sh /dev/vdX` (flint.cmd= has no commas or
/// quotes). Returns its path; the caller removes it.
fn script_drive(name: &str, script: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("flint-boot-{}-{name}.sh.img", std::process::id()));
    let mut bytes = script.as_bytes().to_vec();
    bytes.resize(bytes.len().div_ceil(512) * 512 + 512, b'\n');
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Run `script` in the default guest (initramfs, the script on /dev/vda)
/// with further flint `args`; returns the output once flint exited 0.
fn run_script(name: &str, script: &str, args: &[&str]) -> String {
    let drive = script_drive(name, script);
    let spec = format!("path={},id=script,ro=on", drive.display());
    let mut all = vec!["--drive", spec.as_str()];
    all.extend_from_slice(args);
    let mut vm = spawn_guest(true, Some("flint.cmd=sh,/dev/vda"), &all);
    vm.wait_for("flint-guest: cmd exit", boot_deadline());
    let status = vm.wait_exit(Duration::from_secs(60));
    let out = vm.output();
    std::fs::remove_file(drive).unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("flint-guest: cmd exit 0"),
        "the script failed:\n{out}"
    );
    out
}

/// The value after `key` on the output line that starts with it.
fn field<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line:\n{out}"))
        .split_whitespace()
        .collect()
}

#[test]
fn memory_of_4096_mib_crosses_the_32_bit_hole_and_holds_data_at_its_top() {
    if LAB.ran("memory_of_4096_mib_crosses_the_32_bit_hole_and_holds_data_at_its_top") {
        return;
    }
    // User pages come from the highest zone first: 64 MiB of tmpfs data
    // land in ZONE_NORMAL, the guest RAM flint maps above 4 GiB (the top
    // GiB of this guest), which the free-page count there shows.
    let script = r#"set -e
free -m
echo "memtotal-kib $(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
normal_free() { awk '/zone +Normal/ { z = 1 } z && /pages free/ { print $3; exit }' /proc/zoneinfo; }
echo "normal-spanned $(awk '/zone +Normal/ { z = 1 } z && /spanned/ { print $2; exit }' /proc/zoneinfo)"
before=$(normal_free)
mount -t tmpfs -o size=256m tmpfs /mnt
yes flint-top-of-memory | head -c $((64 << 20)) > /mnt/pattern
echo "normal-free $before $(normal_free)"
want=$(yes flint-top-of-memory | head -c $((64 << 20)) | md5sum)
got=$(md5sum < /mnt/pattern)
[ "$want" = "$got" ] && echo pattern-verified
"#;
    let out = run_script("mem4g", script, &["--memory", "4096"]);
    let total_kib: u64 = field(&out, "memtotal-kib ")[0].parse().unwrap();
    assert!(
        total_kib >= 3942 * 1024,
        "the guest sees only {} MiB of 4096:\n{out}",
        total_kib / 1024
    );
    // 4096 MiB = 3 GiB below the hole + 1 GiB above 4 GiB (262144 pages).
    let spanned: u64 = field(&out, "normal-spanned ")[0].parse().unwrap();
    assert_eq!(spanned, 262_144, "{out}");
    let free = field(&out, "normal-free ");
    let (before, after): (u64, u64) = (free[0].parse().unwrap(), free[1].parse().unwrap());
    assert!(
        before.saturating_sub(after) > 15_000,
        "the data did not go above 4 GiB (free pages there {before} -> {after}):\n{out}"
    );
    assert!(out.contains("pattern-verified"), "{out}");
}

#[test]
fn eight_vcpus_come_online_and_each_runs_a_task() {
    if LAB.ran("eight_vcpus_come_online_and_each_runs_a_task") {
        return;
    }
    // Field 39 of /proc/self/stat: the CPU the reading process runs on.
    let script = r#"set -e
echo "online $(nproc)"
for i in 0 1 2 3 4 5 6 7; do
    taskset -c $i awk -v want=$i '{ print "cpu-task", want, $39 }' /proc/self/stat &
done
wait
"#;
    let out = run_script("smp8", script, &["--vcpus", "8"]);
    assert!(out.contains("smp: Brought up 1 node, 8 CPUs"), "{out}");
    assert_eq!(field(&out, "online "), ["8"], "{out}");
    for cpu in 0..8 {
        assert!(
            out.lines()
                .any(|l| l.trim_end() == format!("cpu-task {cpu} {cpu}")),
            "no task ran on CPU {cpu}:\n{out}"
        );
    }
}

#[test]
fn kernel_command_line_of_2047_bytes_reaches_the_guest_intact() {
    if LAB.ran("kernel_command_line_of_2047_bytes_reaches_the_guest_intact") {
        return;
    }
    // loglevel=1: no kernel message lands in the middle of cat's line.
    let mut line = common::cmdline("loglevel=1 flint.cmd=cat,/proc/cmdline flint.pad=");
    let pad = 2047 - line.len();
    line.extend(std::iter::repeat_n('x', pad - 1));
    line.push('!');
    assert_eq!(line.len(), 2047);
    let kernel = common::artifact("kernel");
    let initrd = common::artifact("initrd");
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &line,
    ];
    let mut vm = common::spawn(&args);
    vm.wait_for("flint-guest: cmd exit 0", boot_deadline());
    let status = vm.wait_exit(Duration::from_secs(60));
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.lines().any(|l| l.trim_end() == line),
        "/proc/cmdline in the guest differs from the 2047 bytes given:\n{out}"
    );
    // One byte more is refused before anything starts.
    line.push('x');
    args_with_cmdline_refused(&kernel, &line);
}

fn args_with_cmdline_refused(kernel: &std::path::Path, line: &str) {
    let (status, out) = common::run(
        &["--kernel", kernel.to_str().unwrap(), "--cmdline", line],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("2047"),
        "the error does not give the limit:\n{out}"
    );
}

#[test]
fn sigterm_during_guest_user_space_reboots_the_guest_cleanly() {
    if LAB.ran("sigterm_during_guest_user_space_reboots_the_guest_cleanly") {
        return;
    }
    // The marker is computed by the guest's shell: the kernel's echo of its
    // command line must not count as user space running.
    let mut vm = spawn_guest(
        true,
        Some("flint.cmd=echo,user-space-$((40+2));sleep,600"),
        &[],
    );
    vm.wait_for("user-space-42", boot_deadline());
    let out = stop_with_sigterm(&mut vm, Duration::from_secs(60));
    assert!(!out.contains("flint-guest: cmd exit"), "{out}");
}

#[test]
fn guest_that_ignores_ctrl_alt_del_is_stopped_after_the_shutdown_timeout() {
    if LAB.ran("guest_that_ignores_ctrl_alt_del_is_stopped_after_the_shutdown_timeout") {
        return;
    }
    // With ctrl-alt-del at 0 the kernel does not reboot but sends SIGINT to
    // cad_pid (init, which would then end the VM): here a shell that
    // ignores it.
    let mut vm = spawn_guest(
        true,
        Some(
            "flint.cmd=trap,'',INT;echo,0,>/proc/sys/kernel/ctrl-alt-del&&\
             echo,$$,>/proc/sys/kernel/cad_pid&&echo,cad-ignored-$((40+2));sleep,600",
        ),
        &["--shutdown-timeout", "3"],
    );
    vm.wait_for("cad-ignored-42", boot_deadline());
    let sent = std::time::Instant::now();
    vm.signal(libc::SIGTERM);
    let status = vm.wait_exit(Duration::from_secs(60));
    let waited = sent.elapsed();
    let out = vm.output();
    assert_eq!(status.code(), Some(4), "{out}");
    assert!(out.contains("did not reboot within 3s"), "{out}");
    assert!(!out.contains("reboot: Restarting system"), "{out}");
    assert!(
        waited >= Duration::from_secs(3),
        "stopped after {waited:?}, before the timeout"
    );
}
