#!/bin/sh
# bench-quic.sh: throughput and stream-open latency through the QUIC
# carrier, a plain upstream quic-go stream and the TLS carrier, on the same
# loopback in the same run (transport/quiccarrier/bench_test.go).
#
# quic-go asks for UDP socket buffers of 7.5 MB
# (https://github.com/quic-go/quic-go/wiki/UDP-Buffer-Sizes); Linux caps
# them at net.core.rmem_max / wmem_max. Run as root, this script raises
# both to 7500000 for the run and restores the old values afterwards;
# otherwise it runs with whatever is set and says so.
#
# Usage: scripts/bench-quic.sh [-benchtime 3s] [-count 3]
set -eu
cd "$(dirname "$0")/.."

old_r=$(sysctl -n net.core.rmem_max)
old_w=$(sysctl -n net.core.wmem_max)
restore() { :; }
if [ "$(id -u)" = 0 ]; then
	sysctl -q -w net.core.rmem_max=7500000 net.core.wmem_max=7500000
	restore() { sysctl -q -w net.core.rmem_max="$old_r" net.core.wmem_max="$old_w"; }
	trap restore EXIT INT TERM
else
	echo "not root: UDP buffers limited to rmem_max=$old_r wmem_max=$old_w" >&2
fi
echo "net.core.rmem_max=$(sysctl -n net.core.rmem_max) net.core.wmem_max=$(sysctl -n net.core.wmem_max) (before: $old_r, $old_w)"
go test -run '^$' -bench 'Throughput|StreamOpen' -benchtime "${BENCHTIME:-2s}" "$@" ./transport/quiccarrier/
