#!/usr/bin/env bash
# Installs what is missing, builds, starts upagerd on a private socket,
# creates a file-backed segment, reads it back through page faults from two
# processes at once, shows the daemon's statistics and stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
echo "== building"
scripts/build.sh build

daemon=build/src/daemon/upagerd
ctl_bin=build/src/tools/upagerctl
work=$(mktemp -d /tmp/upager-run.XXXXXX)
sock=$work/upager.sock
daemon_pid=
cleanup() {
	if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
		kill -TERM "$daemon_pid"
		wait "$daemon_pid" || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

echo "== starting upagerd on $sock"
"$daemon" --socket "$sock" --foreground --log-level info 2>"$work/upagerd.log" &
daemon_pid=$!
for _ in $(seq 100); do
	[[ -S $sock ]] && "$ctl_bin" --socket "$sock" stats >/dev/null 2>&1 && break
	sleep 0.05
done

ctl() { "$ctl_bin" --socket "$sock" "$@"; }

echo "== a 64 MiB image of random bytes"
head -c $((64 << 20)) /dev/urandom >"$work/image"
want=$(sha256sum <"$work/image" | cut -d' ' -f1)
echo "   sha256 $want"

echo "== upagerctl create demo --size 64M --source image"
ctl create demo --size 64M --source "$work/image"

echo "== two processes read the segment at once (every byte through a fault)"
ctl cat demo >"$work/out1" &
p1=$!
ctl cat demo >"$work/out2" &
p2=$!
wait $p1 $p2
for f in out1 out2; do
	got=$(sha256sum <"$work/$f" | cut -d' ' -f1)
	if [[ $got == "$want" ]]; then
		echo "   $f: sha256 matches the image"
	else
		echo "   $f: sha256 $got DIFFERS from the image" >&2
		exit 1
	fi
done

echo "== write through one attachment, read through another"
printf 'hello from upager\n' | ctl write demo --offset 1M
ctl cat demo --offset 1M --length 18

echo "== a snapshot, then a write: the snapshot keeps the old bytes"
ctl snapshot demo demo.snap
printf 'written after the snapshot\n' | ctl write demo --offset 1M
printf '   demo:      '
ctl cat demo --offset 1M --length 27
printf '   demo.snap: '
ctl cat demo.snap --offset 1M --length 18
echo "== a clone of the snapshot, written on its own"
ctl clone demo.snap demo.clone
printf 'the clone writes\n' | ctl write demo.clone --offset 1M
printf '   demo.clone: '
ctl cat demo.clone --offset 1M --length 17
ctl list

echo "== upagerctl stat demo"
ctl stat demo
echo "== upagerctl stats"
ctl stats

echo "== stopping upagerd"
kill -TERM "$daemon_pid"
wait "$daemon_pid"
daemon_pid=
echo "   upagerd exited cleanly; its log:"
sed 's/^/   | /' "$work/upagerd.log" | tail -n 12
