#!/usr/bin/env bash
# Configures (once) and builds a build directory.
#   scripts/build.sh [DIR [meson options...]]
# Quiet when it works; when configuring or building fails, prints what meson
# or ninja said (the compiler's errors) on stderr and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Runs "$@" with its output in $log; shows that output if it fails.
quiet() {
	if ! "$@" >"$log" 2>&1; then
		cat "$log" >&2
		echo "build.sh: '$*' failed" >&2
		exit 1
	fi
}

if [[ ! -f $dir/build.ninja ]]; then
	quiet meson setup "$dir" "$@"
fi
quiet ninja -C "$dir"
