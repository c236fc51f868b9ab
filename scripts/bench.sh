#!/usr/bin/env bash
# Fair benchmarks (issue 13): every hop a separate process on loopback.
# Builds merpati, merpati-relay and scripts/benchnet, then runs
# `benchnet run`, which starts a fake datacenter, a cover site, the real
# relay and client binaries and the plain TLS / quic-go / splice baselines,
# plays the app itself, and prints the table of medians and the ratios the
# issue's targets name. Arguments go to benchnet run; see
# scripts/benchnet/main.go for them all.
#
#   scripts/bench.sh                                      everything, 3 rounds (about 15 minutes on 2 cores)
#   scripts/bench.sh -only tls,plain-tls -tests 1 -count 1 -size 1GiB   one row pair, one test, quickly
#   scripts/bench.sh -only mtproxy,splice -tests 1,100,open,rtt
#   scripts/bench.sh -only tls,plain-tls -tests idle -sessions 10000
#
# Paths (-only): tls plain-tls quic plain-quic mtproxy splice.
# Tests (-tests): 1 (one stream down/up, CPU per GiB, system calls per MiB on
# the TCP paths), 100 (-streams × -psize
# down/up), open (stream opens/s), rtt (100-byte round trip p50/p99),
# rtt-load (the same while 16 other streams of the path download),
# hs (handshakes/s and CPU per handshake), idle (relay memory and CPU per
# idle session at each of -sessions; every path), idle-stream (the same
# with a stream open in each session, after an echo; tls, plain-tls, quic,
# plain-quic).
# -workdir DIR keeps the relay directories and every process's log there.
# MERPATI_CPUPROFILE=/tmp/prof.%p makes every merpati, merpati-relay and benchnet
# process write a CPU profile (go tool pprof /tmp/prof.PID).
# MERPATI_HEAPPROFILE=/tmp/heap.%p makes each of them write a heap profile of
# what is in use on every SIGUSR1:
# `kill -USR1 PID` while test idle holds its sessions shows what they cost.
# MERPATI_TRACE=/tmp/trace.%p makes each of them write an execution trace
# (go tool trace: where each goroutine ran, waited for the network, for a
# lock or for a core); keep such runs short (-count 1).
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d "${TMPDIR:-/tmp}/merpati-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

go build -o "$tmp/" ./client/cmd/merpati ./relay/cmd/merpati-relay ./scripts/benchnet
# The idle test holds 10,000 sessions on each side: ask for room (the Go
# binaries raise their soft limit to this hard one themselves).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$tmp/benchnet" run --bin "$tmp" "$@"
