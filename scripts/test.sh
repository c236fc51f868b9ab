#!/usr/bin/env bash
# Runs merpati's whole test suite on a fresh Debian machine: installs the
# Debian tools the tests drive (when run as root), checks formatting, vets,
# runs staticcheck, runs every test with the race detector, and runs each
# fuzz target briefly.
#
#   scripts/test.sh                  everything
#   FUZZTIME=0 scripts/test.sh       skip the fuzz runs
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(curl openssl ca-certificates chromium tshark iproute2 nftables unbound knot-dnsutils caddy libndpi-bin nginx-light systemd pebble)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [ "$(id -u)" = 0 ]; then
		echo "== installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		# tshark asks whether non-root users may capture; answer no.
		echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
		apt-get install -y -qq "${missing[@]}" >/dev/null
		# Debian's caddy package starts a system service on :80, on every
		# address; the tests run their own Caddy on 127.0.0.1 only.
		if [[ " ${missing[*]} " == *" caddy "* ]] && command -v systemctl >/dev/null; then
			systemctl disable --now caddy.service >/dev/null 2>&1 || true
		fi
		# So does Debian's nginx (where the machine runs services); the
		# tests run their own nginx on 127.0.0.1 only.
		if [[ " ${missing[*]} " == *" nginx-light "* ]]; then
			if command -v systemctl >/dev/null; then
				systemctl disable --now nginx.service >/dev/null 2>&1 || true
			fi
			if [ -s /run/nginx.pid ]; then
				/usr/sbin/nginx -s stop >/dev/null 2>&1 || true
			fi
		fi
	else
		echo "== not root: tests needing ${missing[*]} will skip"
	fi
fi

echo "== go $(go version | cut -d' ' -f3-)"
go mod download

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
go tool staticcheck ./...

echo "== go test -race"
go test -race -count=1 -timeout 20m ./...

# The race detector slows everything several times, so the failover tests
# stretch their limits under it; here they run once more at full speed,
# where "new connections move to the next relay within 2 s" holds as stated
# (with margins for a shared machine, in the tests themselves).
echo "== timing tests without -race"
go test -count=1 -run 'Failover|Race|Blackholed|ProbeTiming' ./client/ ./client/pick/ ./client/internal/censorlab/ ./relay/

echo "== fuzz"
scripts/fuzz.sh
