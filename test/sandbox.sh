#!/usr/bin/env bash
# A private real xenstored for machines without Xen, run by the xenstoredtest
# harness (lib/xenstore/xenstoredtest/cmd/sandbox), which alone knows how to
# build and preload the hypervisor emulation. "start" drops an interactive
# user into a shell pointed at it (the daemon stops when the shell exits);
# without a terminal it prints the export line and leaves the daemon running
# until "stop". "create DOMID" and "kill DOMID" play a guest's life.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${SANDBOX_DIR:-$here/build/sandbox}
BIN=${BIN:-$here/bin}
GO=${GO:-go}

harness() {
	(cd "$here" && "$GO" run ./lib/xenstore/xenstoredtest/cmd/sandbox -dir "$dir" "$@")
}

stop() { harness stop; }

start() {
	local env
	env=$(harness start)
	eval "$env"
	export XENSTORED_PATH XENSTORED_RUNDIR
	if [ -t 0 ] && [ -t 1 ]; then
		cat <<MSG
mtwatch sandbox: a private xenstored (pid $XENSTORED_PID) at $XENSTORED_PATH.
Try: mtwatch-hook create 5; xenstore-ls -p /local/domain/0; mtwatch-hook destroy 5
Create or kill a guest domain (from another shell): $0 create|kill <domid>
Exit the shell to stop the sandbox.
MSG
		trap stop EXIT
		PATH="$BIN:$PATH" PS1="(mtwatch-sandbox) \w\$ " bash --norc -i || true
	else
		echo "export XENSTORED_PATH=$XENSTORED_PATH XENSTORED_RUNDIR=$XENSTORED_RUNDIR PATH=$BIN:\$PATH"
		echo "# xenstored pid $XENSTORED_PID; stop it with: make sandbox-stop"
	fi
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
create | kill)
	[ $# -eq 2 ] || { echo "usage: $0 $1 DOMID" >&2; exit 2; }
	harness "$1" "$2"
	;;
*) echo "usage: $0 start|stop|create DOMID|kill DOMID" >&2; exit 2 ;;
esac
