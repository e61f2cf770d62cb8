#!/bin/bash
# mmdebstrap --customize-hook of resources/debian/build.sh: runs on the build
# host, as root, after all packages are installed, with the new system's root
# directory as $1 (mmdebstrap has mounted /proc, /sys and /dev in it).
# Configures the system and makes its initramfs with its own
# update-initramfs. Writes what the build checks and reports into
# $FLINT_DEBIAN_OUT: kver, initramfs.list, units.
set -euo pipefail

root=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${FLINT_DEBIAN_OUT:?FLINT_DEBIAN_OUT is not set}
say() { printf '%s debian/customize.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() {
	say "error: $*"
	exit 1
}
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }

# --- the kernel ---------------------------------------------------------------
kernels=("$root"/boot/vmlinuz-*)
if [ "${#kernels[@]}" != 1 ] || [ ! -f "${kernels[0]}" ]; then
	fail "expected exactly one /boot/vmlinuz-* in the image, found: ${kernels[*]}"
fi
kver=${kernels[0]##*/vmlinuz-}
printf '%s\n' "$kver" >"$out/kver"
say "kernel $kver"

# --- files --------------------------------------------------------------------
# overlay/: fstab, hostname, hosts, the fallback network file and the
# initramfs-tools setting of the root file system's type.
(cd "$here/overlay" && find . -type f) | while IFS= read -r f; do
	install -D -o 0 -g 0 -m 0644 "$here/overlay/$f" "$root/$f"
done
# mmdebstrap copied the build host's resolv.conf; it means nothing in the VM.
rm -f "$root/etc/resolv.conf"
printf '# No resolver is configured in the flint Debian image; add nameserver lines here.\n' \
	>"$root/etc/resolv.conf"
# Keep the kernel's interface names (eth0), whatever the VMM's firmware
# tables say about the device: no predictable-name policy.
ln -sfn /dev/null "$root/etc/systemd/network/99-default.link"

# --- root without a password ----------------------------------------------------
# Debian's /etc/pam.d/common-auth has pam_unix.so nullok, so an empty
# password field lets root log in on the serial console without a password.
in_root passwd -d root >&2
grep -q 'pam_unix\.so.*nullok' "$root/etc/pam.d/common-auth" ||
	fail "/etc/pam.d/common-auth has no pam_unix.so nullok: root could not log in without a password"

# --- units ----------------------------------------------------------------------
in_root systemctl enable serial-getty@ttyS0.service systemd-networkd.service \
	systemd-network-generator.service >&2
# Nothing in the image needs network-online.target to wait for a link.
in_root systemctl disable systemd-networkd-wait-online.service >&2
# No VT console is used: the serial getty is the only login.
in_root systemctl disable getty@tty1.service >&2
# Periodic maintenance jobs that only cost time in a short-lived microVM.
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
	e2scrub_reap.service fstrim.timer; do
	if [ -n "$(in_root systemctl list-unit-files --no-legend "$unit" 2>/dev/null)" ]; then
		in_root systemctl disable "$unit" >&2
	fi
done
# What is enabled now: the unit links under /etc/systemd/system/*.wants.
(cd "$root/etc/systemd/system" && find . -path './*.wants/*' -printf '%P\n' | LC_ALL=C sort) >"$out/units"

# systemd-network-generator turns the kernel's ip= syntax into a .network
# file; check that this image's copy does, on a scratch root.
gen=$root/tmp/flint-network-generator
rm -rf "$gen"
mkdir -p "$gen"
in_root /lib/systemd/systemd-network-generator --root=/tmp/flint-network-generator -- \
	console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off
generated=$gen/run/systemd/network/90-eth0.network
if ! grep -qx 'Address=172.16.0.2/24' "$generated" 2>/dev/null || ! grep -qx 'Gateway=172.16.0.1' "$generated"; then
	fail "systemd-network-generator made no 90-eth0.network with the address of ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off"
fi
cp "$generated" "$out/90-eth0.network.example"
rm -rf "$gen"

# --- initramfs, by the image's own update-initramfs -------------------------------
cat "$here/initramfs-modules" >>"$root/etc/initramfs-tools/modules"
# The kernel package's postinst already made one, before the modules above
# were listed; make it again from scratch.
rm -f "$root/boot/initrd.img-$kver"
say "update-initramfs -c -k $kver"
in_root update-initramfs -c -k "$kver" >&2
[ -s "$root/boot/initrd.img-$kver" ] || fail "update-initramfs made no /boot/initrd.img-$kver"
in_root lsinitramfs "/boot/initrd.img-$kver" >"$out/initramfs.list" ||
	fail "lsinitramfs /boot/initrd.img-$kver failed"

say "customized"
