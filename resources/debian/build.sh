#!/bin/bash
# Build (or reuse from the cache) a plain Debian 12 (bookworm) system for
# flint, made from Debian's packages with mmdebstrap:
#   kernel=<cache>/debian/<key>/vmlinuz      the image's /boot/vmlinuz-* (Debian's cloud kernel, a bzImage)
#   initrd=<cache>/debian/<key>/initrd.img   the image's /boot/initrd.img-*, made by its own update-initramfs
#   rootfs=<cache>/debian/<key>/rootfs.ext4  ext4 image of the whole system (root=/dev/vda)
# (these three lines are the only stdout; progress goes to stderr). Packages
# come from the Debian mirrors in the host's apt sources. Needs root
# (mmdebstrap --mode=root keeps the packages' owners, and mkfs.ext4 -d copies
# them). See resources/debian/README.md. Environment:
#   FLINT_CACHE    cache root (default /var/cache/flint)
#   FLINT_TMPDIR   where the system is assembled (default $TMPDIR or /tmp; ~500 MB)
set -euo pipefail

FLINT_PROG=debian/build.sh
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# This build takes minutes: time-stamp its progress lines.
log() { printf '%s %s: %s\n' "$(date +%H:%M:%S)" "$FLINT_PROG" "$*" >&2; }

HERE=$FLINT_RESOURCES/debian
SUITE=bookworm
VARIANT=minbase
PACKAGES=(linux-image-cloud-amd64 systemd systemd-sysv udev dbus iproute2 iputils-ping
	procps kmod initramfs-tools e2fsprogs zstd)
# (zstd: initramfs-tools compresses with it by default, COMPRESS=zstd; it is
# only a Recommends of initramfs-tools-core, which mmdebstrap leaves out.)
KERNEL_META=linux-image-cloud-amd64
# The image is at least this big (MiB), and has room to spare beyond the tree.
MIN_SIZE_MB=1024
# Modules the initramfs must hold (or the kernel have built in) to mount a
# virtio-mmio root disk.
ROOT_MODULES=(virtio_mmio virtio_blk ext4)
# Kernel options reported in the build log (and resources/debian/README.md).
REPORT_OPTIONS=(CONFIG_ACPI CONFIG_VIRTIO_MMIO CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES CONFIG_SERIO_I8042
	CONFIG_KEYBOARD_ATKBD CONFIG_SERIAL_8250 CONFIG_SERIAL_8250_CONSOLE CONFIG_VIRTIO_BLK
	CONFIG_VIRTIO_NET CONFIG_EXT4_FS CONFIG_IP_PNP CONFIG_VT CONFIG_PVH CONFIG_KVM_GUEST)

[ "$(id -u)" = 0 ] || die "run as root: mmdebstrap --mode=root and mkfs.ext4 -d need it to keep the files' owners"

need_pkg mmdebstrap
need_pkg e2fsprogs
need_cmd mkfs.ext4 e2fsprogs
need_cmd e2fsck e2fsprogs
need_cmd debugfs e2fsprogs
need_cmd flock util-linux
need_cmd findmnt util-linux
need_cmd chroot coreutils
need_cmd sha256sum coreutils
need_cmd file file
need_file /usr/share/keyrings/debian-archive-keyring.gpg debian-archive-keyring
install_missing

# --- the mirrors: the host's apt sources ------------------------------------------
# One "deb URI SUITE COMPONENTS" line per URI and suite of the host's enabled
# "deb" entries for bookworm, bookworm-updates and bookworm-security (one-line
# .list files and deb822 .sources files). Options such as signed-by are
# dropped: mmdebstrap uses the Debian archive keyring.
host_sources() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		awk '$1 == "deb" {
			i = 2
			if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
			line = "deb " $i " " $(i + 1)
			for (j = i + 2; j <= NF && $j !~ /^#/; j++) line = line " " $j
			print line
		}' "$f"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk '
		function flush(   nu, ns, u, s, a, b) {
			if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
				nu = split(uris, u, " "); ns = split(suites, s, " ")
				for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++) print "deb " u[a] " " s[b] " " comps
			}
			types = uris = suites = comps = ""; enabled = "yes"
		}
		BEGIN { enabled = "yes" }
		/^[ \t]*#/ { next }
		/^[ \t]*$/ { flush(); next }
		/^[ \t]/ { next }
		{
			key = tolower($0); sub(/:.*/, "", key)
			val = $0; sub(/^[^:]*:[ \t]*/, "", val); gsub(/[ \t]+/, " ", val)
			if (key == "types") types = val
			else if (key == "uris") uris = val
			else if (key == "suites") suites = val
			else if (key == "components") comps = val
			else if (key == "enabled") enabled = val
		}
		END { flush() }' "$f"
	done
}
mapfile -t sources < <(host_sources | awk -v s="$SUITE" '$3 == s || $3 == s "-updates" || $3 == s "-security"' | awk '!seen[$0]++')
[ "${#sources[@]}" -gt 0 ] ||
	die "the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/) have no deb entry for $SUITE"

