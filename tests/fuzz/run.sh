#!/usr/bin/env bash
# Builds flint's fuzz targets (cargo-fuzz, libFuzzer; release with debug
# assertions and AddressSanitizer) and runs each for a while on one job.
#
#   tests/fuzz/run.sh [--seconds N | --runs N] [--no-asan] [TARGET...]
#
# Default: every target for 60 seconds. --no-asan builds without the
# sanitizer, into a build directory of its own, for long runs: panics and
# timeouts are still caught. For each target it prints the executions,
# executions per second, and whether it crashed; it exits non-zero if any
# target crashed (or failed to build or start), naming the target and the
# input that did it.
#
# Where things go (all outside the clone; override with the variables):
#   FLINT_FUZZ_TARGET_DIR  build output       /var/cache/flint/fuzz-target
#   FLINT_FUZZ_CACHE       grown corpora, crash inputs and logs:
#                          <cache>/corpus/<target>, <cache>/artifacts/<target>,
#                          <cache>/logs/<target>.log
#                                             /var/cache/flint/fuzz
# The committed seeds (tests/fuzz/corpus/<target>) are read, never written.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${FLINT_FUZZ_TARGET_DIR:-/var/cache/flint/fuzz-target}
cache=${FLINT_FUZZ_CACHE:-/var/cache/flint/fuzz}

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

limit=(-max_total_time=60)
sanitizer=address
targets=()
while (($#)); do
    case $1 in
        --seconds) [[ ${2:-} =~ ^[0-9]+$ ]] || usage; limit=(-max_total_time="$2"); shift 2 ;;
        --runs) [[ ${2:-} =~ ^[0-9]+$ ]] || usage; limit=(-runs="$2"); shift 2 ;;
        --no-asan) sanitizer=none; target_dir=$target_dir-noasan; shift ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) targets+=("$1"); shift ;;
    esac
done

all=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$here/Cargo.toml" | grep -v '^flint-fuzz$')
if ((${#targets[@]} == 0)); then
    mapfile -t targets <<<"$all"
fi
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$all" || { echo "fuzz: no target $t (have: $(echo $all))" >&2; exit 2; }
done

# What the build needs: a nightly toolchain and cargo-fuzz.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal >&2 || exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2 || exit 1
fi

mkdir -p "$target_dir" "$cache/logs"
echo "fuzz: building ${targets[*]}" >&2
# cargo fuzz builds one target or all of them.
one=()
((${#targets[@]} == 1)) && one=("${targets[0]}")
(cd "$root" && nice -n 19 cargo +nightly fuzz build --fuzz-dir tests/fuzz \
    --debug-assertions --sanitizer "$sanitizer" --target-dir "$target_dir" "${one[@]}" >&2) || {
    echo "fuzz: the build failed" >&2
    exit 1
}
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bindir=$target_dir/$triple/release

status=0
for t in "${targets[@]}"; do
    corpus=$cache/corpus/$t
    artifacts=$cache/artifacts/$t
    log=$cache/logs/$t.log
    mkdir -p "$corpus" "$artifacts"
    # New inputs go to the first directory; the seeds are only read.
    started=$(date +%s%N)
    nice -n 19 "$bindir/$t" "${limit[@]}" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$artifacts/" \
        "$corpus" "$here/corpus/$t" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [[ ${rate:-0} == 0 && -n ${execs:-} ]]; then
        # libFuzzer says 0 for runs under a second.
        rate=$(awk -v n="$execs" -v ns=$(($(date +%s%N) - started)) 'BEGIN { printf "%d", n / (ns / 1e9) }')
    fi
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if ((rc == 0)); then
        printf 'fuzz: %-15s %10s executions %7s exec/s  no crash\n' "$t" "${execs:-?}" "${rate:-?}"
    else
        status=1
        printf 'fuzz: %-15s %10s executions %7s exec/s  CRASHED (exit %d): %s (log %s)\n' \
            "$t" "${execs:-?}" "${rate:-?}" "$rc" "${crash:-no input saved}" "$log"
    fi
done
exit "$status"
