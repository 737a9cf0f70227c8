#!/bin/bash
# SPDX-License-Identifier: MIT
#
# trace-daemon: upager-trace, run around an upager-bench run against a real
# upagerd, counts as many userfaultfd faults of the bench as the daemon says
# it served.  Two independent views of one run: the kernel's (threads
# waiting in handle_userfault) and the daemon's (fault messages it read).
#
# Usage: trace-daemon.sh UPAGER_TRACE UPAGER_BENCH UPAGERD UPAGERCTL
# Exit: 0 pass, 1 fail, 77 skip (not root, no tracer, tracing unsupported).
set -euo pipefail

tracer=$1 bench=$2 upagerd=$3 ctl=$4

[[ $(id -u) -eq 0 ]] || { echo "SKIP: needs root for BPF"; exit 77; }
[[ -x $tracer ]] || { echo "SKIP: no upager-trace"; exit 77; }

work=$(mktemp -d /tmp/upager-trace-daemon.XXXXXX)
sock=$work/s.sock
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

"$upagerd" --socket "$sock" --foreground --log-level warning 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 200); do
	"$ctl" --socket "$sock" stats >/dev/null 2>&1 && break
	sleep 0.05
done

# System-wide: the bench is started after the tracer is attached.
"$tracer" --json --duration 120 >"$work/trace.json" 2>"$work/trace.err" &
tracer_pid=$!
pids+=("$tracer_pid")
for _ in $(seq 200); do
	grep -q "tracing" "$work/trace.err" 2>/dev/null && break
	if ! kill -0 "$tracer_pid" 2>/dev/null; then
		wait "$tracer_pid" && rc=0 || rc=$?
		cat "$work/trace.err"
		[[ $rc -eq 3 ]] && { echo "SKIP: tracing unsupported here"; exit 77; }
		exit 1
	fi
	sleep 0.05
done

# One faulting thread, one process: every fault of the bench is upagerd's.
# The bench runs under a name of its own: other upager-bench runs on the
# machine (the tracer sees the whole system) must not count.
comm=ub-$$
cp "$bench" "$work/$comm"
"$work/$comm" missing --socket "$sock" --systems upagerd --threads 1 --procs 1 \
	--order seq,random --pages 2048 --runs 2 --warmup 0 --no-progress \
	>"$work/bench.out"
kill -INT "$tracer_pid"
wait "$tracer_pid"
"$ctl" --socket "$sock" stats --json >"$work/stats.json"

python3 - "$work/trace.json" "$work/stats.json" "$comm" <<'PY'
import json, sys
trace = json.load(open(sys.argv[1]))
stats = json.load(open(sys.argv[2]))
traced = sum(p["total"] for p in trace["processes"] if p["comm"] == sys.argv[3])
served = stats["faults_missing"] + stats["faults_wp"] + stats["faults_minor"]
print(f"faults traced in upager-bench: {traced}; served by upagerd: {served}")
if served == 0:
    sys.exit("the daemon served no fault: the bench did not run against it")
# The tracer's fallback method can miss a fault answered before its thread
# slept (documented); it never invents one.
if not (0.99 * served <= traced <= served):
    sys.exit("MISMATCH")
PY
