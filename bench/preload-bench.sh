#!/bin/bash
# SPDX-License-Identifier: MIT
#
# preload-bench: what LD_PRELOAD=libupager-preload.so costs an unmodified
# program (issue 9).  Kept for its old command line; the benchmark is
# `upager-bench preload` (bench-preload.c), which this runs: the
# upager-bench built next to WORKLOAD (the build tree's bench/), told
# where the program, the daemon and the shim are.  UPAGERCTL is no longer
# needed (the bench reads the daemon's counters itself).
#
# Usage: preload-bench.sh WORKLOAD UPAGERD UPAGERCTL SHIM
#                         [--size SIZE] [--runs N] [--quick] [--json FILE]
#                         [more upager-bench preload options]
# Exit: upager-bench's: 0 (figures are reported, never turned into a
# failure), 1 when a run broke, 2 on a bad option, 77 when the shim is
# not built.
set -euo pipefail

if (($# < 4)); then
	echo "usage: $0 WORKLOAD UPAGERD UPAGERCTL SHIM [--size SIZE]" \
		"[--runs N] [--quick] [--json FILE]" >&2
	exit 2
fi
workload=$1 upagerd=$2 shim=$4
shift 4
args=()
while (($#)); do
	case $1 in
	--json) args+=(--json-out "$2"); shift ;;
	*) args+=("$1") ;;
	esac
	shift
done
exec "$(dirname "$workload")/upager-bench" preload --program "$workload" \
	--daemon "$upagerd" --shim "$shim" "${args[@]}"
