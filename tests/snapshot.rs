//! Snapshots with the counting tiny guest (resources/tiny/counter.S: it
//! adds one to a counter in its memory and prints "count N" on COM1): a
//! paused guest is snapshotted over the API, and a new flint restored from
//! the files goes on counting from where it was, whether restored by
//! `--restore` or by `PUT /snapshot/load` (paused, then resumed). Bad
//! snapshots are refused with a message naming what is wrong, the files
//! are left as they were, and the same flint then loads a good one. And a
//! Linux guest whose user space counts, writes its disk and holds TCP and
//! vsock connections (in the lab on a kvm_pvm host) goes on after a
//! snapshot, a kill and a restore, and two clones of it run at once.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::{boot_source, ApiVm};
use common::lab::Lab;
use common::netns::{require_root, Netns};
use common::{boot_deadline, sha256, spawn, tiny, Running};
use serde_json::json;

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(
    &["a_linux_guest_keeps_counting_its_disk_and_tcp_connection_after_a_restore"],
    600,
);

const MEM_MIB: u64 = 64;

/// A directory of this test's own, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("flint-snap-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The counts the guest printed, in order.
fn counts(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("count "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Wait until the guest printed a count of at least `n`.
fn wait_count(vm: &Running, n: u64, timeout: Duration) -> Vec<u64> {
    let end = Instant::now() + timeout;
    loop {
        let c = counts(&vm.output());
        if c.last().is_some_and(|&l| l >= n) {
            return c;
        }
        assert!(
            Instant::now() < end,
            "no count {n} within {timeout:?}; output:\n{}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The count a paused VM printed last, once its output is settled.
fn last_count(vm: &Running) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    *counts(&vm.output()).last().expect("a count")
}

/// A `PUT /snapshot/create` body: `kind` Full or Diff, files in `dir`.
fn create_body(dir: &Dir, kind: &str, snap: &str, mem: &str) -> String {
    json!({
        "snapshot_type": kind,
        "snapshot_path": dir.file(snap),
        "mem_file_path": dir.file(mem),
    })
    .to_string()
}

/// Boot the counter over the API, let it count to 5, pause it and write a
/// snapshot into `dir`; returns the last count before the pause and the
/// running (paused) VM.
fn snapshot_of_a_counter(dir: &Dir) -> (u64, ApiVm) {
    snapshot_of_a_counter_tracked(dir, false)
}

/// [`snapshot_of_a_counter`], with dirty-page tracking on if `track`
/// (else a Diff snapshot is refused, naming the setting).
fn snapshot_of_a_counter_tracked(dir: &Dir, track: bool) -> (u64, ApiVm) {
    let mut api = ApiVm::start("snap", &[]);
    let mut c = api.client();
    c.ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": tiny("counter") }).to_string(),
    );
    c.ok(
        "PUT",
        "/machine-config",
        &json!({ "vcpu_count": 1, "mem_size_mib": MEM_MIB, "track_dirty_pages": track })
            .to_string(),
    );
    c.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_count(&api.vm, 5, Duration::from_secs(60));
    // A running VM is not snapshotted.
    let body = create_body(dir, "Full", "vm.snap", "vm.mem");
    let r = c.put("/snapshot/create", &body);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.fault().contains("must be paused"), "{}", r.fault());
    c.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let last = last_count(&api.vm);
    if !track {
        let diff = create_body(dir, "Diff", "vm.snap", "vm.mem");
        let r = c.put("/snapshot/create", &diff);
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.fault().contains("track_dirty_pages"), "{}", r.fault());
    }
    c.ok("PUT", "/snapshot/create", &body);
    assert_eq!(last_count(&api.vm), last, "the guest counted while paused");
    let _ = api.vm.child.try_wait();
    (last, api)
}

#[test]
fn a_restored_counter_goes_on_from_where_it_was() {
    let dir = Dir::new("cli");
    let (last, api) = snapshot_of_a_counter(&dir);
    let state = std::fs::read(dir.file("vm.snap")).unwrap();
    assert!(state.starts_with(b"FLINTSNP"));
    let mem = std::fs::metadata(dir.file("vm.mem")).unwrap();
    assert_eq!(mem.len(), MEM_MIB << 20);
    use std::os::unix::fs::MetadataExt;
    eprintln!(
        "snapshot of a {MEM_MIB} MiB counter: state file {} bytes, memory file {} bytes long, {} bytes on disk",
        state.len(),
        mem.len(),
        mem.blocks() * 512
    );
    assert!(
        mem.blocks() * 512 < 4 << 20,
        "the memory file's zero pages are holes"
    );
    // The original goes on too, from the same count.
    let mut c = api.client();
    c.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let after = wait_count(&api.vm, last + 2, Duration::from_secs(30));
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");
    drop(api);

    // A new flint from the files: the next count is the one after the last.
    let mut vm = spawn(&[
        "--restore",
        dir.file("vm.snap").to_str().unwrap(),
        "--mem-file",
        dir.file("vm.mem").to_str().unwrap(),
    ]);
    let got = wait_count(&vm, last + 5, Duration::from_secs(30));
    assert_eq!(got.first(), Some(&(last + 1)), "{got:?}");
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
    // The memory file is mapped, not read in: flint holds a fraction of it.
    let rss_kib = status_kib(vm.child.id(), "VmRSS");
    eprintln!("restored flint: VmRSS {rss_kib} KiB for a {MEM_MIB} MiB guest");
    assert!(rss_kib < (MEM_MIB << 10) / 2, "VmRSS {rss_kib} KiB");
    let _ = vm.child.kill();
    // The files are as they were written: a restore only reads them.
    assert_eq!(std::fs::read(dir.file("vm.snap")).unwrap(), state);
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn load_body(snap: &Path, mem: &Path, resume: bool) -> String {
    json!({
        "snapshot_path": snap,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": resume,
    })
    .to_string()
}

#[test]
fn loaded_over_the_api_paused_then_resumed() {
    let dir = Dir::new("api");
    let (last, api) = snapshot_of_a_counter(&dir);
    drop(api);
    let fresh = ApiVm::start("load", &[]);
    let mut c = fresh.client();
    c.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&dir.file("vm.snap"), &dir.file("vm.mem"), false),
    );
    let info = c.get("/").json();
    assert_eq!(info["state"], "Paused", "{info}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        counts(&fresh.vm.output()).is_empty(),
        "a VM loaded without resume_vm runs nothing:\n{}",
        fresh.vm.output()
    );
    // A second load into the same flint is refused.
    let r = c.put(
        "/snapshot/load",
        &load_body(&dir.file("vm.snap"), &dir.file("vm.mem"), true),
    );
    assert_eq!(r.status, 400, "{r:?}");
    c.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let got = wait_count(&fresh.vm, last + 3, Duration::from_secs(30));
    assert_eq!(got.first(), Some(&(last + 1)), "{got:?}");
}

