//! virtio-net over a TAP device: the guest and the host talk.
//!
//! Every test that moves packets makes its own network namespace
//! (`flint-test-<pid>-<n>`, deleted when the test ends, even on panic),
//! creates its TAPs there with host-side addresses in 172.16.0.0/16, and runs
//! flint inside it (`ip netns exec NS flint ...`, which execs flint, so the
//! child is flint itself). Nothing outside the namespace is ever contacted.
//!
//! On a kvm_pvm host the guest's user space cannot make system calls, so the
//! guest is the kernel alone: `rdinit=/pause` keeps it alive, `ip=`
//! configures the interface, the kernel answers ARP and ping and sends its
//! log with netconsole. The TCP transfer needs guest user space: on a kvm_pvm
//! host it runs inside the lab VM (`common::lab`), as do the kernel-only
//! tests of one VM, which boot there in seconds rather than minutes. These
//! tests need root (namespaces, TAPs) and `ip` and `ping` from iproute2 and
//! iputils.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::netns::{require_root, Netns};
use common::{artifact, boot_deadline, cmdline, guest_hash, pattern, sha256, Running};

/// The tests that run in the lab VM on a kvm_pvm host (`common::lab`),
/// all in one lab run of at most the time given.
static LAB: Lab = Lab::new(
    &[
        "guest_kernel_configures_eth0_from_ip_and_answers_ping_up_to_the_mtu",
        "host_receives_the_guest_kernel_log_over_netconsole",
        "two_nics_eth1_answers_ping_and_eth0_carries_netconsole_and_arp",
        "tcp_64_mib_each_way_with_busybox_nc",
    ],
    1500,
);

const HANDOVER: &str = "Run /pause as init process";
/// The guest's MACs (locally administered) and the addresses on each link.
const MAC0: &str = "06:00:ac:10:00:02";
const MAC1: &str = "06:00:ac:10:01:02";
const HOST0: &str = "172.16.0.1";
const GUEST0: &str = "172.16.0.2";
const HOST1: &str = "172.16.1.1";
const GUEST1: &str = "172.16.1.2";
/// `ip=` for a static address on one interface, no autoconfiguration.
const IP_ETH0: &str = "ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off";
const IP_ETH1: &str = "ip=172.16.1.2::172.16.1.1:255.255.255.0::eth1:off";
const NETCONSOLE_PORT: u16 = 6666;
/// The kernel's netconsole sends from eth0 (172.16.0.2:6665) to the host's
/// end of the first TAP; no target MAC, so it broadcasts on the link.
const NETCONSOLE_ETH0: &str = "netconsole=6665@172.16.0.2/eth0,6666@172.16.0.1/";
/// The guest's line for a statically configured interface.
const IP_CONFIG_ETH0: &str = "device=eth0, hwaddr=06:00:ac:10:00:02, ipaddr=172.16.0.2, \
                              mask=255.255.255.0, gw=172.16.0.1";
const IP_CONFIG_ETH1: &str = "device=eth1, hwaddr=06:00:ac:10:01:02, ipaddr=172.16.1.2, \
                              mask=255.255.255.0, gw=172.16.1.1";
/// Echo requests per ping run, and the ICMP payload sizes: 1472 fills a
/// 1500-byte MTU exactly (20 IP + 8 ICMP header bytes).
const PINGS: u32 = 50;
const PING_SIZES: [u32; 4] = [0, 56, 1000, 1472];

/// ping's summary: "N packets transmitted, M received[, +K errors]...".
#[derive(Debug, Default)]
struct PingStats {
    transmitted: u32,
    received: u32,
    errors: u32,
    /// rtt avg and mdev in ms, when any reply came.
    avg_ms: Option<f64>,
    mdev_ms: Option<f64>,
}

