package ja4

import (
	"bytes"
	"crypto/tls"
	"net"
	"slices"
	"testing"

	utls "github.com/refraction-networking/utls"

	"github.com/merpati/merpati/transport/hello"
)

// chromeLike is a hello shaped like Chrome 131's, as package hello parses
// it, in the wire order FoxIO uses for its JA4 test vector.
func chromeLike() hello.ClientHello {
	return hello.ClientHello{
		Version:      0x0303,
		ServerName:   "example.com",
		CipherSuites: []uint16{0x5a5a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035},
		Extensions: []uint16{0x0a0a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005,
			0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015, 0x1a1a},
		ALPN:                []string{"h2", "http/1.1"},
		SupportedVersions:   []uint16{0x3a3a, 0x0304, 0x0303},
		SignatureAlgorithms: []uint16{0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601},
		SupportedGroups:     []uint16{0x2a2a, 0x11ec, 0x001d, 0x0017, 0x0018},
		KeyShareGroups:      []uint16{0x2a2a, 0x11ec, 0x001d},
	}
}

// TestPublished checks the fingerprint against published ones, each
// recomputed by hand with sha256sum from its raw ("ja4_r") form:
//
//   - FoxIO's own test vector (rust/ja4/src/tls.rs, test_client_stats_into_out),
//     a Chrome hello with the old ALPS code point 0x4469 and padding;
//   - browserleaks.com's record of Chrome 143 (new ALPS 0x44cd, ECH GREASE
//     0xfe0d, no padding), "t13d1516h2_8daaf6152771_d8a2da3f94cd".
func TestPublished(t *testing.T) {
	chrome143 := chromeLike()
	chrome143.Extensions = slices.Clone(chrome143.Extensions)
	for i, e := range chrome143.Extensions {
		switch e {
		case 0x4469:
			chrome143.Extensions[i] = 0x44cd
		case 0x0015:
			chrome143.Extensions[i] = 0xfe0d
		}
	}
	tests := []struct {
		name string
		h    hello.ClientHello
		ja4  string
		raw  string
	}{
		{
			name: "FoxIO vector",
			h:    chromeLike(),
			ja4:  "t13d1516h2_8daaf6152771_e5627efa2ab1",
			raw:  "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601",
		},
		{
			name: "browserleaks Chrome 143",
			h:    chrome143,
			ja4:  "t13d1516h2_8daaf6152771_d8a2da3f94cd",
			raw:  "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,44cd,fe0d,ff01_0403,0804,0401,0503,0805,0501,0806,0601",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Fingerprint(&tt.h, TCP); got != tt.ja4 {
				t.Errorf("Fingerprint = %s, want %s", got, tt.ja4)
			}
			if got := Raw(&tt.h, TCP); got != tt.raw {
				t.Errorf("Raw = %s\nwant %s", got, tt.raw)
			}
			if got, want := Fingerprint(&tt.h, QUIC), "q"+tt.ja4[1:]; got != want {
				t.Errorf("Fingerprint(QUIC) = %s, want %s", got, want)
			}
			// Extension order must not matter.
			shuffled := tt.h
			shuffled.Extensions = slices.Clone(tt.h.Extensions)
			slices.Reverse(shuffled.Extensions)
			if got := Fingerprint(&shuffled, TCP); got != tt.ja4 {
				t.Errorf("Fingerprint of reversed extensions = %s, want %s", got, tt.ja4)
			}
		})
	}
}

// TestParsedUTLS fingerprints, through hello.Parse, the hello uTLS sends
// for its Chrome 133 preset, whose published JA4 (that of Chrome 133 to
// 143, rechecked in TestPublished) it must have. Chrome-120 is left out:
// its hello length varies with the random ECH GREASE payload, and when it
// lands in 256-511 bytes uTLS (like BoringSSL) adds a padding extension,
// which changes the extension count.
func TestParsedUTLS(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	uc := utls.UClient(c, &utls.Config{ServerName: "merpati.test"}, utls.HelloChrome_133)
	if err := uc.BuildHandshakeState(); err != nil {
		t.Fatal(err)
	}
	raw := uc.HandshakeState.Hello.Raw
	rec := append([]byte{22, 3, 1, byte(len(raw) >> 8), byte(len(raw))}, raw...)
	h, err := hello.Parse(rec)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := Fingerprint(h, TCP), "t13d1516h2_8daaf6152771_d8a2da3f94cd"; got != want {
		t.Errorf("Fingerprint = %s, want %s", got, want)
	}
}

