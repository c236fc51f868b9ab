#!/usr/bin/env bash
# censor-lab.sh: merpati's censor lab for people (root only). The same lab
# the Go tests in client/internal/censorlab use: network namespaces
# client, censor, relay, dc joined by veth pairs, addresses only inside
# 10.201.0.0/16 (no route or NAT to anything else), a censor applying
# nftables rules and tc netem.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
	cat <<'EOF'
usage:
  scripts/censor-lab.sh up [CENSOR FLAGS] [--client] [--check]
  scripts/censor-lab.sh test [GO TEST FLAGS]
  scripts/censor-lab.sh cleanup
  scripts/censor-lab.sh --help

up      builds merpati, merpati-relay and labnode, then brings up a lab in
        the foreground until Ctrl-C, and tears it down (also on failure):
          client 10.201.1.2 -> censor -> relay1 10.201.2.2:443, relay2 10.201.2.3:443
                                     -> DC 2 (tgtest) 10.201.100.2:443 ("Telegram" prefix 10.201.100.0/24)
        It prints the namespace names, the share link and how to run an
        MTProto client in the client host (ip netns exec NS labnode tg ...).
        Censor flags:
          --block-udp              drop all UDP (QUIC blocked)
          --block-tcp ADDR:PORT    drop TCP to ADDR:PORT, e.g. 10.201.2.2:443 (repeatable)
          --blackhole ADDR         drop everything to and from ADDR (repeatable)
          --drop-dc                drop the client's traffic to 10.201.100.0/24
          --netem DELAY            delay per packet and direction (RTT +2*DELAY): tc netem, or
                                   a user-space TUN delayer on kernels without sch_netem
          --loss PERCENT           loss per direction (netem with --netem, else nftables)
          --mtu BYTES              forward packets of at most BYTES (1280 to 1500) towards the
                                   client and the relays: a tunnel's or a mobile network's hop
        --client starts a merpati client (SOCKS5 127.0.0.1:1080 in the
        client host); --check also runs a gotd MTProto client through it
        and directly, and prints the timings.
test    runs the lab's Go tests (go test -v ./client/internal/censorlab/).
cleanup deletes namespaces left by labs whose process is gone.

Needs root, iproute2 and nftables (apt-get install iproute2 nftables).

examples:
  sudo scripts/censor-lab.sh up --block-udp --check
  sudo scripts/censor-lab.sh up --drop-dc --netem 50ms --loss 1 --check
EOF
}

case "${1:-}" in
"" | -h | --help | help)
	usage
	exit 0
	;;
up)
	shift
	bins=$(mktemp -d)
	trap 'rm -rf "$bins"' EXIT
	echo "== building into $bins"
	go build -o "$bins/" ./client/cmd/merpati ./relay/cmd/merpati-relay ./client/internal/censorlab/cmd/labnode
	# Not exec: the trap removes the binaries afterwards.
	"$bins/labnode" lab --bins "$bins" "$@"
	;;
test)
	shift
	exec go test -count=1 -v "$@" ./client/internal/censorlab/
	;;
cleanup)
	exec go run ./client/internal/censorlab/cmd/labnode cleanup
	;;
*)
	usage >&2
	exit 2
	;;
esac
