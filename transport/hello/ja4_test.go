package hello

import (
	"slices"
	"testing"
)

// TestJA4Published checks JA4 against published fingerprints, each
// recomputed by hand with sha256sum from its raw ("ja4_r") form:
//
//   - FoxIO's own test vector (rust/ja4/src/tls.rs, test_client_stats_into_out),
//     a Chrome hello with the old ALPS code point 0x4469 and padding;
//   - browserleaks.com's record of Chrome 143 (new ALPS 0x44cd, ECH GREASE
//     0xfe0d, no padding), "t13d1516h2_8daaf6152771_d8a2da3f94cd".
func TestJA4Published(t *testing.T) {
	chrome143 := chromeLike()
	for i, e := range chrome143.exts {
		switch e.typ {
		case 0x4469:
			chrome143.exts[i].typ = 0x44cd
		case 0x0015:
			chrome143.exts[i].typ = 0xfe0d
		}
	}
	tests := []struct {
		name    string
		spec    helloSpec
		ja4     string
		ja4Raw  string
		ja4QUIC string
	}{
		{
			name:   "FoxIO vector",
			spec:   chromeLike(),
			ja4:    "t13d1516h2_8daaf6152771_e5627efa2ab1",
			ja4Raw: "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601",
		},
		{
			name:   "browserleaks Chrome 143",
			spec:   chrome143,
			ja4:    "t13d1516h2_8daaf6152771_d8a2da3f94cd",
			ja4Raw: "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,44cd,fe0d,ff01_0403,0804,0401,0503,0805,0501,0806,0601",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Parse(buildRecord(tt.spec))
			if err != nil {
				t.Fatal(err)
			}
			if got := h.JA4(); got != tt.ja4 {
				t.Errorf("JA4 = %s, want %s", got, tt.ja4)
			}
			if got := h.JA4Raw(TCP); got != tt.ja4Raw {
				t.Errorf("JA4Raw = %s\nwant %s", got, tt.ja4Raw)
			}
			if got, want := h.JA4For(QUIC), "q"+tt.ja4[1:]; got != want {
				t.Errorf("JA4For(QUIC) = %s, want %s", got, want)
			}
			// Extension order must not matter.
			shuffled := tt.spec
			shuffled.exts = slices.Clone(tt.spec.exts)
			slices.Reverse(shuffled.exts)
			h2, err := Parse(buildRecord(shuffled))
			if err != nil {
				t.Fatal(err)
			}
			if got := h2.JA4(); got != tt.ja4 {
				t.Errorf("JA4 of reversed extensions = %s, want %s", got, tt.ja4)
			}
		})
	}
}

func TestJA4Parts(t *testing.T) {
	tests := []struct {
		name string
		h    ClientHello
		want string // JA4Raw(TCP)
	}{
		{
			name: "no sni, no alpn, tls 1.2",
			h:    ClientHello{Version: 0x0303, CipherSuites: []uint16{0xc02f}, Extensions: []uint16{0x000d}, SignatureAlgorithms: []uint16{0x0401}},
			want: "t12i0101" + "00_c02f_000d_0401",
		},
		{
			name: "supported_versions wins over legacy_version, GREASE ignored",
			h:    ClientHello{Version: 0x0303, Extensions: []uint16{ExtSupportedVersions}, SupportedVersions: []uint16{0xfafa, 0x0303, 0x0304}},
			want: "t13i000100__002b",
		},
		{
			name: "supported_versions with only GREASE",
			h:    ClientHello{Version: 0x0303, Extensions: []uint16{ExtSupportedVersions}, SupportedVersions: []uint16{0xfafa}},
			want: "t00i000100__002b",
		},
		{
			name: "sni and alpn counted but not hashed",
			h:    ClientHello{Version: 0x0301, Extensions: []uint16{ExtALPN, ExtServerName, 0x0a0a}, ALPN: []string{"http/1.1"}},
			want: "t10d0002h1__",
		},
		{
			name: "signature algorithm GREASE kept, in order",
			h:    ClientHello{Version: 0x0303, Extensions: []uint16{0x000d}, SignatureAlgorithms: []uint16{0x8a8a, 0x0904, 0x0403}},
			want: "t12i000100__000d_8a8a,0904,0403",
		},
		{
			name: "non-alphanumeric alpn uses hex",
			h:    ClientHello{Version: 0x0303, Extensions: []uint16{ExtALPN}, ALPN: []string{"\xab\xcd"}},
			want: "t12i0001ad__",
		},
		{
			name: "one-character alpn",
			h:    ClientHello{Version: 0x0303, Extensions: []uint16{ExtALPN}, ALPN: []string{"x"}},
			want: "t12i0001xx__",
		},
		{
			name: "counts capped at 99",
			h:    ClientHello{Version: 0x0303, CipherSuites: make([]uint16, 120)},
			want: "t12i9900" + "00_" + hexList(make([]uint16, 120)) + "_",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.h
			h.extData = make([][]byte, len(h.Extensions))
			if got := h.JA4Raw(TCP); got != tt.want {
				t.Errorf("JA4Raw = %s\nwant %s", got, tt.want)
			}
		})
	}
}
