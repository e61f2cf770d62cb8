#!/bin/bash
# Runs inside the lab VM, chrooted into the host's /, as `inside.sh RUNDIR`
# (lab/init starts it; the runner `lab` copied it into RUNDIR). RUNDIR holds
#   argv  the command, NUL-separated     env  the caller's environment (env -0)
#   cwd   the caller's working directory  tty  present: the command gets the
#                                              terminal (size: "ROWS COLS")
# and receives stdout, stderr (without tty) and status (the exit status;
# 126: cannot run, 127: not found, 128+N: killed by signal N).
run=$1
status_file=$run/status
say() { printf 'lab: %s\n' "$*" >&2; }

mapfile -d '' -t argv <"$run/argv"
mapfile -d '' -t vars <"$run/env"
vars+=(FLINT_LAB=1)
cwd=$(cat "$run/cwd")

if [ -e "$run/tty" ]; then
	read -r rows cols <"$run/tty" || true
	stty sane 2>/dev/null
	[ -n "${cols:-}" ] && stty rows "$rows" cols "$cols" 2>/dev/null
else
	exec >"$run/stdout" 2>"$run/stderr"
fi

if ! cd "$cwd"; then
	say "cannot enter the working directory $cwd"
	echo 126 >"$status_file"
	exit
fi
# Look the command up with the caller's PATH, for a clear message.
for kv in "${vars[@]}"; do
	[ "${kv%%=*}" = PATH ] && PATH=${kv#PATH=}
done
if ! cmd_path=$(command -v -- "${argv[0]}"); then
	say "${argv[0]}: command not found (PATH=$PATH)"
	echo 127 >"$status_file"
	exit
fi
if [ -f "$cmd_path" ] && [ ! -x "$cmd_path" ]; then
	say "${argv[0]}: not executable"
	echo 126 >"$status_file"
	exit
fi
# A heartbeat on each of the lab's CPUs: a process pinned there rewrites
# RUNDIR/beat.N every 2 s. The runner stops the lab when one falls silent:
# that CPU no longer schedules anything, which is how the emulated nested
# SVM fails now and then (README.md), and it does not recover.
for ((cpu = 0; cpu < $(nproc); cpu++)); do
	taskset -c "$cpu" nice -n -20 bash -c \
		'while :; do cat /proc/uptime >"$1"; sleep 2; done' beat "$run/beat.$cpu" \
		</dev/null >/dev/null 2>&1 &
done
env -i "${vars[@]}" "${argv[@]}"
echo $? >"$status_file"
