//! ACPI: kernels with ACPI find their CPUs, IOAPIC and virtio devices in
//! flint's tables (MADT, DSDT) instead of the MP table and the command
//! line. These are kernel-level tests. On a kvm_pvm host the first runs on
//! the bare host, where it exercises flint's emulation-failure handling;
//! the other two, which would take a minute or more each there, run in the
//! lab (`common::lab`).

mod common;

use std::time::Duration;

use common::lab::Lab;
use common::{acpi_kernel, artifact, boot_deadline, cmdline, debian, spawn, stop_with_sigterm};

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(
    &[
        "acpi_off_falls_back_to_the_mp_table",
        "debians_stock_kernel_reads_flints_tables_without_errors",
    ],
    900,
)
.with_setup(debian_kernel);

/// Debian's kernel, built (or found) here: the lab cannot build it.
fn debian_kernel() -> Box<dyn std::any::Any> {
    Box::new(debian("kernel"))
}

/// Lines where the kernel complains about the firmware's tables.
fn acpi_errors(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.contains("ACPI Error") || l.contains("ACPI BIOS Error"))
        .collect()
}

/// The kernel's own echo of its command line.
fn kernel_cmdline(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_else(|| panic!("no command line echo:\n{out}"))
}

#[test]
fn acpi_kernel_finds_its_virtio_disk_through_the_dsdt() {
    let kernel = acpi_kernel("kernel");
    let initrd = artifact("initrd");
    let rootfs = artifact("rootfs");
    // flint's default command line without i8042.nopnp: with hardware-
    // reduced ACPI there is no legacy PIC, so the keyboard controller's
    // IRQ 1 exists only through its PNP0303 device in the DSDT.
    let cl = cmdline("rdinit=/pause").replace(" i8042.nopnp", "");
    let drive = format!("path={},ro=on", rootfs.display());
    let mut vm = spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cl,
        "--drive",
        &drive,
        "--vcpus",
        "2",
        "--log-level",
        "info",
        // Ctrl-Alt-Del to reset is tens of seconds of emulated kernel code
        // on a kvm_pvm host, more when the host is busy.
        "--shutdown-timeout",
        "120",
    ]);
    vm.wait_for("[vda]", boot_deadline());
    vm.wait_for("Run /pause as init process", Duration::from_secs(300));
    let out = stop_with_sigterm(&mut vm, Duration::from_secs(180));
    assert!(
        !kernel_cmdline(&out).contains("virtio_mmio.device="),
        "the devices went on the command line:\n{out}"
    );
    assert!(out.contains("in the ACPI DSDT"), "{out}");
    assert!(
        out.contains("virtio_blk virtio0: [vda] 131072 512-byte logical blocks"),
        "the disk was not found whole:\n{out}"
    );
    assert!(
        out.contains("smp: Brought up 1 node, 2 CPUs"),
        "not every vCPU came up:\n{out}"
    );
    assert!(
        out.contains("Using ACPI (MADT) for SMP configuration"),
        "the MADT was not used:\n{out}"
    );
    assert!(out.contains("IOAPIC[0]: apic_id"), "no IOAPIC:\n{out}");
    assert_eq!(acpi_errors(&out), Vec::<&str>::new(), "{out}");
}

#[test]
fn acpi_off_falls_back_to_the_mp_table() {
    if LAB.ran("acpi_off_falls_back_to_the_mp_table") {
        return;
    }
    let kernel = acpi_kernel("kernel");
    let initrd = artifact("initrd");
    let cl = cmdline("acpi=off rdinit=/pause");
    let mut vm = spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cl,
        "--vcpus",
        "2",
        "--shutdown-timeout",
        "120",
    ]);
    vm.wait_for("Run /pause as init process", boot_deadline());
    let out = stop_with_sigterm(&mut vm, Duration::from_secs(180));
    assert!(
        out.contains("Intel MultiProcessor Specification"),
        "the MP table was not used:\n{out}"
    );
    assert!(out.contains("smp: Brought up 1 node, 2 CPUs"), "{out}");
    assert!(!out.contains("Using ACPI (MADT)"), "ACPI was used:\n{out}");
}

#[test]
fn debians_stock_kernel_reads_flints_tables_without_errors() {
    if LAB.ran("debians_stock_kernel_reads_flints_tables_without_errors") {
        return;
    }
    let kernel = debian("kernel");
    // Only the kernel's own start is looked at: it reaches SMP bring-up
    // and the IOAPIC without its initramfs.
    let mut vm = spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 panic=-1",
        "--vcpus",
        "2",
        "--memory",
        "512",
    ]);
    vm.wait_for("smp: Brought up 1 node, 2 CPUs", boot_deadline());
    // The interpreter's messages about the DSDT come a little later.
    vm.wait_for("ACPI: Interpreter enabled", Duration::from_secs(300));
    let out = vm.output();
    assert!(
        out.contains("Using ACPI (MADT) for SMP configuration"),
        "the MADT was not used:\n{out}"
    );
    assert!(out.contains("IOAPIC[0]: apic_id"), "no IOAPIC:\n{out}");
    assert_eq!(acpi_errors(&out), Vec::<&str>::new(), "{out}");
}
