#!/bin/sh
# ja4-capture.sh: cross-check the JA4 of our ClientHello against the
# Chromium on this machine, independently of our Go JA4 code: the uTLS
# hello over TCP (tcp, the default) or the QUIC hello of the Chrome-parrot
# quic-go fork behind transport/quiccarrier (quic).
#
# It captures loopback traffic with tshark while the fingerprint test lets
# /usr/bin/chromium and then our client connect to a local server:
# TestChromiumJA4 (transport/tlscarrier, HTTPS) or TestChromiumQUICJA4
# (transport/quiccarrier, HTTP/3). For QUIC, tshark decrypts the Initial
# packets itself (their keys derive from the destination connection ID,
# RFC 9001 section 5.2) and reassembles the CRYPTO frames, independently of
# our Go Initial decryption. Each hello's JA4 is computed from tshark's
# dissection with awk and sha256sum (tshark 4.0 has no ja4 field; where a
# tshark has one, it is printed too). Nothing leaves loopback.
#
# Usage: scripts/ja4-capture.sh [tcp|quic]   (from anywhere in the repository)
# Needs: tshark (run as root or with capture rights on lo), chromium, go.
set -eu

mode=${1:-tcp}
case $mode in
tcp)
	proto=tcp socktype=SOCK_STREAM test=TestChromiumJA4 pkg=./transport/tlscarrier/ ja4t=t
	idfield=tcp.stream idname=stream idwidth=2 sizefield=tls.record.length sizename=record
	;;
quic)
	proto=udp socktype=SOCK_DGRAM test=TestChromiumQUICJA4 pkg=./transport/quiccarrier/ ja4t=q
	idfield=quic.dcid idname=DCID idwidth=16 sizefield=tls.handshake.length sizename=hello
	;;
*)
	echo "usage: $0 [tcp|quic]" >&2
	exit 2
	;;
esac

cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
tshark_pid=
cleanup() {
	if [ -n "$tshark_pid" ]; then kill "$tshark_pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# A free loopback port, so that the capture filter sees only this test.
port=$(python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.$socktype); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
pcap=$tmp/hello.pcap

tshark -i lo -f "$proto port $port" -w "$pcap" >"$tmp/tshark.log" 2>&1 &
tshark_pid=$!
# Wait until tshark is capturing.
i=0
until grep -q "Capturing on" "$tmp/tshark.log" 2>/dev/null; do
	i=$((i + 1))
	if [ $i -gt 100 ]; then echo "tshark did not start:" >&2; cat "$tmp/tshark.log" >&2; exit 1; fi
	sleep 0.1
done

echo "== go test -run $test (listening on 127.0.0.1:$port/$proto)"
# Chromium's D-Bus complaints are noise; the test's own status is kept.
MERPATI_JA4_ADDR=127.0.0.1:$port go test -count=1 -run "$test\$" -v "$pkg" >"$tmp/test.log" 2>&1 || status=$?
grep -v dbus "$tmp/test.log" || true
sleep 1
kill "$tshark_pid"
wait "$tshark_pid" 2>/dev/null || true
tshark_pid=

# tshark reads QUIC on a port other than 443 only when told to.
set --
if [ "$mode" = quic ]; then set -- -o quic.udp.port:"$port" -d udp.port=="$port",quic; fi

echo
echo "== $(chromium --version 2>/dev/null | grep -i chromium)"
echo "== JA4 computed from tshark's dissection of the $mode hellos (GREASE dropped from ciphers, extensions and versions; kept in signature algorithms, as FoxIO's tools do)"
if tshark -G fields 2>/dev/null | grep -q '	ja4\.ja4	'; then
	echo "   (this tshark has a ja4 field)"
	tshark -r "$pcap" "$@" -Y 'tls.handshake.type == 1' -T fields -e "$idfield" -e ja4.ja4
fi
tshark -r "$pcap" "$@" -Y 'tls.handshake.type == 1' -T fields -E separator=';' -e "$idfield" -e tls.handshake.version \
	-e tls.handshake.extensions_server_name -e tls.handshake.ciphersuite -e tls.handshake.extension.type \
	-e tls.handshake.extensions.supported_version -e tls.handshake.sig_hash_alg -e tls.handshake.extensions_alpn_str \
	-e "$sizefield" 2>/dev/null >"$tmp/fields"

sha12() { printf '%s' "$1" | sha256sum | cut -c1-12; }
isgrease='^0x([0-9a-f])a\1a$'
n=$(wc -l <"$tmp/fields")
row=0
while IFS=';' read -r id ver sni ciphers exts versions sigs alpn size; do
	row=$((row + 1))
	who=chromium
	# The fingerprint tests connect our client last.
	[ "$row" -eq "$n" ] && who=ours
	c=$(printf '%s\n' "$ciphers" | tr ',' '\n' | sed 's/^0x//' | grep -Ev '^([0-9a-f])a\1a$' | sort)
	e_all=$(printf '%s\n' "$exts" | tr ',' '\n' | awk '{printf "%04x\n", $1}' | grep -Ev '^([0-9a-f])a\1a$')
	e=$(printf '%s\n' "$e_all" | grep -Ev '^(0000|0010)$' | sort)
	v=$ver
	if [ -n "$versions" ]; then
		v=$(printf '%s\n' "$versions" | tr ',' '\n' | grep -Ev "$isgrease" | sort | tail -1)
	fi
	case $v in 0x0304) v=13 ;; 0x0303) v=12 ;; 0x0302) v=11 ;; 0x0301) v=10 ;; 0x0300) v=s3 ;; *) v=00 ;; esac
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
	ja4=$(printf '%s%s%s%02d%02d%s_%s_%s' "$ja4t" "$v" "$d" "$nc" "$ne" "$a" "$(sha12 "$cs")" "$(sha12 "$es")")
	# The same with any GREASE signature algorithm written as 0a0a: the
	# form in which Chromium's and our hellos must be equal.
	esn=$(printf '%s' "$es" | sed -E 's/(^|[_,])([0-9a-f])a\2a/\10a0a/g')
	ja4n=$(printf '%s%s%s%02d%02d%s_%s_%s' "$ja4t" "$v" "$d" "$nc" "$ne" "$a" "$(sha12 "$cs")" "$(sha12 "$esn")")
	# A record's length leaves out its 5-byte header.
	[ "$mode" = tcp ] && size=$((size + 5))
	printf "%-8s %s %-${idwidth}s SNI %-13s %s %5s bytes  JA4 %s  (GREASE-normalised %s)\n" \
		"$who" "$idname" "$id" "$sni" "$sizename" "$size" "$ja4" "$ja4n"
	printf '         JA4_r %s\n' "$ja4t$v$d$(printf '%02d%02d' "$nc" "$ne")${a}_${cs}_${es}"
done <"$tmp/fields"
if [ "$mode" = quic ]; then
	echo "== Initial datagram sizes (client to server)"
	tshark -r "$pcap" -d udp.port=="$port",quic -Y "udp.dstport == $port && quic.long.packet_type == 0" -T fields \
		-e quic.dcid -e udp.length 2>/dev/null | sort | uniq -c
fi
exit "${status:-0}"