/// A Full snapshot, then, after the guest counted on, a Diff onto a copy
/// of the Full one's memory file: the Diff changes a few pages of it, and
/// a flint restored from the Diff's state and that file goes on from the
/// second pause, while the Full snapshot still restores the first.
#[test]
fn a_diff_onto_the_full_snapshots_memory_restores_the_later_state() {
    let dir = Dir::new("diff");
    let (last, api) = snapshot_of_a_counter_tracked(&dir, true);
    let base = std::fs::read(dir.file("vm.mem")).unwrap();
    std::fs::copy(dir.file("vm.mem"), dir.file("chain.mem")).unwrap();
    let mut c = api.client();
    c.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    wait_count(&api.vm, last + 4, Duration::from_secs(30));
    c.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let later = last_count(&api.vm);
    c.ok(
        "PUT",
        "/snapshot/create",
        &create_body(&dir, "Diff", "chain.snap", "chain.mem"),
    );
    // The base of a Diff must be the guest's size: a short file is refused.
    std::fs::write(dir.file("short.mem"), vec![0u8; 4096]).unwrap();
    let r = c.put(
        "/snapshot/create",
        &create_body(&dir, "Diff", "short.snap", "short.mem"),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.fault().contains("has 4096 bytes"), "{}", r.fault());
    drop(api);
    let chained = std::fs::read(dir.file("chain.mem")).unwrap();
    let changed = base
        .chunks(4096)
        .zip(chained.chunks(4096))
        .filter(|(a, b)| a != b)
        .count();
    eprintln!("the Diff changed {changed} pages of the Full snapshot's memory");
    assert!(changed > 0 && changed < 64, "{changed} pages changed");
    for (snap, mem, from) in [
        ("chain.snap", "chain.mem", later),
        ("vm.snap", "vm.mem", last),
    ] {
        let mut vm = spawn(&[
            "--restore",
            dir.file(snap).to_str().unwrap(),
            "--mem-file",
            dir.file(mem).to_str().unwrap(),
        ]);
        let got = wait_count(&vm, from + 3, Duration::from_secs(30));
        assert_eq!(got.first(), Some(&(from + 1)), "{snap}: {got:?}");
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
        let _ = vm.child.kill();
    }
}

