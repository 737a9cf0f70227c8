#!/usr/bin/env bash
# Installs what is missing, checks the formatting (scripts/check-format.sh),
# builds, and runs the whole test suite twice: in the normal build and in an
# ASan+UBSan build.  Ends with the line "N passed, N failed[, N skipped]"
# (the format check counts as one); exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh || exit 1

summary() {
	python3 - "$@" <<'PY'
import json, sys
ok = fail = skip = 0
fmt = sys.argv[1]
if fmt == "ok":
    ok += 1
else:
    fail += 1
for path in sys.argv[2:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        r = json.loads(line).get("result")
        if r in ("OK", "EXPECTEDFAIL"):
            ok += 1
        elif r == "SKIP":
            skip += 1
        else:
            fail += 1
print(f"{ok} passed, {fail} failed, {skip} skipped")
PY
}

status=0
logs=()

echo "== format" >&2
format=ok
if ! scripts/check-format.sh; then
	echo "== format FAILED: run scripts/check-format.sh --fix" >&2
	format=fail
	status=1
fi

for variant in "build" "build-asan -Db_sanitize=address,undefined -Db_lundef=false"; do
	read -r dir opts <<<"$variant"
	echo "== $dir: build" >&2
	# shellcheck disable=SC2086
	if ! scripts/build.sh "$dir" $opts; then
		echo "== $dir: build FAILED" >&2
		status=1
		continue
	fi
	echo "== $dir: tests" >&2
	meson test -C "$dir" --setup full --print-errorlogs --num-processes 2 || status=1
	logs+=("$dir/meson-logs/testlog-full.json")
done

echo
summary "$format" "${logs[@]}"
exit $status