fn parse_ping(out: &str) -> PingStats {
    let mut s = PingStats::default();
    let summary = out
        .lines()
        .find(|l| l.contains(" packets transmitted, "))
        .unwrap_or_else(|| panic!("no ping summary in:\n{out}"));
    for part in summary.split(", ") {
        let num = |suffix: &str| -> Option<u32> {
            part.strip_suffix(suffix)?
                .trim_start_matches('+')
                .parse()
                .ok()
        };
        if let Some(n) = num(" packets transmitted") {
            s.transmitted = n;
        } else if let Some(n) = num(" received") {
            s.received = n;
        } else if let Some(n) = num(" errors") {
            s.errors = n;
        }
    }
    // "rtt min/avg/max/mdev = 53.810/221.774/373.228/80.494 ms, pipe 7"
    if let Some(rtt) = out.lines().find_map(|l| l.strip_prefix("rtt ")) {
        let v: Vec<f64> = rtt
            .split(" = ")
            .nth(1)
            .and_then(|v| v.split(" ms").next())
            .unwrap_or("")
            .split('/')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        if v.len() == 4 {
            s.avg_ms = Some(v[1]);
            s.mdev_ms = Some(v[3]);
        }
    }
    s
}

/// Ping `target` from the namespace with `size` payload bytes, never
/// fragmenting, until `count` replies came; the replies must be those to
/// the first `count` echo requests, each once.
///
/// `-w` makes ping wait for the replies (up to that deadline, and sending
/// on while some are missing). With `-c` alone it gives up one interval
/// after the last request when the payload has no timestamp (under 16
/// bytes), or twice the largest round trip so far otherwise, which the
/// slow emulated guest often misses.
fn ping_all(ns: &Netns, target: &str, count: u32, size: u32) {
    let (count_s, size_s) = (count.to_string(), size.to_string());
    let out = ns.exec(
        "ping",
        &[
            "-c", &count_s, "-i", "0.05", "-W", "5", "-w", "120", "-M", "do", "-s", &size_s, target,
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = parse_ping(&text);
    let mut seqs: Vec<u32> = text
        .lines()
        .filter(|l| l.contains(&format!(" bytes from {target}: ")))
        .filter_map(|l| {
            let seq = l.split("icmp_seq=").nth(1)?.split(' ').next()?;
            seq.parse().ok()
        })
        .filter(|&seq| seq <= count)
        .collect();
    seqs.sort_unstable();
    assert!(
        seqs == (1..=count).collect::<Vec<_>>() && s.errors == 0 && !text.contains("DUP!"),
        "ping -s {size} {target}: the first {count} echo requests were not each answered \
         once:\n{text}"
    );
    assert!(out.status.success(), "ping -s {size} {target}:\n{text}");
    eprintln!(
        "ping -s {size} {target}: {}/{} answered, rtt avg {:.1} ms, mdev {:.1} ms",
        s.received,
        s.transmitted,
        s.avg_ms.unwrap_or(f64::NAN),
        s.mdev_ms.unwrap_or(f64::NAN)
    );
}

/// Datagrams received on a UDP socket by a background thread.
struct UdpLog {
    datagrams: Arc<Mutex<Vec<(SocketAddr, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpLog {
    fn start(sock: UdpSocket) -> UdpLog {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, st) = (datagrams.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    d.lock().unwrap().push((from, text));
                }
            }
        });
        UdpLog {
            datagrams,
            stop,
            thread: Some(thread),
        }
    }

    fn text(&self) -> String {
        self.datagrams
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| t.as_str())
            .collect()
    }

    fn senders(&self) -> Vec<SocketAddr> {
        let mut s: Vec<SocketAddr> = self.datagrams.lock().unwrap().iter().map(|d| d.0).collect();
        s.dedup();
        s
    }

    /// Wait until the received text contains `needle`.
    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.text().contains(needle)
    }
}

impl Drop for UdpLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket bound to `addr` inside `ns`, receiving in the background.
fn udp_log(ns: &Netns, addr: &str, port: u16) -> UdpLog {
    let addr = format!("{addr}:{port}");
    let sock = ns.run_inside(move || {
        UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("bind UDP {addr}: {e}"))
    });
    // Room for the whole replayed boot log even if this thread is starved
    // for a while on a busy host.
    let size: libc::c_int = 8 << 20;
    // SAFETY: SO_RCVBUFFORCE reads one c_int from the pointer, valid for
    // the call; `sock` is an open socket.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    UdpLog::start(sock)
}

