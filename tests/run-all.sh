#!/usr/bin/env bash
# Runs flint's whole test suite on a fresh Debian 12 machine: installs what
# it needs, builds the guest (cached under /var/cache/flint), checks format
# and lints, then runs every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in build-essential flex bison bc libelf-dev libssl-dev cpio busybox-static \
           e2fsprogs linux-source-6.1 iproute2 iputils-ping kmod lz4 \
           runc qemu-system-x86 time; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "run-all: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The boot benchmark's plots (bench/boot-vs-container) need matplotlib for
# whichever python3 is first on PATH.
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib

# Build (or reuse) the guest before the tests so its progress shows here.
bash resources/default-guest.sh >/dev/null

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace -- --test-threads=2
