//! flint-jailer with the real binaries: a jailed flint boots the tiny test
//! guest as an unprivileged user; the jail's cgroup gets the values asked
//! for; bad input is refused with a message naming it and leaves nothing
//! behind, and a failure after the jail was half made removes exactly
//! what the run made. Run as root (mknod, cgroups, pivot_root).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::netns::Netns;
use common::{artifact, boot_deadline, cmdline, in_lab, spawn_command, tiny, FLINT};

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(&["jailed_default_guest_as_user_1000"], 600);

const JAILER: &str = env!("CARGO_BIN_EXE_flint-jailer");
const NOBODY: u32 = 65534;
/// An ordinary unprivileged user and group (which need not exist).
const USER: u32 = 1000;

/// The cgroup v2 mount, as the jailer finds it.
fn cgroup_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let roots: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .collect();
    let best = roots.iter().find(|r| *r == "/sys/fs/cgroup");
    PathBuf::from(best.or(roots.first()).expect("a cgroup2 mount"))
}

fn offered_controllers() -> Vec<String> {
    std::fs::read_to_string(cgroup_root().join("cgroup.controllers"))
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A base directory, an id and a parent cgroup of this test's own; all
/// removed on drop.
struct Jail {
    base: PathBuf,
    id: String,
    parent: String,
}

impl Jail {
    fn new(name: &str) -> Jail {
        Jail::new_under(&std::env::temp_dir(), name)
    }

    /// A jail whose base directory is made in `dir`.
    fn new_under(dir: &Path, name: &str) -> Jail {
        let tag = format!("{}-{name}", std::process::id());
        let base = dir.join(format!("flint-jailer-test-{tag}"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        Jail {
            base,
            id: format!("t{tag}"),
            parent: format!("flint-test-{tag}"),
        }
    }

    /// `<base>/flint/<id>/root`.
    fn root(&self) -> PathBuf {
        self.base.join("flint").join(&self.id).join("root")
    }

    fn cgroup(&self) -> PathBuf {
        cgroup_root().join(&self.parent).join(&self.id)
    }

    /// The root made by the caller, with the tiny guest in it and /out
    /// writable by nobody only.
    fn prepare(&self) {
        std::fs::create_dir_all(self.root().join("out")).unwrap();
        std::fs::copy(tiny("reset"), self.root().join("reset.elf")).unwrap();
        std::os::unix::fs::chown(self.root().join("out"), Some(NOBODY), Some(NOBODY)).unwrap();
    }

    /// Run the jailer with the usual flags (nobody, this base, this
    /// id and parent cgroup), `extra` and then `-- flint_args`. A usual
    /// flag named in `extra` takes the value given there instead.
    fn run(&self, extra: &[&str], flint_args: &[&str]) -> Output {
        let base = self.base.display().to_string();
        let mut usual = vec![
            ("--id", self.id.as_str()),
            ("--exec-file", FLINT),
            ("--uid", "65534"),
            ("--gid", "65534"),
            ("--chroot-base-dir", base.as_str()),
            ("--parent-cgroup", self.parent.as_str()),
        ];
        let mut rest = Vec::new();
        let mut it = extra.iter();
        while let Some(a) = it.next() {
            match usual.iter_mut().find(|(f, _)| f == a) {
                Some(pair) => pair.1 = it.next().expect("a value"),
                None => rest.push(*a),
            }
        }
        let mut cmd = Command::new(JAILER);
        for (f, v) in usual {
            cmd.args([f, v]);
        }
        cmd.args(rest);
        if !flint_args.is_empty() {
            cmd.arg("--").args(flint_args);
        }
        cmd.output().expect("run flint-jailer")
    }

    /// Every path under the base directory.
    fn tree(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                out.push(e.path());
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.base, &mut out);
        out.sort();
        out
    }
}

/// Wait up to 5 s for `dir`'s cgroup to have no process: flint's teardown
/// helper (src/teardown.rs) outlives flint by some milliseconds.
fn wait_empty(dir: &Path) -> String {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() || Instant::now() > end {
            return procs;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        wait_empty(&self.cgroup());
        let _ = std::fs::remove_dir(self.cgroup());
        let _ = std::fs::remove_dir(cgroup_root().join(&self.parent));
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// flint's arguments inside the jail: the tiny guest that resets at once,
/// with metrics written to /out/metrics.json (owned by whoever flint runs
/// as).
const RESET_WITH_METRICS: [&str; 4] = [
    "--kernel",
    "/reset.elf",
    "--metrics-path",
    "/out/metrics.json",
];

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn jailed_flint_boots_the_tiny_guest_as_nobody() {
    let jail = Jail::new("boot");
    jail.prepare();
    let out = jail.run(&["--resource-limit", "no-file=256"], &RESET_WITH_METRICS);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("the guest rebooted"), "{all}");
    let root = jail.root();
    // flint wrote its metrics as nobody: a root flint would own the file.
    let metrics = std::fs::metadata(root.join("out/metrics.json")).expect("flint's metrics file");
    assert_eq!((metrics.uid(), metrics.gid()), (NOBODY, NOBODY));
    let lines = std::fs::read_to_string(root.join("out/metrics.json")).unwrap();
    assert!(lines.contains("utc_timestamp_ms"), "{lines}");
    // What the jail holds: flint, its loader and libraries, three nodes.
    assert!(root.join("flint").is_file());
    assert!(root.join("lib64/ld-linux-x86-64.so.2").is_file());
    assert!(root.join("lib/x86_64-linux-gnu/libc.so.6").is_file());
    for dev in ["dev/kvm", "dev/net/tun", "dev/urandom"] {
        let m = std::fs::metadata(root.join(dev)).unwrap();
        let host = std::fs::metadata(Path::new("/").join(dev)).unwrap();
        assert_eq!(
            (m.rdev(), m.uid(), m.gid()),
            (host.rdev(), NOBODY, NOBODY),
            "{dev}"
        );
    }
    let devs: Vec<_> = std::fs::read_dir(root.join("dev"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(
        devs.len(),
        3,
        "only kvm, net/ and urandom in /dev: {devs:?}"
    );
    // The caller's file was left as it was.
    assert!(root.join("reset.elf").is_file());
}

#[test]
fn jailed_flint_in_a_new_pid_namespace() {
    let jail = Jail::new("pidns");
    jail.prepare();
    let out = jail.run(&["--new-pid-ns"], &["--kernel", "/reset.elf"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("the guest rebooted"), "{all}");
    let pid = std::fs::read_to_string(jail.root().join("flint.pid")).unwrap();
    assert!(pid.trim().parse::<u32>().unwrap() > 1, "{pid:?}");
}

#[test]
fn the_cgroup_gets_the_values() {
    let offered = offered_controllers();
    // The jailer enables controllers in the root's subtree_control; the
    // test puts the root back as it was (after the jail's cgroups are gone).
    let _restore = RestoreSubtree::new(&offered);
    let jail = Jail::new("cgroup");
    jail.prepare();
    let has = |c: &str| offered.iter().any(|o| o == c);
    let mut want = vec![("cgroup.max.descendants", "2")];
    if has("memory") && has("pids") {
        want.extend([("memory.max", "268435456"), ("pids.max", "64")]);
    } else {
        // A hybrid host: memory and pids belong to cgroup v1 there. They
        // must be refused by name, leaving nothing; hugetlb (always a v2
        // controller when mounted) is checked in their place.
        let out = jail.run(
            &[
                "--cgroup",
                "memory.max=268435456",
                "--cgroup",
                "pids.max=64",
            ],
            &["--kernel", "/reset.elf"],
        );
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(all.contains("no memory controller"), "{all}");
        assert!(!jail.cgroup().exists() && !jail.root().join("flint").exists());
        eprintln!("this host's cgroup v2 offers {offered:?}: memory.max/pids.max not testable");
        if has("hugetlb") {
            want.push(("hugetlb.2MB.max", "0"));
        }
    }
    let flags: Vec<String> = want.iter().map(|(f, v)| format!("{f}={v}")).collect();
    let mut extra = Vec::new();
    for f in &flags {
        extra.extend(["--cgroup", f.as_str()]);
    }
    let out = jail.run(&extra, &["--kernel", "/reset.elf"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let dir = jail.cgroup();
    for (file, value) in want {
        let got = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(got.trim(), value, "{file}");
    }
    // flint has exited: the cgroup empties and is left for the caller.
    assert_eq!(wait_empty(&dir).trim(), "");
}

/// Disables again, on drop, the controllers that were not enabled in the
/// cgroup v2 root's subtree_control when it was made.
struct RestoreSubtree(Vec<String>);

impl RestoreSubtree {
    fn new(offered: &[String]) -> RestoreSubtree {
        let file = cgroup_root().join("cgroup.subtree_control");
        let on = std::fs::read_to_string(file).unwrap();
        let on: Vec<&str> = on.split_whitespace().collect();
        RestoreSubtree(
            offered
                .iter()
                .filter(|c| !on.contains(&c.as_str()))
                .cloned()
                .collect(),
        )
    }
}

impl Drop for RestoreSubtree {
    fn drop(&mut self) {
        let file = cgroup_root().join("cgroup.subtree_control");
        for c in &self.0 {
            // Refused while another cgroup uses it: then it stays.
            let _ = std::fs::write(&file, format!("-{c}"));
        }
    }
}

/// Run the jailer with `extra` against a fresh jail; it must fail with
/// status 1 and a message containing `says`, leaving the base directory
/// as it was and no cgroup.
fn refused(name: &str, extra: &[&str], says: &str, prepare: bool) {
    let jail = Jail::new(name);
    if prepare {
        jail.prepare();
    }
    let before = jail.tree();
    let out = jail.run(extra, &["--kernel", "/reset.elf"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{name}: {all}");
    assert!(all.contains(says), "{name}: expected {says:?} in:\n{all}");
    assert_eq!(jail.tree(), before, "{name}: the base directory changed");
    assert!(!jail.cgroup().exists(), "{name}: a cgroup was left");
    assert!(
        !cgroup_root().join(&jail.parent).exists(),
        "{name}: a parent cgroup was left"
    );
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    refused("slash", &["--id", "a/b"], "--id \"a/b\"", false);
    refused("root", &["--uid", "0"], "needs --allow-root", false);
    refused("gid0", &["--gid", "0"], "needs --allow-root", false);
    refused(
        "ctl",
        &["--cgroup", "nosuch.max=1"],
        "no nosuch controller",
        false,
    );
    refused(
        "v1",
        &["--cgroup-version", "1"],
        "only cgroup version 2",
        false,
    );
    refused(
        "rlim",
        &["--resource-limit", "cpu=1"],
        "unknown resource",
        false,
    );
    refused(
        "netns",
        &["--netns", "/nonexistent-netns"],
        "--netns /nonexistent-netns",
        false,
    );
    // Past the checks: /etc/passwd is a file but no namespace, so setns
    // fails after the files and the cgroup were made; they go, the
    // caller's root and guest stay.
    refused(
        "late",
        &["--netns", "/etc/passwd", "--cgroup", "cgroup.max.depth=1"],
        "cannot join the network namespace",
        true,
    );
}

#[test]
fn a_missing_base_dir_is_refused() {
    let jail = Jail::new("nobase");
    let missing = jail.base.join("missing");
    let out = Command::new(JAILER)
        .args([
            "--id",
            &jail.id,
            "--exec-file",
            FLINT,
            "--uid",
            "1",
            "--gid",
            "1",
        ])
        .arg("--chroot-base-dir")
        .arg(&missing)
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("--chroot-base-dir {}", missing.display())),
        "{all}"
    );
    assert!(!missing.exists());
    assert!(jail.tree().is_empty());
}

#[test]
fn a_leftover_jail_is_not_overwritten() {
    let jail = Jail::new("again");
    jail.prepare();
    let first = jail.run(&[], &["--kernel", "/reset.elf"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let before = jail.tree();
    let again = jail.run(&[], &["--kernel", "/reset.elf"]);
    let all = text(&again);
    assert_eq!(again.status.code(), Some(1), "{all}");
    assert!(all.contains("exists already"), "{all}");
    assert_eq!(jail.tree(), before);
}

/// A `/proc/PID/status` field's value.
fn status_field(pid: u32, task: Option<&str>, field: &str) -> String {
    let path = match task {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {path}"))
        .trim()
        .to_string()
}

#[test]
fn a_jailed_api_server_runs_as_nobody_in_its_netns_and_cgroup_under_seccomp() {
    let jail = Jail::new("api");
    jail.prepare();
    let base = jail.base.display().to_string();
    let ns = Netns::new();
    let ns_file = format!("/var/run/netns/{}", ns.name);
    let mut child = Command::new(JAILER)
        .args([
            "--id",
            &jail.id,
            "--exec-file",
            FLINT,
            "--uid",
            "65534",
            "--gid",
            "65534",
        ])
        .args(["--chroot-base-dir", &base, "--parent-cgroup", &jail.parent])
        .args(["--netns", &ns_file])
        .args([
            "--",
            "--kernel",
            "/reset.elf",
            "--api-sock",
            "/run/api.sock",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The jailer execs flint: same pid.
    let pid = child.id();
    let sock = jail.root().join("run/api.sock");
    let end = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if Instant::now() > end || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("no API socket in the jail:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let checks = std::panic::catch_unwind(|| {
        assert_eq!(status_field(pid, None, "Uid"), "65534\t65534\t65534\t65534");
        assert_eq!(status_field(pid, None, "Gid"), "65534\t65534\t65534\t65534");
        assert_eq!(status_field(pid, None, "Groups"), "");
        // In the network namespace asked for.
        let net = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino();
        assert_eq!(net, std::fs::metadata(&ns_file).unwrap().ino());
        let m = std::fs::metadata(&sock).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY));
        // flint's / is the jail: its flint is there, the host's /etc is not.
        let its_root = PathBuf::from(format!("/proc/{pid}/root"));
        assert!(its_root.join("flint").is_file());
        assert!(!its_root.join("etc").exists());
        let procs = std::fs::read_to_string(jail.cgroup().join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
        // The API thread serves under its seccomp filter (mode 2); the
        // socket may be bound before the thread has its name.
        let api_thread = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .flatten()
                .map(|t| t.file_name().to_string_lossy().into_owned())
                .find(|t| {
                    std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"))
                        .is_ok_and(|c| c.trim() == "api")
                })
        };
        let end = Instant::now() + Duration::from_secs(5);
        let api = loop {
            match api_thread() {
                Some(t) => break t,
                None if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                None => panic!("flint has no api thread"),
            }
        };
        // It installs the filter itself, right after it starts.
        while status_field(pid, Some(&api), "Seccomp") != "2" && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(status_field(pid, Some(&api), "Seccomp"), "2");
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!sock.exists(), "flint removes its socket");
}

#[test]
fn daemonized_the_jailer_and_flint_print_nothing() {
    let jail = Jail::new("daemon");
    jail.prepare();
    let out = jail.run(&["--daemonize", "--new-pid-ns"], &RESET_WITH_METRICS);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(text(&out), "", "stdio goes to /dev/null");
    // The detached flint runs the guest to its reset and writes its
    // metrics at exit, as nobody.
    let metrics = jail.root().join("out/metrics.json");
    let end = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&metrics).map_or(true, |m| !m.ends_with('\n')) {
        assert!(
            Instant::now() < end,
            "the daemonized flint wrote no metrics"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::metadata(&metrics).unwrap().uid(), NOBODY);
    let pid = std::fs::read_to_string(jail.root().join("flint.pid")).unwrap();
    assert!(pid.trim().parse::<u32>().is_ok(), "{pid:?}");
}

/// The default guest (kernel, initramfs, a disk) in a jail as uid/gid 1000
/// with memory and pids limits: it boots, its write reaches the disk, and
/// while it runs flint's `/` is the jail, its ids are 1000, it is in the
/// jail's cgroup with the limits asked for. A host path outside the jail
/// cannot be opened by a jailed flint. On exit the jail and the cgroup stay,
/// as documented, for the caller to remove. Guest user space: in the lab
/// on a kvm_pvm host, whose pure cgroup v2 has the memory and pids
/// controllers.
#[test]
fn jailed_default_guest_as_user_1000() {
    if LAB.ran("jailed_default_guest_as_user_1000") {
        return;
    }
    let offered = offered_controllers();
    let has = |c: &str| offered.iter().any(|o| o == c);
    assert!(
        has("memory") && has("pids"),
        "this test needs a cgroup v2 with the memory and pids controllers (it has {offered:?})"
    );
    let _restore = RestoreSubtree::new(&offered);
    // In the lab /tmp is the host's, over 9p, which takes no device nodes;
    // /run is the lab's own tmpfs.
    let dir = if in_lab() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    let jail = Jail::new_under(&dir, "user");
    let root = jail.root();
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(artifact("kernel"), root.join("vmlinux")).unwrap();
    std::fs::copy(artifact("initrd"), root.join("initrd.cpio")).unwrap();
    let disk = root.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    std::os::unix::fs::chown(&disk, Some(USER), Some(USER)).unwrap();

    // A path outside a jail, present on the host: flint cannot open it.
    let other = Jail::new_under(&dir, "outside");
    let outside = other.base.join("outside.elf");
    std::fs::copy(tiny("reset"), &outside).unwrap();
    let outside_arg = outside.display().to_string();
    let refused = other.run(
        &["--uid", "1000", "--gid", "1000"],
        &["--kernel", &outside_arg],
    );
    let all = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&outside_arg),
        "the error names the path: {all}"
    );

    let user = USER.to_string();
    let base = jail.base.display().to_string();
    let mut cmd = Command::new(JAILER);
    cmd.args(["--id", &jail.id, "--exec-file", FLINT])
        .args(["--uid", &user, "--gid", &user])
        .args(["--chroot-base-dir", &base, "--parent-cgroup", &jail.parent])
        .args([
            "--cgroup",
            "memory.max=536870912",
            "--cgroup",
            "pids.max=64",
        ])
        .args(["--", "--kernel", "/vmlinux", "--initrd", "/initrd.cpio"])
        .args(["--drive", "path=/disk.img"])
        .arg("--cmdline")
        .arg(cmdline(
            "flint.cmd=echo,jailed-write|dd,of=/dev/vda,conv=fsync flint.cmd=sleep,2",
        ));
    let mut vm = spawn_command(cmd);
    let pid = vm.child.id();
    // The jailer execs flint: same pid, once its ids are 1000.
    let end = Instant::now() + Duration::from_secs(30);
    while status_field(pid, None, "Uid") != format!("{USER}\t{USER}\t{USER}\t{USER}") {
        assert!(
            Instant::now() < end,
            "flint never ran as {USER}:\n{}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    vm.wait_for("flint-guest: init reached", boot_deadline());
    assert_eq!(
        status_field(pid, None, "Gid"),
        format!("{USER}\t{USER}\t{USER}\t{USER}")
    );
    assert_eq!(status_field(pid, None, "Groups"), "");
    // flint's / is the jail's root directory itself.
    let its_root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let jail_root = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (its_root.dev(), its_root.ino()),
        (jail_root.dev(), jail_root.ino())
    );
    let cg = jail.cgroup();
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    for (file, value) in [("memory.max", "536870912"), ("pids.max", "64")] {
        let got = std::fs::read_to_string(cg.join(file)).unwrap();
        assert_eq!(got.trim(), value, "{file}");
    }

    let status = vm.wait_exit(boot_deadline());
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("flint-guest: cmd exit 0"), "{out}");
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written.starts_with(b"jailed-write\n"),
        "the guest's write is on the disk"
    );
    // Left for the caller: the jail with its copies, and the (empty) cgroup.
    assert!(root.join("flint").is_file() && root.join("dev/kvm").exists());
    assert!(cg.is_dir());
    assert_eq!(wait_empty(&cg).trim(), "");
}
