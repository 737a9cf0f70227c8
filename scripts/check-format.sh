#!/usr/bin/env bash
# Checks that the C sources are formatted as .clang-format says.
#   scripts/check-format.sh          check (exit 1 and name the files if not)
#   scripts/check-format.sh --fix    reformat them in place
# The sources: every *.c and *.h that git tracks under src/, include/,
# bench/ and tests/, and at the top; generated files (the tracer's
# vmlinux.h and skeleton, in the build directories) are never among them.
# Needs clang-format 14 (what .clang-format was tuned with): set
# $CLANG_FORMAT to use another binary.
set -uo pipefail
cd "$(dirname "$0")/.."

fix=false
case ${1:-} in
--fix) fix=true ;;
"") ;;
*)
	echo "usage: $0 [--fix]" >&2
	exit 2
	;;
esac

cf=${CLANG_FORMAT:-}
if [[ -z $cf ]]; then
	for c in clang-format-14 clang-format; do
		if command -v "$c" >/dev/null; then
			cf=$c
			break
		fi
	done
fi
if [[ -z $cf ]]; then
	echo "check-format: clang-format not found (install clang-format-14)" >&2
	exit 1
fi
if ! "$cf" --version | grep -q 'version 14\.'; then
	echo "check-format: warning: $("$cf" --version): .clang-format was" \
		"tuned with clang-format 14; another version may disagree" >&2
fi

mapfile -t files < <(git ls-files -- 'src/*.[ch]' 'include/*.[ch]' \
	'bench/*.[ch]' 'tests/*.[ch]' '*.[ch]' |
	grep -v -E -e '\.skel\.h$' -e '(^|/)vmlinux\.h$' | sort -u)
if [[ ${#files[@]} -eq 0 ]]; then
	echo "check-format: no sources found (not a git checkout?)" >&2
	exit 1
fi

if $fix; then
	exec "$cf" -i "${files[@]}"
fi

bad=()
for f in "${files[@]}"; do
	if ! "$cf" --dry-run --Werror "$f" >/dev/null 2>&1; then
		bad+=("$f")
	fi
done
if [[ ${#bad[@]} -gt 0 ]]; then
	echo "check-format: ${#bad[@]} file(s) not formatted as .clang-format says:" >&2
	printf '  %s\n' "${bad[@]}" >&2
	echo "See the changes with: $cf --dry-run ${bad[0]}" >&2
	echo "Apply them with: scripts/check-format.sh --fix" >&2
	exit 1
fi
echo "check-format: ${#files[@]} files formatted as .clang-format says"
