#!/bin/sh
# Records its argv and the variables mtwatchd sets into $OUT/<rule>.<domid>.<n>,
# then does what $ACTION says (for domain $ACTION_DOMID only, if set).
set -e
n=0
while [ -e "$OUT/$MTWATCH_RULE.$DOMID.$n" ]; do n=$((n + 1)); done
f="$OUT/$MTWATCH_RULE.$DOMID.$n"
{
	for a in "$0" "$@"; do printf 'argv %s\n' "$a"; done
	# Only what mtwatchd sets (and MODE, the rule's own): other MTWATCH_*
	# variables are the caller's, inherited, and would make the record
	# depend on the shell that ran the tests.
	env | grep -E '^(DOMID|XS_PATH|XS_TOKEN|MTWATCH_RULE|MTWATCH_OVERFLOW|MODE|NOTIFY_SOCKET)=' | sort | sed 's/^/env /'
	[ -t 0 ] && echo "stdin is a terminal" || true
} >"$f.tmp"
mv "$f.tmp" "$f"
echo "recorded $f"
echo "a line on stderr" >&2
[ -z "$ACTION_DOMID" ] || [ "$ACTION_DOMID" = "$DOMID" ] || exit 0
case "$ACTION" in
gate)
	# Block until $OUT/gate is removed.
	touch "$OUT/started.$DOMID.$n"
	while [ -e "$OUT/gate" ]; do sleep 0.02; done ;;
hang)
	# Leave a grandchild and hang; the timeout must end both.
	sleep 600 &
	echo $! >"$OUT/grandchild.$DOMID.$n.tmp"
	mv "$OUT/grandchild.$DOMID.$n.tmp" "$OUT/grandchild.$DOMID.$n"
	wait ;;
escape)
	# Like hang, but the grandchild leaves the command's process group and
	# session (a double fork and setsid), as a daemon does.
	( setsid sh -c 'sleep 600 & echo $! >"$1.tmp"; mv "$1.tmp" "$1"; wait' sh "$OUT/grandchild.$DOMID.$n" </dev/null >/dev/null 2>&1 & )
	sleep 600 ;;
stubborn)
	# Like hang, but both ignore SIGTERM: only SIGKILL ends them.
	trap '' TERM
	sleep 600 &
	echo $! >"$OUT/grandchild.$DOMID.$n.tmp"
	mv "$OUT/grandchild.$DOMID.$n.tmp" "$OUT/grandchild.$DOMID.$n"
	while :; do wait; done ;;
fail)
	exit 3 ;;
esac
