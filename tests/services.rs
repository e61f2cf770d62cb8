//! Host services with the real `flint` binary and the default guest:
//! virtio-vsock (Firecracker's hybrid unix-socket model), the entropy
//! device and the balloon. All of them need guest user space, so on a
//! kvm_pvm host each test re-runs itself in the lab VM.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{socket_path, ApiVm};
use common::lab::Lab;
use common::{
    artifact, boot_deadline, cmdline, guest_hash, pattern, sha256, spawn_guest, vsock_connect,
    Running,
};
use serde_json::json;

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(
    &[
        "vsock_streams_64_mib_each_way_with_checksums",
        "vsock_many_connections_refusals_and_half_closed_streams",
        "entropy_device_is_the_guests_hwrng",
        "balloon_takes_memory_from_the_guest_and_gives_it_back",
    ],
    1500,
);

/// Wait for the guest's `n`-th "cmd exit" line and return its status.
fn cmd_exit(vm: &mut Running, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let out = vm.output();
        if let Some(l) = out
            .lines()
            .filter(|l| l.contains("flint-guest: cmd exit"))
            .nth(n - 1)
        {
            return l.rsplit(' ').next().unwrap_or("").trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "guest command {n} did not finish:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A socket path for the vsock device (on a tmpfs: the lab's 9p share
/// cannot hold sockets).
fn vsock_path(tag: &str) -> PathBuf {
    socket_path(&format!("vsock-{tag}"))
}

fn remove_sockets(uds: &Path, ports: &[u32]) {
    let _ = std::fs::remove_file(uds);
    for p in ports {
        let _ = std::fs::remove_file(format!("{}_{p}", uds.display()));
    }
}

#[test]
fn vsock_streams_64_mib_each_way_with_checksums() {
    if LAB.ran("vsock_streams_64_mib_each_way_with_checksums") {
        return;
    }
    const LEN: usize = 64 << 20;
    let uds = vsock_path("streams");
    // Guest -> host: the guest connects to host port 5001, which is the
    // unix socket <uds>_5001.
    let from_guest = UnixListener::bind(format!("{}_5001", uds.display())).unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = from_guest.accept().expect("accept on <uds>_5001");
        let start = Instant::now();
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).expect("receive from the guest");
        (got, start.elapsed())
    });
    let data = Arc::new(pattern(LEN, 0x9e37_79b9_7f4a_7c15));
    let sent_hash = sha256(&data);
    let mut vm = spawn_guest(
        true,
        Some(
            "flint.cmd=vsock-test,listen,5000|sha256sum \
             flint.cmd=dd,if=/dev/urandom,of=/tmp/d,bs=1M,count=64,2>/dev/null&&sha256sum,/tmp/d \
             flint.cmd=vsock-test,connect,2,5001,</tmp/d",
        ),
        &[
            "--memory",
            "512",
            "--vsock",
            &format!("cid=3,uds={}", uds.display()),
        ],
    );
    // Host -> guest: once the guest listens, connect through the device's
    // socket, send everything and close.
    vm.wait_for("vsock-test: listening on 5000", boot_deadline());
    let (mut s, ok) = vsock_connect(&uds, 5000);
    assert!(ok.starts_with("OK "), "answer to CONNECT 5000: {ok:?}");
    let start = Instant::now();
    s.write_all(&data).expect("send to the guest");
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(cmd_exit(&mut vm, 1), "0", "{}", vm.output());
    let up = start.elapsed();
    assert_eq!(cmd_exit(&mut vm, 3), "0", "{}", vm.output());
    let (got, down) = receiver.join().expect("receiver");
    let status = vm.wait_exit(Duration::from_secs(120));
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(
        guest_hash(&out, "-").as_deref(),
        Some(sent_hash.as_str()),
        "the guest received other bytes than the host sent:\n{out}"
    );
    assert_eq!(got.len(), LEN, "bytes received from the guest");
    assert_eq!(
        guest_hash(&out, "/tmp/d").as_deref(),
        Some(sha256(&got).as_str()),
        "the host received other bytes than the guest sent:\n{out}"
    );
    assert!(!uds.exists(), "flint left its vsock socket behind");
    // Timed as tests/net.rs times TCP, for a side-by-side figure.
    let mib_s = |t: Duration| 64.0 / t.as_secs_f64();
    eprintln!(
        "vsock: 64 MiB host->guest {:.1} MiB/s, guest->host {:.1} MiB/s",
        mib_s(up),
        mib_s(down)
    );
    remove_sockets(&uds, &[5001]);
}

