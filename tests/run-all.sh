#!/usr/bin/env bash
# Runs flint's whole test suite on a fresh Debian 12 machine: installs what
# it needs, builds the guest and the lab VM (cached under /var/cache/flint),
# checks format and lints, then runs every unit and integration test. On a
# host whose KVM cannot run guest user space (kvm_pvm), the tests that need
# it re-run themselves inside the lab VM (resources/lab/README.md); the
# summary at the end says how much of the time went there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in build-essential flex bison bc libelf-dev libssl-dev cpio busybox-static \
           e2fsprogs linux-source-6.1 iproute2 iputils-ping kmod lz4 \
           runc qemu-system-x86 time musl-tools acpica-tools; do
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

# Build (or reuse) the guests (the default one, its ACPI kernel, the
# Debian image) and the lab before the tests so their progress shows here.
bash resources/default-guest.sh >/dev/null
bash resources/kernel/build.sh acpi >/dev/null
bash resources/debian/build.sh >/dev/null
bash resources/lab/build.sh >/dev/null

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# tests/common appends "TEST SECONDS RUNS" here for every test run in the lab.
FLINT_LAB_TIMES=$(mktemp /tmp/flint-lab-times.XXXXXX)
export FLINT_LAB_TIMES
trap 'rm -f "$FLINT_LAB_TIMES"' EXIT
started=$SECONDS
status=0
# Two streams of tests side by side, one test at a time in each: the test
# files that run guest user space in the lab VM (one CPU: one host core),
# and everything else (guest kernels emulated by this host's KVM: the other
# core). Each line says which stream it comes from. --no-fail-fast: every
# test binary runs, so one failure hides no other.
cargo test --workspace --no-run --quiet
lab_heavy=(api_boot block debian hostile net services)
lab_args=() host_args=(--lib --bins)
for f in tests/*.rs; do
	t=$(basename "$f" .rs)
	if [[ " ${lab_heavy[*]} " == *" $t "* ]]; then
		lab_args+=(--test "$t")
	else
		host_args+=(--test "$t")
	fi
done
(cargo test -p flint --no-fail-fast "${lab_args[@]}" -- --test-threads=1 2>&1 |
	sed -u 's/^/[lab-stream] /') &
lab_stream=$!
cargo test --workspace --no-fail-fast "${host_args[@]}" -- --test-threads=1 || status=$?
cargo test --workspace --doc || status=$?
# The API against its OpenAPI document, fuzzed by schemathesis (bounded: ~3 min).
bash tests/api-schemathesis.sh || status=$?
# Every libFuzzer target briefly: the seeds and a little more (tests/fuzz).
bash tests/fuzz/run.sh --seconds 10 || status=$?
wait "$lab_stream" || status=$?
awk -v total=$((SECONDS - started)) '
	{ n++; lab += $2; if ($3 > 1) retried++ }
	END { printf "run-all: tests took %d s; %d ran in the lab VM: %.0f s of lab runs (boots included), %d needed more than one lab run\n", total, n, lab, retried }
' "$FLINT_LAB_TIMES" >&2
exit "$status"
