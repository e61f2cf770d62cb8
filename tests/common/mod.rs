//! Helpers shared by the integration tests: the guest artifacts, running
//! the real `flint` binary with a deadline, and the host kind.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const FLINT: &str = env!("CARGO_BIN_EXE_flint");

/// Run a resources/ build script and collect its `NAME=PATH` lines.
fn build_script(relative: &str) -> HashMap<String, PathBuf> {
    build_script_with(relative, &[])
}

/// [`build_script`] with arguments for the script.
fn build_script_with(relative: &str, args: &[&str]) -> HashMap<String, PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {relative}: {e}"));
    assert!(out.status.success(), "{relative} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .collect()
}

/// The default guest's artifacts (kernel, initrd, rootfs...), built or taken
/// from the cache by resources/default-guest.sh once per test process.
/// In the lab, the test that re-ran itself there passes the map it built
/// in FLINT_TEST_GUEST (`NAME=PATH` lines).
pub fn guest() -> &'static HashMap<String, PathBuf> {
    static GUEST: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    GUEST.get_or_init(|| match std::env::var("FLINT_TEST_GUEST") {
        Ok(map) if !map.is_empty() => parse_artifacts(&map),
        _ => build_script("resources/default-guest.sh"),
    })
}

/// A tiny test guest from resources/tiny/build.sh (`reset` or `triple`).
pub fn tiny(name: &str) -> PathBuf {
    static TINY: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    TINY.get_or_init(|| build_script("resources/tiny/build.sh"))
        .get(&format!("tiny_{name}"))
        .unwrap_or_else(|| panic!("resources/tiny/build.sh printed no tiny_{name}="))
        .clone()
}

/// The ACPI variant of the default kernel (`resources/kernel/build.sh
/// acpi`): `kernel` (vmlinux) and `bzimage`.
pub fn acpi_kernel(name: &str) -> PathBuf {
    static KERNEL: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    KERNEL
        .get_or_init(|| build_script_with("resources/kernel/build.sh", &["acpi"]))
        .get(name)
        .unwrap_or_else(|| panic!("resources/kernel/build.sh acpi printed no {name}="))
        .clone()
}

static DEBIAN: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();

/// The Debian 12 system image (`resources/debian/build.sh`): `kernel`
/// (Debian's bzImage), `initrd` (its own initramfs) and `rootfs`. Built
/// (or found) outside the lab: a test that re-runs itself there passes the
/// map in FLINT_TEST_DEBIAN, as it does the default guest's.
pub fn debian(name: &str) -> PathBuf {
    DEBIAN
        .get_or_init(|| match std::env::var("FLINT_TEST_DEBIAN") {
            Ok(map) if !map.is_empty() => parse_artifacts(&map),
            _ => build_script("resources/debian/build.sh"),
        })
        .get(name)
        .unwrap_or_else(|| panic!("resources/debian/build.sh printed no {name}="))
        .clone()
}

fn parse_artifacts(map: &str) -> HashMap<String, PathBuf> {
    map.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .collect()
}

fn format_artifacts(map: &HashMap<String, PathBuf>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", v.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn artifact(name: &str) -> PathBuf {
    guest()
        .get(name)
        .unwrap_or_else(|| panic!("resources/default-guest.sh printed no {name}="))
        .clone()
}

/// True on a kvm_pvm host, where guest user space cannot make system calls.
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// True inside the lab VM (resources/lab), where `lab` sets FLINT_LAB.
pub fn in_lab() -> bool {
    std::env::var_os("FLINT_LAB").is_some()
}

/// How a test's panic says that flint printed nothing at all.
pub const NOTHING_PRINTED: &str = "flint printed nothing at all";

/// How a test's panic in the lab says that the guest froze: flint was
/// running, its output had not changed for [`STALL`], and the test's
/// deadline passed.
pub const GUEST_FROZE: &str = "the nested guest froze";

/// A stretch without a byte of output that, in the lab, means a frozen
/// guest rather than a slow one: the guests the tests boot print something
/// (a kernel line, a timer-driven message, a command's output) far more
/// often than this even under the lab's emulation.
const STALL: Duration = Duration::from_secs(90);

