#!/usr/bin/env bash
# Network round trip and packet rate, host to guest over flint's virtio-net
# (a TAP in a private network namespace), next to the same measurements over
# a veth pair between two namespaces (the host kernel alone: the ceiling).
#
#   bench/net.sh [PINGS] [FLOOD]      (as root; defaults 100 and 2000)
#
# The guest is the default kernel with `rdinit=/pause` and `ip=`: the kernel
# itself answers ping, so this works on kvm_pvm hosts too. Everything stays
# in namespaces this script creates (flint-bench-<pid>-*) and deletes.
# FLINT=path overrides the flint binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."

PINGS=${1:-100}
FLOOD=${2:-2000}
SIZES=(56 1472)
[ "$(id -u)" = 0 ] || { echo "bench/net.sh: needs root (namespaces, TAP)" >&2; exit 1; }

if [ -z "${FLINT:-}" ]; then
    cargo build --release -q
    FLINT=$PWD/target/release/flint
fi
eval "$(bash resources/default-guest.sh 2>/dev/null)"

NS_VM=flint-bench-$$-vm
NS_A=flint-bench-$$-a
NS_B=flint-bench-$$-b
LOG=$(mktemp /tmp/flint-bench-net.XXXXXX)
FLINT_PID=
cleanup() {
    [ -n "$FLINT_PID" ] && kill -KILL "$FLINT_PID" 2>/dev/null || true
    for ns in "$NS_VM" "$NS_A" "$NS_B"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -f "$LOG"
}
trap cleanup EXIT

# "rtt min/avg/max/mdev = a/b/c/d ms" -> "b d"
rtt() { sed -n 's|^rtt [^=]*= [^/]*/\([^/]*\)/[^/]*/\([0-9.]*\) ms.*|\1 \2|p'; }
# "N packets transmitted, M received, ..., time Tms" -> "N M T"
summary() { sed -n 's|^\([0-9]*\) packets transmitted, \([0-9]*\) received.*time \([0-9]*\)ms.*|\1 \2 \3|p'; }

# A ping that waits behind whatever is still queued for the target (a flood
# the guest could not keep up with leaves up to a TAP queue's worth).
drain() { ip netns exec "$1" ping -q -c 1 -W 60 "$2" >/dev/null || true; }

# measure NS TARGET LABEL: prints "LABEL SIZE avg mdev flood_sent flood_recv flood_ms"
# per size; all round-trip runs first, so no flood backlog inflates them.
measure() {
    local ns=$1 target=$2 label=$3 size out
    declare -A rtts floods
    for size in "${SIZES[@]}"; do
        drain "$ns" "$target"
        out=$(ip netns exec "$ns" ping -q -c "$PINGS" -i 0.05 -w 300 -s "$size" -M do "$target")
        rtts[$size]=$(rtt <<<"$out")
    done
    for size in "${SIZES[@]}"; do
        drain "$ns" "$target"
        out=$(ip netns exec "$ns" ping -q -f -c "$FLOOD" -s "$size" -M do "$target" || true)
        floods[$size]=$(summary <<<"$out")
    done
    for size in "${SIZES[@]}"; do
        echo "$label $size ${rtts[$size]} ${floods[$size]}"
    done
}

# 1. flint: a TAP in its own namespace, the guest kernel at the other end.
ip netns add "$NS_VM"
ip -n "$NS_VM" link set lo up
ip -n "$NS_VM" tuntap add tap0 mode tap
ip -n "$NS_VM" addr add 172.16.0.1/24 dev tap0
ip -n "$NS_VM" link set tap0 up
CMDLINE="console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp"
CMDLINE+=" i8042.dumbkbd rdinit=/pause ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off"
ip netns exec "$NS_VM" "$FLINT" --kernel "$kernel" --initrd "$initrd" --cmdline "$CMDLINE" \
    --net tap=tap0,mac=06:00:ac:10:00:02 </dev/null >"$LOG" 2>&1 &
FLINT_PID=$!
echo "bench/net.sh: booting the guest (on kvm_pvm hosts about a minute)..." >&2
for _ in $(seq 600); do
    grep -q "Run /pause as init process" "$LOG" && break
    kill -0 "$FLINT_PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
    sleep 1
done
grep -q "Run /pause as init process" "$LOG" || { echo "no boot within 600 s" >&2; exit 1; }
# CPU ticks (utime + stime) of flint's main thread, which runs the event
# loop and so the virtio-net device; the vCPU thread is busy anyway (the
# guest's /pause spins).
loop_ticks() { awk '{ print $14 + $15 }' "/proc/$FLINT_PID/task/$FLINT_PID/stat"; }
t0=$(loop_ticks) s0=$(date +%s.%N)
VM=$(measure "$NS_VM" 172.16.0.2 flint)
t1=$(loop_ticks) s1=$(date +%s.%N)
LOOP_CPU=$(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v w0="$s0" -v w1="$s1" \
    'BEGIN { printf "%.1f s of CPU in %.0f s", t / hz, w1 - w0 }')
kill -TERM "$FLINT_PID"
wait "$FLINT_PID" || echo "bench/net.sh: flint exited $?" >&2
FLINT_PID=

# 2. veth: two namespaces, one pair, nothing else.
ip netns add "$NS_A"
ip netns add "$NS_B"
ip -n "$NS_A" link add veth0 type veth peer name veth1 netns "$NS_B"
ip -n "$NS_A" addr add 10.99.0.1/24 dev veth0
ip -n "$NS_B" addr add 10.99.0.2/24 dev veth1
ip -n "$NS_A" link set veth0 up
ip -n "$NS_B" link set veth1 up
VETH=$(measure "$NS_A" 10.99.0.2 veth)

kvm=hardware
[ -d /sys/module/kvm_pvm ] && kvm=kvm_pvm
echo "# host to guest ($kvm host, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end):"
echo "# $PINGS pings at 50 ms per size, then ping -f -c $FLOOD per size"
printf '%-6s %-24s %22s %22s\n' size metric "flint virtio-net/TAP" "veth (ceiling)"
while read -r _ size avg mdev sent recv ms; do
    read -r _ _ vavg vmdev vsent vrecv vms <<<"$(grep "^veth $size " <<<"$VETH")"
    rate() { awk -v r="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.0f", r * 1000 / t; else print "n/a" }'; }
    printf '%-6s %-24s %22s %22s\n' "$size" "rtt avg / mdev (ms)" "$avg / $mdev" "$vavg / $vmdev"
    printf '%-6s %-24s %22s %22s\n' "$size" "flood replies/s" "$(rate "$recv" "$ms")" "$(rate "$vrecv" "$vms")"
    printf '%-6s %-24s %22s %22s\n' "$size" "flood received/sent" "$recv/$sent" "$vrecv/$vsent"
done <<<"$VM"
echo "# flint's event loop (the virtio-net device) used $LOOP_CPU of the flint measurements"