func TestParts(t *testing.T) {
	tests := []struct {
		name string
		h    hello.ClientHello
		want string // Raw(h, TCP)
	}{
		{
			name: "no sni, no alpn, tls 1.2",
			h:    hello.ClientHello{Version: 0x0303, CipherSuites: []uint16{0xc02f}, Extensions: []uint16{0x000d}, SignatureAlgorithms: []uint16{0x0401}},
			want: "t12i0101" + "00_c02f_000d_0401",
		},
		{
			name: "supported_versions wins over legacy_version, GREASE ignored",
			h:    hello.ClientHello{Version: 0x0303, Extensions: []uint16{hello.ExtSupportedVersions}, SupportedVersions: []uint16{0xfafa, 0x0303, 0x0304}},
			want: "t13i000100__002b",
		},
		{
			name: "supported_versions with only GREASE",
			h:    hello.ClientHello{Version: 0x0303, Extensions: []uint16{hello.ExtSupportedVersions}, SupportedVersions: []uint16{0xfafa}},
			want: "t00i000100__002b",
		},
		{
			name: "sni and alpn counted but not hashed",
			h:    hello.ClientHello{Version: 0x0301, Extensions: []uint16{hello.ExtALPN, hello.ExtServerName, 0x0a0a}, ALPN: []string{"http/1.1"}},
			want: "t10d0002h1__",
		},
		{
			name: "signature algorithm GREASE kept, in order",
			h:    hello.ClientHello{Version: 0x0303, Extensions: []uint16{0x000d}, SignatureAlgorithms: []uint16{0x8a8a, 0x0904, 0x0403}},
			want: "t12i000100__000d_8a8a,0904,0403",
		},
		{
			name: "non-alphanumeric alpn uses hex",
			h:    hello.ClientHello{Version: 0x0303, Extensions: []uint16{hello.ExtALPN}, ALPN: []string{"\xab\xcd"}},
			want: "t12i0001ad__",
		},
		{
			name: "one-character alpn",
			h:    hello.ClientHello{Version: 0x0303, Extensions: []uint16{hello.ExtALPN}, ALPN: []string{"x"}},
			want: "t12i0001xx__",
		},
		{
			name: "counts capped at 99",
			h:    hello.ClientHello{Version: 0x0303, CipherSuites: make([]uint16, 120)},
			want: "t12i9900" + "00_" + hexList(make([]uint16, 120)) + "_",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Raw(&tt.h, TCP); got != tt.want {
				t.Errorf("Raw = %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestNoExtensions(t *testing.T) {
	h := hello.ClientHello{Version: 0x0303, CipherSuites: []uint16{0x002f}}
	if got, want := Fingerprint(&h, TCP), "t12i010000_"+hash12("002f")+"_000000000000"; got != want {
		t.Errorf("Fingerprint = %s, want %s", got, want)
	}
}

// FuzzFingerprint checks that every hello package hello parses has a
// 36-character fingerprint, whichever its transport.
func FuzzFingerprint(f *testing.F) {
	c, s := net.Pipe()
	go func() {
		tls.Client(c, &tls.Config{ServerName: "merpati.test", InsecureSkipVerify: true}).Handshake()
		c.Close()
	}()
	rec, err := hello.ReadRecord(s)
	s.Close()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(rec)
	f.Add([]byte("\x16\x03\x01\x00\x2d\x01\x00\x00\x29\x03\x03" + string(bytes.Repeat([]byte{1}, 32)) + "\x00\x00\x02\x00\x2f\x01\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := hello.Parse(data)
		if err != nil {
			return
		}
		for _, tr := range []Transport{TCP, QUIC} {
			if ja4 := Fingerprint(h, tr); len(ja4) != 36 || ja4[0] != byte(tr) {
				t.Fatalf("fingerprint %q", ja4)
			}
			Raw(h, tr)
		}
	})
}