/// Deadline for a boot on this host: the emulating PVM host runs guest
/// kernel code orders of magnitude slower than hardware.
/// In the lab every instruction is TCG-emulated (hardware-style KVM all the
/// same), so boots take seconds there, not milliseconds.
pub fn boot_deadline() -> Duration {
    if is_pvm_host() {
        Duration::from_secs(600)
    } else if in_lab() {
        Duration::from_secs(240)
    } else {
        Duration::from_secs(60)
    }
}

/// A running flint with its output collected as it comes.
pub struct Running {
    pub child: Child,
    output: Arc<Mutex<String>>,
    /// When the output last grew.
    last_output: Arc<Mutex<Instant>>,
    lines: Receiver<()>,
}

/// Start flint with `args`, stdin closed.
pub fn spawn(args: &[&str]) -> Running {
    let mut cmd = Command::new(FLINT);
    cmd.args(args);
    spawn_command(cmd)
}

/// Start `cmd` (flint behind a wrapper that execs it, such as
/// `ip netns exec NS flint ...`), stdin closed, output collected as by
/// [`spawn`].
pub fn spawn_command(mut cmd: Command) -> Running {
    cmd.stdin(Stdio::null());
    start_collecting(cmd)
}

/// As [`spawn_command`], with flint's stdin a pipe: what is written to the
/// returned handle is typed on the guest's serial console.
pub fn spawn_with_console(mut cmd: Command) -> (Running, std::process::ChildStdin) {
    cmd.stdin(Stdio::piped());
    let mut r = start_collecting(cmd);
    let stdin = r.child.stdin.take().expect("flint's stdin");
    (r, stdin)
}

fn start_collecting(mut cmd: Command) -> Running {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flint");
    let output = Arc::new(Mutex::new(String::new()));
    let last_output = Arc::new(Mutex::new(Instant::now()));
    let (tx, rx) = channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let output = output.clone();
        let last_output = last_output.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
                *last_output.lock().unwrap() = Instant::now();
                let _ = tx.send(());
            }
        });
    }
    Running {
        child,
        output,
        last_output,
        lines: rx,
    }
}

/// Each thread of process `pid`: (tid, name, state, wait channel, CPU
/// ticks, guest ticks), from /proc; empty if it is gone.
fn thread_times(pid: u32) -> Vec<(String, String, String, String, u64, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        // The fields after the parenthesised name: state is the first,
        // utime and stime the 12th and 13th, guest_time the 41st.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let comm = head.split_once(" (").map_or("?", |(_, c)| c).to_string();
        let state = f.first().unwrap_or(&"?").to_string();
        let wchan = read("wchan");
        let wchan = if wchan.is_empty() || wchan == "0" {
            "-".to_string()
        } else {
            wchan
        };
        let tid = task.file_name().to_string_lossy().into_owned();
        out.push((tid, comm, state, wchan, num(11) + num(12), num(40)));
    }
    out
}

