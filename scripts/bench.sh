#!/usr/bin/env bash
# Benchmarks the whole path (client.OpenStream → TLS carrier → relay → a
# local target, all in one process on loopback) against plain crypto/tls on
# the same loopback, in the same run, and prints merpati / plain TLS ratios
# from the medians of COUNT runs.
#
#   scripts/bench.sh                      BENCHTIME=2s COUNT=3
#   PROFILE=/tmp/cpu scripts/bench.sh     also writes CPU profiles /tmp/cpu.1..COUNT (one per round)
#
# Benchmarks (client/bench_test.go):
#   Throughput/dir=up|down      bulk transfer on one stream, 32 KiB writes
#   ThroughputPlainTLS/...      the same on one crypto/tls connection
#   ThroughputPlainTLSProxy/... the same through a TLS-terminating TCP forwarder (the extra hop, no merpati)
#   StreamOpen                  OpenStream on a live session until the relay's OK, then 1 byte echoed
#   PlainTLSConnect             fresh TCP + TLS 1.3 handshake to a local TLS echo, then 1 byte echoed
set -euo pipefail
cd "$(dirname "$0")/.."

BENCHTIME=${BENCHTIME:-2s}
COUNT=${COUNT:-3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/merpati-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
out=$tmp/out.txt

# Compile once, then run COUNT rounds of all four benchmarks (rather than
# -count, which repeats each benchmark back to back), so merpati and its
# baseline see the same background load on a noisy machine.
go test -c -o "$tmp/client.test" ./client/
args=(-test.run '^$' -test.bench '^Benchmark(Throughput|ThroughputPlainTLS|ThroughputPlainTLSProxy|StreamOpen|PlainTLSConnect)$'
	-test.benchtime "$BENCHTIME" -test.count 1)
echo "== client.test ${args[*]}   x $COUNT rounds, $(nproc) CPUs"
for round in $(seq "$COUNT"); do
	prof=()
	if [ -n "${PROFILE:-}" ]; then
		prof=(-test.cpuprofile "$PROFILE.$round")
	fi
	# The test binary must run in the package directory.
	(cd client && "$tmp/client.test" "${args[@]}" "${prof[@]}") | grep -E '^(Benchmark|cpu:)' | tee -a "$out"
done
if [ -n "${PROFILE:-}" ]; then
	cp "$tmp/client.test" "$PROFILE.bin"
	echo "CPU profiles in $PROFILE.1..$COUNT; read with: go tool pprof -top $PROFILE.bin $PROFILE.1"
fi

echo
echo "== medians of $COUNT runs; ratio = merpati / plain TLS"
awk '
# Strip the -GOMAXPROCS suffix; keep ns/op and MB/s.
/^Benchmark/ {
	name = $1; sub(/-[0-9]+$/, "", name)
	for (i = 3; i < NF; i++) {
		if ($(i+1) == "ns/op") ns[name] = ns[name] " " $i
		if ($(i+1) == "MB/s") mbs[name] = mbs[name] " " $i
	}
}
function median(list,    a, n, i, j, t) {
	n = split(list, a, " ")
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
END {
	for (d = 0; d < 2; d++) {
		dir = d ? "down" : "up"
		m = median(mbs["BenchmarkThroughput/dir=" dir])
		p = median(mbs["BenchmarkThroughputPlainTLS/dir=" dir])
		x = median(mbs["BenchmarkThroughputPlainTLSProxy/dir=" dir])
		verdict = (m / p >= 0.70) ? "meets" : "BELOW"
		printf "throughput %-4s  merpati %8.1f MB/s   plain TLS %8.1f MB/s   ratio %5.1f%%  (%s the 70%% target)\n", dir, m, p, 100 * m / p, verdict
		printf "                 plain TLS through a TLS-terminating TCP forwarder (merpati'"'"'s topology) %8.1f MB/s; merpati / that %5.1f%%\n", x, 100 * m / x
	}
	m = median(ns["BenchmarkStreamOpen"])
	p = median(ns["BenchmarkPlainTLSConnect"])
	printf "new connection    merpati stream open + echo %7.1f us   plain TCP+TLS connect + echo %7.1f us   ratio %5.2f\n", m / 1000, p / 1000, m / p
}' "$out"
