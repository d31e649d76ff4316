#!/usr/bin/env bash
# make demo: mtwatch doing its job on a machine without Xen. A sandbox
# xenstored (real, under the hypervisor emulation), bin/mtwatchd with the
# hotplug and exec plugins, and mtwatch-sim creating and destroying guests
# the way libxl does, one of them stuck: its hotplug script hangs (run off
# the workers, it delays only its own device) and so does its exec command
# (a handler on its domain's worker, as a kernel backend's xenwatch callback
# stuck on a dead frontend). Run twice, with per-domain workers and with
# --single-worker (one loop running every handler in turn, as Linux's kernel
# xenwatch thread), then the two side by side. (xl devd is not such a loop:
# it runs each script as its own child process; make bench compares the
# plugin with it.)
#
# Environment: DEMO_DOMAINS (20), DEMO_HANG_DOMAIN (3), DEMO_SCRIPT_TIMEOUT
# (8s, the plugins' timeout that ends the hanging script and command).
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
bin=$here/bin
dir=$here/build/demo
domains=${DEMO_DOMAINS:-20}
hang=${DEMO_HANG_DOMAIN:-3}
timeout=${DEMO_SCRIPT_TIMEOUT:-8s}
GO=${GO:-go}

for b in mtwatchd mtwatch mtwatch-hook mtwatch-sim; do
	if [ ! -x "$bin/$b" ]; then
		echo "demo: $bin/$b is not built (its cmd/$b is missing from this tree)" >&2
		exit 1
	fi
done

agent_pid=
ctl=$dir/xs-sandbox
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_agent
	[ -x "$ctl" ] && "$ctl" -dir "$dir/sandbox" stop >/dev/null 2>&1 || true
	exit "$rc"
}
stop_agent() {
	if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
		kill -TERM "$agent_pid"
		# shutdown_timeout is 5 s; past 10 s something is wrong.
		for _ in $(seq 100); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$agent_pid" 2>/dev/null; then
			echo "demo: mtwatchd did not stop on SIGTERM; killing it" >&2
			kill -KILL "$agent_pid" 2>/dev/null || true
		fi
		wait "$agent_pid" 2>/dev/null || true
	fi
	agent_pid=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$dir"
mkdir -p "$dir"
# The harness's sandbox command, built once: it alone knows how to build
# and preload the emulation library.
(cd "$here" && "$GO" build -o "$ctl" ./lib/xenstore/xenstoredtest/cmd/sandbox)
eval "$("$ctl" -dir "$dir/sandbox" start)"
export XENSTORED_PATH XENSTORED_RUNDIR
export MTWATCH_XENSTORE=$XENSTORED_PATH
export MTWATCH_CONTROL=$dir/control.sock

sed -e "s|@DIR@|$dir|g" -e "s|@SCRIPTS@|$here/test/demo/scripts|g" -e "s|@TIMEOUT@|$timeout|g" -e "s|@HANG@|$hang|g" \
	"$here/test/demo/mtwatchd.toml.in" >"$dir/mtwatchd.toml"

echo "mtwatch demo: $domains guests, domain $hang's hotplug script and exec command hang (killed after $timeout)"
echo "sandbox xenstored ($(cat "$dir/sandbox/kind")) at $XENSTORED_PATH; logs in $dir"

run_mode() { # mode [mtwatchd flags...]
	local mode=$1
	shift
	echo
	echo "== $mode"
	# A session of its own: Ctrl-C reaches the simulator, which then tears
	# its domains down, and not the agent, whose hotplug plugin runs the
	# remove scripts that teardown waits for. cleanup stops it afterwards.
	setsid "$bin/mtwatchd" --config "$dir/mtwatchd.toml" --control "$MTWATCH_CONTROL" "$@" \
		>"$dir/mtwatchd-$mode.log" 2>&1 </dev/null &
	agent_pid=$!
	for _ in $(seq 100); do
		"$bin/mtwatch" status >/dev/null 2>&1 && break
		kill -0 "$agent_pid" 2>/dev/null || break
		sleep 0.1
	done
	if ! "$bin/mtwatch" status >/dev/null 2>&1; then
		echo "demo: mtwatchd did not come up; its log:" >&2
		cat "$dir/mtwatchd-$mode.log" >&2
		return 1
	fi
	# A non-zero exit here is a healthy domain that failed: the report says
	# which; the demo goes on to show it.
	"$bin/mtwatch-sim" --domains "$domains" --hang-domain "$hang" \
		--scripts-dir "$here/test/demo/scripts" --hook "$bin/mtwatch-hook" \
		--label "$mode" --json "$dir/$mode.json" \
		--live "$bin/mtwatch list" --live-interval 1s >/dev/null || true
	stop_agent
}

start=$(date +%s)
run_mode mtwatch
run_mode single-worker --single-worker

echo
echo "== report (device set-up: backend InitWait -> hotplug-status=connected)"
"$bin/mtwatch-sim" compare "$dir/mtwatch.json" "$dir/single-worker.json"
echo
echo "exec plugin ran $(wc -l <"$dir/exec.log" 2>/dev/null || echo 0) memory-target commands"
echo "With per-domain workers only domain $hang waits for its stuck command; with one worker every"
echo "domain whose devices came after it waits too. Its hung hotplug script delays no other device"
echo "in either mode: scripts run off the workers. Done in $(($(date +%s) - start)) s."