#[test]
fn vsock_many_connections_refusals_and_half_closed_streams() {
    if LAB.ran("vsock_many_connections_refusals_and_half_closed_streams") {
        return;
    }
    let uds = vsock_path("conns");
    // A host listener that reads 1 MiB of what the guest sends, then
    // closes while the guest is still sending.
    let cutter = UnixListener::bind(format!("{}_5004", uds.display())).unwrap();
    let cut = std::thread::spawn(move || {
        let (mut s, _) = cutter.accept().expect("accept on <uds>_5004");
        let mut buf = vec![0u8; 1 << 20];
        s.read_exact(&mut buf)
            .expect("the first MiB from the guest");
    });
    let mut vm = spawn_guest(
        true,
        Some(
            "flint.cmd=vsock-test,echo,5002,32 \
             flint.cmd=vsock-test,listen,5003|wc,-c \
             flint.cmd=dd,if=/dev/zero,bs=1M,count=64,2>/dev/null|vsock-test,connect,2,5004 \
             flint.cmd=vsock-test,connect,2,5999,</dev/null",
        ),
        &["--vsock", &format!("cid=7,uds={}", uds.display())],
    );
    vm.wait_for("vsock-test: listening on 5002", boot_deadline());

    // No guest listener on 6000: the guest kernel answers RST and the host
    // side sees the stream end without an OK.
    let (mut s, answer) = vsock_connect(&uds, 6000);
    assert_eq!(answer, "", "CONNECT to a port nobody listens on");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");

    // 32 connections at once, each echoing its own 256 KiB.
    let workers: Vec<_> = (0..32u64)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let (mut s, ok) = vsock_connect(&uds, 5002);
                assert!(ok.starts_with("OK "), "connection {i}: {ok:?}");
                let data = pattern(256 << 10, i + 1);
                let mut w = s.try_clone().unwrap();
                let d = data.clone();
                let writer = std::thread::spawn(move || {
                    w.write_all(&d).expect("send");
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                s.read_to_end(&mut back).expect("echo");
                writer.join().unwrap();
                assert!(back == data, "connection {i}: echo differs");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("an echo connection failed");
    }
    assert_eq!(cmd_exit(&mut vm, 1), "0", "{}", vm.output());

    // The host closes half-way through a stream into the guest: the
    // guest's reader sees the end of the stream after what was sent.
    vm.wait_for("vsock-test: listening on 5003", Duration::from_secs(60));
    let (mut s, ok) = vsock_connect(&uds, 5003);
    assert!(ok.starts_with("OK "), "{ok:?}");
    s.write_all(&pattern(100_000, 7)).unwrap();
    drop(s);
    assert_eq!(cmd_exit(&mut vm, 2), "0", "{}", vm.output());
    assert!(
        vm.output().lines().any(|l| l.trim() == "100000"),
        "the guest did not count 100000 bytes:\n{}",
        vm.output()
    );

    // The host closes while the guest still sends: the guest's sender
    // fails instead of hanging, and the VM goes on.
    cut.join().expect("the cutting listener");
    assert_ne!(cmd_exit(&mut vm, 3), "0", "{}", vm.output());
    // A guest connection to a host port with no socket is refused.
    assert_ne!(cmd_exit(&mut vm, 4), "0", "{}", vm.output());
    let status = vm.wait_exit(Duration::from_secs(120));
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("vsock-test: connect:"), "{out}");
    remove_sockets(&uds, &[5004]);
}

