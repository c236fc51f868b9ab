#!/usr/bin/env bash
# Runs every native Go fuzz target for FUZZTIME (default 30s) each.
# New crashers are written to the package's testdata/fuzz and fail the run.
#
# Go 1.26's fuzz coordinator can fail a run with a bare "context deadline
# exceeded" when -fuzztime ends while a worker is mid-call (golang/go#75804,
# fixed in Go 1.27). Such a run wrote no crasher; it is reported and not
# counted as a failure. Any other failure, or any new crasher, fails.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-30s}
[ "$fuzztime" = 0 ] && { echo "fuzzing skipped (FUZZTIME=0)"; exit 0; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "-- $pkg $target ($fuzztime)"
		corpus="$dir/testdata/fuzz/$target"
		before=$(ls "$corpus" 2>/dev/null | sort || true)
		if go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" >"$log" 2>&1; then
			tail -1 "$log"
			continue
		fi
		after=$(ls "$corpus" 2>/dev/null | sort || true)
		if [ "$before" = "$after" ] && grep -q '^    context deadline exceeded$' "$log" &&
			[ "$(grep -c -- '^--- FAIL' "$log")" = 1 ]; then
			echo "   (Go fuzz coordinator deadline race, golang/go#75804; no crasher written: not a failure)"
			continue
		fi
		cat "$log"
		exit 1
	done
done
