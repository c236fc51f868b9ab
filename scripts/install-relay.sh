#!/usr/bin/env bash
# Installs a merpati relay as a systemd service on Debian or Ubuntu, as root:
#
#   scripts/install-relay.sh --public relay.example.net:443 --cover https://www.example.org
#   scripts/install-relay.sh --domain relay.example.net
#
# The second form needs no web site of the operator's: the relay serves a
# small site of its own under relay.example.net, with a certificate it
# obtains by ACME (Let's Encrypt) on port 443 once DNS points the name at
# this host; the site's files are in /var/lib/merpati/site.
#
# It builds merpati-relay from this source tree (go build; or takes
# --binary PATH), installs it as /usr/local/bin/merpati-relay, creates the
# system user merpati, /etc/merpati (relay.env: extra flags for `run`) and
# the relay directory /var/lib/merpati (mode 0700, owned by merpati),
# installs the hardened unit merpati-relay.service, sets the UDP buffer
# sizes quic-go asks for (/etc/sysctl.d/60-merpati-relay.conf), runs
# `merpati-relay init` with every argument it does not know itself (--public,
# --cover, --domain, --sni, --listen, --quic, --offline ...) when the relay directory
# is new, and starts the service. init prints the first share link and its
# QR code.
#
# Running it again upgrades: the binary and the unit are replaced, the relay
# directory (keys, certificate, settings, usage) and relay.env are kept, and
# the service restarts.
#
# Options of its own:
#   --binary PATH   install this binary instead of building one
#   --root DIR      install under DIR instead of / (also the ROOT variable):
#                   paths in the unit are prefixed with DIR, and no user,
#                   sysctl or systemctl is touched (for tests and packaging)
#   --no-start      do not enable or (re)start the service
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
root="${ROOT:-}"
binary=""
start=1
init_args=()
while (($#)); do
	case "$1" in
	--binary) binary="$2"; shift 2 ;;
	--binary=*) binary="${1#*=}"; shift ;;
	--root) root="$2"; shift 2 ;;
	--root=*) root="${1#*=}"; shift ;;
	--no-start) start=0; shift ;;
	-h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	--) shift; init_args+=("$@"); break ;;
	*) init_args+=("$1"); shift ;;
	esac
done
root="${root%/}"
if [ -n "$root" ]; then
	root="$(mkdir -p "$root" && cd "$root" && pwd)"
fi

user=merpati
bin="$root/usr/local/bin/merpati-relay"
etc="$root/etc/merpati"
dir="$root/var/lib/merpati"
unit="$root/etc/systemd/system/merpati-relay.service"
sysctl_conf="$root/etc/sysctl.d/60-merpati-relay.conf"

say() { echo "== $*"; }
die() { echo "install-relay: $*" >&2; exit 1; }

if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
	die "run as root (or give --root DIR to install under DIR)"
fi

# The binary: given, or built from this tree.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ -z "$binary" ]; then
	command -v go >/dev/null || die "go not found: install Go (https://go.dev/dl) or give --binary PATH"
	say "building merpati-relay"
	(cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$tmp/merpati-relay" ./relay/cmd/merpati-relay)
	binary="$tmp/merpati-relay"
fi
[ -x "$binary" ] || die "$binary: not an executable"
say "installing $bin"
install -D -m 0755 "$binary" "$bin.new"
mv -f "$bin.new" "$bin"

# The user and the directories.
if [ -z "$root" ] && ! getent passwd "$user" >/dev/null; then
	say "creating system user $user"
	useradd --system --user-group --home-dir /var/lib/merpati --no-create-home \
		--shell /usr/sbin/nologin --comment "merpati relay" "$user"
fi
install -d -m 0755 "$etc"
install -d -m 0700 "$dir"
if [ -z "$root" ]; then
	chown -R "$user:$user" "$dir"
fi
if [ ! -e "$etc/relay.env" ]; then
	cat >"$etc/relay.env" <<'ENV'
# Extra flags for `merpati-relay run`, read by merpati-relay.service.
# For Prometheus metrics on a local address:
#   MERPATI_RELAY_ARGS="--metrics 127.0.0.1:9464"
MERPATI_RELAY_ARGS=""
ENV
	chmod 0644 "$etc/relay.env"
fi

# The unit, with this root's paths.
say "installing $unit"
install -d -m 0755 "$(dirname "$unit")"
sed -e "s#/usr/local/bin/merpati-relay#$bin#g" \
	-e "s#/var/lib/merpati#$dir#g" \
	-e "s#/etc/merpati/#$etc/#g" \
	"$src/scripts/merpati-relay.service" >"$unit.new"
chmod 0644 "$unit.new"
mv -f "$unit.new" "$unit"

# quic-go asks for 7.5 MB UDP socket buffers
# (https://github.com/quic-go/quic-go/wiki/UDP-Buffer-Sizes).
install -d -m 0755 "$(dirname "$sysctl_conf")"
cat >"$sysctl_conf" <<'SYSCTL'
# UDP socket buffers for merpati-relay's QUIC carrier (quic-go wants 7.5 MB).
net.core.rmem_max=7500000
net.core.wmem_max=7500000
SYSCTL
if [ -z "$root" ]; then
	sysctl -q -p "$sysctl_conf" || echo "install-relay: could not apply $sysctl_conf (a container?): QUIC may be slower" >&2
fi

# The relay directory: made once, kept on upgrades.
as_user() {
	if [ -z "$root" ]; then
		runuser -u "$user" -- "$@"
	else
		"$@"
	fi
}
if [ -e "$dir/relay.json" ]; then
	say "keeping the relay in $dir (its keys, certificate and settings)"
	if ((${#init_args[@]})); then
		echo "install-relay: $dir exists, so these arguments were not used: ${init_args[*]}" >&2
		echo "install-relay: edit $dir/relay.json to change settings" >&2
	fi
else
	say "creating the relay in $dir"
	(cd "$dir" && as_user "$bin" init --dir "$dir" "${init_args[@]}")
fi

if [ -n "$root" ] || ((start == 0)); then
	say "installed; start it with: systemctl enable --now merpati-relay"
	exit 0
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
	systemctl daemon-reload
	systemctl enable --quiet merpati-relay.service
	systemctl restart merpati-relay.service
	say "merpati-relay is running: systemctl status merpati-relay; merpati-relay status --dir /var/lib/merpati"
else
	say "no systemd here: start the relay with: runuser -u $user -- $bin run --dir $dir"
fi
echo "Links: merpati-relay link add NAME --dir $dir (one per person); link list, link show NAME."