impl Running {
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Wait until the output contains `needle`; panics with the output on
    /// timeout or if flint exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the readers catch up before judging.
                std::thread::sleep(Duration::from_millis(200));
                if self.output().contains(needle) {
                    return;
                }
                panic!(
                    "flint exited ({status}) before printing {needle:?}; output:\n{}",
                    self.output()
                );
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let froze = self.froze();
                let _ = self.child.kill();
                let out = self.output();
                if out.is_empty() {
                    panic!("no {needle:?} within {timeout:?}: {NOTHING_PRINTED}");
                }
                panic!("no {needle:?} within {timeout:?}{froze}; output:\n{out}");
            }
            let _ = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(500)));
        }
    }

    /// Wait for flint to exit; kills it and panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for flint") {
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            if Instant::now() >= end {
                let froze = self.froze();
                let _ = self.child.kill();
                panic!(
                    "flint did not exit within {timeout:?}{froze}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// In the lab, with no output for [`STALL`]: a sentence saying so
    /// ([`GUEST_FROZE`]) with what flint's threads were doing, sampled one
    /// second apart (state, kernel wait channel, CPU and guest time in
    /// clock ticks), for the record. Empty otherwise. A test's own wait
    /// puts it in its panic message, so that the lab runner
    /// (`common::lab`) gives the test another lab run.
    pub fn froze(&self) -> String {
        let quiet = self.last_output.lock().unwrap().elapsed();
        if !in_lab() || quiet < STALL {
            return String::new();
        }
        let pid = self.child.id();
        let before = thread_times(pid);
        std::thread::sleep(Duration::from_secs(1));
        let threads: Vec<String> = thread_times(pid)
            .into_iter()
            .map(|(tid, comm, state, wchan, cpu, guest)| {
                let (cpu0, guest0) = before
                    .iter()
                    .find(|t| t.0 == tid)
                    .map_or((cpu, guest), |t| (t.4, t.5));
                // The kernel stack's top frames (readable as root).
                let stack = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack"))
                    .unwrap_or_default();
                let frames: Vec<&str> = stack
                    .lines()
                    .take(6)
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .collect();
                format!(
                    "{comm} {state} in {wchan} [{}], +{} cpu +{} guest ticks",
                    frames.join(" < "),
                    cpu - cpu0,
                    guest - guest0
                )
            })
            .collect();
        format!(
            " ({GUEST_FROZE}: no output for {:.0} s; flint's threads: {})",
            quiet.as_secs_f64(),
            threads.join("; ")
        )
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run flint to completion and return (status, output).
pub fn run(args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut r = spawn(args);
    let status = r.wait_exit(timeout);
    (status, r.output())
}

/// The default command line with `extra` appended.
pub fn cmdline(extra: &str) -> String {
    format!("{} {extra}", flint::config::DEFAULT_CMDLINE)
}

/// Start the default guest kernel, with the default initramfs when
/// `initrd`, the default command line plus `extra_cmdline` when given, and
/// further flint arguments.
pub fn spawn_guest(initrd: bool, extra_cmdline: Option<&str>, args: &[&str]) -> Running {
    let kernel = artifact("kernel");
    let initrd_path = artifact("initrd");
    let cl = extra_cmdline.map(cmdline);
    let mut all = vec!["--kernel", kernel.to_str().unwrap()];
    if initrd {
        all.extend(["--initrd", initrd_path.to_str().unwrap()]);
    }
    if let Some(cl) = &cl {
        all.extend(["--cmdline", cl.as_str()]);
    }
    all.extend_from_slice(args);
    spawn(&all)
}

/// `len` pseudo-random bytes (xorshift64 from an odd `seed`): nothing
/// compresses or repeats.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len.div_ceil(8))
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .take(len)
        .collect()
}

/// The hash the guest's `sha256sum` printed on the console for `name`
/// (`-` for its stdin).
pub fn guest_hash(console: &str, name: &str) -> Option<String> {
    console.lines().find_map(|l| {
        let (hash, rest) = l.trim_end_matches('\r').split_once("  ")?;
        (rest == name && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| hash.to_string())
    })
}

/// sha256 of `data` as the host's sha256sum prints it (the guest uses
/// busybox's, so both sides agree on the text).
pub fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    // Fed from a thread so a large input never fills both pipes at once.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("sha256sum");
    writer.join().unwrap().expect("feed sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// End a VM the graceful way: SIGTERM makes flint press Ctrl-Alt-Del, the
/// guest kernel reboots, and flint must exit 0 within `timeout`. Returns
/// the whole output.
pub fn stop_with_sigterm(vm: &mut Running, timeout: Duration) -> String {
    vm.signal(libc::SIGTERM);
    let status = vm.wait_exit(timeout);
    let out = vm.output();
    assert!(
        out.contains("reboot: Restarting system"),
        "the guest did not reboot:\n{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
    assert_eq!(status.code(), Some(0), "{out}");
    out
}

/// Connect to the vsock device's socket and ask for guest port `port`;
/// returns the stream and the device's answer line (`OK <host port>`, as
/// Firecracker answers, when a guest listener took the connection; empty
/// when the stream closed).
pub fn vsock_connect(uds: &Path, port: u32) -> (std::os::unix::net::UnixStream, String) {
    let mut s = std::os::unix::net::UnixStream::connect(uds)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", uds.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .expect("send CONNECT");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

pub mod api;
pub mod lab;
pub mod netns;