#[test]
fn entropy_device_is_the_guests_hwrng() {
    if LAB.ran("entropy_device_is_the_guests_hwrng") {
        return;
    }
    let metrics = std::env::temp_dir().join(format!("flint-rng-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&metrics);
    let mut vm = spawn_guest(
        true,
        Some(
            "flint.cmd=cat,/sys/class/misc/hw_random/rng_current \
             flint.cmd=head,-c,65536,/dev/hwrng|wc,-c \
             flint.cmd=head,-c,4096,/dev/hwrng|gzip,-c|wc,-c",
        ),
        &["--entropy", "--metrics-path", metrics.to_str().unwrap()],
    );
    vm.wait_for("flint-guest: cmd exit", boot_deadline());
    let status = vm.wait_exit(Duration::from_secs(120));
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(
        out.matches("flint-guest: cmd exit 0").count(),
        3,
        "a guest command failed:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.trim().starts_with("virtio_rng")),
        "the guest's hwrng is not virtio:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.trim() == "65536"),
        "65536 bytes were not read from /dev/hwrng:\n{out}"
    );
    // Random bytes do not compress: gzip of 4096 of them stays above 4000.
    let gz = out
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .find(|&n| n != 65536)
        .unwrap_or_else(|| panic!("no gzip size:\n{out}"));
    assert!(
        gz > 4000,
        "4096 bytes from /dev/hwrng compress to {gz}:\n{out}"
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let bytes = last["entropy"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        bytes >= 65536 + 4096,
        "flint's entropy device served {bytes} bytes: {last}"
    );
    std::fs::remove_file(&metrics).unwrap();
}

/// flint's resident memory in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The guest's latest `MemTotal: N kB` line, in KiB.
fn last_mem_total(out: &str) -> Option<u64> {
    out.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Wait until the guest reports a MemTotal that `ok` accepts.
fn wait_mem_total(vm: &mut Running, what: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(m) = last_mem_total(&vm.output()).filter(|&m| ok(m)) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "MemTotal never {what}:\n{}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn balloon_takes_memory_from_the_guest_and_gives_it_back() {
    if LAB.ran("balloon_takes_memory_from_the_guest_and_gives_it_back") {
        return;
    }
    // The guest touches most of its 256 MiB (so flint's RSS holds it), in
    // a tmpfs of its own (the root's is capped at half the memory), frees
    // it, then reports MemTotal every half second.
    let boot_args = cmdline(
        "flint.cmd=mkdir,-p,/m&&mount,-t,tmpfs,-o,size=200m,m,/m&&\
         dd,if=/dev/zero,of=/m/f,bs=1M,count=180,2>/dev/null;rm,-f,/m/f;umount,/m;\
         echo,filled-$((40+2));while,:;do,grep,MemTotal,/proc/meminfo;sleep,0.5;done",
    );
    let mut api = ApiVm::start("balloon", &[]);
    let mut c = api.client();
    c.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 256}"#,
    );
    c.ok(
        "PUT",
        "/boot-source",
        &json!({
            "kernel_image_path": artifact("kernel"),
            "initrd_path": artifact("initrd"),
            "boot_args": boot_args,
        })
        .to_string(),
    );
    c.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1}"#,
    );
    assert_eq!(c.get("/balloon").json()["amount_mib"], 0);
    c.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    api.vm.wait_for("filled-42", boot_deadline());
    let full = wait_mem_total(&mut api.vm, "reported", |_| true);
    // Let the freed pages settle before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let pid = api.vm.child.id();
    let rss_before = rss_kib(pid);

    c.ok("PATCH", "/balloon", r#"{"amount_mib": 64}"#);
    let shrunk = wait_mem_total(&mut api.vm, "dropped by 64 MiB", |m| {
        m + 64 * 1024 <= full + 1024
    });
    // The guest tells flint about each batch of pages after taking it
    // from its own count: give the last batches a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rss_after = loop {
        let rss = rss_kib(pid);
        if rss + 48 * 1024 <= rss_before || Instant::now() >= deadline {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        rss_before >= rss_after + 48 * 1024,
        "flint's RSS went from {rss_before} KiB to {rss_after} KiB with a 64 MiB balloon"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let s = c.get("/balloon/statistics").json();
        if s["actual_mib"] == 64 && s.get("total_memory").is_some() {
            break s;
        }
        assert!(Instant::now() < deadline, "statistics: {s}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(stats["target_mib"], 64, "{stats}");
    assert_eq!(c.get("/balloon").json()["amount_mib"], 64);

    // Deflating gives the memory back to the guest.
    c.ok("PATCH", "/balloon", r#"{"amount_mib": 0}"#);
    let back = wait_mem_total(&mut api.vm, "came back", |m| m >= full);
    eprintln!(
        "balloon: MemTotal {full} -> {shrunk} -> {back} KiB; flint RSS {rss_before} -> {rss_after} KiB"
    );
    // Too much is refused, and the target stays.
    let e = c.patch("/balloon", r#"{"amount_mib": 257}"#).fault();
    assert!(e.contains("more than the guest's memory"), "{e}");
    c.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    let status = api.vm.wait_exit(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{}", api.vm.output());
}