const UFFD_SERVER: &str = env!("CARGO_BIN_EXE_flint-uffd-server");

/// flint-uffd-server for the memory file `mem`, listening at `socket`
/// once this returns.
fn page_server(socket: &Path, mem: &Path) -> Running {
    let mut cmd = std::process::Command::new(UFFD_SERVER);
    cmd.arg("--socket").arg(socket).arg("--mem-file").arg(mem);
    let server = common::spawn_command(cmd);
    let end = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < end, "no socket: {}", server.output());
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

/// Two flints restored from one snapshot at once, each going on from the
/// same count on its own: one maps the memory file (`--mem-file`), the
/// other (loaded over the API) has its memory filled by a page server
/// over userfaultfd, which serves only the pages the guest touches and
/// ends when its flint does.
#[test]
fn two_vms_from_one_snapshot_one_served_by_a_page_server() {
    let dir = Dir::new("uffd");
    let (last, api) = snapshot_of_a_counter(&dir);
    drop(api);
    let (snap, mem) = (dir.file("vm.snap"), dir.file("vm.mem"));
    let socket = dir.file("uffd.sock");
    let mut server = page_server(&socket, &mem);
    let served = ApiVm::start("uffd", &[]);
    let mut c = served.client();
    let t0 = Instant::now();
    c.ok(
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": snap, "resume_vm": true,
                "mem_backend": {"backend_type": "Uffd", "backend_path": socket}})
        .to_string(),
    );
    eprintln!("loaded with the Uffd backend in {:?}", t0.elapsed());
    let mapped = spawn(&[
        "--restore",
        snap.to_str().unwrap(),
        "--mem-file",
        mem.to_str().unwrap(),
    ]);
    for vm in [&served.vm, &mapped] {
        let got = wait_count(vm, last + 5, Duration::from_secs(30));
        assert_eq!(got.first(), Some(&(last + 1)), "{got:?}");
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
    }
    drop(served);
    let status = server.wait_exit(Duration::from_secs(10));
    let said = server.output();
    assert!(status.success(), "{said}");
    let pages: u64 = said
        .split("served ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no page count: {said}"));
    eprintln!("page server: {said}");
    assert!(
        pages > 0 && pages < (MEM_MIB << 20) / 4096 / 4,
        "served {pages} pages of a {MEM_MIB} MiB guest"
    );
    // The snapshot goes on in the other VM, untouched by the first's end.
    let got = wait_count(&mapped, last + 8, Duration::from_secs(30));
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
}

