#!/bin/bash
# Build (or reuse from the cache) the flint guest user space, twice packed:
#   initrd=<cache>/rootfs/<key>/initrd.cpio   uncompressed cpio (newc) initramfs
#   rootfs=<cache>/rootfs/<key>/rootfs.ext4   64 MiB ext4 image, same files
# (these two lines are the only stdout; progress goes to stderr).
#
# Contents: Debian's static busybox with its applet symlinks, /init (the
# script rootfs/init; /sbin/init links to it), /etc/profile (rootfs/profile)
# /pause (rootfs/pause.S), /bin/vsock-test (rootfs/vsock-test.c) and
# /bin/hostile (rootfs/hostile.c), both built static against musl: 40 KB
# where glibc's static build is 700 KB.
# Needs no root privileges (except to apt-get install missing tools):
# ownership in both images is 0:0 whoever builds them. Environment:
#   FLINT_CACHE    cache root (default /var/cache/flint)
set -euo pipefail

FLINT_PROG=rootfs/build.sh
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

HERE=$FLINT_RESOURCES/rootfs
SIZE=64M
# Modification time of every file: fixed, so that the same inputs give a
# byte-identical initrd.cpio. (rootfs.ext4 still differs between builds:
# mkfs.ext4 -d copies each file's ctime, which cannot be set.)
EPOCH=1700000000

# Packages whose versions are part of the cache key come first.
need_pkg busybox-static
need_cmd mkfs.ext4 e2fsprogs
need_cmd debugfs e2fsprogs
need_cmd e2fsck e2fsprogs
need_cmd cpio cpio
need_cmd gcc gcc
need_cmd musl-gcc musl-tools
need_cmd objdump binutils
need_cmd readelf binutils
need_cmd sha256sum coreutils
need_cmd flock util-linux
install_missing

manifest=$(cache_manifest \
	file:rootfs/build.sh file:rootfs/init file:rootfs/profile file:rootfs/pause.S \
	file:rootfs/vsock-test.c file:rootfs/hostile.c file:lib.sh \
	pkg:busybox-static pkg:e2fsprogs pkg:cpio pkg:musl-tools \
	text:"gcc $(gcc --version | head -n1)" \
	text:"ld $(ld --version | head -n1)")
print_result() {
	echo "initrd=$final/initrd.cpio"
	echo "rootfs=$final/rootfs.ext4"
}

if cache_enter rootfs "$manifest"; then
	print_result
	exit 0
fi

cache_stage flint-rootfs
log "building rootfs $key"

# --- /pause: a static binary that never makes a system call ---------------
gcc -nostdlib -static -no-pie -O2 -Wl,--build-id=none -o "$work/pause" "$HERE/pause.S"
readelf -lW "$work/pause" | grep -q INTERP && die "pause is not a static binary"
insns=$(objdump -d --no-show-raw-insn "$work/pause" | grep -P '^\s+[0-9a-f]+:\t' | cut -f2)
if bad=$(grep -Ew '^(syscall|sysenter|sysexit|sysret[lq]?|int[13]?|into|vmcall|vmmcall)' <<<"$insns"); then
	die "pause contains instructions that enter the kernel: $bad"
fi
grep -qw '^pause' <<<"$insns" || die "pause has no pause instruction"

