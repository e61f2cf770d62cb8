//! Booting the default guest with the real `flint` binary.
//!
//! On a kvm_pvm host these check what the guest kernel does by itself (its
//! hand-over to init, CPU bring-up, reboot); the tests that need guest user
//! space run on hardware KVM and say why they skip elsewhere.

mod common;

use std::time::Duration;

use common::{boot_deadline, skip_without_guest_user_space, spawn_guest, stop_with_sigterm};

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
    let mut vm = spawn_guest(true, Some("rdinit=/pause"), &["--vcpus", "2"]);
    vm.wait_for("smp: Brought up 1 node, 2 CPUs", boot_deadline());
    vm.wait_for("Run /pause as init process", boot_deadline());
}

#[test]
fn sigterm_reboots_the_guest_through_ctrl_alt_del() {
    let mut vm = spawn_guest(true, Some("rdinit=/pause"), &[]);
    vm.wait_for("Run /pause as init process", boot_deadline());
    let out = stop_with_sigterm(&mut vm, Duration::from_secs(120));
    assert!(out.contains("Ctrl-Alt-Del"), "{out}");
}

#[test]
fn init_runs_a_command_and_ends_the_vm() {
    if skip_without_guest_user_space("init_runs_a_command_and_ends_the_vm") {
        return;
    }
    let mut vm = spawn_guest(
        true,
        Some("flint.cmd=echo,flint-says-hello"),
        &["--boot-timer"],
    );
    vm.wait_for("flint-guest: init reached", boot_deadline());
    vm.wait_for("flint-says-hello", boot_deadline());
    vm.wait_for("flint-guest: cmd exit 0", boot_deadline());
    let status = vm.wait_exit(Duration::from_secs(60));
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
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
