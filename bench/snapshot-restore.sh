#!/usr/bin/env bash
# Restore latency against a cold boot, with the counting tiny guest
# (resources/tiny/counter.S: it prints "count N" on COM1 as it counts).
# For each guest size, a snapshot of the counter is taken once; then, N
# times each:
#   load   PUT /snapshot/load (File backend, resume_vm) on a fresh flint:
#          request sent -> 204 answered (the vCPUs run: Firecracker's
#          restore latency), and -> the guest's next line
#   uffd   the same with the Uffd backend, flint-uffd-server serving the
#          memory file (started before the request, not timed)
#   cli    flint --restore: launch -> the guest's next line
#   boot   flint --kernel counter.elf: launch -> the guest's first line
# and the sizes of the snapshot's files. Medians and p90s. The counter
# pauses between lines (a busy loop: about 0.25 s on a kvm_pvm host), and a
# snapshot lands inside that pause, so "next line" after a restore includes
# the rest of it, while a cold boot prints before its first pause: compare
# the 204 figure, not the lines, with a boot.
#   bench/snapshot-restore.sh [N]   (default N=20; uses target/release/flint)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
flint=target/release/flint
[ -x "$flint" ] && [ -x target/release/flint-uffd-server ] || cargo build --release >&2
eval "$(bash resources/tiny/build.sh)"
echo "runs: $n; host KVM: $([ -d /sys/module/kvm_pvm ] && echo kvm_pvm || echo hardware); flint: $flint"
python3 - "$n" "$flint" "$tiny_counter" <<'PY'
import json, os, socket, subprocess, sys, tempfile, time, statistics as st

n, flint, counter = int(sys.argv[1]), sys.argv[2], sys.argv[3]
server = os.path.join(os.path.dirname(flint), "flint-uffd-server")
work = tempfile.mkdtemp(prefix="flint-snapbench-")

def first_line(proc, prefix=b"count "):
    """Read the child's stdout until a line starting with prefix."""
    buf = b""
    while True:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            sys.exit("flint ended before the guest printed")
        buf += chunk
        if any(l.startswith(prefix) for l in buf.split(b"\n")):
            return

def start(args):
    return subprocess.Popen([flint] + args, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

def stop(p):
    p.kill()
    p.wait()

def api(sock, method, path, body=None):
    s = socket.socket(socket.AF_UNIX)
    for _ in range(2000):
        try:
            s.connect(sock)
            break
        except OSError:
            time.sleep(0.001)
    data = json.dumps(body) if body is not None else ""
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
              f"Content-Type: application/json\r\n\r\n{data}".encode())
    reply = s.recv(65536).decode()
    s.close()
    status = int(reply.split()[1])
    if status >= 300:
        sys.exit(f"{method} {path}: {reply}")

def snapshot(mib):
    sock = f"{work}/make-{mib}.sock"
    p = subprocess.Popen([flint, "--api-sock", sock], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    api(sock, "PUT", "/boot-source", {"kernel_image_path": counter})
    api(sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mib})
    api(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
    first_line(p)
    api(sock, "PATCH", "/vm", {"state": "Paused"})
    snap, mem = f"{work}/vm-{mib}.snap", f"{work}/vm-{mib}.mem"
    api(sock, "PUT", "/snapshot/create", {"snapshot_path": snap, "mem_file_path": mem})
    stop(p)
    return snap, mem

def ms(t0):
    return (time.perf_counter() - t0) * 1000

def summary(label, xs):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]
    print(f"  {label:<44} median {st.median(xs):8.2f} ms   p90 {p90:8.2f} ms")
    return st.median(xs)

for mib in (128, 1024):
    snap, mem = snapshot(mib)
    sm = os.stat(mem)
    print(f"guest {mib} MiB: state file {os.path.getsize(snap)} bytes; memory file "
          f"{sm.st_size >> 20} MiB long, {sm.st_blocks * 512 >> 10} KiB on disk")
    load_req, load_line, uffd_req, uffd_line, cli, boot = [], [], [], [], [], []
    for i in range(n):
        sock = f"{work}/load-{mib}-{i}.sock"
        p = start(["--api-sock", sock])
        api(sock, "GET", "/machine-config")  # the API is up
        t0 = time.perf_counter()
        api(sock, "PUT", "/snapshot/load", {"snapshot_path": snap, "resume_vm": True,
            "mem_backend": {"backend_type": "File", "backend_path": mem}})
        load_req.append(ms(t0))
        first_line(p)
        load_line.append(ms(t0))
        stop(p)
        usock = f"{work}/uffd-{mib}-{i}.sock"
        pages = subprocess.Popen([server, "--socket", usock, "--mem-file", mem],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        sock = f"{work}/uload-{mib}-{i}.sock"
        p = start(["--api-sock", sock])
        api(sock, "GET", "/machine-config")
        while not os.path.exists(usock):
            time.sleep(0.001)
        t0 = time.perf_counter()
        api(sock, "PUT", "/snapshot/load", {"snapshot_path": snap, "resume_vm": True,
            "mem_backend": {"backend_type": "Uffd", "backend_path": usock}})
        uffd_req.append(ms(t0))
        first_line(p)
        uffd_line.append(ms(t0))
        stop(p)
        pages.wait()
        t0 = time.perf_counter()
        p = start(["--restore", snap, "--mem-file", mem])
        first_line(p)
        cli.append(ms(t0))
        stop(p)
        t0 = time.perf_counter()
        p = start(["--kernel", counter, "--memory", str(mib)])
        first_line(p)
        boot.append(ms(t0))
        stop(p)
    summary("PUT /snapshot/load -> 204 (vCPUs running)", load_req)
    summary("PUT /snapshot/load -> guest's next line", load_line)
    summary("Uffd: PUT /snapshot/load -> 204", uffd_req)
    summary("Uffd: PUT /snapshot/load -> guest's next line", uffd_line)
    summary("flint --restore launch -> guest's next line", cli)
    summary("cold boot launch -> guest's first line", boot)
print("reference: Firecracker's published restore latency, 1 vCPU/128 MiB: 1.5-2.5 ms (P50)")
print("note: the counter's cold boot is a few instructions, not a Linux boot; a Linux "
      "guest's boot takes seconds here (bench/boot-vs-container)")
PY
rm -rf "${TMPDIR:-/tmp}"/flint-snapbench-*
