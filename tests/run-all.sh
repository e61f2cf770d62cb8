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
# tests/common/lab.rs appends "run FILE SECONDS TESTS" here for every lab
# run and "test NAME SECONDS RUN" for every test's result from the lab.
FLINT_LAB_TIMES=$(mktemp /tmp/flint-lab-times.XXXXXX)
export FLINT_LAB_TIMES
started=$SECONDS
# timed_tests FILE: passes libtest's output through, and writes "SECONDS
# TEST" to FILE for every test: the time from the line before its first
# one (the test before it, or its binary's "running N tests") to its
# verdict. libtest prints "test NAME ... " at the start and the verdict at
# the end, with whatever a child process wrote in between.
timed_tests() {
	local out=$1 line name= mark=$SECONDS
	while IFS= read -r line; do
		printf '%s\n' "$line"
		if [[ $line =~ ^running\ [0-9]+\ tests?$ ]]; then
			mark=$SECONDS
			name=
		elif [[ $line =~ ^test\ ([^ ]+)\ \.\.\.\  ]]; then
			name=${BASH_REMATCH[1]}
		fi
		if [ -n "$name" ] && [[ $line =~ (ok|FAILED|ignored)$ ]]; then
			printf '%d %s\n' $((SECONDS - mark)) "$name" >>"$out"
			mark=$SECONDS
			name=
		fi
	done
}
status=0
# One test at a time: a lab VM next to a guest kernel emulated on this
# 2-CPU host (or a second lab test) starves the lab's nested guest until it
# stalls; run side by side, the Debian guest froze after reaching
# multi-user in two runs of two. --no-fail-fast: every test binary
# runs, so one failure hides no other.
# Each test's time (from the end of the one before it) goes to
# $test_times; the slowest are listed at the end. A file's lab run
# (tests/common/lab.rs) counts in the time of its first lab test.
test_times=$(mktemp /tmp/flint-test-times.XXXXXX)
trap 'rm -f "$FLINT_LAB_TIMES" "$test_times"' EXIT
cargo test --workspace --no-fail-fast -- --test-threads=1 2>&1 | timed_tests "$test_times" ||
	status=$?
# The API against its OpenAPI document, fuzzed by schemathesis (its
# fuzzing phase bounded to 90 s here; about 4000 generated requests).
API_ST_MAX_TIME=${API_ST_MAX_TIME:-90} bash tests/api-schemathesis.sh || status=$?
# Every libFuzzer target briefly: its seeds and a little more (tests/fuzz).
bash tests/fuzz/run.sh --seconds 3 || status=$?
awk -v total=$((SECONDS - started)) '
	$1 == "run" { runs++; lab += $3; if (!($2 in files)) { files[$2] = 1; nfiles++ } }
	$1 == "test" { n++; if ($4 > 1) retried++ }
	END { printf "run-all: tests took %d s; %d ran in the lab VM, in %d lab runs (%d files): %.0f s of lab runs (boots included); %d needed more than one lab run\n", total, n, runs, nfiles, lab, retried }
' "$FLINT_LAB_TIMES" >&2
echo "run-all: the slowest tests (seconds):" >&2
sort -rn "$test_times" | head -n 15 | sed 's/^/run-all:   /' >&2
exit "$status"