/// The whole line of `text` that contains `needle`, without the line end.
fn line_with<'a>(text: &'a str, needle: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.contains(needle))
        .map(|l| l.trim_end_matches('\r'))
}

/// The kernel's lines (with PRINTK_TIME each starts with "[ seconds]"),
/// without line ends; flint's own messages are left out.
fn kernel_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with('['))
        .collect()
}

/// The kernel log came over the network line for line, timestamps
/// included, from its first line (built-in netconsole replays the log
/// buffer when it starts) to the hand-over to init: nothing lost, reordered
/// or changed on the way.
fn assert_same_log(serial: &str, net: &str) {
    let console_log: Vec<&str> = kernel_lines(serial)
        .into_iter()
        .take_while(|l| !l.contains(HANDOVER))
        .collect();
    let net_log: Vec<&str> = kernel_lines(net)
        .into_iter()
        .take(console_log.len())
        .collect();
    assert!(
        console_log.len() > 50 && console_log[0].contains("Linux version "),
        "{serial}"
    );
    if let Some(i) = (0..console_log.len()).find(|&i| net_log.get(i) != Some(&console_log[i])) {
        panic!(
            "netconsole differs from the console at line {i}:\n  console: {:?}\n  net:     \
             {:?}\nreceived:\n{net}",
            console_log[i],
            net_log.get(i)
        );
    }
    let handover = line_with(serial, HANDOVER).unwrap();
    assert!(net.lines().any(|l| l == handover), "{net}");
}

/// SIGTERM makes flint press Ctrl-Alt-Del; the guest kernel reboots and
/// flint exits 0.
fn stop_with_sigterm(vm: &mut Running) {
    common::stop_with_sigterm(vm, Duration::from_secs(240));
}

/// Boot the default kernel with the initramfs and `/pause` as init.
fn boot_in(ns: &Netns, cmdline_extra: &str, nets: &[&str]) -> Running {
    let (kernel, initrd) = (artifact("kernel"), artifact("initrd"));
    let cl = cmdline(&format!("rdinit=/pause {cmdline_extra}"));
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cl,
        "--shutdown-timeout",
        "180",
    ];
    for n in nets {
        args.extend(["--net", n]);
    }
    ns.spawn_flint(&args)
}

#[test]
fn guest_kernel_configures_eth0_from_ip_and_answers_ping_up_to_the_mtu() {
    if LAB.ran("guest_kernel_configures_eth0_from_ip_and_answers_ping_up_to_the_mtu") {
        return;
    }
    require_root("guest_kernel_configures_eth0_from_ip_and_answers_ping_up_to_the_mtu");
    let ns = Netns::new();
    ns.add_tap("tap0", &format!("{HOST0}/24"));
    let mut vm = boot_in(&ns, IP_ETH0, &[&format!("tap=tap0,mac={MAC0}")]);
    vm.wait_for("IP-Config: Complete:", boot_deadline());
    vm.wait_for(IP_CONFIG_ETH0, Duration::from_secs(60));
    vm.wait_for(HANDOVER, boot_deadline());

    for size in PING_SIZES {
        ping_all(&ns, GUEST0, PINGS, size);
    }
    // The guest answered ARP with the MAC flint was given.
    assert_eq!(ns.neighbour(GUEST0, "tap0").as_deref(), Some(MAC0));
    // 1472 was the largest payload that fits the TAP's 1500-byte MTU
    // unfragmented: one more byte is refused on the host.
    let out = ns.exec("ping", &["-c", "1", "-M", "do", "-s", "1473", GUEST0]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("mtu=1500"),
        "{out:?}"
    );

    stop_with_sigterm(&mut vm);
}

