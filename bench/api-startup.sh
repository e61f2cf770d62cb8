#!/usr/bin/env bash
# How fast flint's API is up, and how fast a guest runs over it.
#   bench/api-startup.sh [N]      (default N=20; uses target/release/flint)
# For each of N runs: launch `flint --api-sock S --boot-timer`, poll the
# socket with GET /machine-config (as firecracker-go-sdk does) and record
#   socket-ready     wall ms from launch to the first answer
#   cpu-at-ready     CPU ms flint had used by then (all its threads,
#                    /proc/PID/task/*/schedstat)
# then PUT /boot-source (the tiny i8042-reset guest) and InstanceStart, and
# read flint's own boot phases at exit:
#   first-guest-insn wall ms from launch to vCPU 0's first KVM_RUN
#   api-to-insn      from the InstanceStart request to that KVM_RUN
# Firecracker's published figure for comparison: at most 8 ms of CPU from
# launch to a ready API socket (its specification, docs/SPECIFICATION.md).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
flint=target/release/flint
[ -x "$flint" ] || cargo build --release >&2
eval "$(bash resources/tiny/build.sh)"
echo "runs: $n; host KVM: $([ -d /sys/module/kvm_pvm ] && echo kvm_pvm || echo hardware); flint: $flint"
python3 - "$n" "$flint" "$tiny_reset" <<'PY'
import glob, json, os, re, socket, statistics as st, subprocess, sys, time

n, flint, kernel = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def cpu_ms(pid):
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            total += int(open(f).read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e6

def request(sock, method, path, body=""):
    req = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
           f"Content-Length: {len(body)}\r\n\r\n{body}")
    sock.sendall(req.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    m = re.search(rb"Content-Length: (\d+)", head)
    want = int(m.group(1)) if m else 0
    while len(rest) < want:
        rest += sock.recv(4096)
    return status, rest

ready, cpu, insn, api_insn = [], [], [], []
for i in range(n):
    path = f"/tmp/flint-bench-api-{os.getpid()}-{i}.sock"
    if os.path.exists(path):
        os.unlink(path)
    t0 = time.perf_counter()
    p = subprocess.Popen([flint, "--api-sock", path, "--boot-timer"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    while True:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            status, _ = request(s, "GET", "/machine-config")
            if status == 200:
                break
        except OSError:
            s.close()
        if time.perf_counter() - t0 > 10:
            sys.exit("the API socket did not come up within 10 s")
    t_ready = (time.perf_counter() - t0) * 1000
    c = cpu_ms(p.pid)
    body = json.dumps({"kernel_image_path": kernel})
    assert request(s, "PUT", "/boot-source", body)[0] == 204
    t_start = (time.perf_counter() - t0) * 1000
    status, _ = request(s, "PUT", "/actions", '{"action_type": "InstanceStart"}')
    assert status == 204, status
    _, err = p.communicate(timeout=30)
    m = re.search(rb"boot-phase first-kvm-run ([0-9.]+) ms", err)
    if not m:
        sys.exit("no first-kvm-run phase in flint's output:\n" + err.decode())
    ready.append(t_ready); cpu.append(c)
    insn.append(float(m.group(1))); api_insn.append(float(m.group(1)) - t_start)

def line(name, xs):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    print(f"{name:17s} median {st.median(xs):7.2f} ms   p90 {p90:7.2f} ms   min {xs[0]:7.2f} ms")

line("socket-ready", ready)
line("cpu-at-ready", cpu)
line("first-guest-insn", insn)
line("api-to-insn", api_insn)
print("Firecracker's figure: <= 8 ms CPU from launch to a ready API socket")
PY
