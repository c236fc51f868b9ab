#!/bin/sh
# ja4-capture.sh: cross-check the JA4 of our uTLS ClientHello against the
# Chromium on this machine, independently of our Go JA4 code.
#
# It captures loopback traffic with tshark while TestChromiumJA4
# (transport/tlscarrier) lets /usr/bin/chromium and then our client connect
# to a local HTTPS server, and computes each hello's JA4 from tshark's
# dissection with awk and sha256sum (tshark 4.0 has no ja4 field; where a
# tshark has one, it is printed too). Nothing leaves loopback.
#
# Usage: scripts/ja4-capture.sh            (from anywhere in the repository)
# Needs: tshark (run as root or with capture rights on lo), chromium, go.
set -eu

cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
tshark_pid=
cleanup() {
	if [ -n "$tshark_pid" ]; then kill "$tshark_pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# A free loopback port, so that the capture filter sees only this test.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pcap=$tmp/hello.pcap

tshark -i lo -f "tcp port $port" -w "$pcap" >"$tmp/tshark.log" 2>&1 &
tshark_pid=$!
# Wait until tshark is capturing.
i=0
until grep -q "Capturing on" "$tmp/tshark.log" 2>/dev/null; do
	i=$((i + 1))
	if [ $i -gt 100 ]; then echo "tshark did not start:" >&2; cat "$tmp/tshark.log" >&2; exit 1; fi
	sleep 0.1
done

echo "== go test -run TestChromiumJA4 (listening on 127.0.0.1:$port)"
MERPATI_JA4_ADDR=127.0.0.1:$port go test -count=1 -run 'TestChromiumJA4$' -v ./transport/tlscarrier/ || status=$?
sleep 1
kill "$tshark_pid"
wait "$tshark_pid" 2>/dev/null || true
tshark_pid=

echo
echo "== $(chromium --version 2>/dev/null | grep -i chromium)"
echo "== JA4 computed from tshark fields (GREASE dropped from ciphers, extensions and versions; kept in signature algorithms, as FoxIO's tools do)"
if tshark -G fields 2>/dev/null | grep -q '	ja4\.ja4	'; then
	echo "   (this tshark has a ja4 field)"
	tshark -r "$pcap" -Y 'tls.handshake.type == 1' -T fields -e tcp.stream -e ja4.ja4
fi
tshark -r "$pcap" -Y 'tls.handshake.type == 1' -T fields -E separator=';' -e tcp.stream -e tls.handshake.version \
	-e tls.handshake.extensions_server_name -e tls.handshake.ciphersuite -e tls.handshake.extension.type \
	-e tls.handshake.extensions.supported_version -e tls.handshake.sig_hash_alg -e tls.handshake.extensions_alpn_str \
	-e frame.len -e tls.record.length 2>/dev/null >"$tmp/fields"

sha12() { printf '%s' "$1" | sha256sum | cut -c1-12; }
isgrease='^0x([0-9a-f])a\1a$'
n=$(wc -l <"$tmp/fields")
row=0
while IFS=';' read -r stream ver sni ciphers exts versions sigs alpn flen rlen; do
	row=$((row + 1))
	who=chromium
	# TestChromiumJA4 connects our client last.
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
	ja4=$(printf 't%s%s%02d%02d%s_%s_%s' "$v" "$d" "$nc" "$ne" "$a" "$(sha12 "$cs")" "$(sha12 "$es")")
	# The same with any GREASE signature algorithm written as 0a0a: the
	# form in which Chromium's and our hellos must be equal.
	esn=$(printf '%s' "$es" | sed -E 's/(^|[_,])([0-9a-f])a\2a/\10a0a/g')
	ja4n=$(printf 't%s%s%02d%02d%s_%s_%s' "$v" "$d" "$nc" "$ne" "$a" "$(sha12 "$cs")" "$(sha12 "$esn")")
	printf '%-8s stream %-2s SNI %-13s record %5s bytes  JA4 %s  (GREASE-normalised %s)\n' "$who" "$stream" "$sni" "$((rlen + 5))" "$ja4" "$ja4n"
	printf '         JA4_r %s\n' "t$v$d$(printf '%02d%02d' "$nc" "$ne")${a}_${cs}_${es}"
done <"$tmp/fields"
exit "${status:-0}"
