#!/bin/bash
# Build (or reuse from the cache) the flint guest kernel: Debian's
# linux-source-6.1, `make tinyconfig` + microvm.config + `make olddefconfig`.
# `build.sh acpi` builds the same kernel with ACPI instead (acpi.config on
# top of microvm.config): it finds flint's devices through the ACPI tables,
# not the command line; the tests use it. Usage: build.sh [acpi]
#
# stdout: exactly two lines,
#   kernel=<cache>/kernel/<key>/vmlinux    (uncompressed ELF, PVH entry note)
#   bzimage=<cache>/kernel/<key>/bzImage
# Progress goes to stderr. Environment:
#   FLINT_CACHE    cache root (default /var/cache/flint)
#   FLINT_JOBS     make -j value (default 2)
#   FLINT_TMPDIR   where the source tree is unpacked and built (default $TMPDIR or /tmp; ~1.5 GB)
#   FLINT_VERBOSE  1: stream the kernel build output to stderr
set -euo pipefail

FLINT_PROG=kernel/build.sh
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SOURCE_PKG=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz
VARIANT=${1:-}
FRAGMENTS=("$FLINT_RESOURCES/kernel/microvm.config")
case $VARIANT in
"") ;;
acpi) FRAGMENTS+=("$FLINT_RESOURCES/kernel/acpi.config") ;;
*) die "unknown kernel variant ${VARIANT@Q} (known: acpi)" ;;
esac
JOBS=${FLINT_JOBS:-2}

# The source package and the toolchain are part of the cache key, so they
# have to be there first.
need_pkg "$SOURCE_PKG"
need_cmd gcc gcc
need_cmd ld binutils
need_cmd sha256sum coreutils
need_cmd flock util-linux
install_missing

manifest=$(cache_manifest \
	file:kernel/build.sh file:kernel/microvm.config file:lib.sh \
	${VARIANT:+file:kernel/$VARIANT.config} \
	pkg:"$SOURCE_PKG" \
	text:"gcc $(gcc --version | head -n1)" \
	text:"ld $(ld --version | head -n1)")
print_result() {
	echo "kernel=$final/vmlinux"
	echo "bzimage=$final/bzImage"
}

if cache_enter kernel "$manifest"; then
	print_result
	exit 0
fi

need_file "$TARBALL" "$SOURCE_PKG"
need_cmd make make
need_cmd readelf binutils
need_cmd flex flex
need_cmd bison bison
need_cmd bc bc
need_cmd xz xz-utils
need_cmd lz4 lz4
need_cmd perl perl
need_file /usr/include/gelf.h libelf-dev
need_file /usr/include/openssl/opensslv.h libssl-dev
install_missing

cache_stage flint-kernel

log "building kernel $key in $work (make -j$JOBS)"
start=$(date +%s)

log "unpacking $TARBALL"
tar -xJf "$TARBALL" -C "$work"
src=$(echo "$work"/linux-source-*)
[ -f "$src/Makefile" ] || die "no kernel tree in $TARBALL"

# Fixed build metadata, so the banner does not depend on who built it where.
export KBUILD_BUILD_USER=flint KBUILD_BUILD_HOST=flint KBUILD_BUILD_VERSION=1
kmake() {
	if [ "${FLINT_VERBOSE:-0}" = 1 ]; then
		make -C "$src" "$@" 2>&1 | tee -a "$work/build.log" >&2
	else
		make -C "$src" "$@" >>"$work/build.log" 2>&1
	fi
}
fail() {
	tail -n 40 "$work/build.log" >&2 || true
	die "$*"
}

log "configuring: tinyconfig + ${FRAGMENTS[*]#"$FLINT_RESOURCES"/}"
kmake tinyconfig || fail "make tinyconfig failed"
(cd "$src" && scripts/kconfig/merge_config.sh -m .config "${FRAGMENTS[@]}") >>"$work/build.log" 2>&1 ||
	fail "merge_config.sh failed"
kmake olddefconfig || fail "make olddefconfig failed"

# olddefconfig silently drops options whose dependencies are not met: check
# that every line of the fragments holds in the final .config (a later
# fragment's line for an option replaces an earlier one's).
declare -A want=()
order=()
for fragment in "${FRAGMENTS[@]}"; do
	while IFS= read -r line; do
		if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]] ||
			[[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
			opt=${BASH_REMATCH[1]}
			[ -n "${want[$opt]+set}" ] || order+=("$opt")
			want[$opt]=$line
		fi
	done <"$fragment"
done
bad=()
checked=0
for opt in "${order[@]}"; do
	line=${want[$opt]}
	checked=$((checked + 1))
	if [[ $line == "# "* ]]; then
		if got=$(grep -E "^$opt=" "$src/.config"); then
			bad+=("$line (got: $got)")
		fi
	elif ! grep -qxF -- "$line" "$src/.config"; then
		got=$(grep -E "^$opt=|^# $opt is not set" "$src/.config" || true)
		bad+=("$line (got: ${got:-absent})")
	fi
done
if [ "${#bad[@]}" -gt 0 ]; then
	log "these options of the config fragments did not survive make olddefconfig"
	log "(missing dependency, or selected by another option):"
	printf '  %s\n' "${bad[@]}" >&2
	die "kernel config check failed"
fi
log "config check passed: all $checked options of the fragments hold"

log "compiling vmlinux bzImage (log: $work/build.log)"
kmake -j"$JOBS" vmlinux bzImage || fail "kernel build failed"

vmlinux=$src/vmlinux
bzimage=$src/arch/x86/boot/bzImage
[ "$(head -c 5 "$vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c4602 ] ||
	die "vmlinux is not a 64-bit ELF file"
# PVH entry: an ELF note of type XEN_ELFNOTE_PHYS32_ENTRY (18) owned by "Xen".
readelf -Wn "$vmlinux" | grep -E '^\s+Xen\s' | grep -qE '0x00000012|PHYS32_ENTRY' ||
	die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
[ -s "$bzimage" ] || die "no bzImage"

cp "$vmlinux" "$stage/vmlinux"
cp "$bzimage" "$stage/bzImage"
cp "$src/.config" "$stage/config"
cp "$src/System.map" "$stage/System.map"
cp "$work/build.log" "$stage/build.log"
printf '%s\n' "$manifest" >"$stage/inputs"
chmod 0755 "$stage"
cache_publish "$stage" "$final"

elapsed=$(($(date +%s) - start))
log "kernel build took ${elapsed}s (unpack + configure + compile)"
print_result