#[test]
fn host_receives_the_guest_kernel_log_over_netconsole() {
    if LAB.ran("host_receives_the_guest_kernel_log_over_netconsole") {
        return;
    }
    require_root("host_receives_the_guest_kernel_log_over_netconsole");
    let ns = Netns::new();
    ns.add_tap("tap0", &format!("{HOST0}/24"));
    let log = udp_log(&ns, HOST0, NETCONSOLE_PORT);
    let mut vm = boot_in(
        &ns,
        &format!("{IP_ETH0} {NETCONSOLE_ETH0}"),
        &[&format!("tap=tap0,mac={MAC0}")],
    );
    vm.wait_for("netconsole: network logging started", boot_deadline());
    vm.wait_for(HANDOVER, boot_deadline());
    assert!(
        log.wait_for(HANDOVER, Duration::from_secs(60)),
        "no {HANDOVER:?} over netconsole; received:\n{}\nconsole:\n{}",
        log.text(),
        vm.output()
    );
    let serial = vm.output();
    let net = log.text();
    assert_same_log(&serial, &net);
    // Including what the kernel printed after netconsole started.
    let ip_config = line_with(&serial, IP_CONFIG_ETH0).unwrap();
    assert!(net.lines().any(|l| l == ip_config), "{net}");
    let from: SocketAddr = format!("{GUEST0}:6665").parse().unwrap();
    assert_eq!(log.senders(), vec![from], "datagrams from elsewhere");
    stop_with_sigterm(&mut vm);
}

/// Two NICs at once. `ip=` configures a single interface, so eth1 gets the
/// address and answers ping, while eth0 stays without one: the kernel's
/// netconsole brings it up and sends over it, and it answers ARP for the
/// guest's address (Linux answers for any local address on any interface).
#[test]
fn two_nics_eth1_answers_ping_and_eth0_carries_netconsole_and_arp() {
    if LAB.ran("two_nics_eth1_answers_ping_and_eth0_carries_netconsole_and_arp") {
        return;
    }
    require_root("two_nics_eth1_answers_ping_and_eth0_carries_netconsole_and_arp");
    let ns = Netns::new();
    ns.add_tap("tap0", &format!("{HOST0}/24"));
    ns.add_tap("tap1", &format!("{HOST1}/24"));
    let log = udp_log(&ns, HOST0, NETCONSOLE_PORT);
    let mut vm = boot_in(
        &ns,
        &format!("{IP_ETH1} {NETCONSOLE_ETH0}"),
        &[
            &format!("tap=tap0,mac={MAC0}"),
            &format!("tap=tap1,mac={MAC1}"),
        ],
    );
    vm.wait_for(IP_CONFIG_ETH1, boot_deadline());
    vm.wait_for(HANDOVER, boot_deadline());
    let serial = vm.output();
    for dev in ["virtio-mmio.0", "virtio-mmio.1"] {
        assert!(
            serial.contains(&format!("Registering device {dev} ")),
            "{dev} not registered:\n{serial}"
        );
    }
    assert!(
        serial.contains("netpoll: netconsole: interface 'eth0'"),
        "{serial}"
    );

    // eth1: the whole IP path, up to the MTU.
    for size in [56, 1472] {
        ping_all(&ns, GUEST1, PINGS, size);
    }
    assert_eq!(ns.neighbour(GUEST1, "tap1").as_deref(), Some(MAC1));

    // eth0 sends: the kernel log arrives on tap0.
    assert!(
        log.wait_for(HANDOVER, Duration::from_secs(60)),
        "no netconsole over eth0; received:\n{}",
        log.text()
    );
    assert_same_log(&vm.output(), &log.text());
    let from: SocketAddr = format!("{GUEST0}:6665").parse().unwrap();
    assert_eq!(log.senders(), vec![from]);

    // eth0 receives and answers: an ARP request for 172.16.1.2 sent out of
    // tap0 (ping bound to tap0 treats the address as on-link there) gets
    // eth0's MAC back. The echo replies leave through eth1, where the bound
    // socket does not see them, so only the ARP answer is checked.
    let end = Instant::now() + Duration::from_secs(60);
    let mut learned = None;
    while Instant::now() < end {
        let _ = ns.exec("ping", &["-c", "1", "-W", "2", "-I", "tap0", GUEST1]);
        learned = ns.neighbour(GUEST1, "tap0");
        if learned.is_some() {
            break;
        }
    }
    assert_eq!(
        learned.as_deref(),
        Some(MAC0),
        "eth0 did not answer ARP on tap0"
    );
    stop_with_sigterm(&mut vm);
}

