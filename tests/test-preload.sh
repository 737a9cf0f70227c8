#!/bin/bash
# SPDX-License-Identifier: MIT
#
# test-preload: unmodified programs under LD_PRELOAD=libupager-preload.so
# (issue 9) behave as they do without it, and their memory was the
# daemon's.  Each check runs a program twice, without and with the shim
# (UPAGER_SOCKET: a private upagerd started here, UPAGER_REQUIRE=1), and
# compares what it printed (a transcript, or checksums of its output).
#
#   semantics       tests/preload-semantics, every section: same transcript,
#                   exit 0 both times; with the shim, /dev/zero and shm
#                   mappings are segments' memfds
#   python-hash     python3 filling and hashing ~550 MiB
#   py-threads      python3: 4 threads build ~200 MiB of small objects
#                   (above pymalloc's 512 B: malloc's, so the shim's arenas)
#   sort            sort(1) of a generated ~120 MB file
#   xz              xz -9 of a generated 16 MB file
#   py-shared       python3: forked workers writing one mmap(-1) (shared
#                   anonymous) region
#   shared-workers  the same in C (preload-workload shared-workers)
#   exit-together   a parent and child mapping a shared segment exit at
#                   once, 30 times: nothing left in the daemon
#   py-forking-server  python's ForkingTCPServer: a child per connection
#                   forked (from a thread) off 64 MiB written; a shm object
#   fork-reader     a child reads all of its parent's 256 MiB while the
#                   parent keeps writing: it sees one instant
#   snapshot-save   a preloaded program's segments, found by its pid in
#                   `upagerctl list --json`, snapshotted and saved while it
#                   runs; the image restored (create --source, cat) holds
#                   the exact bytes
#   daemon-death    tests/preload-death (its path in PRELOAD_DEATH): the
#                   daemon SIGKILLed while a program holds 256 MiB malloc'ed
#                   and 64 MiB mmap'ed (memory), while a fork child reads
#                   its parent's 64 MiB (fork), while a thread allocates
#                   and frees large blocks (churn); no wrong byte: zeros
#                   where nothing was written, the right bytes or SIGBUS
#                   where only the daemon held them; and fork() after the
#                   daemon died (fork-after): the child reads all of its
#                   copy right; a new daemon after it
#   sanitizer-report  (sanitizer builds) AddressSanitizer's report of a
#                   heap overflow in a preloaded program comes out whole
#   unprivileged    (as root) the semantics transcript again as nobody,
#                   against a daemon of nobody's
# After each program under the shim: the daemon's counters moved (faults
# served; segments created, where the daemon counts them), it filled at
# least the memory the check names (else the check is skipped: the shim
# left the program's memory alone), and nothing of the program is left in
# the daemon.
#
# The without-shim half always runs (it checks the programs and the
# comparisons themselves).  Without the shim built, the rest is skipped.
#
# Usage: test-preload.sh SEMANTICS WORKLOAD UPAGERD UPAGERCTL SHIM [CHECK...]
#   (PRELOAD_DEATH=path of tests/preload-death, for daemon-death)
# Exit: 0 pass, 1 fail, 77 skip (no shim, or a skipped check and no failure).
set -uo pipefail

