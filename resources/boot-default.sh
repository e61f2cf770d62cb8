#!/usr/bin/env bash
# Build flint (release) and the default guest (cached), then boot it. On a
# terminal the guest gives a shell prompt on it (`exit` or `reboot` ends the
# VM, and flint exits 0); without one it boots, runs its init and ends, as
# flint always does. Arguments go to flint, e.g. --vcpus 2.
#
# On a host whose KVM cannot run guest user space (kvm_pvm), the same boot
# runs inside the lab VM (resources/lab/README.md), unless --no-lab comes
# first (the guest kernel then boots here, and its init cannot run).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "boot-default: $*" >&2; }

lab=auto
if [ "${1:-}" = --no-lab ]; then
	lab=no
	shift
fi
command -v cargo >/dev/null || { say "cargo is needed (https://rustup.rs)"; exit 1; }
cargo build --release >&2
eval "$(bash resources/default-guest.sh)"

flint=(target/release/flint --kernel "$kernel" --initrd "$initrd" --boot-timer)
[ -t 0 ] && flint+=(--append flint.shell)
flint+=("$@")

if [ "$lab" = auto ] && [ -e /sys/module/kvm_pvm ]; then
	say "this host's KVM (kvm_pvm) cannot run guest user space: booting inside the lab VM (--no-lab: here)"
	exec resources/lab/lab run --timeout 86400 -- "${flint[@]}"
fi
exec "${flint[@]}"