# The kernel version the host's apt lists offer (the mirror decides what is
# installed; this only makes a new kernel on the mirror, once apt-get update
# has seen it, give a new cache key).
kernel_candidate=$(apt-cache policy "$KERNEL_META" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')

mapfile -t own_files < <(cd "$FLINT_RESOURCES" && find debian -type f ! -name README.md | LC_ALL=C sort)
manifest=$(
	cache_manifest "${own_files[@]/#/file:}" file:lib.sh \
		text:"suite $SUITE variant $VARIANT" \
		text:"packages ${PACKAGES[*]}" \
		"${sources[@]/#/text:source }" \
		text:"$KERNEL_META candidate ${kernel_candidate:-unknown}" \
		pkg:mmdebstrap pkg:e2fsprogs
)
print_result() {
	echo "kernel=$final/vmlinuz"
	echo "initrd=$final/initrd.img"
	echo "rootfs=$final/rootfs.ext4"
}

if cache_enter debian "$manifest"; then
	print_result
	exit 0
fi

cache_stage flint-debian
# mmdebstrap mounts /proc, /sys and /dev inside the tree while it runs. If it
# dies without unmounting them, unmount before deleting, and never let rm
# cross into another file system.
cleanup() {
	if [ -n "${work:-}" ] && [ -d "$work" ]; then
		findmnt -rn -o TARGET | awk -v w="$work/" 'index($0 "/", w) == 1' | sort -r |
			while IFS= read -r m; do umount -l "$m" || true; done
		rm -rf --one-file-system "$work"
	fi
	rm -rf "$stage"
}
trap cleanup EXIT

start=$(date +%s)
log "building Debian $SUITE image $key in $work"
log "this takes several minutes: mmdebstrap downloads and installs ~150 packages"
log "mirrors (from the host's apt sources):"
printf '    %s\n' "${sources[@]}" >&2

tree=$work/tree
export FLINT_DEBIAN_OUT=$work/out
mkdir -p "$FLINT_DEBIAN_OUT"
export FLINT_DEBIAN_HOOK=$HERE/customize.sh
# Debian's own tools do the work: mmdebstrap installs the packages (as root,
# so every file gets its package's owner); customize.sh configures the
# system in its customize hook and runs the image's update-initramfs.
incl=$(
	IFS=,
	echo "${PACKAGES[*]}"
)
# shellcheck disable=SC2016 # the hook is expanded by mmdebstrap's sh, not here
mmdebstrap --mode=root --format=directory --variant="$VARIANT" \
	--include="$incl" \
	--dpkgopt="$HERE/dpkg-nodoc" \
	--customize-hook='"$FLINT_DEBIAN_HOOK" "$1"' \
	"$SUITE" "$tree" "${sources[@]}" 2>&1 | tee "$work/build.log" >&2 ||
	die "mmdebstrap failed (log above)"
[ -d "$tree/etc" ] || die "mmdebstrap made no system in $tree"
if mounts=$(findmnt -rn -o TARGET | awk -v w="$tree/" 'index($0 "/", w) == 1') && [ -n "$mounts" ]; then
	die "still mounted inside the tree after mmdebstrap: $mounts"
fi
log "system installed: $(du -sh --one-file-system "$tree" | cut -f1) in $(find "$tree" -xdev | wc -l) files"

# --- kernel, initramfs and their checks ----------------------------------------
kver=$(cat "$FLINT_DEBIAN_OUT/kver")
vmlinuz=$tree/boot/vmlinuz-$kver
initrd=$tree/boot/initrd.img-$kver
kconfig=$tree/boot/config-$kver
for f in "$vmlinuz" "$initrd" "$kconfig"; do
	[ -s "$f" ] || die "the image has no ${f#"$tree"}"
done

# Each module the root disk needs is in the initramfs, or built into the kernel.
missing=()
for m in "${ROOT_MODULES[@]}"; do
	if grep -qE "/${m}\.ko(\.(xz|zst|gz))?$" "$FLINT_DEBIAN_OUT/initramfs.list"; then
		log "initramfs has $(grep -E "/${m}\.ko(\.(xz|zst|gz))?$" "$FLINT_DEBIAN_OUT/initramfs.list" | head -n1)"
	elif grep -qE "/${m}\.ko$" "$tree/lib/modules/$kver/modules.builtin"; then
		log "$m is built into the kernel"
	else
		missing+=("$m")
	fi
done
[ "${#missing[@]}" = 0 ] ||
	die "the initramfs (lsinitramfs ${initrd#"$tree"}) lacks ${missing[*]}: it cannot mount a virtio-mmio root disk"

# The kernel options that matter to a microVM, as Debian built them.
{
	for opt in "${REPORT_OPTIONS[@]}"; do
		v=$(grep -E "^$opt=" "$kconfig" | cut -d= -f2- || true)
		printf '%-36s %s\n' "$opt" "${v:-unset}"
	done
} >"$FLINT_DEBIAN_OUT/config-summary"
log "kernel $kver config (${kconfig#"$tree"}):"
sed 's/^/    /' "$FLINT_DEBIAN_OUT/config-summary" >&2

# bzImage payload compression: the magic at the payload offset (setup header
# field payload_offset at 0x248, counted from the protected-mode code, which
# starts after (setup_sects + 1) * 512 bytes).
le32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$vmlinuz" | tr -d ' ')
[ "$(od -An -c -j $((0x202)) -N4 "$vmlinuz" | tr -d ' ')" = HdrS ] || die "${vmlinuz#"$tree"} is not a bzImage"
payload=$(((setup_sects + 1) * 512 + $(le32 "$vmlinuz" $((0x248)))))
magic=$(od -An -tx1 -j "$payload" -N6 "$vmlinuz" | tr -d ' \n')
case $magic in
1f8b*) compression=gzip ;;
fd377a585a00) compression=xz ;;
28b52ffd*) compression=zstd ;;
02214c18*) compression=lz4 ;;
5d0000*) compression=lzma ;;
425a68*) compression=bzip2 ;;
894c5a4f*) compression=lzo ;;
*) compression="unknown (magic $magic)" ;;
esac
log "vmlinuz: $(file -b "$vmlinuz")"
log "vmlinuz payload compression: $compression"
log "initrd.img: $(du -h --apparent-size "$initrd" | cut -f1), $(wc -l <"$FLINT_DEBIAN_OUT/initramfs.list") entries, $(file -b "$initrd")"
log "enabled in /etc/systemd/system: $(tr '\n' ' ' <"$FLINT_DEBIAN_OUT/units")"

