# Shared helpers for the guest build scripts. Sourced, not executed.
# Everything here writes to stderr only: the scripts' stdout is reserved for
# their NAME=PATH result lines.

FLINT_RESOURCES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FLINT_CACHE=${FLINT_CACHE:-/var/cache/flint}

log() { printf '%s: %s\n' "${FLINT_PROG:-flint}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- Debian packages --------------------------------------------------------

_flint_missing=()

pkg_installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

pkg_version() {
	pkg_installed "$1" || die "package $1 is not installed"
	dpkg-query -W -f='${Version}' "$1"
}

# need_cmd COMMAND PACKAGE: PACKAGE provides COMMAND.
need_cmd() { command -v "$1" >/dev/null 2>&1 || _flint_missing+=("$2"); }
# need_file PATH PACKAGE: PACKAGE provides PATH.
need_file() { [ -e "$1" ] || _flint_missing+=("$2"); }
# need_pkg PACKAGE: PACKAGE itself must be installed.
need_pkg() { pkg_installed "$1" || _flint_missing+=("$1"); }

# Install what the need_* calls found missing (apt-get, as root).
install_missing() {
	[ "${#_flint_missing[@]}" -gt 0 ] || return 0
	local pkgs
	pkgs=$(printf '%s\n' "${_flint_missing[@]}" | sort -u | tr '\n' ' ')
	_flint_missing=()
	[ "$(id -u)" = 0 ] || die "missing Debian packages: $pkgs(run as root, or apt-get install -y $pkgs)"
	log "installing Debian packages: $pkgs"
	export DEBIAN_FRONTEND=noninteractive
	# shellcheck disable=SC2086
	if ! apt-get install -y --no-install-recommends $pkgs >&2; then
		log "apt-get install failed; running apt-get update and retrying"
		apt-get update >&2
		# shellcheck disable=SC2086
		apt-get install -y --no-install-recommends $pkgs >&2
	fi
}

# --- Archives ---------------------------------------------------------------

# newc_entry NAME MODE(octal) RDEVMAJOR RDEVMINOR INO: one header-only entry
# of a newc cpio archive with mtime $EPOCH (a device node or the trailer).
# GNU cpio -o cannot archive a device node without one on disk, and mknod
# needs root; the kernel unpacks concatenated archives in order.
newc_entry() {
	local namesize=$((${#1} + 1))
	printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
		"$5" $((8#$2)) 0 0 1 "$EPOCH" 0 0 0 "$3" "$4" "$namesize" 0
	printf '%s\0' "$1"
	head -c $(((4 - (110 + namesize) % 4) % 4)) /dev/zero
}

# --- Cache ------------------------------------------------------------------

# cache_manifest ITEM...: the text that identifies a build. Each ITEM is
#   file:PATH   (PATH relative to resources/; its sha256 is recorded)
#   pkg:NAME    (the installed Debian version of NAME)
#   text:WORDS  (recorded as is)
cache_manifest() {
	local item
	for item in "$@"; do
		case $item in
		file:*)
			local f=${item#file:}
			[ -f "$FLINT_RESOURCES/$f" ] || die "input file resources/$f is missing"
			printf 'file %s %s\n' "$f" "$(sha256sum <"$FLINT_RESOURCES/$f" | cut -d' ' -f1)"
			;;
		pkg:*) printf 'pkg %s %s\n' "${item#pkg:}" "$(pkg_version "${item#pkg:}")" ;;
		text:*) printf 'text %s\n' "${item#text:}" ;;
		*) die "bad cache manifest item: $item" ;;
		esac
	done
}

# cache_key MANIFEST: 16 hex digits naming the cache entry.
cache_key() { printf '%s' "$1" | sha256sum | cut -c1-16; }

# cache_lock DIR KEY: serialize builds of one entry (the lock is released
# when the script exits).
cache_lock() {
	mkdir -p "$1" || die "cannot create $1 (set FLINT_CACHE to a writable directory)"
	exec 9>"$1/.lock-$2"
	flock 9
}

# cache_enter KIND MANIFEST: look up the entry of MANIFEST under
# $FLINT_CACHE/KIND and set $key, $cache_dir and $final. Returns 0 when the
# entry is built already (the caller prints its result and exits). Otherwise
# returns 1 holding the entry's lock (checked again under it: another build
# may have finished while this one waited), with the staging directories of
# an interrupted build removed.
cache_enter() {
	key=$(cache_key "$2")
	cache_dir=$FLINT_CACHE/$1
	final=$cache_dir/$key
	if [ -d "$final" ]; then
		log "cached: $final"
		return 0
	fi
	cache_lock "$cache_dir" "$key"
	if [ -d "$final" ]; then
		log "cached: $final"
		return 0
	fi
	rm -rf "$cache_dir/.tmp-$key".*
	return 1
}

# cache_stage WORKNAME: for the entry being built (cache_enter returned 1),
# make its staging directory $stage and a scratch directory $work (under
# FLINT_TMPDIR, TMPDIR or /tmp); both are removed when the script exits.
cache_stage() {
	stage=$(mktemp -d "$cache_dir/.tmp-$key.XXXXXX")
	work=$(mktemp -d "${FLINT_TMPDIR:-${TMPDIR:-/tmp}}/$1.XXXXXX")
	trap 'rm -rf "$stage" "$work"' EXIT
	trap 'exit 130' INT HUP
	trap 'exit 143' TERM
}

# cache_publish STAGING FINAL: move a completely built entry into place.
# rename(2) of a directory is atomic, so FINAL either does not exist or is
# complete; an interrupted build leaves at most a .tmp-* directory behind,
# which the next build of the same key removes.
cache_publish() {
	mv -T "$1" "$2" || die "cannot move $1 to $2"
}