#[test]
fn tcp_64_mib_each_way_with_busybox_nc() {
    if LAB.ran("tcp_64_mib_each_way_with_busybox_nc") {
        return;
    }
    require_root("tcp_64_mib_each_way_with_busybox_nc");
    const LEN: usize = 64 << 20;
    let data: Arc<Vec<u8>> = Arc::new(pattern(LEN, 0x9e37_79b9_7f4a_7c15));
    let sent_hash = sha256(&data);

    let ns = Netns::new();
    ns.add_tap("tap0", &format!("{HOST0}/24"));
    let listen = |port: u16| {
        let addr = format!("{HOST0}:{port}");
        ns.run_inside(move || {
            TcpListener::bind(&addr).unwrap_or_else(|e| panic!("listen on {addr}: {e}"))
        })
    };
    let (to_guest, from_guest) = (listen(5001), listen(5002));
    // Host -> guest: send everything, then close; the guest hashes what
    // it got. The accept waits as long as the boot may take.
    let d = data.clone();
    let sender = std::thread::spawn(move || -> Duration {
        let (mut s, _) = to_guest.accept().expect("accept on 5001");
        let start = Instant::now();
        s.write_all(&d).expect("send to the guest");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        start.elapsed()
    });
    // Guest -> host: read until the guest's nc half-closes.
    let receiver = std::thread::spawn(move || -> (Vec<u8>, Duration) {
        let (mut s, _) = from_guest.accept().expect("accept on 5002");
        let start = Instant::now();
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).expect("receive from the guest");
        (got, start.elapsed())
    });

    let (kernel, initrd) = (artifact("kernel"), artifact("initrd"));
    // Every "," is a space for the default init (resources/rootfs/init).
    let cl = cmdline(&format!(
        "{IP_ETH0} \
         flint.cmd=nc,{HOST0},5001,</dev/null|sha256sum \
         flint.cmd=dd,if=/dev/urandom,of=/tmp/d,bs=1M,count=64,2>/dev/null \
         flint.cmd=sha256sum,/tmp/d \
         flint.cmd=nc,{HOST0},5002,</tmp/d,>/dev/null"
    ));
    let mut vm = ns.spawn_flint(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "512",
        "--cmdline",
        &cl,
        "--net",
        &format!("tap=tap0,mac={MAC0}"),
    ]);
    vm.wait_for("flint-guest: init reached", boot_deadline());
    let status = vm.wait_exit(Duration::from_secs(300));
    let out = vm.output();
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(
        out.matches("flint-guest: cmd exit 0").count(),
        4,
        "a guest command failed:\n{out}"
    );

    let up = sender.join().expect("sender");
    let (got, down) = receiver.join().expect("receiver");
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
    let mib_s = |t: Duration| 64.0 / t.as_secs_f64();
    eprintln!(
        "64 MiB host->guest {:.1} MiB/s, guest->host {:.1} MiB/s",
        mib_s(up),
        mib_s(down)
    );
}

/// Run flint in `ns` and check it fails with status 1, without a panic,
/// and that its last `flint:` line names every needle. The real kernel is
/// given, so the outcome does not hang on the order of flint's checks; the
/// namespace keeps a TAP that a wrongly accepted config would create (and
/// the VM it would boot) out of the host's network.
fn fails_with(ns: &Netns, args: &[&str], needles: &[&str]) {
    let mut vm = ns.spawn_flint(args);
    let status = vm.wait_exit(Duration::from_secs(60));
    let out = vm.output();
    assert_eq!(status.code(), Some(1), "flint {args:?}: {status}\n{out}");
    assert!(!out.contains("panicked"), "flint {args:?} panicked:\n{out}");
    let last = out
        .lines()
        .rfind(|l| l.starts_with("flint: "))
        .unwrap_or_else(|| panic!("no error line:\n{out}"));
    for n in needles {
        assert!(last.contains(n), "error {last:?} lacks {n:?}");
    }
}

