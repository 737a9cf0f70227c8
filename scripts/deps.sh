#!/usr/bin/env bash
# Installs, from Debian 12's archive, what building and testing upager needs
# and is not installed yet.  Idempotent: does nothing when all is there.
set -euo pipefail

pkgs=(
	gcc libc6-dev pkg-config meson ninja-build	# build
	liburing-dev check				# core, tests
	libbpf-dev clang llvm bpftool			# upager-trace (optional)
	gnuplot-nox jq python3				# plots, test helpers
	clang-format-14					# the format check
)

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
((${#missing[@]})) || exit 0

echo "deps: installing ${missing[*]}" >&2
sudo=
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
	sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q </dev/null
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
