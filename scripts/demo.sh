#!/usr/bin/env bash
# The main job, on this machine only: builds merpati and merpati-relay,
# starts a local test Telegram datacenter (gotd tgtest) and a local HTTPS
# cover site, makes a relay pointed at them, runs the client with the share
# link the relay printed, and pushes a real MTProto session (gotd client:
# auth key exchange + RPCS echo RPCs) through the client's SOCKS5 proxy.
# Finally it probes the relay like a censor would, without a key, and gets
# the cover site. Everything listens on and dials 127.0.0.1 only; nothing
# leaves the machine. Needs Go; curl is optional.
#
#   scripts/demo.sh              100 RPCs
#   RPCS=1000 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RPCS=${RPCS:-100}
SNI=cover.merpati.test

tmp=$(mktemp -d "${TMPDIR:-/tmp}/merpati-demo.XXXXXX")
pids=()
cleanup() {
	local rc=$?
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold= plain=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
indent() { sed 's/^/   /'; }

# wait_for FILE PID: waits until FILE is non-empty, or fails if PID exits.
wait_for() {
	for _ in $(seq 200); do
		[ -s "$1" ] && return 0
		if ! kill -0 "$2" 2>/dev/null; then
			echo "process $2 exited early; its log:" >&2
			cat "$tmp"/*.log >&2 || true
			return 1
		fi
		sleep 0.05
	done
	echo "timed out waiting for $1" >&2
	return 1
}

t0=$(date +%s.%N)
step "building merpati, merpati-relay and merpati-lab (the test DC, cover site and MTProto client) into $tmp"
go build -o "$tmp/bin/" ./client/cmd/merpati ./relay/cmd/merpati-relay ./client/internal/telegramtest/cmd/merpati-lab
bin=$tmp/bin

step "starting a test Telegram DC 2 (gotd tgtest, fresh RSA key) on loopback"
"$bin/merpati-lab" dc --listen 127.0.0.1:0 --id 2 --addr-file "$tmp/dc.addr" --key-file "$tmp/dc.pem" >"$tmp/dc.log" 2>&1 &
pids+=($!)
wait_for "$tmp/dc.addr" $!
dc_addr=$(cat "$tmp/dc.addr")
indent <"$tmp/dc.log"

step "starting the cover site (HTTPS, self-signed for $SNI)"
"$bin/merpati-lab" cover --listen 127.0.0.1:0 --name "$SNI" --addr-file "$tmp/cover.addr" >"$tmp/cover.log" 2>&1 &
pids+=($!)
wait_for "$tmp/cover.addr" $!
cover_addr=$(cat "$tmp/cover.addr")
indent <"$tmp/cover.log"

# The relay's address goes into the share link, so it must be known before
# the relay starts: ask the kernel for a free port.
relay_port=$("$bin/merpati-lab" freeport)
relay_addr=127.0.0.1:$relay_port

step "merpati-relay init (DC 2 pointed at the test DC; the cover is the local site)"
echo "   \$ merpati-relay init --dir RELAYDIR --public $relay_addr --listen $relay_addr --cover https://$cover_addr --sni $SNI --dc 2=$dc_addr --allow 127.0.0.0/8"
"$bin/merpati-relay" init --dir "$tmp/relay" --public "$relay_addr" --listen "$relay_addr" \
	--cover "https://$cover_addr" --sni "$SNI" --dc "2=$dc_addr" --allow 127.0.0.0/8 | tee "$tmp/init.out" | indent
share=$(grep -o 'merpati://[^[:space:]]*' "$tmp/init.out" | head -n1)
[ -n "$share" ] || { echo "no share link in init's output" >&2; exit 1; }

step "merpati-relay run"
"$bin/merpati-relay" run --dir "$tmp/relay" >"$tmp/relay.log" 2>&1 &
relay_pid=$!
pids+=($relay_pid)
for _ in $(seq 200); do
	(exec 3<>"/dev/tcp/127.0.0.1/$relay_port") 2>/dev/null && break
	kill -0 "$relay_pid" 2>/dev/null || { cat "$tmp/relay.log" >&2; exit 1; }
	sleep 0.05
done
indent <"$tmp/relay.log"

step "merpati run --link (the share link above), SOCKS5 on a kernel-chosen port"
"$bin/merpati" run --link "$share" --listen 127.0.0.1:0 --config-dir "$tmp/client-config" >"$tmp/client.out" 2>"$tmp/client.log" &
client_pid=$!
pids+=($client_pid)
for _ in $(seq 200); do
	grep -q 'tg://socks' "$tmp/client.out" 2>/dev/null && break
	kill -0 "$client_pid" 2>/dev/null || { cat "$tmp/client.out" "$tmp/client.log" >&2; exit 1; }
	sleep 0.05
done
indent <"$tmp/client.out"
socks_addr=$(grep -o 'on 127\.0\.0\.1:[0-9]*' "$tmp/client.out" | head -n1 | cut -d' ' -f2)
[ -n "$socks_addr" ] || { echo "no SOCKS5 address in the client's output" >&2; exit 1; }

step "a real MTProto session (gotd telegram.Client) through SOCKS5 $socks_addr → merpati → relay → DC 2"
"$bin/merpati-lab" mtproto --socks "$socks_addr" --dc-addr "$dc_addr" --dc-key "$tmp/dc.pem" --id 2 --rpcs "$RPCS" 2>&1 | indent

step "a censor probes the relay without a key (curl https://$SNI:$relay_port/ → $relay_addr)"
if command -v curl >/dev/null; then
	echo "   \$ curl -k --resolve $SNI:$relay_port:127.0.0.1 https://$SNI:$relay_port/"
	curl -sSkv --max-time 10 --resolve "$SNI:$relay_port:127.0.0.1" -o "$tmp/probe.html" \
		"https://$SNI:$relay_port/" 2>"$tmp/probe.err" || { cat "$tmp/probe.err" >&2; exit 1; }
	grep -E '^\* +(SSL connection using|subject:|ALPN: server accepted)|^< HTTP/' "$tmp/probe.err" | sed 's/^[*<] *//' | indent
	echo "   page served:"
	indent <"$tmp/probe.html"
else
	echo "   (curl not installed; skipping the probe)"
fi

step "relay and client logs"
indent <"$tmp/relay.log"
indent <"$tmp/client.log"

t1=$(date +%s.%N)
step "done in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s; stopping everything"
