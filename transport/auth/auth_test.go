package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"math/big"
	"testing"
	"time"
)

func TestKeyText(t *testing.T) {
	k := NewKey()
	b, _ := k.MarshalText()
	var got Key
	if err := got.UnmarshalText(b); err != nil || got != k {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for _, bad := range []string{"", "abc", k.String() + "A", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "!!!!"} {
		if err := got.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestMatch(t *testing.T) {
	keys := []Key{NewKey(), NewKey(), NewKey()}
	hello := bytes.Repeat([]byte{7}, 300)
	d, err := HelloDigest(hello, 39)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	tests := []struct {
		name  string
		key   Key
		skew  time.Duration
		want  int
		other []byte
	}{
		{"exact", keys[1], 0, 1, nil},
		{"client behind", keys[2], -2 * time.Minute, 2, nil},
		{"client ahead", keys[0], 2 * time.Minute, 0, nil},
		{"too old", keys[0], -4 * time.Minute, -1, nil},
		{"too new", keys[0], 4 * time.Minute, -1, nil},
		{"unknown key", NewKey(), 0, -1, nil},
		{"other hello", keys[1], 0, -1, bytes.Repeat([]byte{8}, 300)},
	}
	for _, tt := range tests {
		tok := Token(tt.key, Slot(now.Add(tt.skew)), d)
		dd := d
		if tt.other != nil {
			dd, _ = HelloDigest(tt.other, 39)
		}
		if got := Match(keys, dd, tok[:], now); got != tt.want {
			t.Errorf("%s: Match = %d, want %d", tt.name, got, tt.want)
		}
		if got := Match(keys, dd, tok[:ShortTokenSize], now); got != tt.want {
			t.Errorf("%s: Match of the short token = %d, want %d", tt.name, got, tt.want)
		}
	}
	tok := Token(keys[1], Slot(now), d)
	for _, n := range []int{0, 8, ShortTokenSize - 1, ShortTokenSize + 1, TokenSize - 1} {
		if got := Match(keys, d, tok[:n], now); got != -1 {
			t.Errorf("a %d-byte prefix of a token matched key %d", n, got)
		}
	}
}

func TestHelloDigestIgnoresToken(t *testing.T) {
	a := bytes.Repeat([]byte{1}, 100)
	b := bytes.Clone(a)
	copy(b[39:71], bytes.Repeat([]byte{9}, 32))
	da, _ := HelloDigest(a, 39)
	db, _ := HelloDigest(b, 39)
	if da != db {
		t.Error("digest depends on the session id bytes")
	}
	b[10] = 0
	if db, _ = HelloDigest(b, 39); da == db {
		t.Error("digest ignores the rest of the hello")
	}
	if _, err := HelloDigest(a, 80); err == nil {
		t.Error("out-of-range offset accepted")
	}
}

func BenchmarkMatch1000Keys(b *testing.B) {
	keys := make([]Key, 1000)
	for i := range keys {
		keys[i] = NewKey()
	}
	var d [32]byte
	now := time.Now()
	tok := Token(keys[999], Slot(now), d)
	for b.Loop() {
		Match(keys, d, tok[:], now)
	}
}

func TestCheckPin(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pin := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	if err := CheckPin([][]byte{der}, pin); err != nil {
		t.Errorf("right pin: %v", err)
	}
	other := pin
	other[0] ^= 1
	for name, err := range map[string]error{
		"wrong pin": CheckPin([][]byte{der}, other),
		"no certs":  CheckPin(nil, pin),
		"garbage":   CheckPin([][]byte{[]byte("not a certificate")}, pin),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if !errors.Is(CheckPin([][]byte{der}, other), ErrPin) {
		t.Error("wrong pin is not ErrPin")
	}
}
