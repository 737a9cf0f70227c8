#!/bin/bash
# SPDX-License-Identifier: MIT
#
# preload-bench: what LD_PRELOAD=libupager-preload.so costs an unmodified
# program (issue 9), as ratios to the same program without it, in one run
# against a private upagerd.  The programs are preload-workload's:
#
#   touch       mmap(SIZE) and write one byte a page (the first touch):
#               the wall time the program measures around it, and the whole
#               process's (exec, the shim's start and exit included).
#               Target: <= 1.5x without the shim.  touch-malloc: the
#               same through malloc(SIZE) (managed only if the shim sees
#               glibc malloc's own mmap calls).
#   fork        SIZE written, then fork(); the child reads all of it.  The
#               parent's pause in fork(), the child's read time, and the
#               memory used once the child has read everything: Pss of
#               parent and child (/proc/PID/smaps_rollup), of upagerd, and
#               the daemon's resident_bytes counter.
#
# Runs are interleaved (plain, shim, plain, shim, ...) after a warm-up of
# each, so that a slow stretch of the machine hits both alike; each figure
# is the median over the runs.
#
# Usage: preload-bench.sh WORKLOAD UPAGERD UPAGERCTL SHIM
#                         [--size SIZE] [--runs N] [--quick] [--json FILE]
# Exit: 0 (figures are reported, never turned into a failure), 1 when a run
# broke, 77 when the shim is not built.
set -uo pipefail

workload=$1 upagerd=$2 ctl=$3 shim=$4
# A sanitizer build's shim needs the sanitizer runtime loaded before it
# (meson says which, in UPAGER_PRELOAD_FIRST); the leaks of the programs it
# is preloaded into are not the shim's to report.
preenv=(LD_PRELOAD="$shim")
if [[ -n ${UPAGER_PRELOAD_FIRST:-} ]]; then
	preenv=(LD_PRELOAD="$UPAGER_PRELOAD_FIRST $shim"
		ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0")
fi
shift 4
size=1G runs=5 json=
while (($#)); do
	case $1 in
	--size) size=$2; shift ;;
	--runs) runs=$2; shift ;;
	--quick) size=64M runs=2 ;;
	--json) json=$2; shift ;;
	*) echo "usage: see $0" >&2; exit 2 ;;
	esac
	shift
done

[[ -f $shim ]] || { echo "SKIP: the shim is not built ($shim)"; exit 77; }

work=$(mktemp -d /tmp/upager-preload-bench.XXXXXX)
sock=$work/upager.sock
started=()
cleanup() {
	local p
	for p in "${started[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

"$upagerd" --socket "$sock" --foreground --log-level warning \
	--idle-timeout 0 2>"$work/daemon.log" &
daemon=$!
started+=("$daemon")
for _ in $(seq 200); do
	"$ctl" --socket "$sock" stats >/dev/null 2>&1 && break
	sleep 0.05
done
"$ctl" --socket "$sock" stats >/dev/null 2>&1 || {
	cat "$work/daemon.log"
	exit 1
}

now_ns() { date +%s%N; }

# run_as plain|shim CMD...: the command, with or without the shim
run_as() {
	local how=$1
	shift
	if [[ $how == shim ]]; then
		env "${preenv[@]}" UPAGER_SOCKET="$sock" UPAGER_REQUIRE=1 "$@"
	else
		env -u LD_PRELOAD "$@"
	fi
}

pss_kib() {
	awk '/^Pss:/ { print $2; exit }' "/proc/$1/smaps_rollup" 2>/dev/null ||
		echo 0
}

daemon_resident() {
	"$ctl" --socket "$sock" stats --json |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["resident_bytes"] >> 10)'
}

# The results: one "how metric value" a line, for the medians below.
res=$work/results
: >"$res"

touch_run() {
	local how=$1 t0 t1 inner m
	for m in mmap malloc; do
		t0=$(now_ns)
		inner=$(run_as "$how" "$workload" touch "$size" "$m" 2>&1 \
			>/dev/null | awk '/^touch-ns/ { print $2 }')
		t1=$(now_ns)
		[[ -n $inner ]] || { echo "touch ($how) broke" >&2; return 1; }
		if [[ $m == mmap ]]; then
			echo "$how touch-ms $((inner / 1000000))" >>"$res"
			echo "$how touch-process-ms $(((t1 - t0) / 1000000))" >>"$res"
		else
			echo "$how touch-malloc-ms $((inner / 1000000))" >>"$res"
		fi
	done
}

