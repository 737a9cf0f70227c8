#!/bin/bash
# SPDX-License-Identifier: MIT
#
# trace-selftest: upager-trace counts every userfaultfd fault of a process,
# and classifies each by kind.
#
# Usage: trace-selftest.sh UPAGER_TRACE UFFD_WORKLOAD
#
# The workload protocol (src/tools/trace/uffd-workload.c follows it; any
# replacement must too):
#   - "WORKLOAD -m MODE -n PAGES" sets everything up (userfaultfd, range
#     registration, handler thread) and then blocks reading one byte from
#     stdin (EOF also means go). It takes no userfaultfd fault before that.
#   - It then touches its pages and prints "faults=N" on stdout, N being the
#     number of faults its handler served, and exits 0. MODE is missing, wp
#     or minor.
#   - Exit 77 means userfaultfd, or that mode, is unavailable here.
#
# For each mode the test: starts the workload with stdin on a FIFO; starts
# "upager-trace --json --pid WORKLOAD"; waits until the tracer reports on
# stderr that it is tracing; writes the go byte; waits for the workload,
# whose exit also ends the tracer (it stops when its --pid exits); and checks
# that the tracer counted exactly N faults of that kind, none of any other,
# and no unknown reasons.
#
# The tracer picks its method (fentry, or the sched fallback) itself; set
# UPAGER_TRACE_METHOD=fentry|sched to force one (unsupported -> skip).
#
# Exit status: 0 pass, 1 fail, 77 skip (not root, tracer or workload
# missing, no BTF, or the tracer exits 3: tracing unsupported here).
set -euo pipefail

readonly SKIP=77
tracer=${1:-}
workload=${2:-}
method=${UPAGER_TRACE_METHOD:-auto}
pages=1000

skip() {
	echo "SKIP: $*"
	exit "$SKIP"
}

fail() {
	echo "FAIL: $*"
	exit 1
}

[[ -n $tracer && -n $workload ]] ||
	{ echo "usage: $0 UPAGER_TRACE UFFD_WORKLOAD" >&2; exit 2; }
[[ -x $tracer ]] || skip "no tracer at '$tracer'"
[[ -x $workload ]] || skip "no workload at '$workload'"
[[ $(id -u) -eq 0 ]] || skip "needs root"
[[ -r /sys/kernel/btf/vmlinux ]] || skip "no kernel BTF"
command -v python3 >/dev/null || skip "needs python3"

tmp=$(mktemp -d)
wl_pid=
tr_pid=
cleanup() {
	# Only what we started, by pid.
	if [[ -n $tr_pid ]]; then kill "$tr_pid" 2>/dev/null || true; fi
	if [[ -n $wl_pid ]]; then kill "$wl_pid" 2>/dev/null || true; fi
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

# run_mode MODE: 0 pass, 77 skip; fails the test otherwise.
run_mode() {
	local mode=$1 go=$tmp/go.$1 rc i n json pid
	local wl_out=$tmp/wl.$1.out tr_out=$tmp/tr.$1.json tr_err=$tmp/tr.$1.err

	mkfifo "$go"
	# Hold the FIFO open read-write so opening it for the workload's stdin
	# does not block, and the go byte can be written at our leisure.
	exec {gofd}<>"$go"
	"$workload" -m "$mode" -n "$pages" <"$go" >"$wl_out" &
	wl_pid=$!
	pid=$wl_pid

	# Created here: the loop below may look before the tracer's shell does.
	: >"$tr_err"
	"$tracer" --json --method "$method" --pid "$wl_pid" --duration 60 \
		>"$tr_out" 2>"$tr_err" &
	tr_pid=$!

	for ((i = 0; i < 200; i++)); do
		grep -q "Hit Ctrl-C" "$tr_err" && break
		if ! kill -0 "$tr_pid" 2>/dev/null; then
			rc=0
			wait "$tr_pid" || rc=$?
			tr_pid=
			cat "$tr_err"
			[[ $rc -eq 3 ]] && skip "tracing unsupported here"
			fail "$mode: tracer exited early with status $rc"
		fi
		sleep 0.05
	done
	grep -q "Hit Ctrl-C" "$tr_err" || { cat "$tr_err"; fail "$mode: tracer not ready after 10 s"; }

	printf 'x' >&"$gofd"
	exec {gofd}>&-

	rc=0
	wait "$wl_pid" || rc=$?
	wl_pid=
	if [[ $rc -eq $SKIP ]]; then
		echo "$mode: workload says unavailable here, skipped"
		kill "$tr_pid" 2>/dev/null || true
		wait "$tr_pid" 2>/dev/null || true
		tr_pid=
		return "$SKIP"
	fi
	[[ $rc -eq 0 ]] || fail "$mode: workload exited with status $rc"

	rc=0
	wait "$tr_pid" || rc=$?
	tr_pid=
	[[ $rc -eq 0 ]] || { cat "$tr_err"; fail "$mode: tracer exited with status $rc"; }

	n=$(sed -n 's/^faults=\([0-9][0-9]*\)$/\1/p' "$wl_out")
	[[ -n $n ]] || fail "$mode: no faults=N from the workload"
	[[ $n -gt 0 ]] || fail "$mode: the workload served no faults"

	# Prints "ok ..." or a reason; the pid is the workload's.
	json=$(python3 -c '
import json, sys
mode, pid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(sys.argv[4]) as f:
    r = json.load(f)
procs = [p for p in r["processes"] if p["pid"] == pid]
if not procs:
    print("no entry for pid %d" % pid)
    sys.exit(0)
c = procs[0]["counts"]
want = {k: 0 for k in ("missing", "wp", "minor", "unknown")}
want[mode] = n
if c != want:
    print("counts %s, expected %s" % (c, want))
elif procs[0]["total"] != n or sum(b["count"] for b in procs[0]["histogram"]) != n:
    print("total or histogram does not add up to %d" % n)
elif r["totals"]["unknown_reason"]:
    print("unknown reason 0x%x" % r["totals"]["unknown_reason"])
else:
    print("ok method=%s p50=%dns p99=%dns" % (r["method"], procs[0]["p50_ns"], procs[0]["p99_ns"]))
' "$mode" "$pid" "$n" "$tr_out")
	[[ $json == ok* ]] || { cat "$tr_out"; fail "$mode: $json"; }
	echo "$mode: $n faults, $json"
	return 0
}

passed=0
for mode in missing wp minor; do
	rc=0
	run_mode "$mode" || rc=$?
	[[ $rc -eq 0 ]] && passed=$((passed + 1))
done
[[ $passed -gt 0 ]] || skip "no mode could run"
echo "PASS"
