#!/usr/bin/env bash
# A private real xenstored for machines without Xen: the xenemu preload
# library stands in for the hypervisor. "start" drops an interactive user
# into a shell pointed at it (the daemon stops when the shell exits); without
# a terminal it prints the export lines and leaves the daemon running until
# "stop".
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${SANDBOX_DIR:-$here/build/sandbox}
XENSTORED=${XENSTORED:-/usr/lib/xen-4.17/bin/xenstored}
XENEMU=${XENEMU:-$here/build/libxenemu.so}
BIN=${BIN:-$here/bin}

stop() {
	if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
		kill "$(cat "$dir/pid")"
		for _ in $(seq 50); do
			kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -f "$dir/pid" "$dir/socket"
}

start() {
	[ -x "$XENSTORED" ] || { echo "sandbox: $XENSTORED missing: run make deps" >&2; exit 1; }
	[ -f "$XENEMU" ] || { echo "sandbox: $XENEMU missing: run make" >&2; exit 1; }
	mkdir -p "$dir"
	stop
	: > "$dir/dead"
	# setsid: the daemon survives this script when there is no terminal.
	XENSTORED_RUNDIR="$dir" XENSTORED_PATH="$dir/socket" XENEMU_DIR="$dir" LD_PRELOAD="$XENEMU" \
		setsid "$XENSTORED" -N -F "$dir/pid" -T "$dir/trace" </dev/null >"$dir/xenstored.log" 2>&1 &
	export XENSTORED_PATH="$dir/socket" XENSTORED_RUNDIR="$dir"
	for _ in $(seq 100); do
		xenstore-read /tool/xenstored >/dev/null 2>&1 && break
		sleep 0.05
	done
	if ! xenstore-ls / >/dev/null 2>&1; then
		echo "sandbox: xenstored did not start; its log:" >&2
		cat "$dir/xenstored.log" >&2
		exit 1
	fi
	if [ -t 0 ] && [ -t 1 ]; then
		cat <<MSG
mtwatch sandbox: a private xenstored (pid $(cat "$dir/pid")) at $XENSTORED_PATH.
Try: mtwatch-hook create 5; xenstore-ls -p /local/domain/0; mtwatch-hook destroy 5
Kill a guest domain:  echo <domid> >> $dir/dead; printf x > $dir/evtchn
Exit the shell to stop the sandbox.
MSG
		trap stop EXIT
		PATH="$BIN:$PATH" PS1="(mtwatch-sandbox) \w\$ " bash --norc -i || true
	else
		echo "export XENSTORED_PATH=$dir/socket XENSTORED_RUNDIR=$dir PATH=$BIN:\$PATH"
		echo "# xenstored pid $(cat "$dir/pid"); stop it with: make sandbox-stop"
	fi
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