fork_run() {
	local how=$1 out=$work/fork.$how line k v dpss dres
	local pre=(env -u LD_PRELOAD)
	[[ $how == shim ]] &&
		pre=(env "${preenv[@]}" UPAGER_SOCKET="$sock" UPAGER_REQUIRE=1)
	# exec: the coprocess is the program, which cleanup can kill
	coproc FT { exec "${pre[@]}" "$workload" fork-touch "$size" wait \
		2>"$out.err"; }
	local pid=$FT_PID
	started+=("$pid")
	: >"$out"
	while read -r -t 120 k v <&"${FT[0]}"; do
		echo "$k $v" >>"$out"
		[[ $k == child-pid ]] && break
	done
	# the child has read everything and still holds it: the daemon now
	dpss=$(pss_kib "$daemon")
	dres=$(daemon_resident)
	echo go >&"${FT[1]}"
	eval "exec ${FT[1]}>&-"
	wait "$pid" || { echo "fork ($how) broke" >&2; cat "$out.err" >&2; return 1; }
	grep -q '^child-sum-ok 1' "$out" || { echo "fork ($how): wrong bytes" >&2; return 1; }
	while read -r k v; do
		case $k in
		fork-pause-ns) echo "$how fork-pause-us $((v / 1000))" ;;
		child-read-ns) echo "$how child-read-ms $((v / 1000000))" ;;
		parent-pss-kib) echo "$how parent-pss-mib $((v / 1024))" ;;
		child-pss-kib) echo "$how child-pss-mib $((v / 1024))" ;;
		esac
	done <"$out" >>"$res"
	if [[ $how == shim ]]; then
		echo "$how daemon-pss-mib $((dpss / 1024))" >>"$res"
		echo "$how daemon-resident-mib $((dres / 1024))" >>"$res"
	fi
}

echo "preload-bench: size $size, $runs runs (+1 warm-up), $(nproc) CPUs, $(uname -r)"
for how in plain shim; do
	touch_run "$how" && fork_run "$how" || exit 1
done
: >"$res"
for r in $(seq "$runs"); do
	for how in plain shim; do
		touch_run "$how" || exit 1
		fork_run "$how" || exit 1
	done
	printf '.' >&2
done
echo >&2

python3 - "$res" "$json" <<'PY'
import json, statistics, sys
vals = {}
for line in open(sys.argv[1]):
    how, k, v = line.split()
    vals.setdefault((how, k), []).append(float(v))
med = {key: statistics.median(v) for key, v in vals.items()}
rows = [
    ("touch-ms", "first touch, in the program (ms)", 1.5),
    ("touch-process-ms", "first touch, whole process (ms)", 1.5),
    ("touch-malloc-ms", "first touch via malloc (ms)", 1.5),
    ("fork-pause-us", "fork(): the parent's pause (us)", None),
    ("child-read-ms", "the child reads it all (ms)", None),
    ("parent-pss-mib", "parent Pss after the read (MiB)", None),
    ("child-pss-mib", "child Pss after the read (MiB)", None),
    ("daemon-pss-mib", "upagerd Pss (MiB)", None),
    ("daemon-resident-mib", "upagerd resident_bytes (MiB)", None),
]
out = {}
print(f"{'':40} {'plain':>10} {'shim':>10} {'ratio':>7}")
for k, label, target in rows:
    a, b = med.get(("plain", k)), med.get(("shim", k))
    ratio = b / a if a and b is not None else None
    fa = f"{a:10.0f}" if a is not None else f"{'-':>10}"
    fb = f"{b:10.0f}" if b is not None else f"{'-':>10}"
    fr = f"{ratio:6.2f}x" if ratio is not None else f"{'-':>7}"
    note = ""
    if target and ratio is not None:
        note = f"  target <= {target}x: {'met' if ratio <= target else 'MISSED'}"
    print(f"{label:40} {fa} {fb} {fr}{note}")
    out[k] = {"plain": a, "shim": b, "ratio": ratio}
tot_a = sum(med.get(("plain", k), 0) for k in ("parent-pss-mib", "child-pss-mib"))
tot_b = sum(med.get(("shim", k), 0) for k in ("parent-pss-mib", "child-pss-mib",
                                              "daemon-pss-mib"))
print(f"{'memory: parent + child (+ upagerd) Pss':40} {tot_a:10.0f} {tot_b:10.0f}"
      f" {tot_b / tot_a if tot_a else 0:6.2f}x")
out["memory-total-mib"] = {"plain": tot_a, "shim": tot_b}
if sys.argv[2]:
    json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