/// Bad page-server setups fail the restore with a clear message.
#[test]
fn a_restore_from_a_missing_page_server_says_so() {
    let dir = Dir::new("nouffd");
    let (_, api) = snapshot_of_a_counter(&dir);
    drop(api);
    let socket = dir.file("nobody.sock");
    let (status, out) = common::run(
        &[
            "--restore",
            dir.file("vm.snap").to_str().unwrap(),
            "--mem-uffd",
            socket.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "cannot connect to the page server's socket {}",
            socket.display()
        )),
        "{out}"
    );
    let (status, out) = common::run(
        &[
            "--restore",
            dir.file("vm.snap").to_str().unwrap(),
            "--mem-uffd",
            socket.to_str().unwrap(),
            "--mem-file",
            dir.file("vm.mem").to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("cannot be used with"), "{out}");
    // A memory file shorter than the layout: the server says so and ends.
    std::fs::write(dir.file("short.mem"), vec![1u8; 4096]).unwrap();
    let mut server = page_server(&socket, &dir.file("short.mem"));
    let (status, out) = common::run(
        &[
            "--restore",
            dir.file("vm.snap").to_str().unwrap(),
            "--mem-uffd",
            socket.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let server_status = server.wait_exit(Duration::from_secs(10));
    let said = server.output();
    assert!(!server_status.success(), "{said}");
    assert!(
        said.contains("is smaller than flint's memory layout"),
        "{said}"
    );
    // flint, its memory never served, is ended by the test's deadline or
    // fails: it must not report success.
    assert!(!status.success(), "{out}");
}

#[test]
fn bad_snapshots_are_refused_and_left_as_they_were() {
    let dir = Dir::new("bad");
    let (last, api) = snapshot_of_a_counter(&dir);
    drop(api);
    let snap = dir.file("vm.snap");
    let mem = dir.file("vm.mem");
    let good = std::fs::read(&snap).unwrap();

    let mut flipped = good.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x10;
    std::fs::write(dir.file("flipped.snap"), &flipped).unwrap();
    let mut newer = good.clone();
    newer[8] = 9; // the format version, checksum left stale: still refused
    std::fs::write(dir.file("newer.snap"), &newer).unwrap();
    std::fs::write(dir.file("short.mem"), vec![0u8; 4096]).unwrap();
    let files_before: Vec<(PathBuf, String)> = ["vm.snap", "flipped.snap", "short.mem"]
        .iter()
        .map(|f| (dir.file(f), sha256(&std::fs::read(dir.file(f)).unwrap())))
        .collect();

    let fresh = ApiVm::start("bad", &[]);
    let mut c = fresh.client();
    for (body, says) in [
        (
            load_body(&dir.file("flipped.snap"), &mem, true),
            "corrupted".to_string(),
        ),
        (
            load_body(&dir.file("newer.snap"), &mem, true),
            "corrupted".to_string(),
        ),
        (
            load_body(&dir.file("missing.snap"), &mem, true),
            "missing.snap".to_string(),
        ),
        (
            load_body(&snap, &dir.file("short.mem"), true),
            format!(
                "has 4096 bytes; the snapshot's guest has {} ({MEM_MIB} MiB)",
                MEM_MIB << 20
            ),
        ),
        (
            json!({"snapshot_path": snap,
                   "mem_backend": {"backend_type": "Uffd", "backend_path": dir.file("no.sock")}})
            .to_string(),
            format!(
                "cannot connect to the page server's socket {}",
                dir.file("no.sock").display()
            ),
        ),
        (
            load_body(Path::new("/dev/zero"), &mem, true),
            "not a regular file".to_string(),
        ),
    ] {
        let r = c.put("/snapshot/load", &body);
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert!(r.fault().contains(&says), "{body}: {}", r.fault());
    }
    for (f, sum) in &files_before {
        assert_eq!(
            &sha256(&std::fs::read(f).unwrap()),
            sum,
            "{} changed",
            f.display()
        );
    }
    // Nothing was half restored: the same flint loads the good snapshot.
    c.ok("PUT", "/snapshot/load", &load_body(&snap, &mem, true));
    let got = wait_count(&fresh.vm, last + 2, Duration::from_secs(30));
    assert_eq!(got.first(), Some(&(last + 1)), "{got:?}");

    // After configuring a boot source, a load is refused.
    let other = ApiVm::start("cfg", &[]);
    let mut c = other.client();
    c.ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": tiny("counter") }).to_string(),
    );
    let r = c.put("/snapshot/load", &load_body(&snap, &mem, true));
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("boot-source is set"), "{}", r.fault());
}

