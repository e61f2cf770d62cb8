#!/usr/bin/env bash
# Build flint (release) and the default guest (cached), then boot it on this
# terminal. Extra arguments go to flint, e.g. --vcpus 2.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "boot-default: cargo is needed (https://rustup.rs)" >&2; exit 1; }
cargo build --release >&2
eval "$(bash resources/default-guest.sh)"
exec target/release/flint --kernel "$kernel" --initrd "$initrd" --boot-timer "$@"
