#!/usr/bin/env bash
# Runs every native Go fuzz target for FUZZTIME (default 45s) each.
# New crashers are written to the package's testdata/fuzz and fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-45s}
[ "$fuzztime" = 0 ] && { echo "fuzzing skipped (FUZZTIME=0)"; exit 0; }
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "-- $pkg $target ($fuzztime)"
		go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" >/tmp/fuzz.$$.log 2>&1 || {
			cat /tmp/fuzz.$$.log; rm -f /tmp/fuzz.$$.log; exit 1
		}
		tail -1 /tmp/fuzz.$$.log
	done
done
rm -f /tmp/fuzz.$$.log