fn kernel_path() -> String {
    artifact("kernel").to_str().unwrap().to_string()
}

/// A JSON config with the real kernel and these network interfaces.
fn tmp_json(name: &str, interfaces: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("flint-net-{}-{name}", std::process::id()));
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": {:?}}}, "network-interfaces": {interfaces}}}"#,
        kernel_path()
    );
    std::fs::write(&p, json).unwrap();
    p
}

#[test]
fn bad_mac_is_refused_and_named() {
    require_root("bad_mac_is_refused_and_named");
    let ns = Netns::new();
    let kernel = kernel_path();
    for (mac, why) in [
        ("zz", "not a hex digit"),
        ("06:00:ac:10:00", "fewer than six bytes"),
        ("06:00:ac:10:00:02:03", "more than six bytes"),
        ("01:00:5e:00:00:01", "multicast"),
        ("00:00:00:00:00:00", "all-zero"),
    ] {
        fails_with(
            &ns,
            &[
                "--kernel",
                &kernel,
                "--net",
                &format!("tap=flint-nope,mac={mac}"),
            ],
            &[mac, why, "network interface \"eth0\""],
        );
    }
    let p = tmp_json(
        "mac.json",
        r#"[{"iface_id": "net1", "host_dev_name": "flint-nope", "guest_mac": "06:00:ac:10:00:0g"}]"#,
    );
    fails_with(
        &ns,
        &["--config-file", p.to_str().unwrap()],
        &["\"06:00:ac:10:00:0g\"", "network interface \"net1\""],
    );
    std::fs::remove_file(p).unwrap();
    // Nothing was created.
    assert!(!ns.ip(&["link", "show"]).contains("flint-nope"));
}

#[test]
fn duplicate_iface_ids_and_tap_names_are_refused() {
    require_root("duplicate_iface_ids_and_tap_names_are_refused");
    let ns = Netns::new();
    let p = tmp_json(
        "dup-id.json",
        r#"[{"iface_id": "eth0", "host_dev_name": "flint-a"},
            {"iface_id": "eth0", "host_dev_name": "flint-b"}]"#,
    );
    fails_with(
        &ns,
        &["--config-file", p.to_str().unwrap()],
        &["iface_id \"eth0\"", "more than one network interface"],
    );
    std::fs::remove_file(p).unwrap();
    // A flag that reuses the file's id.
    let p = tmp_json(
        "one.json",
        r#"[{"iface_id": "eth0", "host_dev_name": "flint-a"}]"#,
    );
    fails_with(
        &ns,
        &[
            "--config-file",
            p.to_str().unwrap(),
            "--net",
            "tap=flint-c,id=eth0",
        ],
        &["iface_id \"eth0\""],
    );
    std::fs::remove_file(p).unwrap();
    let p = tmp_json(
        "dup-tap.json",
        r#"[{"iface_id": "a", "host_dev_name": "flint-a"},
            {"iface_id": "b", "host_dev_name": "flint-a"}]"#,
    );
    fails_with(
        &ns,
        &["--config-file", p.to_str().unwrap()],
        &[
            "host_dev_name \"flint-a\"",
            "more than one network interface",
        ],
    );
    std::fs::remove_file(p).unwrap();
    // Flags alone: two interfaces get eth0 and eth1 by position, and an
    // explicit id may not clash with either.
    let kernel = kernel_path();
    fails_with(
        &ns,
        &[
            "--kernel",
            &kernel,
            "--net",
            "tap=flint-a",
            "--net",
            "tap=flint-b,id=eth0",
        ],
        &["iface_id \"eth0\""],
    );
    let links = ns.ip(&["link", "show"]);
    assert!(
        !links.contains("flint-a") && !links.contains("flint-b"),
        "{links}"
    );
}

