#!/usr/bin/env bash
# Build the tiny test guests: x86-64 ELF "kernels" of a few instructions,
# entered in 64-bit mode like a vmlinux. Prints one NAME=PATH line each:
#   tiny_reset=...   resets through the i8042 at once (flint exits 0)
#   tiny_triple=...  triple-faults at once (flint exits 3)
#   tiny_counter=... counts in its memory and prints "count N" on COM1 for
#                    ever (the snapshot tests)
#   tiny_disk=...    drives its one virtio-block disk itself: copies sector 0
#                    to sector 1, then resets (the many-VMs test)
set -euo pipefail
FLINT_PROG=tiny/build.sh
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

need_cmd as binutils
need_cmd ld binutils
install_missing

manifest=$(cache_manifest file:tiny/build.sh file:tiny/reset.S file:tiny/triple.S file:tiny/counter.S file:tiny/disk.S pkg:binutils)
key=$(cache_key "$manifest")
dir=$FLINT_CACHE/tiny/$key
if [ ! -f "$dir/reset.elf" ]; then
	cache_lock "$FLINT_CACHE/tiny" "$key"
	if [ ! -f "$dir/reset.elf" ]; then
		tmp=$(mktemp -d "$FLINT_CACHE/tiny/.build-XXXXXX")
		for g in reset triple counter disk; do
			as --64 -o "$tmp/$g.o" "$FLINT_RESOURCES/tiny/$g.S"
			# Linked at 16 MiB, where a vmlinux is, so the loader treats it alike.
			ld -m elf_x86_64 -nostdlib -static -Ttext=0x1000000 -e _start -o "$tmp/$g.elf" "$tmp/$g.o"
			rm "$tmp/$g.o"
		done
		printf '%s\n' "$manifest" >"$tmp/inputs"
		mv "$tmp" "$dir"
		log "built $dir"
	fi
fi
echo "tiny_reset=$dir/reset.elf"
echo "tiny_triple=$dir/triple.elf"
echo "tiny_counter=$dir/counter.elf"
echo "tiny_disk=$dir/disk.elf"