semantics=$1 workload=$2 upagerd=$3 ctl=$4 shim=$5
# A sanitizer build's shim needs the sanitizer runtime loaded before it
# (meson says which, in UPAGER_PRELOAD_FIRST); the leaks of the programs it
# is preloaded into are not the shim's to report.
preenv=(LD_PRELOAD="$shim")
if [[ -n ${UPAGER_PRELOAD_FIRST:-} ]]; then
	preenv=(LD_PRELOAD="$UPAGER_PRELOAD_FIRST $shim"
		ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0")
fi
shift 5
only=("$@")

work=$(mktemp -d /tmp/upager-preload.XXXXXX)
chmod 755 "$work"
sock=$work/upager.sock
daemon_pid=
started=() # pids this script started, killed at exit
failed=0 skipped=0

cleanup() {
	local p
	for p in "${started[@]}"; do
		kill "$p" 2>/dev/null
	done
	wait 2>/dev/null
	if ((failed)) && [[ -s $work/daemon.log ]]; then
		echo "--- daemon log (last 40 lines)"
		tail -n 40 "$work/daemon.log"
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

say() { printf '%s\n' "$*"; }
fail() {
	say "FAIL $check: $*"
	failed=$((failed + 1))
}
skip() {
	say "SKIP $check: $*"
	skipped=$((skipped + 1))
}
want() {
	((${#only[@]} == 0)) && return 0
	local c
	for c in "${only[@]}"; do [[ $c == "$1" ]] && return 0; done
	return 1
}

# forget_pid PID: reaped, not to be killed at exit (its number may be reused)
forget_pid() {
	local p keep=()
	for p in "${started[@]}"; do
		[[ $p == "$1" ]] || keep+=("$p")
	done
	started=("${keep[@]}")
}

# --- the daemon and its counters ---

start_daemon() {
	"$upagerd" --socket "$sock" --foreground --log-level warning \
		--idle-timeout 0 2>"$work/daemon.log" &
	daemon_pid=$!
	started+=("$daemon_pid")
	local i
	for i in $(seq 200); do
		"$ctl" --socket "$sock" stats >/dev/null 2>&1 && return 0
		kill -0 "$daemon_pid" 2>/dev/null || break
		sleep 0.05
	done
	cat "$work/daemon.log"
	return 1
}

# stats KEY...: the daemon's counters, one a line ("-" for an unknown key)
stats() {
	"$ctl" --socket "$sock" stats --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
for k in sys.argv[1:]:
    print(s.get(k, "-"))' "$@"
}

# faults served so far
faults() {
	"$ctl" --socket "$sock" stats --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["faults_missing"] + s["faults_wp"] + s["faults_minor"])'
}

# Segments the daemon has created since it started, or "-" where it does
# not count them (the key is looked for under a few names).
created() {
	"$ctl" --socket "$sock" stats --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
for k in ("segments_created", "created_segments", "segments_total"):
    if k in s:
        print(s[k]); break
else:
    print("-")'
}

# Waits (bounded) until the daemon holds no segment, attachment or
# connection of a client: what a program under the shim leaves at exit.
wait_empty() {
	local i out
	for i in $(seq 100); do
		out=$(stats segments attachments connections | tr '\n' ' ')
		# the query's own connection counts
		[[ $out == "0 0 1 " ]] && return 0
		sleep 0.05
	done
	say "left in the daemon (segments attachments connections): $out"
	"$ctl" --socket "$sock" list
	# gone, so that the next check starts from nothing
	"$ctl" --socket "$sock" list --json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    print(s["name"])' | while read -r name; do
		"$ctl" --socket "$sock" delete "$name" --force >/dev/null 2>&1
	done
	return 1
}

# --- running a program both ways ---

# every run is bounded: a program that hangs under the shim fails its check
run_timeout=${PRELOAD_TEST_TIMEOUT:-180}
bounded() {
	timeout -k 10 "$run_timeout" "$@"
	local rc=$?
	((rc == 124)) && echo "timed out after ${run_timeout}s: $*" >&2
	return $rc
}

have_shim=0
[[ -f $shim ]] && have_shim=1

# plain OUT CMD...: without the shim; stdout to OUT, stderr to OUT.err
plain() {
	local out=$1
	shift
	bounded env -u LD_PRELOAD "$@" >"$out" 2>"$out.err"
}

# preloaded OUT CMD...: with the shim and the test's daemon
preloaded() {
	local out=$1
	shift
	bounded env "${preenv[@]}" UPAGER_SOCKET="$sock" UPAGER_REQUIRE=1 \
		"$@" >"$out" 2>"$out.err"
}

# pages the daemon has filled (zero or data) since it started
filled() {
	stats pages_filled
}

# compare NAME MIN_MIB CMD...: run CMD both ways; same stdout and exit
# status, the daemon's counters moved, nothing left.  MIN_MIB: how much of
# the program's memory the daemon must have filled, else the check is
# skipped (the shim left the program's memory alone: glibc malloc's own
# mmap calls, say, which symbol interposition does not see).  Without the
# shim: only the plain run (it must exit 0).
compare() {
	local name=$1 min_mib=$2
	shift 2
	local a=$work/$name.plain b=$work/$name.shim rc_a rc_b
	plain "$a" "$@"
	rc_a=$?
	if ((rc_a != 0)); then
		fail "without the shim: exit $rc_a"
		tail -n 20 "$a" "$a.err"
		return 1
	fi
	say "$name without the shim: exit 0, $(wc -l <"$a") lines," \
		"sha256 $(sha256sum <"$a" | cut -c1-16)"
	((have_shim)) || return 0

	local f0 c0 f1 c1 p0 p1
	f0=$(faults) c0=$(created) p0=$(filled)
	preloaded "$b" "$@"
	rc_b=$?
	f1=$(faults) c1=$(created) p1=$(filled)
	if ((rc_b != 0)); then
		fail "with the shim: exit $rc_b"
		tail -n 20 "$b.err"
	fi
	if ! cmp -s "$a" "$b"; then
		fail "with the shim the output differs"
		diff "$a" "$b" | head -n 20
	fi
	local mib=$(((p1 - p0) * 4096 >> 20))
	say "$name with the shim: exit $rc_b, faults served $((f1 - f0)), $mib MiB filled by the daemon," \
		"segments created $([[ $c0 == - ]] && echo '(not counted)' ||
			echo $((c1 - c0)))"
	if [[ -n ${UPAGER_PRELOAD_FIRST:-} ]]; then
		# A sanitizer's malloc comes before the shim's.
		say "$name: how much was managed is not checked in a sanitizer build"
	elif ((f1 == f0)); then
		fail "the daemon served no fault: the shim left the program's memory alone"
	elif [[ $c0 != - ]] && ((c1 == c0)); then
		fail "the daemon created no segment"
	elif ((mib < min_mib)); then
		fail "the daemon filled $mib MiB of the program's memory, want >= $min_mib: the shim left most of it alone"
	fi
	wait_empty || fail "the program left state in the daemon"
	if grep -qi 'warn\|error' "$b.err" && ! grep -qi 'warn\|error' "$a.err"; then
		say "note: stderr with the shim:"
		head -n 5 "$b.err"
	fi
}

# --- inputs ---

# A deterministic text file of about @2 MiB at @1 (lines of words).
gen_text() {
	python3 - "$1" "$2" <<'PY'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(9)
words = [''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz')
                 for _ in range(rnd.randint(2, 11))) for _ in range(5000)]
with open(path, 'w') as f:
    n = 0
    while n < mib << 20:
        line = ' '.join(rnd.choice(words) for _ in range(rnd.randint(1, 9)))
        line = f'{rnd.randrange(10**9):09d} {line}\n'
        f.write(line)
        n += len(line)
PY
}

# --- the checks ---

if ((have_shim)); then
	start_daemon || {
		say "FAIL: upagerd did not start"
		exit 1
	}
	say "shim: $shim; daemon: pid $daemon_pid on $sock"
else
	say "SKIP: the shim is not built ($shim): only the runs without it"
fi

# /usr/bin/python3 is Debian's (a pyenv shim first in PATH would be a
# script in front of it)
py=/usr/bin/python3
[[ -x $py ]] || py=$(command -v python3)

check=semantics
if want $check; then
	# under the shim the sections also check that /dev/zero and shm
	# mappings are the daemon's (a memfd in /proc/self/maps)
	compare semantics 64 env UPAGER_EXPECT_MANAGED=1 "$semantics"
	grep -q '^== .* sections, 0 failed$' "$work/semantics.plain" ||
		fail "the transcript does not end well"
	# UPAGER_SHM=0: POSIX shm stays the kernel's (the section checks)
	if ((have_shim)); then
		preloaded "$work/shm-off" env UPAGER_SHM=0 \
			UPAGER_EXPECT_MANAGED=1 "$semantics" shm ||
			fail "UPAGER_SHM=0: $(grep FAIL "$work/shm-off")"
	fi
fi

check=python-hash
if want $check; then
	compare python-hash 256 "$py" -c '
import hashlib
b = bytearray(300 << 20)
for i in range(0, len(b), 4096):
    b[i] = i // 4096 % 251
b2 = bytearray(range(256)) * (1 << 20)
b2[::65536] = bytes(len(b2[::65536]))
l = [bytes([i % 256]) * 65536 for i in range(512)]
h = hashlib.sha256()
for x in l:
    h.update(x)
print(hashlib.sha256(b).hexdigest(), hashlib.sha256(b2).hexdigest(),
      h.hexdigest(), len(b) + len(b2))
'
fi

check=py-threads
if want $check; then
	compare py-threads 128 "$py" -c '
import hashlib, threading
out = [None] * 4
def work(k):
    l = [bytes([(i * 7 + k) % 256]) * (600 + (i * 37 + k) % 3400)
         for i in range(20000)]
    d = {i: x for i, x in enumerate(l) if i % 3}
    h = hashlib.sha256()
    for i in sorted(d):
        h.update(d[i])
    out[k] = (len(l), sum(map(len, l)), h.hexdigest())
t = [threading.Thread(target=work, args=(k,)) for k in range(4)]
for x in t:
    x.start()
for x in t:
    x.join()
for r in out:
    print(*r)
'
fi

check=sort
if want $check; then
	gen_text "$work/sort.in" 120
	compare sort 100 sh -c "LC_ALL=C sort '$work/sort.in' | sha256sum"
	rm -f "$work/sort.in"
fi

check=xz
if want $check; then
	gen_text "$work/xz.in" 16
	compare xz 32 sh -c "xz -9 -T1 -c '$work/xz.in' | sha256sum"
	rm -f "$work/xz.in"
fi

check=py-shared
if want $check; then
	compare py-shared 48 "$py" -c '
import hashlib, mmap, os
size, n = 64 << 20, 4
m = mmap.mmap(-1, size)        # MAP_SHARED | MAP_ANONYMOUS
m[0:5] = b"start"              # written before the fork: the workers see it
pids = []
for w in range(n):
    pid = os.fork()
    if pid == 0:
        ok = m[0:5] == b"start"
        sl = size // n
        chunk = bytes((w * 37 + i) % 256 for i in range(4096))
        for off in range(w * sl + 4096, (w + 1) * sl, 4096):
            m[off:off + 4096] = chunk
        os._exit(0 if ok else 1)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
print(codes, hashlib.sha256(m).hexdigest())
'
fi

check=shared-workers
want $check && compare shared-workers 64 "$workload" shared-workers 96M 6

# A parent and its child that exit at once, each mapping a shared
# segment: its name goes with the last of them (a stat-then-delete at
# exit left it behind in 13 of 30 runs), 30 times.
check=exit-together
if want $check && ((have_shim)); then
	for i in $(seq 30); do
		preloaded "$work/exit-together" "$semantics" --exit-together ||
			fail "run $i: exit $?"
	done
	if wait_empty; then
		say "exit-together: 30 runs, nothing left"
	else
		fail "a shared segment outlived both processes"
	fi
fi

# A forking server (python's socketserver.ForkingTCPServer): a parent with
# 64 MiB written forks a child per connection from a thread; each child
# fills and hashes a buffer of its own.  Also a POSIX shm object shared by
# the parent and a child that opens it by name.
check=py-forking-server
if want $check; then
	compare py-forking-server 48 "$py" -c '
import hashlib, os, socket, socketserver, threading
from multiprocessing import shared_memory
class H(socketserver.StreamRequestHandler):
    def handle(self):
        n = int(self.rfile.readline())
        b = bytearray(n)
        for i in range(0, n, 4096):
            b[i] = (i // 4096 + big[i]) % 251
        self.wfile.write((hashlib.sha256(b).hexdigest() + "\n").encode())
big = bytearray(64 << 20)
for i in range(0, len(big), 4096):
    big[i] = i // 4096 % 13
srv = socketserver.ForkingTCPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
out = []
for k in range(8):
    s = socket.create_connection(srv.server_address)
    s.sendall(b"%d\n" % ((k + 1) << 20))
    out.append(s.makefile().readline().strip())
    s.close()
srv.shutdown()
shm = shared_memory.SharedMemory(create=True, size=4 << 20)
shm.buf[:5] = b"hello"
pid = os.fork()
if pid == 0:
    o = shared_memory.SharedMemory(name=shm.name)
    o.buf[5:11] = b" world" if o.buf[:5] == b"hello" else b" wrong"
    o.close()
    os._exit(0)
os.waitpid(pid, 0)
out.append(bytes(shm.buf[:11]).decode())
shm.close()
shm.unlink()
print("\n".join(out), sum(big))
'
fi

check=fork-reader
want $check && compare fork-reader 200 "$workload" fork-reader 256M 4

# The segments of a running program: snapshot, save, restore, compare.
check=snapshot-save
if want $check && ((have_shim)); then
	if ! "$ctl" save --help >/dev/null 2>&1; then
		skip "upagerctl has no save"
	else
		exp=$work/hold.expected
		coproc HOLD { exec env "${preenv[@]}" UPAGER_SOCKET="$sock" \
			UPAGER_REQUIRE=1 "$workload" hold 48M 7 "$exp" \
			2>"$work/hold.err"; }
		hold_pid=$HOLD_PID
		started+=("$hold_pid")
		read -r -t 30 word pid <&"${HOLD[0]}"
		if [[ ${word:-} != ready ]]; then
			fail "the program did not start"
			cat "$work/hold.err"
		else
			# its segments: those it has attached, or named after it
			mapfile -t segs < <("$ctl" --socket "$sock" list --json |
				python3 -c '
import json, sys
pid = int(sys.argv[1])
for s in json.load(sys.stdin):
    if s.get("kind", "segment") == "segment" and (pid in s.get("pids", []) or
            str(pid) in s["name"]):
        print(s["name"])' "$pid")
			say "segments of pid $pid: ${segs[*]:-none}"
			((${#segs[@]})) || fail "no segment of the running program"
			if "$ctl" --socket "$sock" list --pid "$pid" \
				>"$work/list-pid" 2>&1; then
				for s in "${segs[@]}"; do
					grep -q "$s" "$work/list-pid" ||
						fail "list --pid $pid lacks $s"
				done
			else
				skip "upagerctl list --pid: $(head -n1 "$work/list-pid")"
			fi
			found=0 i=0
			for s in "${segs[@]}"; do
				i=$((i + 1))
				"$ctl" --socket "$sock" snapshot "$s" "snap$i" \
					>/dev/null || {
					fail "snapshot $s"
					continue
				}
				"$ctl" --socket "$sock" save "snap$i" \
					"$work/img$i" >/dev/null || {
					fail "save snap$i"
					continue
				}
				"$ctl" --socket "$sock" create "restored$i" \
					--source "$work/img$i" >/dev/null || {
					fail "create --source img$i"
					continue
				}
				"$ctl" --socket "$sock" cat "restored$i" \
					>"$work/cat$i" || fail "cat restored$i"
				# the held range: the segment may be larger
				if cmp -s -n "$(stat -c %s "$exp")" "$exp" \
					"$work/cat$i"; then
					found=$((found + 1))
				fi
				"$ctl" --socket "$sock" delete "restored$i" >/dev/null
				"$ctl" --socket "$sock" delete "snap$i" \
					>/dev/null 2>&1
				rm -f "$work/img$i" "$work/cat$i"
			done
			if ((found)); then
				say "snapshot-save: the restored image holds the program's 48 MiB exactly"
			else
				fail "no restored image holds the program's bytes"
			fi
		fi
		eval "exec ${HOLD[1]}>&-"
		for _ in $(seq 600); do
			kill -0 "$hold_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$hold_pid" 2>/dev/null && {
			fail "the held program did not exit with its stdin closed"
			kill -9 "$hold_pid"
		}
		wait "$hold_pid"
		rc=$?
		((rc == 0)) || fail "the held program exited $rc"
		wait_empty || fail "the program left state in the daemon"
	fi
fi

# The daemon killed under a running program (issue 9: "no wrong byte").
# death_run MODE ARG...: preload-death MODE under the shim; at its "ready"
# line the daemon is SIGKILLed and, once it is gone, the program told
# "go"; it prints a "result" line of counts per region (each "wrong N")
# and PASS.  A new daemon is started afterwards.
death_run() {
	local mode=$1 out=$work/death-$1 rc pid segs
	local -a words
	rm -f "$work/death.in"
	mkfifo "$work/death.in"
	# timeout's pid: killed at exit, it takes the program with it
	timeout -k 10 "$run_timeout" env "${preenv[@]}" UPAGER_SOCKET="$sock" \
		UPAGER_REQUIRE=1 "$PRELOAD_DEATH" "$@" <"$work/death.in" \
		>"$out" 2>"$out.err" &
	local ppid=$!
	started+=("$ppid")
	local gofd
	exec {gofd}>"$work/death.in"
	for _ in $(seq 1200); do
		grep -q '^ready ' "$out" && break
		kill -0 "$ppid" 2>/dev/null || break
		sleep 0.05
	done
	read -r -a words < <(grep '^ready ' "$out")
	pid=${words[1]:-}
	if [[ -z $pid ]]; then
		fail "$mode: the program did not get ready"
		exec {gofd}>&-
		wait "$ppid"
		tail -n 10 "$out" "$out.err"
		return 1
	fi
	# the memory it holds is the daemon's (else the check proves nothing)
	segs=$("$ctl" --socket "$sock" list --pid "$pid" 2>/dev/null |
		grep -c "^pid$pid\.")
	if ((segs == 0)) && [[ -z ${UPAGER_PRELOAD_FIRST:-} ]]; then
		fail "$mode: pid $pid holds no segment of the daemon"
	fi
	say "daemon-death $mode: pid $pid holds $segs segment(s); daemon pid $daemon_pid killed"
	kill -KILL "$daemon_pid"
	wait "$daemon_pid" 2>/dev/null
	forget_pid "$daemon_pid"
	daemon_pid=
	echo go >&"$gofd"
	exec {gofd}>&-
	wait "$ppid"
	rc=$?
	forget_pid "$ppid"
	grep '^result ' "$out" | sed "s/^/  $mode /"
	if ((rc == 124 || rc == 137)); then
		fail "$mode: the program hung after the daemon died (timed out)"
	elif ((rc != 0)); then
		fail "$mode: exit $rc"
	fi
	if grep '^result ' "$out" | grep -qv 'wrong 0$' ||
		! grep -q '^PASS$' "$out"; then
		fail "$mode: wrong bytes, or no verdict"
		tail -n 5 "$out.err"
	fi
	# for whatever runs next
	start_daemon || fail "upagerd did not start again"
}

check=daemon-death
if want $check && ((have_shim)); then
	if [[ ! -x ${PRELOAD_DEATH:-} ]]; then
		skip "PRELOAD_DEATH (tests/preload-death) not given"
	else
		death_run memory 256 64
		death_run fork 64
		death_run churn 64
		# fork() after the daemon died: the child gets its copy
		# (the private segments become the kernel's memory)
		death_run fork-after 64
	fi
fi

# AddressSanitizer's report maps its symbolizer's memory through mmap, so
# through the shim: the report must come out whole and the program exit
# (it hung: the first managed mapping started the library's watcher
# thread while ASan held its thread registry).  Sanitizer builds only.
check=sanitizer-report
if want $check && ((have_shim)) && [[ -n ${UPAGER_PRELOAD_FIRST:-} ]]; then
	out=$work/asan-report
	timeout -k 5 60 env "${preenv[@]}" UPAGER_SOCKET="$sock" \
		UPAGER_REQUIRE=1 "$semantics" --asan-report >"$out" 2>&1
	rc=$?
	if ((rc == 77)); then
		say "sanitizer-report: not an AddressSanitizer build"
	elif ((rc == 124 || rc == 137)); then
		fail "the report hung (killed after 60 s)"
		tail -n 5 "$out"
	elif ! grep -q 'SUMMARY: AddressSanitizer: heap-buffer-overflow' "$out"; then
		fail "exit $rc without the report's summary"
		tail -n 5 "$out"
	else
		say "sanitizer-report: reported whole, exit $rc"
	fi
	wait_empty || fail "the program left state in the daemon"
fi

# As root: the transcript again as an ordinary user, with a daemon of its
# own (unprivileged userfaultfd, no UFFD_FEATURE_EVENT_FORK).
check=unprivileged
if want $check && ((have_shim)) && [[ $(id -u) == 0 ]]; then
	if ! command -v setpriv >/dev/null; then
		skip "no setpriv"
	else
		udir=$work/nobody
		mkdir "$udir" && chown 65534:65534 "$udir"
		asnobody() {
			setpriv --reuid=65534 --regid=65534 --clear-groups \
				--reset-env "$@"
		}
		cp "$semantics" "$udir/semantics"
		# and the library it needs beside it (its runpath: $ORIGIN)
		cp "$(dirname "$semantics")"/libatfork-early.so "$udir/"
		chmod 755 "$udir/semantics" "$udir/libatfork-early.so"
		# setpriv execs: $! is the daemon itself
		setpriv --reuid=65534 --regid=65534 --clear-groups \
			--reset-env "$upagerd" --socket "$udir/s.sock" \
			--foreground --log-level warning \
			2>"$udir/daemon.log" &
		upid=$!
		started+=("$upid")
		for _ in $(seq 200); do
			asnobody "$ctl" --socket "$udir/s.sock" stats \
				>/dev/null 2>&1 && break
			sleep 0.05
		done
		bounded setpriv --reuid=65534 --regid=65534 --clear-groups \
			--reset-env "$udir/semantics" >"$udir/plain" 2>&1
		bounded setpriv --reuid=65534 --regid=65534 --clear-groups \
			--reset-env env "${preenv[@]}" UPAGER_SOCKET="$udir/s.sock" \
			UPAGER_REQUIRE=1 "$udir/semantics" \
			>"$udir/shim" 2>"$udir/shim.err"
		rc=$?
		if ((rc != 0)) || ! cmp -s "$udir/plain" "$udir/shim"; then
			fail "as nobody: exit $rc, transcripts differ"
			diff "$udir/plain" "$udir/shim" | head -n 20
			tail -n 10 "$udir/shim.err" "$udir/daemon.log"
		else
			say "unprivileged: same transcript as nobody, exit 0"
		fi
		kill "$upid" 2>/dev/null
		wait "$upid"
	fi
fi

if ((failed)); then
	say "$failed check(s) failed"
	exit 1
fi
if ((!have_shim)); then
	say "SKIP: runs without the shim passed; the shim is not built"
	exit 77
fi
if ((skipped)); then
	say "SKIP: $skipped part(s) skipped, nothing failed"
	exit 77
fi
say "all passed"
exit 0
