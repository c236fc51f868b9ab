#!/bin/sh
# ja4-quic-capture.sh: cross-check the JA4 of our QUIC ClientHello (the
# Chrome-parrot quic-go fork behind transport/quiccarrier) against the
# Chromium on this machine, independently of our Go Initial decryption and
# JA4 code.
#
# It captures loopback UDP with tshark while TestChromiumQUICJA4
# (transport/quiccarrier) lets /usr/bin/chromium and then our Dialer
# connect to a local HTTP/3 server. tshark decrypts the Initial packets
# itself (their keys derive from the destination connection ID, RFC 9001
# section 5.2) and reassembles the CRYPTO frames; each hello's JA4 is
# computed from tshark's fields with awk and sha256sum (tshark 4.0 has no
# ja4 field). Nothing leaves loopback.
#
# Usage: scripts/ja4-quic-capture.sh        (from anywhere in the repository)
# Needs: tshark (root or capture rights on lo), chromium, go.
set -eu

cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
tshark_pid=
cleanup() {
	if [ -n "$tshark_pid" ]; then kill "$tshark_pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pcap=$tmp/hello.pcap

tshark -i lo -f "udp port $port" -w "$pcap" >"$tmp/tshark.log" 2>&1 &
tshark_pid=$!
i=0
until grep -q "Capturing on" "$tmp/tshark.log" 2>/dev/null; do
	i=$((i + 1))
	if [ $i -gt 100 ]; then echo "tshark did not start:" >&2; cat "$tmp/tshark.log" >&2; exit 1; fi
	sleep 0.1
done

echo "== go test -run TestChromiumQUICJA4 (listening on 127.0.0.1:$port/udp)"
MERPATI_JA4_ADDR=127.0.0.1:$port go test -count=1 -run 'TestChromiumQUICJA4$' -v ./transport/quiccarrier/ 2>&1 | grep -v dbus || status=$?
sleep 1
kill "$tshark_pid"
wait "$tshark_pid" 2>/dev/null || true
tshark_pid=

echo
echo "== $(chromium --version 2>/dev/null | grep -i chromium)"
echo "== JA4 computed from tshark's decrypted QUIC Initials (GREASE dropped from ciphers, extensions and versions)"
tshark -r "$pcap" -o quic.udp.port:"$port" -d udp.port=="$port",quic -Y 'tls.handshake.type == 1' -T fields -E separator=';' \
	-e quic.dcid -e tls.handshake.version \
	-e tls.handshake.extensions_server_name -e tls.handshake.ciphersuite -e tls.handshake.extension.type \
	-e tls.handshake.extensions.supported_version -e tls.handshake.sig_hash_alg -e tls.handshake.extensions_alpn_str \
	-e tls.handshake.length 2>/dev/null >"$tmp/fields"

sha12() { printf '%s' "$1" | sha256sum | cut -c1-12; }
isgrease='^0x([0-9a-f])a\1a$'
n=$(wc -l <"$tmp/fields")
row=0
while IFS=';' read -r dcid ver sni ciphers exts versions sigs alpn hlen; do
	row=$((row + 1))
	who=chromium
	# TestChromiumQUICJA4 connects our client last.
	[ "$row" -eq "$n" ] && who=ours
	c=$(printf '%s\n' "$ciphers" | tr ',' '\n' | sed 's/^0x//' | grep -Ev '^([0-9a-f])a\1a$' | sort)
	e_all=$(printf '%s\n' "$exts" | tr ',' '\n' | awk '{printf "%04x\n", $1}' | grep -Ev '^([0-9a-f])a\1a$')
	e=$(printf '%s\n' "$e_all" | grep -Ev '^(0000|0010)$' | sort)
	v=$ver
	if [ -n "$versions" ]; then
		v=$(printf '%s\n' "$versions" | tr ',' '\n' | grep -Ev "$isgrease" | sort | tail -1)
	fi
	case $v in 0x0304) v=13 ;; 0x0303) v=12 ;; *) v=00 ;; esac
	d=i
	printf '%s\n' "$e_all" | grep -qx 0000 && d=d
	nc=$(printf '%s\n' "$c" | grep -c . || true)
	ne=$(printf '%s\n' "$e_all" | grep -c . || true)
	first=${alpn%%,*}
	a=00
	[ -n "$first" ] && a=$(printf '%s' "$first" | cut -c1)$(printf '%s' "$first" | rev | cut -c1)
	cs=$(printf '%s\n' "$c" | paste -sd, -)
	es=$(printf '%s\n' "$e" | paste -sd, -)
	ss=$(printf '%s\n' "$sigs" | sed 's/0x//g')
	[ -n "$ss" ] && es="${es}_$ss"
	ja4=$(printf 'q%s%s%02d%02d%s_%s_%s' "$v" "$d" "$nc" "$ne" "$a" "$(sha12 "$cs")" "$(sha12 "$es")")
	printf '%-8s DCID %-16s SNI %-13s hello %5s bytes  JA4 %s\n' "$who" "$dcid" "$sni" "$hlen" "$ja4"
	printf '         JA4_r %s\n' "q$v$d$(printf '%02d%02d' "$nc" "$ne")${a}_${cs}_${es}"
done <"$tmp/fields"
echo "== Initial datagram sizes (client to server)"
tshark -r "$pcap" -d udp.port=="$port",quic -Y "udp.dstport == $port && quic.long.packet_type == 0" -T fields -e quic.dcid -e udp.length 2>/dev/null | sort | uniq -c
exit "${status:-0}"