#[test]
fn tap_name_longer_than_15_bytes_is_refused() {
    require_root("tap_name_longer_than_15_bytes_is_refused");
    let ns = Netns::new();
    fails_with(
        &ns,
        &["--kernel", &kernel_path(), "--net", "tap=flint-tap-16byte"],
        &["\"flint-tap-16byte\"", "at most 15 bytes"],
    );
}

/// A single-queue TAP has one owner: while another process holds it,
/// flint says so and exits 1. The name is exactly 15 bytes, the longest
/// allowed.
#[test]
fn tap_in_use_by_another_process_is_refused() {
    require_root("tap_in_use_by_another_process_is_refused");
    const NAME: &str = "flint-busy-tap0";
    assert_eq!(NAME.len(), 15);
    let ns = Netns::new();
    // Own the TAP as another VMM would: TUNSETIFF on /dev/net/tun.
    let holder: File = ns.run_inside(|| {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun");
        let mut ifr = [0u8; 40]; // struct ifreq
        ifr[..NAME.len()].copy_from_slice(NAME.as_bytes());
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes one struct ifreq (40 bytes on
        // x86-64), which `ifr` provides; `tun` is an open tun fd.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        tun
    });
    ns.ip(&["link", "show", NAME]);
    fails_with(
        &ns,
        &["--kernel", &kernel_path(), "--net", &format!("tap={NAME}")],
        &[&format!("TAP device {NAME} is in use by another process")],
    );
    // The owner still has it.
    ns.ip(&["link", "show", NAME]);
    drop(holder);
}

#[test]
fn two_vms_at_once_each_with_its_own_disk_and_tap_do_not_disturb_each_other() {
    require_root("two_vms_at_once_each_with_its_own_disk_and_tap_do_not_disturb_each_other");
    // Kernel-level, so it runs on the bare host: the lab runs one VM at a
    // time reliably (resources/lab/README.md), a kvm_pvm host runs many.
    let (kernel, rootfs) = (artifact("kernel"), artifact("rootfs"));
    let macs = [MAC0, MAC1];
    let vms: Vec<(Netns, std::path::PathBuf, Running)> = macs
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            let ns = Netns::new();
            // The same TAP name and addresses in both namespaces: only
            // flint's own wiring keeps the two apart.
            ns.add_tap("tap0", &format!("{HOST0}/24"));
            let disk =
                std::env::temp_dir().join(format!("flint-net-{}-vm{i}.ext4", std::process::id()));
            std::fs::copy(&rootfs, &disk).unwrap();
            let cl = cmdline(&format!("init=/pause {IP_ETH0}"));
            let vm = ns.spawn_flint(&[
                "--kernel",
                kernel.to_str().unwrap(),
                "--cmdline",
                &cl,
                "--drive",
                &format!("path={},root=on", disk.display()),
                "--net",
                &format!("tap=tap0,mac={mac}"),
                "--shutdown-timeout",
                "180",
            ]);
            (ns, disk, vm)
        })
        .collect();
    let mut vms = vms;
    for (_, _, vm) in vms.iter_mut() {
        vm.wait_for("Run /pause as init process", boot_deadline());
    }
    for ((ns, _, vm), mac) in vms.iter().zip(macs) {
        assert!(
            vm.output().contains("VFS: Mounted root (ext4 filesystem)"),
            "{}",
            vm.output()
        );
        ping_all(ns, GUEST0, 20, 56);
        assert_eq!(ns.neighbour(GUEST0, "tap0").as_deref(), Some(mac));
    }
    // The first one ends; the second goes on answering.
    let (ns0, disk0, mut vm0) = vms.remove(0);
    stop_with_sigterm(&mut vm0);
    ping_all(&vms[0].0, GUEST0, 20, 56);
    stop_with_sigterm(&mut vms[0].2);
    drop(ns0);
    for disk in [disk0, vms[0].1.clone()] {
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(&disk)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {out:?}", disk.display());
        std::fs::remove_file(disk).unwrap();
    }
}
