package ja4

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"github.com/merpati/merpati/transport/hello"
)

// A Transport is the first character of a JA4 fingerprint: the protocol
// that carried the hello.
type Transport byte

// Transports defined by the JA4 specification.
const (
	TCP  Transport = 't' // TLS over TCP
	QUIC Transport = 'q' // a hello in QUIC CRYPTO frames
	DTLS Transport = 'd' // DTLS
)

// Fingerprint returns the JA4 fingerprint of h carried over t, as defined
// by FoxIO (github.com/FoxIO-LLC/ja4, technical_details/JA4.md), for
// example "t13d1516h2_8daaf6152771_e5627efa2ab1".
//
// It follows FoxIO's reference implementations (Python, Rust and the
// Wireshark plugin) where the prose leaves room: GREASE values are
// dropped from cipher suites, extensions and supported versions but kept
// in signature algorithms, which are hashed as they appear. A client that
// GREASEs its signature algorithms, as Chromium 156 does,
// therefore has up to 16 JA4 values.
func Fingerprint(h *hello.ClientHello, t Transport) string {
	a, ciphers, exts := parts(h, t)
	return a + "_" + hash12(ciphers) + "_" + hash12(exts)
}

// Raw returns the unhashed form of [Fingerprint] (FoxIO's "ja4_r"): the
// sorted cipher list and the sorted extension list followed by the
// signature algorithms, in hex.
func Raw(h *hello.ClientHello, t Transport) string {
	a, ciphers, exts := parts(h, t)
	return a + "_" + ciphers + "_" + exts
}

// parts returns JA4's first section and the strings hashed into the
// second and third. Extensions are looked up in h.Extensions, so that a
// ClientHello built by hand (without extension bodies) works too.
func parts(h *hello.ClientHello, t Transport) (a, ciphers, exts string) {
	var b strings.Builder
	b.WriteByte(byte(t))
	b.WriteString(version(h))
	if slices.Contains(h.Extensions, hello.ExtServerName) {
		b.WriteByte('d')
	} else {
		b.WriteByte('i')
	}
	cs := withoutGREASE(h.CipherSuites)
	es := withoutGREASE(h.Extensions)
	b.WriteString(count2(len(cs)))
	b.WriteString(count2(len(es)))
	b.WriteString(alpn(h.ALPN))

	slices.Sort(cs)
	es = slices.DeleteFunc(es, func(e uint16) bool { return e == hello.ExtServerName || e == hello.ExtALPN })
	slices.Sort(es)
	exts = hexList(es)
	if len(h.SignatureAlgorithms) > 0 {
		exts += "_" + hexList(h.SignatureAlgorithms)
	}
	return b.String(), hexList(cs), exts
}

// version is the highest non-GREASE supported_versions value when that
// extension is present, and legacy_version otherwise.
func version(h *hello.ClientHello) string {
	v := h.Version
	if slices.Contains(h.Extensions, hello.ExtSupportedVersions) {
		v = 0
		for _, sv := range h.SupportedVersions {
			if !hello.IsGREASE(sv) && sv > v {
				v = sv
			}
		}
	}
	switch v {
	case 0x0304:
		return "13"
	case 0x0303:
		return "12"
	case 0x0302:
		return "11"
	case 0x0301:
		return "10"
	case 0x0300:
		return "s3"
	case 0x0002:
		return "s2"
	case 0xfeff:
		return "d1"
	case 0xfefd:
		return "d2"
	case 0xfefc:
		return "d3"
	}
	return "00"
}

// alpn is the first and last character of the first ALPN protocol, "00"
// without ALPN, and the first and last hex digit of the protocol when
// either character is not an ASCII letter or digit.
func alpn(protos []string) string {
	if len(protos) == 0 || protos[0] == "" {
		return "00"
	}
	p := protos[0]
	first, last := p[0], p[len(p)-1]
	if isAlnum(first) && isAlnum(last) {
		return string([]byte{first, last})
	}
	x := hex.EncodeToString([]byte(p))
	return string([]byte{x[0], x[len(x)-1]})
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// count2 formats a list length as two digits, capped at 99.
func count2(n int) string {
	n = min(n, 99)
	return string([]byte{'0' + byte(n/10), '0' + byte(n%10)})
}

func withoutGREASE(v []uint16) []uint16 {
	out := make([]uint16, 0, len(v))
	for _, x := range v {
		if !hello.IsGREASE(x) {
			out = append(out, x)
		}
	}
	return out
}

// hexList renders v as comma-separated 4-digit lower-case hex.
func hexList(v []uint16) string {
	var b strings.Builder
	b.Grow(5 * len(v))
	for i, x := range v {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(hex.EncodeToString([]byte{byte(x >> 8), byte(x)}))
	}
	return b.String()
}

// hash12 is the first 12 hex digits of the SHA-256 of s, or twelve zeros
// for an empty s, as JA4 prints an empty list.
func hash12(s string) string {
	if s == "" {
		return "000000000000"
	}
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}
