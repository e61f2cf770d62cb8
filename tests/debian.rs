//! An unmodified Debian 12 system (resources/debian/build.sh): Debian's
//! cloud kernel and its own initramfs find flint's devices through ACPI,
//! systemd brings it to multi-user.target, and it powers off, and reboots
//! on SIGTERM, through ACPI and the keyboard controller. systemd is user
//! space, so on a kvm_pvm host these run in the lab (`common::lab`).
//!
//! A boot to systemd's login takes two to four minutes there, so these
//! tests share one boot where they can: poweroff, ping and a synced write
//! in one; the reboot typed at the shell and the one SIGTERM starts take
//! the same way from systemd's reboot target on, so one test has both.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::netns::Netns;
use common::{debian, in_lab, spawn_with_console, Running, FLINT};

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(
    &[
        "debian_reaches_multi_user_answers_ping_keeps_its_writes_and_powers_off",
        "sigterm_shuts_debian_down_cleanly",
        "debian_without_its_root_disk_gives_up_and_flint_exits",
        "a_truncated_initrd_is_reported_by_the_guest_and_flint_exits",
    ],
    3000,
)
.with_setup(disks);

/// The Debian image built (or found) and each disk copied here, before
/// the lab run: the lab cannot build the image, and a copy over 9p there
/// takes minutes.
fn disks() -> Box<dyn std::any::Any> {
    debian("kernel");
    Box::new(["poweroff", "sigterm"].map(Disk::new))
}

const GUEST: &str = "172.16.0.2";
const HOST: &str = "172.16.0.1";

/// How long the Debian system may take to reach its login prompt: systemd
/// under the lab's emulation takes tens of seconds.
fn boot_deadline() -> Duration {
    if in_lab() {
        Duration::from_secs(400)
    } else {
        Duration::from_secs(120)
    }
}

/// A private copy of the Debian root disk for test `tag` (the guest writes
/// to it). Made outside the lab, where copying is fast: on a kvm_pvm host
/// by [`disks`] before the lab run, which drops it after. Inside the lab
/// this only names that copy.
struct Disk(PathBuf);

