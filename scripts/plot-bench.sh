#!/bin/bash
# SPDX-License-Identifier: MIT
#
# plot-bench.sh - latency-by-percentile plot of upager-bench --json output.
#
# One panel per variant (e.g. random/1t/1p), one line per system; x is the
# percentile on a log scale of 1/(1-p) (so 90, 99, 99.9 % are evenly spaced:
# the tail is where pagers differ), y the latency of a first touch in us, log.
# Writes PREFIX.svg and PREFIX.png.  Needs jq and gnuplot (Debian packages).
set -euo pipefail

usage() {
	cat <<EOF
Usage: $0 [--variants REGEX] [--title TEXT] RESULTS.json [PREFIX]

  RESULTS.json   output of: upager-bench <workload> --json (or --json-out)
  PREFIX         output files PREFIX.svg and PREFIX.png
                 (default: RESULTS without .json)
  --variants RE  only the variants whose name matches RE (jq regex),
                 e.g. '^random/1t' or '/1p'
  --title TEXT   a title above the panels
EOF
}

variants_re=""
title=""
while [ $# -gt 0 ]; do
	case "$1" in
	-h|--help) usage; exit 0 ;;
	--variants) variants_re="${2:?--variants needs a value}"; shift 2 ;;
	--title) title="${2:?--title needs a value}"; shift 2 ;;
	--) shift; break ;;
	-*) echo "$0: unknown option '$1' (see --help)" >&2; exit 2 ;;
	*) break ;;
	esac
done
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	usage >&2
	exit 2
fi
json="$1"
prefix="${2:-${json%.json}}"
for tool in jq gnuplot; do
	command -v "$tool" >/dev/null ||
		{ echo "$0: $tool not found (apt-get install $tool)" >&2; exit 1; }
done
[ -r "$json" ] || { echo "$0: cannot read $json" >&2; exit 1; }
jq -e '.tool == "upager-bench" and (.results | type == "array")' "$json" \
	>/dev/null 2>&1 ||
	{ echo "$0: $json is not upager-bench --json output" >&2; exit 1; }

tmp=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT

workload=$(jq -r '.workload' "$json")
mapfile -t variants < <(jq -r --arg re "$variants_re" '
	[.results[] | select(.distribution != null) | .variant
	 | select($re == "" or test($re))]
	| reduce .[] as $v ([]; if any(.[]; . == $v) then . else . + [$v] end)
	| .[]' "$json")
if [ ${#variants[@]} -eq 0 ]; then
	echo "$0: no result with a distribution${variants_re:+ matching '$variants_re'}" >&2
	exit 1
fi

# A fixed colour per system, the same in every panel and every plot.
color() {
	case "$1" in
	kernel-memfd) echo "#1f77b4" ;;
	kernel-anon) echo "#2ca02c" ;;
	kernel-file) echo "#17becf" ;;
	minimal) echo "#ff7f0e" ;;
	upagerd) echo "#d62728" ;;
	*) echo "#7f7f7f" ;;
	esac
}

n=${#variants[@]}
cols=$(( n > 1 ? 2 : 1 ))
rows=$(( (n + cols - 1) / cols ))
width=$(( cols * 640 ))
height=$(( rows * 400 + (${#title} > 0 ? 40 : 0) ))

plot="$tmp/plot.gp"
{
	echo "set logscale xy"
	echo "set grid xtics ytics mxtics mytics lc rgb '#dddddd'"
	echo "set xtics ('0%%' 1, '50%%' 2, '90%%' 10, '99%%' 100, '99.9%%' 1000, '99.99%%' 10000, '99.999%%' 100000)"
	echo "set format y '%g'"
	echo "set xlabel 'percentile'"
	echo "set ylabel 'first-touch latency (us)'"
	echo "set key top left"
	echo "set multiplot layout $rows,$cols${title:+ title \"$title\"}"
	i=0
	for v in "${variants[@]}"; do
		access=$(jq -r --arg v "$v" '[.results[] | select(.variant == $v)][0].access' "$json")
		echo "set title \"$workload $v ($access)\""
		mapfile -t systems < <(jq -r --arg v "$v" '.results[]
			| select(.variant == $v and .distribution != null) | .system' "$json")
		parts=()
		for s in "${systems[@]}"; do
			i=$((i + 1))
			data="$tmp/$i.dat"
			# p = 100 is the max: no finite x; the p99.999 point ends it
			jq -r --arg v "$v" --arg s "$s" '.results[]
				| select(.variant == $v and .system == $s)
				| .distribution.percentiles[] | select(.[0] < 100)
				| "\(1 / (1 - .[0] / 100)) \(.[1] / 1000)"' "$json" > "$data"
			lw=1.5
			[ "$s" = upagerd ] && lw=2.5
			p50=$(jq -r --arg v "$v" --arg s "$s" '.results[]
				| select(.variant == $v and .system == $s)
				| "\(.p50_ns / 1000 * 100 | round / 100)"' "$json")
			parts+=("'$data' using 1:2 with lines lw $lw lc rgb '$(color "$s")' title '$s (p50 $p50 us)'")
		done
		(IFS=,; echo "plot ${parts[*]}")
	done
	echo "unset multiplot"
} > "$plot"

if gnuplot -e "set terminal pngcairo" >/dev/null 2>&1; then
	png_term="pngcairo size $width,$height font ',9'"
else
	png_term="png size $width,$height"
fi
gnuplot -e "set terminal svg size $width,$height dynamic font 'sans,10'; set output '$prefix.svg'" "$plot"
gnuplot -e "set terminal $png_term; set output '$prefix.png'" "$plot"
echo "$prefix.svg"
echo "$prefix.png"