/// The guest's ticks: "tick N SECONDS" lines (N counts, SECONDS is its
/// clock), in order.
fn ticks(out: &str) -> Vec<(u64, u64)> {
    out.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("tick "))
        .filter_map(|r| {
            let (n, t) = r.split_once(' ')?;
            Some((n.parse().ok()?, t.trim().parse().ok()?))
        })
        .collect()
}

fn wait_tick(vm: &Running, n: u64, timeout: Duration) -> Vec<(u64, u64)> {
    let end = Instant::now() + timeout;
    loop {
        let t = ticks(&vm.output());
        if t.last().is_some_and(|&(l, _)| l >= n) {
            return t;
        }
        assert!(
            Instant::now() < end,
            "no tick {n} within {timeout:?}{}; output:\n{}",
            vm.froze(),
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest's address on its TAP, the host's, and the kernel argument
/// that gives the guest's eth0 its address before user space starts.
const GUEST_IP: &str = "172.16.0.2";
const HOST_IP: &str = "172.16.0.1";
const IP_ETH0: &str = "ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off";

/// The "net N" lines the guest sent over its TCP connection, as numbers
/// (whole lines only: the last may still be arriving).
fn net_lines(text: &str) -> Vec<u64> {
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .filter_map(|l| l.strip_prefix("net "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// What arrived on `s` until `text` holds a "net" line of at least `n`.
fn read_net(s: &mut std::net::TcpStream, text: &mut String, n: u64, timeout: Duration) {
    use std::io::Read;
    let end = Instant::now() + timeout;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while net_lines(text).last().is_none_or(|&l| l < n) {
        assert!(
            Instant::now() < end,
            "no \"net {n}\" over TCP within {timeout:?}; got {text:?}"
        );
        match s.read(&mut buf) {
            Ok(0) => panic!("the guest's TCP connection closed; got {text:?}"),
            Ok(k) => text.push_str(&String::from_utf8_lossy(&buf[..k])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("the guest's TCP connection failed: {e}; got {text:?}"),
        }
    }
}

/// One echo over the guest's vsock listener on port 5002 through the
/// device's socket `uds`.
fn vsock_echo(uds: &Path, what: &str) {
    use std::io::{Read, Write};
    let (mut s, ok) = common::vsock_connect(uds, 5002);
    assert!(ok.starts_with("OK "), "the guest's vsock listener: {ok:?}");
    s.write_all(what.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).expect("the echo");
    assert_eq!(back, what, "the guest's vsock echo");
}

/// Sector 1 of `disk`: the guest's last "tick N SECONDS" line there.
fn disk_tick(disk: &Path) -> (u64, u64) {
    let image = std::fs::read(disk).unwrap();
    let sector1 = String::from_utf8_lossy(&image[512..560]).into_owned();
    ticks(sector1.trim_end_matches('\0'))
        .first()
        .copied()
        .unwrap_or_else(|| panic!("sector 1 of {}: {sector1:?}", disk.display()))
}

/// Sector 1 of `disk` is a tick `vm` printed after it was restored from
/// a state whose last tick was `last`: the VM's writes reached its own
/// disk (clones restored at other times print other clock values).
fn assert_disk_written_by(disk: &Path, vm: &Running, last: u64) {
    // The disk first: whatever is on it was printed before the output is
    // read.
    let on_disk = disk_tick(disk);
    let printed = ticks(&vm.output());
    // Each pass prints its tick, then writes it: once a later one is out,
    // the one before it has been written (with its fsync).
    let newest = printed.last().map_or(0, |t| t.0);
    assert!(
        on_disk.0 > last && on_disk.0 + 1 >= newest && printed.contains(&on_disk),
        "{} holds {on_disk:?}; this VM printed {printed:?} after a restore at tick {last}",
        disk.display()
    );
}

/// A directory for a flint's working directory: its relative disk and
/// vsock socket paths land there. On the socket tmpfs (the lab's /tmp is
/// a 9p share, where no socket can be made).
fn work_dir(tag: &str) -> Dir {
    let d = common::api::socket_dir().join(format!("flint-snap-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// `flint ARGS` in `ns`, in the directory `cwd`.
fn flint_in(ns: &Netns, cwd: &Dir, args: &[&str]) -> Running {
    let mut cmd = ns.command(common::FLINT);
    cmd.args(args).current_dir(&cwd.0);
    common::spawn_command(cmd)
}

/// The default Linux guest, its init holding a TCP connection to the host
/// (sending "net N" every second, printing what it receives), listening
/// for vsock connections (an echo server for two), and running a shell
/// loop that counts, prints its clock and writes each count with its clock
/// to its disk with an fsync. Its disk and vsock socket have relative
/// paths, so that a flint restored in another directory gets its own, as
/// each Firecracker in its own jail does.
///
/// Paused and snapshotted (Full), it runs on and is snapshotted again
/// (Diff, onto a copy of the Full one's memory), and flint is killed.
/// - The Full+Diff chain, restored in the same network namespace, goes on
///   with the next count, its clock caught up with the 4 s the VM spent in
///   the files; the same TCP connection carries data both ways; vsock
///   connections were reset (TRANSPORT_RESET, as in Firecracker: their
///   host ends died with flint), and a new one to the same listener gets
///   its echo; its disk writes reach the image.
/// - Two VMs restored from the Full snapshot at once: one by
///   `--restore --mem-file` where the first ran, one by `PUT
///   /snapshot/load` in another namespace and directory with its TAP
///   renamed by `network_overrides`: both go on from the same count, the
///   second answers ping on its own TAP and echoes on its own vsock
///   socket, and each writes its own disk copy.
/// - The Full snapshot with its memory served by a page server over
///   userfaultfd goes on too.
#[test]
fn a_linux_guest_keeps_counting_its_disk_and_tcp_connection_after_a_restore() {
    if LAB.ran("a_linux_guest_keeps_counting_its_disk_and_tcp_connection_after_a_restore") {
        return;
    }
    require_root("a_linux_guest_keeps_counting_its_disk_and_tcp_connection_after_a_restore");
    let dir = Dir::new("linux");
    let (here, clone) = (work_dir("a"), work_dir("b"));
    let disk = here.file("data.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let ns = Netns::new();
    ns.add_tap("tap0", &format!("{HOST_IP}/24"));
    let listener = ns.run_inside(|| {
        std::net::TcpListener::bind((HOST_IP, 5001)).expect("listen on 172.16.0.1:5001")
    });
    let mut api = ApiVm::start_command("linux", {
        let mut cmd = ns.command(common::FLINT);
        cmd.current_dir(&here.0);
        cmd
    });
    let mut c = api.client();
    // Sector 0: written once before the snapshot. Sector 1: every tick.
    // (Every "," is a space for the guest's init.)
    let cmd = format!(
        "{IP_ETH0} \
         flint.cmd=echo,before-snapshot|dd,of=/dev/vda,bs=512,conv=fsync,2>/dev/null \
         flint.cmd=(i=0;while,:;do,i=$((i+1));echo,net,$i;sleep,1;done)|nc,{HOST_IP},5001& \
         flint.cmd=(vsock-test,echo,5002,2;echo,vsock-echo-done)& \
         flint.cmd=i=0;while,:;do,i=$((i+1));t=\"tick,$i,$(date,+%s)\";echo,$t;\
         echo,$t|dd,of=/dev/vda,bs=512,seek=1,conv=fsync,2>/dev/null;sleep,0.5;done"
    );
    c.ok("PUT", "/boot-source", &boot_source(&cmd));
    c.ok(
        "PUT",
        "/machine-config",
        &json!({ "vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true }).to_string(),
    );
    c.ok(
        "PUT",
        "/drives/data",
        &json!({ "drive_id": "data", "path_on_host": "data.img", "is_root_device": false,
                 "is_read_only": false })
        .to_string(),
    );
    c.ok(
        "PUT",
        "/network-interfaces/eth0",
        &json!({ "iface_id": "eth0", "host_dev_name": "tap0" }).to_string(),
    );
    c.ok(
        "PUT",
        "/vsock",
        &json!({ "guest_cid": 3, "uds_path": "v.sock" }).to_string(),
    );
    c.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_tick(&api.vm, 4, boot_deadline());
    // The guest's TCP connection, and a vsock one held open over the
    // snapshot.
    listener.set_nonblocking(true).unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let mut tcp = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < end, "the guest did not connect over TCP");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    tcp.set_nonblocking(false).unwrap();
    let mut got = String::new();
    read_net(&mut tcp, &mut got, 2, Duration::from_secs(30));
    api.vm
        .wait_for("vsock-test: listening on 5002", Duration::from_secs(30));
    let (held, ok) = common::vsock_connect(&here.file("v.sock"), 5002);
    assert!(ok.starts_with("OK "), "{ok:?}");

    c.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    std::thread::sleep(Duration::from_millis(500));
    let &(last, _) = ticks(&api.vm.output()).last().unwrap();
    let t0 = Instant::now();
    c.ok(
        "PUT",
        "/snapshot/create",
        &create_body(&dir, "Full", "vm.snap", "vm.mem"),
    );
    eprintln!("snapshot of the Linux guest taken in {:?}", t0.elapsed());
    // The clone's disk: this one as it was at the snapshot.
    std::fs::copy(&disk, clone.file("data.img")).unwrap();
    // The guest goes on for a few ticks; then a Diff onto a copy of the
    // Full snapshot's memory: the chain restores the later state.
    std::fs::copy(dir.file("vm.mem"), dir.file("chain.mem")).unwrap();
    c.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    wait_tick(&api.vm, last + 3, Duration::from_secs(120));
    c.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    std::thread::sleep(Duration::from_millis(500));
    let &(later, later_clock) = ticks(&api.vm.output()).last().unwrap();
    let t0 = Instant::now();
    c.ok(
        "PUT",
        "/snapshot/create",
        &create_body(&dir, "Diff", "chain.snap", "chain.mem"),
    );
    eprintln!("Diff snapshot taken in {:?}", t0.elapsed());
    // Everything the guest sent over TCP up to the second pause: the
    // connection is quiet once it is in.
    {
        use std::io::Read;
        tcp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(k @ 1..) = tcp.read(&mut buf) {
            got.push_str(&String::from_utf8_lossy(&buf[..k]));
        }
    }
    let sent = *net_lines(&got).last().unwrap();
    drop(api);
    drop(held);
    // flint's socket stays behind a kill; the restored device binds it
    // again (as with Firecracker, whoever restores removes it).
    let _ = std::fs::remove_file(here.file("v.sock"));
    // Time the VM spends in the files: its clock should catch up with it.
    std::thread::sleep(Duration::from_secs(4));

    let t1 = Instant::now();
    let snap = |name: &str| dir.file(name).to_str().unwrap().to_string();
    let mut vm = flint_in(
        &ns,
        &here,
        &[
            "--restore",
            &snap("chain.snap"),
            "--mem-file",
            &snap("chain.mem"),
        ],
    );
    let after = wait_tick(&vm, later + 4, Duration::from_secs(120));
    eprintln!(
        "restored: tick {} printed {:?} after the restore began",
        later + 4,
        t1.elapsed()
    );
    assert_eq!(after.first().map(|t| t.0), Some(later + 1), "{after:?}");
    assert!(after.windows(2).all(|w| w[1].0 == w[0].0 + 1), "{after:?}");
    let clock_gap = after[0].1 - later_clock;
    eprintln!(
        "guest clock: tick {later} at {later_clock}, tick {} at {}",
        later + 1,
        after[0].1
    );
    assert!(
        clock_gap >= 4,
        "the guest's clock did not catch up: {clock_gap} s between the ticks around a 4 s gap"
    );
    // The TCP connection goes on: the next lines, none lost or repeated,
    // and the host's answer reaches the guest.
    read_net(&mut tcp, &mut got, sent + 2, Duration::from_secs(60));
    let lines = net_lines(&got);
    assert!(
        lines.windows(2).all(|w| w[1] == w[0] + 1),
        "TCP lines: {lines:?}"
    );
    use std::io::Write;
    tcp.write_all(b"from-the-host-after-the-restore\n").unwrap();
    vm.wait_for("from-the-host-after-the-restore", Duration::from_secs(60));
    // vsock: the held connection was reset, a new one is served.
    vsock_echo(&here.file("v.sock"), "after the restore\n");
    vm.wait_for("vsock-echo-done", Duration::from_secs(60));
    let out = vm.output();
    assert!(out.contains("1 of 2 echo connections failed"), "{out}");
    let image = std::fs::read(&disk).unwrap();
    assert!(image.starts_with(b"before-snapshot\n"));
    assert_disk_written_by(&disk, &vm, later);
    drop(vm);
    drop(tcp);
    let _ = std::fs::remove_file(here.file("v.sock"));

    // Two at once from the Full snapshot. The second in a namespace of
    // its own, where its TAP has another name.
    let other = Netns::new();
    other.add_tap("tap1", &format!("{HOST_IP}/24"));
    let first = flint_in(
        &ns,
        &here,
        &["--restore", &snap("vm.snap"), "--mem-file", &snap("vm.mem")],
    );
    wait_tick(&first, last + 1, Duration::from_secs(120));
    // Two seconds apart, so that their clocks tell their ticks apart.
    std::thread::sleep(Duration::from_secs(2));
    let second = ApiVm::start_command("clone", {
        let mut cmd = other.command(common::FLINT);
        cmd.current_dir(&clone.0);
        cmd
    });
    second.client().ok(
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": dir.file("vm.snap"), "resume_vm": true,
                "mem_backend": {"backend_type": "File", "backend_path": dir.file("vm.mem")},
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}]})
        .to_string(),
    );
    for vm in [&first, &second.vm] {
        let after = wait_tick(vm, last + 4, Duration::from_secs(120));
        assert_eq!(after.first().map(|t| t.0), Some(last + 1), "{after:?}");
    }
    let end = Instant::now() + Duration::from_secs(60);
    while !other
        .exec("ping", &["-c", "1", "-W", "2", GUEST_IP])
        .status
        .success()
    {
        assert!(
            Instant::now() < end,
            "the clone does not answer ping on tap1"
        );
    }
    vsock_echo(&clone.file("v.sock"), "to the clone\n");
    wait_tick(&second.vm, last + 6, Duration::from_secs(60));
    assert_disk_written_by(&here.file("data.img"), &first, last);
    assert_disk_written_by(&clone.file("data.img"), &second.vm, last);
    drop(first);
    drop(second);
    let _ = std::fs::remove_file(here.file("v.sock"));

    // The Full snapshot again, its memory served by a page server: the
    // guest's kernel, its user space and its devices fault their pages
    // in over userfaultfd.
    let socket = here.file("uffd.sock");
    let mut server = page_server(&socket, &dir.file("vm.mem"));
    let t2 = Instant::now();
    let vm = flint_in(
        &ns,
        &here,
        &[
            "--restore",
            &snap("vm.snap"),
            "--mem-uffd",
            socket.to_str().unwrap(),
        ],
    );
    let after = wait_tick(&vm, last + 3, Duration::from_secs(120));
    eprintln!(
        "restored over userfaultfd: tick {} printed {:?} after the restore began",
        last + 3,
        t2.elapsed()
    );
    assert_eq!(after.first().map(|t| t.0), Some(last + 1), "{after:?}");
    drop(vm);
    let status = server.wait_exit(Duration::from_secs(30));
    let said = server.output();
    eprintln!("{said}");
    assert!(status.success(), "{said}");
}
