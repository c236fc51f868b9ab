package link_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/merpati/merpati/transport/link"
)

// equal compares links, treating nil and empty slices alike.
func equal(a, b *link.Link) bool {
	return slices.Equal(a.Relays, b.Relays) &&
		a.Pin == b.Pin &&
		a.SNI == b.SNI &&
		slices.Equal(a.Carriers, b.Carriers) &&
		a.Key == b.Key &&
		a.Name == b.Name &&
		slices.Equal(a.Bootstrap, b.Bootstrap) &&
		bytes.Equal(a.ListKey, b.ListKey) &&
		slices.Equal(a.BootstrapKeys, b.BootstrapKeys)
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

var (
	key32   = [32]byte(fill(32, 0x11))
	pin32   = [32]byte(fill(32, 0x22))
	keyB64  = b64(key32[:])
	pinB64  = b64(pin32[:])
	listB64 = b64(fill(32, 0x33))
	bk1     = [32]byte(fill(32, 0x44))
	bk2     = [32]byte(fill(32, 0x55))
)

// valid returns a fully populated valid link.
func valid() *link.Link {
	return &link.Link{
		Relays:        []string{"relay1.example:443", "[2001:db8::1]:8443", "192.0.2.7:443"},
		Pin:           pin32,
		SNI:           "www.example.com",
		Carriers:      []string{"quic", "tls"},
		Key:           key32,
		Name:          "Alice's phone",
		Bootstrap:     []string{"b.example.net", "_m.example.org"},
		ListKey:       fill(32, 0x33),
		BootstrapKeys: [][32]byte{bk1, bk2},
	}
}

func TestStringFormat(t *testing.T) {
	got := valid().String()
	want := "merpati://" + keyB64 + "@relay1.example:443" +
		"?r=%5B2001:db8::1%5D:8443,192.0.2.7:443" +
		"&pin=" + pinB64 +
		"&sni=www.example.com&c=quic,tls&dns=b.example.net,_m.example.org" +
		"&lk=" + listB64 + "&bk=" + b64(bk1[:]) + "," + b64(bk2[:]) + "#Alice%27s%20phone"
	if got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
	min := &link.Link{Relays: []string{"r.example:443"}, Pin: pin32, SNI: "cover.example", Key: key32}
	want = "merpati://" + keyB64 + "@r.example:443?pin=" + pinB64 + "&sni=cover.example"
	if got := min.String(); got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
}

func TestParseValid(t *testing.T) {
	base := "merpati://" + keyB64 + "@r.example:443?pin=" + pinB64 + "&sni=cover.example"
	tests := []struct {
		name string
		in   string
		want func(l *link.Link)
	}{
		{"minimal", base, func(l *link.Link) {}},
		{"upper-case scheme", "MERPATI" + strings.TrimPrefix(base, "merpati"), func(l *link.Link) {}},
		{"trailing slash", strings.Replace(base, ":443?", ":443/?", 1), func(l *link.Link) {}},
		{"ipv6 first relay", strings.Replace(base, "r.example:443", "[::1]:1", 1),
			func(l *link.Link) { l.Relays = []string{"[::1]:1"} }},
		{"parameters in any order, escaped brackets", "merpati://" + keyB64 +
			"@r.example:443?sni=cover.example&c=tls&r=%5B2001:db8::2%5D:443%2Cs.example:65535&pin=" + pinB64,
			func(l *link.Link) {
				l.Relays = append(l.Relays, "[2001:db8::2]:443", "s.example:65535")
				l.Carriers = []string{"tls"}
			}},
		{"unescaped brackets", base + "&r=[2001:db8::2]:443", func(l *link.Link) {
			l.Relays = append(l.Relays, "[2001:db8::2]:443")
		}},
		{"bootstrap", base + "&dns=_boot.example.net&lk=" + listB64, func(l *link.Link) {
			l.Bootstrap = []string{"_boot.example.net"}
			l.ListKey = fill(32, 0x33)
		}},
		{"bootstrap keys", base + "&dns=b.example.net&lk=" + listB64 + "&bk=" + b64(bk2[:]) + "," + b64(bk1[:]), func(l *link.Link) {
			l.Bootstrap = []string{"b.example.net"}
			l.ListKey = fill(32, 0x33)
			l.BootstrapKeys = [][32]byte{bk2, bk1}
		}},
		{"list key alone", base + "&lk=" + listB64, func(l *link.Link) { l.ListKey = fill(32, 0x33) }},
		{"unicode name", base + "#%D0%9C%D0%B0%D1%88%D0%B0 🕊", func(l *link.Link) { l.Name = "Маша 🕊" }},
		{"empty fragment", base + "#", func(l *link.Link) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := &link.Link{Relays: []string{"r.example:443"}, Pin: pin32, SNI: "cover.example", Key: key32}
			tt.want(want)
			got, err := link.Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !equal(got, want) {
				t.Errorf("Parse =\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	base := "merpati://" + keyB64 + "@r.example:443?pin=" + pinB64 + "&sni=cover.example"
	tests := []struct {
		name    string
		in      string
		wantErr error
		mention string // the error text must contain this
	}{
		{"empty", "", link.ErrScheme, ""},
		{"other scheme", strings.Replace(base, "merpati:", "https:", 1), link.ErrScheme, ""},
		{"opaque", "merpati:" + keyB64, link.ErrSyntax, "//"},
		{"bad url", "merpati://" + keyB64 + "@r.example:44x3?pin=" + pinB64, link.ErrSyntax, ""},
		{"path", strings.Replace(base, ":443?", ":443/x?", 1), link.ErrSyntax, "path"},
		{"bad query", base + "&a=%zz", link.ErrSyntax, "query"},
		{"semicolon", base + ";x=1", link.ErrSyntax, "query"},
		{"unknown params", base + "&zz=1&aa=2", link.ErrUnknownParam, `"aa", "zz"`},
		{"repeated param", base + "&sni=other.example", link.ErrRepeatedParam, `"sni"`},
		{"no key", "merpati://r.example:443?pin=" + pinB64 + "&sni=cover.example", link.ErrMissing, "key"},
		{"key with password", strings.Replace(base, "@", ":x@", 1), link.ErrInvalid, "key"},
		{"short key", strings.Replace(base, keyB64, keyB64[1:], 1), link.ErrInvalid, "key"},
		{"padded key", strings.Replace(base, keyB64, keyB64+"=", 1), link.ErrInvalid, "key"},
		{"key bad base64", strings.Replace(base, keyB64, "!"+keyB64[1:], 1), link.ErrInvalid, "key"},
		{"key std base64", strings.Replace(base, keyB64, "+"+keyB64[1:], 1), link.ErrInvalid, "key"},
		{"key non-canonical", strings.Replace(base, keyB64, keyB64[:42]+"F", 1), link.ErrInvalid, "key"},
		{"zero key", strings.Replace(base, keyB64, b64(make([]byte, 32)), 1), link.ErrMissing, "key"},
		{"no relay", strings.Replace(base, "r.example:443", "", 1), link.ErrMissing, "relay"},
		{"no port", strings.Replace(base, "r.example:443", "r.example", 1), link.ErrInvalid, "host:port"},
		{"port 0", strings.Replace(base, ":443", ":0", 1), link.ErrInvalid, "port"},
		{"port 65536", strings.Replace(base, ":443", ":65536", 1), link.ErrInvalid, "port"},
		{"port leading zero", strings.Replace(base, ":443", ":0443", 1), link.ErrInvalid, "port"},
		{"empty port", strings.Replace(base, ":443", ":", 1), link.ErrInvalid, "port"},
		{"empty extra relay", base + "&r=", link.ErrInvalid, "relay"},
		{"extra relay trailing comma", base + "&r=s.example:1,", link.ErrInvalid, "relay"},
		{"unbracketed ipv6", base + "&r=2001:db8::1:443", link.ErrInvalid, "relay"},
		{"bracketed ipv4", base + "&r=[192.0.2.1]:443", link.ErrInvalid, "brackets"},
		{"ipv6 zone", base + "&r=[fe80::1%25eth0]:443", link.ErrInvalid, "zone"},
		{"relay bad host", base + "&r=bad_host.example:443", link.ErrInvalid, "relay"},
		{"relay numeric tld", base + "&r=1.2.3.999:443", link.ErrInvalid, "numeric"},
		{"duplicate relay", base + "&r=r.example:443", link.ErrInvalid, "twice"},
		{"no pin", strings.Replace(base, "pin="+pinB64+"&", "", 1), link.ErrMissing, "pin"},
		{"short pin", strings.Replace(base, pinB64, pinB64[:40], 1), link.ErrInvalid, "pin"},
		{"zero pin", strings.Replace(base, pinB64, b64(make([]byte, 32)), 1), link.ErrMissing, "pin"},
		{"no sni", strings.Replace(base, "&sni=cover.example", "", 1), link.ErrMissing, "sni"},
		{"empty sni", strings.Replace(base, "cover.example", "", 1), link.ErrMissing, "sni"},
		{"ip sni", strings.Replace(base, "cover.example", "192.0.2.1", 1), link.ErrInvalid, "sni"},
		{"sni trailing dot", strings.Replace(base, "cover.example", "cover.example.", 1), link.ErrInvalid, "sni"},
		{"sni hyphen", strings.Replace(base, "cover.example", "-cover.example", 1), link.ErrInvalid, "sni"},
		{"sni underscore", strings.Replace(base, "cover.example", "co_ver.example", 1), link.ErrInvalid, "sni"},
		{"sni long label", strings.Replace(base, "cover.example", strings.Repeat("a", 64)+".example", 1), link.ErrInvalid, "63"},
		{"sni too long", strings.Replace(base, "cover.example", strings.Repeat("abcdefg.", 32)+"com", 1), link.ErrInvalid, "253"},
		{"sni space", strings.Replace(base, "cover.example", "cover%20example", 1), link.ErrInvalid, "sni"},
		{"unknown carrier", base + "&c=tls,udp", link.ErrInvalid, `"udp"`},
		{"empty carrier", base + "&c=", link.ErrInvalid, "carrier"},
		{"carrier twice", base + "&c=quic,quic", link.ErrInvalid, "twice"},
		{"carrier case", base + "&c=TLS", link.ErrInvalid, "carrier"},
		{"bootstrap without list key", base + "&dns=b.example", link.ErrMissing, "list key"},
		{"bad bootstrap", base + "&dns=b..example&lk=" + listB64, link.ErrInvalid, "bootstrap"},
		{"bootstrap twice", base + "&dns=b.example,b.example&lk=" + listB64, link.ErrInvalid, "twice"},
		{"short list key", base + "&lk=" + listB64[2:], link.ErrInvalid, "lk"},
		{"empty list key", base + "&lk=", link.ErrInvalid, "lk"},
		{"bootstrap key without domain", base + "&lk=" + listB64 + "&bk=" + b64(bk1[:]), link.ErrMissing, "bootstrap domain"},
		{"short bootstrap key", base + "&dns=b.example&lk=" + listB64 + "&bk=" + b64(bk1[:31]), link.ErrInvalid, "bk"},
		{"empty bootstrap key", base + "&dns=b.example&lk=" + listB64 + "&bk=" + b64(bk1[:]) + ",", link.ErrInvalid, "bk"},
		{"zero bootstrap key", base + "&dns=b.example&lk=" + listB64 + "&bk=" + b64(make([]byte, 32)), link.ErrInvalid, "zero"},
		{"bootstrap key twice", base + "&dns=b.example&lk=" + listB64 + "&bk=" + b64(bk1[:]) + "," + b64(bk1[:]), link.ErrInvalid, "twice"},
		{"too many bootstrap keys", base + "&dns=b.example&lk=" + listB64 + "&bk=" + strings.Repeat(b64(bk1[:])+",", 8) + b64(bk1[:]), link.ErrInvalid, "more than 8"},
		{"name too long", base + "#" + strings.Repeat("x", 65), link.ErrInvalid, "name"},
		{"name control", base + "#a%0Ab", link.ErrInvalid, "name"},
		{"name not utf8", base + "#%FF", link.ErrInvalid, "name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := link.Parse(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Parse error = %v, want %v", err, tt.wantErr)
			}
			if l != nil {
				t.Errorf("Parse returned %+v with error", l)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
			if strings.Contains(err.Error(), keyB64[5:]) {
				t.Errorf("error %q contains the key", err)
			}
		})
	}
}

// randomLink returns a random valid link.
func randomLink(r *rand.Rand) *link.Link {
	var l link.Link
	randName := func(underscore bool) string {
		labels := make([]string, 1+r.IntN(4))
		for i := range labels {
			const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
			n := 1 + r.IntN(12)
			b := make([]byte, n)
			for j := range b {
				set := chars[:len(chars)-2] // no '-' or '_'
				if j > 0 && j < n-1 {
					set = chars[:len(chars)-1]
					if underscore {
						set = chars
					}
				}
				b[j] = set[r.IntN(len(set))]
			}
			labels[i] = string(b)
		}
		labels[len(labels)-1] = "x" + labels[len(labels)-1] // never numeric
		return strings.Join(labels, ".")
	}
	for range 1 + r.IntN(4) {
		var host string
		switch r.IntN(3) {
		case 0:
			host = randName(false)
		case 1:
			host = strconv.Itoa(r.IntN(256)) + "." + strconv.Itoa(r.IntN(256)) + ".0." + strconv.Itoa(r.IntN(256))
		case 2:
			host = "[2001:db8::" + strconv.FormatInt(int64(r.IntN(0x10000)), 16) + "]"
		}
		relay := host + ":" + strconv.Itoa(1+r.IntN(65535))
		if !slices.Contains(l.Relays, relay) {
			l.Relays = append(l.Relays, relay)
		}
	}
	for i := range l.Pin {
		l.Pin[i] = byte(r.Uint32())
	}
	l.Pin[0] |= 1
	for i := range l.Key {
		l.Key[i] = byte(r.Uint32())
	}
	l.Key[0] |= 1
	l.SNI = randName(false)
	l.Carriers = [][]string{nil, {"tls"}, {"quic"}, {"tls", "quic"}, {"quic", "tls"}}[r.IntN(5)]
	if r.IntN(2) == 0 {
		names := []rune("abcXYZ019 -_#%&?=+/@:[]'\"<>éЖ漢🕊")
		n := r.IntN(20)
		for range n {
			l.Name += string(names[r.IntN(len(names))])
		}
	}
	if r.IntN(2) == 0 {
		l.ListKey = make([]byte, 32)
		for i := range l.ListKey {
			l.ListKey[i] = byte(r.Uint32())
		}
		for range r.IntN(3) {
			d := randName(true)
			if !slices.Contains(l.Bootstrap, d) {
				l.Bootstrap = append(l.Bootstrap, d)
			}
		}
		if len(l.Bootstrap) > 0 {
			for range r.IntN(4) {
				var k [32]byte
				for i := range k {
					k[i] = byte(r.Uint32())
				}
				l.BootstrapKeys = append(l.BootstrapKeys, k)
			}
		}
	}
	return &l
}

// TestCheckBootstrap: a link of the old bootstrap format (dns= and lk=
// without bk=) still parses, but its bootstrap is refused with an error
// that says what to do.
func TestCheckBootstrap(t *testing.T) {
	l := valid()
	if err := l.CheckBootstrap(); err != nil {
		t.Errorf("new-format link: %v", err)
	}
	l.BootstrapKeys = nil
	old, err := link.Parse(l.String())
	if err != nil {
		t.Fatalf("old-format link does not parse: %v", err)
	}
	if err := old.CheckBootstrap(); !errors.Is(err, link.ErrOldBootstrap) || !strings.Contains(err.Error(), "new link") {
		t.Errorf("old-format link: %v, want ErrOldBootstrap naming what to do", err)
	}
	l.Bootstrap, l.ListKey = nil, nil
	if err := l.CheckBootstrap(); !errors.Is(err, link.ErrMissing) {
		t.Errorf("link without bootstrap: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		l := randomLink(r)
		if err := l.Validate(); err != nil {
			t.Fatalf("random link %+v invalid: %v", l, err)
		}
		s := l.String()
		got, err := link.Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q): %v", s, err)
		}
		if !equal(got, l) {
			t.Fatalf("round trip of %q:\n got %+v\nwant %+v", s, got, l)
		}
		text, err := l.MarshalText()
		if err != nil {
			t.Fatalf("MarshalText: %v", err)
		}
		var back link.Link
		if err := back.UnmarshalText(text); err != nil {
			t.Fatalf("UnmarshalText(%q): %v", text, err)
		}
		if !equal(&back, l) {
			t.Fatalf("text round trip of %q:\n got %+v\nwant %+v", text, back, *l)
		}
	}
}

func TestJSON(t *testing.T) {
	type config struct {
		Link *link.Link `json:"link"`
	}
	in := config{Link: valid()}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out config
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !equal(in.Link, out.Link) {
		t.Errorf("JSON round trip: got %+v, want %+v", out.Link, in.Link)
	}
	if err := json.Unmarshal([]byte(`{"link":"merpati://x@y:1"}`), &out); !errors.Is(err, link.ErrInvalid) {
		t.Errorf("json.Unmarshal of bad link: %v", err)
	}
}

func TestMarshalTextInvalid(t *testing.T) {
	l := valid()
	l.SNI = ""
	if _, err := l.MarshalText(); !errors.Is(err, link.ErrMissing) {
		t.Errorf("MarshalText of link without SNI: %v", err)
	}
	var dst link.Link
	dst.Name = "keep"
	if err := dst.UnmarshalText([]byte("merpati://nope")); err == nil {
		t.Error("UnmarshalText accepted a bad link")
	}
	if dst.Name != "keep" {
		t.Error("UnmarshalText changed the link on error")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		change  func(l *link.Link)
		wantErr error
	}{
		{"valid", func(l *link.Link) {}, nil},
		{"no carriers", func(l *link.Link) { l.Carriers = nil }, nil},
		{"no bootstrap", func(l *link.Link) { l.Bootstrap, l.ListKey, l.BootstrapKeys = nil, nil, nil }, nil},
		{"no relays", func(l *link.Link) { l.Relays = nil }, link.ErrMissing},
		{"list key 31 bytes", func(l *link.Link) { l.ListKey = l.ListKey[:31] }, link.ErrInvalid},
		{"list key empty with bootstrap", func(l *link.Link) { l.ListKey = []byte{} }, link.ErrMissing},
		{"bad carrier", func(l *link.Link) { l.Carriers = []string{"http"} }, link.ErrInvalid},
		{"zero pin", func(l *link.Link) { l.Pin = [32]byte{} }, link.ErrMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := valid()
			tt.change(l)
			if err := l.Validate(); !errors.Is(err, tt.wantErr) {
				t.Errorf("Validate() = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestCarrierList(t *testing.T) {
	l := valid()
	l.Carriers = nil
	if got := l.CarrierList(); !slices.Equal(got, []string{link.CarrierTLS, link.CarrierQUIC}) {
		t.Errorf("default CarrierList() = %q", got)
	}
	l.Carriers = []string{"quic"}
	got := l.CarrierList()
	if !slices.Equal(got, []string{"quic"}) {
		t.Errorf("CarrierList() = %q", got)
	}
	got[0] = "changed"
	if l.Carriers[0] != "quic" {
		t.Error("CarrierList returned the link's own slice")
	}
}

// FuzzParse checks that Parse never panics and that whatever it accepts
// survives String and Parse unchanged.
func FuzzParse(f *testing.F) {
	f.Add(valid().String())
	f.Add("merpati://" + keyB64 + "@r.example:443?pin=" + pinB64 + "&sni=cover.example")
	f.Add("merpati://" + keyB64 + "@[::1]:1/?sni=a&pin=" + pinB64 + "&c=tls#%F0%9F%95%8A")
	f.Add("merpati:opaque")
	f.Add("merpati://k@h:1?zz=1")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := link.Parse(s)
		if err != nil {
			if l != nil {
				t.Errorf("Parse returned a link with error %v", err)
			}
			return
		}
		if err := l.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid link: %v", err)
		}
		s2 := l.String()
		l2, err := link.Parse(s2)
		if err != nil {
			t.Fatalf("Parse(%q) = %v after Parse(%q) succeeded", s2, err, s)
		}
		if !equal(l, l2) {
			t.Fatalf("round trip changed the link:\n%+v\n%+v", l, l2)
		}
		if s3 := l2.String(); s3 != s2 {
			t.Fatalf("String not stable: %q then %q", s2, s3)
		}
	})
}