# --- the tree ---------------------------------------------------------------
tree=$work/tree
mkdir -p "$tree"
(cd "$tree" && mkdir -p bin sbin usr/bin usr/sbin dev etc mnt proc root run sys tmp)
chmod 1777 "$tree/tmp"
chmod 0700 "$tree/root"
install -m 0755 /bin/busybox "$tree/bin/busybox"
# `busybox --install -s`, done here: one absolute symlink per applet.
n=0
while IFS= read -r applet; do
	[ -n "$applet" ] || continue
	[ -e "$tree/$applet" ] || [ -L "$tree/$applet" ] && continue
	case $applet in */*) mkdir -p "$tree/${applet%/*}" ;; esac
	ln -s /bin/busybox "$tree/$applet"
	n=$((n + 1))
done < <("$tree/bin/busybox" --list-full)
[ "$n" -gt 100 ] || die "busybox --list-full listed only $n applets"
for applet in sh mount devmem sync poweroff reboot; do
	[ -L "$tree/bin/$applet" ] || [ -L "$tree/sbin/$applet" ] || [ -L "$tree/usr/bin/$applet" ] ||
		[ -L "$tree/usr/sbin/$applet" ] || die "busybox has no $applet applet"
done
/bin/busybox sh -n "$HERE/init" || die "rootfs/init: syntax error"
install -m 0755 "$HERE/init" "$tree/init"
install -m 0644 "$HERE/profile" "$tree/etc/profile"
ln -sfn /init "$tree/sbin/init" # replaces busybox's init applet
install -m 0755 "$work/pause" "$tree/pause"
musl-gcc -static -Os -s -Wall -Wextra -Werror -o "$tree/bin/vsock-test" "$HERE/vsock-test.c"
musl-gcc -static -Os -s -Wall -Wextra -Werror -o "$tree/bin/hostile" "$HERE/hostile.c"
find "$tree" -exec touch -h -d "@$EPOCH" {} +
log "tree: $(find "$tree" | wc -l) entries, busybox with $n applet links"

# --- initramfs: uncompressed newc cpio ----------------------------------------
# GNU cpio -o cannot make a device node without one on disk (mknod needs
# root), so /dev/console comes as a second, hand-written archive appended to
# the first; the kernel unpacks concatenated archives in order. (Kernels with
# BLK_DEV_INITRD also have /dev/console in their built-in initramfs; this
# makes the image independent of that.)
{
	newc_entry dev/console 020600 5 1 1
	newc_entry 'TRAILER!!!' 0 0 0 0
} >"$work/console.cpio"
listing=$(cpio -itv --quiet <"$work/console.cpio")
grep -qE '^crw-------.* 5, +1 .*dev/console$' <<<"$listing" || die "bad /dev/console archive: $listing"

(cd "$tree" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
	cpio -o -H newc -R 0:0 --reproducible --quiet) >"$stage/initrd.cpio"
cat "$work/console.cpio" >>"$stage/initrd.cpio"

# --- ext4 image, without root: mkfs.ext4 -d -----------------------------------
uuid=$(printf '%s' "$key" | sha256sum | cut -c1-32 |
	sed -E 's/(.{8})(.{4})(.{4})(.{4})(.{12})/\1-\2-\3-\4-\5/')
# lazy init off: the guest must not spend its (emulated) time zeroing inode
# tables or the journal after mounting.
mkfs.ext4 -q -F -L flint-root -U "$uuid" \
	-E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,hash_seed="$uuid" \
	-d "$tree" "$stage/rootfs.ext4" "$SIZE" >&2
# mkfs.ext4 -d copies the builder's uid/gid; make everything 0:0.
if [ "$(id -u)" != 0 ] || [ "$(id -g)" != 0 ]; then
	(cd "$tree" && find . -mindepth 1 -printf '%P\n') | while IFS= read -r p; do
		printf 'sif "/%s" uid 0\nsif "/%s" gid 0\n' "$p" "$p"
	done >"$work/chown.debugfs"
	debugfs -w -f "$work/chown.debugfs" "$stage/rootfs.ext4" >/dev/null 2>"$work/debugfs.err"
	if grep -v '^debugfs ' "$work/debugfs.err" | grep -q .; then
		cat "$work/debugfs.err" >&2
		die "debugfs failed to set ownership"
	fi
fi
e2fsck -fn "$stage/rootfs.ext4" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log" >&2; die "e2fsck found errors"; }
for d in / /bin /sbin /usr/bin; do
	owners=$(debugfs -R "ls -l $d" "$stage/rootfs.ext4" 2>/dev/null | awk 'NF > 5 { print $4 ":" $5 }' | sort -u)
	[ "$owners" = "0:0" ] || die "rootfs.ext4: entries in $d not owned by 0:0 ($owners)"
done

printf '%s\n' "$manifest" >"$stage/inputs"
chmod 0755 "$stage"
cache_publish "$stage" "$final"
log "rootfs built: $(du -h --apparent-size "$final/initrd.cpio" | cut -f1) initramfs, $SIZE ext4"
print_result
