#!/bin/bash
# Build (or reuse from the cache) the lab VM: Debian's stock kernel and a
# small initramfs that loads kvm_amd and mounts the host's / over 9p.
#   lab_kernel=<cache>/lab/<key>/vmlinuz    Debian's linux-image-*-amd64 kernel
#   lab_initrd=<cache>/lab/<key>/initrd.cpio  busybox, the modules, lab/init
# (these two lines are the only stdout; progress goes to stderr). The kernel
# package is the one linux-image-amd64 depends on now; it is fetched with
# apt-get download and unpacked with dpkg -x, never installed. See
# resources/lab/README.md. Environment: FLINT_CACHE (default /var/cache/flint).
set -euo pipefail

FLINT_PROG=lab/build.sh
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

HERE=$FLINT_RESOURCES/lab
META_PKG=linux-image-amd64
EPOCH=1700000000

need_pkg busybox-static
need_pkg cpio
need_pkg kmod
need_cmd dpkg-deb dpkg
need_cmd flock util-linux
install_missing

# The kernel package linux-image-amd64 points at, and its version.
kernel_pkg() {
	apt-cache depends "$META_PKG" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
pkg=$(kernel_pkg)
if [ -z "$pkg" ]; then
	[ "$(id -u)" = 0 ] || die "apt knows no $META_PKG: run apt-get update (as root)"
	log "apt knows no $META_PKG yet: running apt-get update"
	apt-get update >&2
	pkg=$(kernel_pkg)
	[ -n "$pkg" ] || die "no Debian package provides $META_PKG's kernel"
fi
ver=$(apt-cache policy "$pkg" | awk '$1 == "Candidate:" { print $2 }')
[ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no installable version of $pkg"
kver=${pkg#linux-image-}

manifest=$(cache_manifest \
	file:lab/build.sh file:lab/init file:lab/modules file:lib.sh \
	text:"kernel $pkg $ver" pkg:busybox-static pkg:cpio pkg:kmod)
print_result() {
	echo "lab_kernel=$final/vmlinuz"
	echo "lab_initrd=$final/initrd.cpio"
}

if cache_enter lab "$manifest"; then
	print_result
	exit 0
fi

cache_stage flint-lab-build
log "building lab $key: $pkg $ver"

(cd "$work" && apt-get download "$pkg=$ver" >&2) || die "apt-get download $pkg=$ver failed"
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/pkg"
kroot=$work/pkg
[ -f "$kroot/boot/vmlinuz-$kver" ] || die "$pkg has no /boot/vmlinuz-$kver"
depmod -b "$kroot" "$kver"

# Module files in load order, from modprobe's own dependency resolution.
tree=$work/tree
mkdir -p "$tree"/{bin,dev,proc,sys,host,modules}
: >"$tree/modules/order"
names=$(grep -v '^#' "$HERE/modules" | awk 'NF { print $1 }')
[ -n "$names" ] || die "lab/modules lists no module"
for name in $names; do
	modprobe -d "$kroot" -S "$kver" --show-depends "$name" >"$work/deps" ||
		die "module $name is not in $pkg"
	while read -r verb path _; do
		[ "$verb" = insmod ] || continue
		base=${path##*/}
		grep -qxF "$base" "$tree/modules/order" && continue
		install -m 0644 "$path" "$tree/modules/$base"
		echo "$base" >>"$tree/modules/order"
	done <"$work/deps"
done

install -m 0755 /bin/busybox "$tree/bin/busybox"
ln -s busybox "$tree/bin/sh"
/bin/busybox sh -n "$HERE/init" || die "lab/init: syntax error"
install -m 0755 "$HERE/init" "$tree/init"
find "$tree" -exec touch -h -d "@$EPOCH" {} +

# /dev/console as a hand-written entry (no mknod, no root needed).
(cd "$tree" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
	cpio -o -H newc -R 0:0 --reproducible --quiet) >"$stage/initrd.cpio"
{
	newc_entry dev/console 020600 5 1 1
	newc_entry 'TRAILER!!!' 0 0 0 0
} >>"$stage/initrd.cpio"

install -m 0644 "$kroot/boot/vmlinuz-$kver" "$stage/vmlinuz"
install -m 0644 "$kroot/boot/config-$kver" "$stage/config"
cp "$tree/modules/order" "$stage/modules"
printf '%s\n' "$manifest" >"$stage/inputs"
chmod 0755 "$stage"
cache_publish "$stage" "$final"
log "lab built: $pkg $ver, $(wc -l <"$final/modules") modules, $(du -h --apparent-size "$final/initrd.cpio" | cut -f1) initramfs"
print_result