# --- the ext4 image ---------------------------------------------------------------
used_mb=$(du -sm --one-file-system "$tree" | cut -f1)
size_mb=$((used_mb * 3 / 2 + 256))
[ "$size_mb" -ge "$MIN_SIZE_MB" ] || size_mb=$MIN_SIZE_MB
uuid=$(printf '%s' "$key" | sha256sum | cut -c1-32 |
	sed -E 's/(.{8})(.{4})(.{4})(.{4})(.{12})/\1-\2-\3-\4-\5/')
log "mkfs.ext4 -d: ${size_mb} MiB image of the ${used_mb} MiB tree"
# lazy init off: the guest does not zero inode tables after mounting.
mkfs.ext4 -q -F -L flint-debian -U "$uuid" \
	-E lazy_itable_init=0,lazy_journal_init=0,hash_seed="$uuid" \
	-d "$tree" "$stage/rootfs.ext4" "${size_mb}M" >&2
e2fsck -fn "$stage/rootfs.ext4" >"$work/fsck.log" 2>&1 || {
	cat "$work/fsck.log" >&2
	die "e2fsck found errors in rootfs.ext4"
}
# Owners, modes and capabilities came across: compare a few files.
for p in /etc/shadow /usr/bin/passwd /var/log/journal /usr/bin/ping; do
	[ -e "$tree$p" ] || continue
	want=$(stat -c '%u:%g %a' "$tree$p")
	got=$(debugfs -R "stat $p" "$stage/rootfs.ext4" 2>/dev/null |
		awk '/^Inode:/ { for (i = 1; i <= NF; i++) if ($i == "Mode:") m = $(i + 1) }
			/^User:/ { u = $2; g = $4 } END { sub(/^0+/, "", m); print u ":" g " " m }')
	[ "$got" = "$want" ] || die "rootfs.ext4: $p is $got, the tree has $want"
done
if command -v getcap >/dev/null && [ -n "$(getcap "$tree/usr/bin/ping" 2>/dev/null)" ]; then
	debugfs -R "ea_list /usr/bin/ping" "$stage/rootfs.ext4" 2>/dev/null | grep -q security.capability ||
		die "rootfs.ext4: /usr/bin/ping lost its file capability"
fi

install -m 0644 "$vmlinuz" "$stage/vmlinuz"
install -m 0644 "$initrd" "$stage/initrd.img"
install -m 0644 "$kconfig" "$stage/config"
install -m 0644 "$FLINT_DEBIAN_OUT/initramfs.list" "$stage/initramfs.list"
install -m 0644 "$FLINT_DEBIAN_OUT/config-summary" "$stage/config-summary"
install -m 0644 "$FLINT_DEBIAN_OUT/units" "$stage/units"
install -m 0644 "$FLINT_DEBIAN_OUT/90-eth0.network.example" "$stage/90-eth0.network.example"
# shellcheck disable=SC2016
chroot "$tree" dpkg-query -W -f='${Package} ${Version}\n' >"$stage/packages"
cp "$work/build.log" "$stage/build.log"
printf '%s\n' "$manifest" >"$stage/inputs"
chmod 0755 "$stage"
cache_publish "$stage" "$final"

elapsed=$(($(date +%s) - start))
log "built in ${elapsed}s: kernel $kver ($compression bzImage, $(du -h --apparent-size "$final/vmlinuz" | cut -f1)), initrd.img $(du -h --apparent-size "$final/initrd.img" | cut -f1), rootfs.ext4 ${size_mb} MiB ($(du -h "$final/rootfs.ext4" | cut -f1) allocated), $(wc -l <"$final/packages") packages"
print_result
