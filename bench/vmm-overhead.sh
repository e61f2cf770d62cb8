#!/usr/bin/env bash
# flint's own cost: launch a tiny guest (resources/tiny/reset.S, which resets
# through the i8042 at its first instruction), run it, exit. Prints wall time
# and max RSS over N runs next to a plain process (/bin/true) as the floor.
#   bench/vmm-overhead.sh [N]      (default N=30; uses target/release/flint)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-30}
flint=target/release/flint
[ -x "$flint" ] || cargo build --release >&2
[ -x /usr/bin/time ] || { echo "vmm-overhead: needs GNU time: apt-get install -y time" >&2; exit 1; }
eval "$(bash resources/tiny/build.sh)"
echo "runs: $n; host KVM: $([ -d /sys/module/kvm_pvm ] && echo kvm_pvm || echo hardware); flint: $flint"
python3 - "$n" "$flint" "$tiny_reset" <<'PY'
import os, subprocess, sys, tempfile, time, statistics as st

n, flint, tiny = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rss_file = tempfile.NamedTemporaryFile(prefix="flint-rss-").name

# Every command runs under GNU time, which reports the max RSS of the command
# alone (a child's ru_maxrss seen from Python would include Python's own pages
# from before exec); the floor runs the same way, so the difference is fair.
def measure(label, argv):
    walls, rss = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file] + argv,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append((time.perf_counter() - t0) * 1000)
        if r.returncode != 0:
            sys.exit(f"{label}: exit status {r.returncode}")
        rss.append(int(open(rss_file).read().split()[-1]))
    walls.sort()
    p90 = walls[min(n - 1, round(0.9 * (n - 1)))]
    print(f"{label:<30} wall ms: min {walls[0]:6.1f}  median {st.median(walls):6.1f}  p90 {p90:6.1f}"
          f"   max RSS: median {st.median(rss)/1024:5.1f} MiB  max {max(rss)/1024:5.1f} MiB")
    return st.median(walls), st.median(rss)

floor = measure("/bin/true (floor)", ["/bin/true"])
big = measure("flint, tiny guest, 128 MiB", [flint, "--kernel", tiny])
small = measure("flint, tiny guest, 32 MiB", [flint, "--kernel", tiny, "--memory", "32"])
print(f"flint minus floor (128 MiB): {big[0]-floor[0]:.1f} ms, {(big[1]-floor[1])/1024:.1f} MiB")
print("reference (same kind of host): Firecracker, tiny guest, launch to exit ~8 ms, ~4 MiB max RSS")
PY