impl Disk {
    fn new(tag: &str) -> Disk {
        let p = std::env::temp_dir().join(format!("flint-debian-{tag}.ext4"));
        if !in_lab() {
            let src = debian("rootfs");
            let ok = Command::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(&src)
                .arg(&p)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot copy {} to {}", src.display(), p.display());
        }
        Disk(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if !in_lab() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A booted Debian guest with its serial console.
struct Debian {
    vm: Running,
    console: ChildStdin,
}

impl Debian {
    /// Boot the image on `disk`, in `ns` with a NIC on tap0 when given,
    /// and log in as root on the serial console.
    fn boot(disk: &Disk, ns: Option<&Netns>) -> Debian {
        let (kernel, initrd) = (debian("kernel"), debian("initrd"));
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, FLINT]);
                c
            }
            None => Command::new(FLINT),
        };
        cmd.arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .arg("--drive")
            .arg(format!("path={},root=on", disk.path().display()))
            // One vCPU: the lab has one CPU, and with two the guest's
            // vCPUs took turns on it (a spinning lock holder's peer waits a
            // whole host time slice): the boot to login took 230 s, and
            // SIGTERM's shutdown stalled past its deadline in two runs of
            // three. Debian's kernel with two CPUs from flint's MADT is
            // tests/acpi.rs's.
            .args(["--memory", "512", "--vcpus", "1", "--log-level", "info"])
            // systemd's shutdown after Ctrl-Alt-Del (SIGTERM) takes longer
            // than flint's default 30 s under the lab's emulation.
            .args(["--shutdown-timeout", "300"])
            // reboot=acpi: reset through the FADT's reset register. (Left
            // to itself, Linux on hardware-reduced ACPI tries an EFI reset,
            // then the BIOS, neither of which a microVM has.)
            .arg("--cmdline");
        if ns.is_some() {
            // systemd-network-generator turns ip= into a networkd file.
            cmd.arg(format!(
                "console=ttyS0 reboot=acpi panic=1 ip={GUEST}::{HOST}:255.255.255.0::eth0:off"
            ));
            cmd.args(["--net", "tap=tap0,mac=06:00:ac:10:00:02"]);
        } else {
            cmd.arg("console=ttyS0 reboot=acpi panic=1");
        }
        let launched = Instant::now();
        let (vm, console) = spawn_with_console(cmd);
        let mut d = Debian { vm, console };
        // The boot's phases, as seen from here (the note in the README
        // quotes them).
        let mut phases = Vec::new();
        for (name, needle) in [
            ("kernel start", "Linux version"),
            ("initramfs", "Run /init as init process"),
            ("root mounted", "EXT4-fs (vda): mounted"),
            ("systemd", "systemd[1]:"),
            ("multi-user.target", "Multi-User System"),
            ("login prompt", "flint-debian login:"),
        ] {
            d.vm.wait_for(needle, boot_deadline());
            phases.push(format!("{name} {:.1} s", launched.elapsed().as_secs_f64()));
        }
        eprintln!("debian boot phases since launch: {}", phases.join(", "));
        d.type_line("root");
        // Kernel messages on the console would mix with the commands'
        // output.
        d.run("dmesg -n 1");
        d
    }

    fn type_line(&mut self, line: &str) {
        self.console
            .write_all(format!("{line}\n").as_bytes())
            .expect("type on the guest's console");
    }

    /// Run `cmd` at the guest's shell and return what it printed (the
    /// lines between the typed command and its end marker, terminal
    /// escapes and carriage returns taken out).
    fn run(&mut self, cmd: &str) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The marker is computed by the shell, so the echo of the typed
        // line cannot match it.
        let end = format!("end-{n}-{}", 40 + 2);
        self.type_line(&format!("{cmd}; echo end-{n}-$((40+2))"));
        let t0 = Instant::now();
        loop {
            let out = plain(&self.vm.output());
            let lines: Vec<&str> = out.lines().collect();
            if let Some(e) = lines.iter().rposition(|l| l.trim() == end) {
                let typed = format!("echo end-{n}-$((40+2))");
                let s = lines[..e]
                    .iter()
                    .rposition(|l| l.contains(&typed))
                    .map_or(0, |i| i + 1);
                return lines[s..e].join("\n").trim().to_string();
            }
            if t0.elapsed() > Duration::from_secs(300) {
                panic!("{cmd:?} did not finish:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `text` without terminal escape sequences (bash's bracketed-paste
/// switches, colours) and carriage returns.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn debian_reaches_multi_user_answers_ping_keeps_its_writes_and_powers_off() {
    let test = "debian_reaches_multi_user_answers_ping_keeps_its_writes_and_powers_off";
    if LAB.ran(test) {
        return;
    }
    let disk = Disk::new("poweroff");
    common::netns::require_root(test);
    let ns = Netns::new();
    ns.add_tap("tap0", &format!("{HOST}/24"));
    let mut d = Debian::boot(&disk, Some(&ns));
    let state = d.run("systemctl is-system-running --wait");
    if state != "running" {
        let failed = d.run("systemctl --failed --no-legend --plain");
        panic!("system state {state:?}; failed units:\n{failed}");
    }
    assert_eq!(d.run("systemctl is-active multi-user.target"), "active");
    let addr = d.run("ip -4 -o addr show dev eth0");
    assert!(addr.contains(&format!("{GUEST}/24")), "eth0: {addr}");
    let ping = ns.exec("ping", &["-c", "3", "-W", "10", GUEST]);
    assert!(
        ping.status.success(),
        "the guest does not answer ping:\n{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    d.run("echo flint-debian-data-$((40+2)) > /root/written-by-the-guest && sync");
    d.type_line("poweroff");
    let status = d.vm.wait_exit(Duration::from_secs(240));
    let out = d.vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("the guest powered off"), "{out}");
    assert!(out.contains("reboot: Power down"), "{out}");
    // The file the guest wrote and synced is on the image.
    let img = Command::new("debugfs")
        .args(["-R", "cat /root/written-by-the-guest"])
        .arg(disk.path())
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&img.stdout);
    assert!(
        text.contains("flint-debian-data-42"),
        "on the image: {text:?}"
    );
}

/// SIGTERM to flint is Ctrl-Alt-Del to the guest: systemd goes through its
/// reboot target, the kernel restarts through the FADT's reset register
/// (`reboot=acpi`), and flint exits 0. That is also the path of `reboot`
/// typed at the guest's shell, from systemd's reboot target on.
#[test]
fn sigterm_shuts_debian_down_cleanly() {
    if LAB.ran("sigterm_shuts_debian_down_cleanly") {
        return;
    }
    let disk = Disk::new("sigterm");
    let mut d = Debian::boot(&disk, None);
    d.run("systemctl is-system-running --wait");
    d.vm.signal(libc::SIGTERM);
    let status = d.vm.wait_exit(Duration::from_secs(240));
    let out = d.vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    // systemd stopped its units on the way down, and the file system was
    // left clean.
    assert!(out.contains("reboot: Restarting system"), "{out}");
    assert!(
        out.contains("Reached target") && out.contains("System Reboot"),
        "systemd did not go through its reboot target:\n{out}"
    );
}

#[test]
fn debian_without_its_root_disk_gives_up_and_flint_exits() {
    if LAB.ran("debian_without_its_root_disk_gives_up_and_flint_exits") {
        return;
    }
    // No drive: the initramfs cannot find /dev/vda, says so, and with
    // panic= set gives up; the kernel reboots and flint exits 0.
    let (kernel, initrd) = (debian("kernel"), debian("initrd"));
    let mut vm = common::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "512",
        "--cmdline",
        "console=ttyS0 reboot=k panic=5 root=/dev/vda rootdelay=5",
    ]);
    let status = vm.wait_exit(boot_deadline());
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("/dev/vda does not exist") || out.contains("ALERT!"),
        "the initramfs did not say what is missing:\n{out}"
    );
}

#[test]
fn a_truncated_initrd_is_reported_by_the_guest_and_flint_exits() {
    if LAB.ran("a_truncated_initrd_is_reported_by_the_guest_and_flint_exits") {
        return;
    }
    let whole = std::fs::read(debian("initrd")).expect("read Debian's initrd");
    let cut = std::env::temp_dir().join(format!("flint-debian-cut-{}.img", std::process::id()));
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let kernel = debian("kernel");
    let mut vm = common::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        cut.to_str().unwrap(),
        "--memory",
        "512",
        "--cmdline",
        "console=ttyS0 reboot=k panic=1",
    ]);
    let status = vm.wait_exit(boot_deadline());
    let out = vm.output();
    std::fs::remove_file(&cut).unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("Initramfs unpacking failed"),
        "the kernel did not report the broken initrd:\n{out}"
    );
}
