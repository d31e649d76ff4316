# Sourced by the test scripts: records the script's argv and the variables
# libxl sets into $OUT, and appends "start"/"end" lines to $OUT/log.
# The action is $1 (add, remove, online, offline).
dev=$(echo "$XENBUS_PATH" | tr / _)
n=0
while [ -e "$OUT/$dev.$1.$n" ]; do n=$((n + 1)); done
rec="$OUT/$dev.$1.$n"
{
	for a in "$0" "$@"; do printf 'argv %s\n' "$a"; done
	env | grep -E '^(script|XENBUS_[A-Z_]*|netdev|vif|INTERFACE|NOTIFY_SOCKET)=' | LC_ALL=C sort | sed 's/^/env /'
	[ -t 0 ] && echo "stdin is a terminal" || true
	read -r line && echo "stdin not empty" || true
} >"$rec.tmp"
mv "$rec.tmp" "$rec"
echo "$XENBUS_PATH $1 start" >>"$OUT/log"
echo "$(basename "$0") $1 for $XENBUS_PATH"
