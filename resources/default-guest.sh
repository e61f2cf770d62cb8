#!/bin/bash
# Build, or reuse from the cache, the default flint guest and print one
# NAME=PATH line per artifact on stdout (nothing else; progress on stderr):
#   kernel=   uncompressed ELF vmlinux (64-bit boot protocol / PVH entry)
#   bzimage=  the same kernel as a bzImage
#   initrd=   uncompressed newc cpio initramfs
#   rootfs=   64 MiB ext4 image with the same files as the initramfs
# See resources/README.md. Environment: FLINT_CACHE (default
# /var/cache/flint), FLINT_JOBS (default 2), FLINT_TMPDIR, FLINT_VERBOSE.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/kernel/build.sh"
"$here/rootfs/build.sh"
