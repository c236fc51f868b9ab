package relay

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
	"github.com/merpati/merpati/transport/quiccarrier"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// authRig is a relay with n access keys, and what a client of the last
// one and a prober send it.
type authRig struct {
	r             *Relay
	keys          []auth.Key
	sealed, probe transport.Proof
	plain         transport.Proof
}

func newAuthRig(tb testing.TB, n int, legacy bool) *authRig {
	tb.Helper()
	dir := tb.TempDir()
	entries := make([]access.Entry, n)
	for i := range entries {
		entries[i] = access.Entry{Name: fmt.Sprint("k", i), Key: auth.NewKey(), MTProxySecret: mtproxy.NewKey()}
	}
	if err := access.Save(filepath.Join(dir, "keys.json"), entries); err != nil {
		tb.Fatal(err)
	}
	keys, err := access.NewKeyring(filepath.Join(dir, "keys.json"), filepath.Join(dir, "usage.json"), nil)
	if err != nil {
		tb.Fatal(err)
	}
	certPEM, keyPEM, err := tlscarrier.NewCertificate("cover.example.org")
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	r, err := New(Config{Certificate: cert, Keys: keys, Cover: "127.0.0.1:1", LegacyTokens: legacy, NoMirror: true})
	if err != nil {
		tb.Fatal(err)
	}
	rig := &authRig{r: r}
	for _, e := range entries {
		rig.keys = append(rig.keys, e.Key)
	}
	key := entries[n-1].Key
	client, _ := ecdh.X25519().GenerateKey(rand.Reader)
	var digest [32]byte
	rand.Read(digest[:])
	random := make([]byte, 32)
	rand.Read(random)
	sid, err := auth.Seal(key, time.Now(), digest, random, client, r.authKey.PublicKey())
	if err != nil {
		tb.Fatal(err)
	}
	rig.sealed = transport.Proof{Carrier: "tls", Digest: digest, Token: sid[:], Random: random, KeyShare: client.PublicKey().Bytes()}
	tok := auth.Token(key, auth.Slot(time.Now()), digest)
	rig.plain = transport.Proof{Carrier: "tls", Digest: digest, Token: tok[:], Random: random, KeyShare: client.PublicKey().Bytes()}
	probeKey, _ := ecdh.X25519().GenerateKey(rand.Reader)
	junk := make([]byte, 32)
	rand.Read(junk)
	rig.probe = transport.Proof{Carrier: "tls", Digest: digest, Token: junk, Random: random, KeyShare: probeKey.PublicKey().Bytes()}
	return rig
}

// TestSealedTokens: a sealed token gets its key in; a plain one only
// while legacy tokens are allowed; a prober's random session id never.
func TestSealedTokens(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		rig := newAuthRig(t, 50, legacy)
		a := authenticator{rig.r}
		if k, err := a.Authenticate(rig.sealed); err != nil || k.Name() != "k49" {
			t.Errorf("legacy %v: sealed token: %v, %v", legacy, k, err)
		}
		if _, err := a.Authenticate(rig.sealed); err == nil {
			t.Errorf("legacy %v: a replayed sealed token was accepted", legacy)
		}
		if _, err := a.Authenticate(rig.plain); (err == nil) != legacy {
			t.Errorf("legacy %v: plain token: %v", legacy, err)
		}
		if _, err := a.Authenticate(rig.probe); err == nil {
			t.Errorf("legacy %v: a prober's hello was accepted", legacy)
		}
	}
}

// BenchmarkAuthenticate measures the relay's check of one hello with 1,
// 100 and 10,000 keys: a key holder's sealed token, and a prober's hello,
// without and with legacy (plain) tokens allowed.
func BenchmarkAuthenticate(b *testing.B) {
	for _, n := range []int{1, 100, 10000} {
		for _, legacy := range []bool{false, true} {
			rig := newAuthRig(b, n, legacy)
			a := authenticator{rig.r}
			b.Run(fmt.Sprintf("keys=%d/legacy=%v/probe", n, legacy), func(b *testing.B) {
				for b.Loop() {
					a.Authenticate(rig.probe)
				}
			})
			b.Run(fmt.Sprintf("keys=%d/legacy=%v/sealed", n, legacy), func(b *testing.B) {
				// After the first, the replay cache refuses the token, once
				// the key is found: the cost measured is the same.
				for b.Loop() {
					a.Authenticate(rig.sealed)
				}
			})
		}
	}
}

// BenchmarkAuthenticateQUIC measures the QUIC front door's check of one
// hello (its random, [quiccarrier.RandomProof]) with 1, 100 and 10,000
// keys: a key holder's sealed random, and a prober's random random with
// an X25519 key share of its own, without and with legacy (plain) tokens
// allowed. Without them a check costs one X25519 whatever the number of
// keys; with them a prober's hello is tried against every key.
func BenchmarkAuthenticateQUIC(b *testing.B) {
	for _, n := range []int{1, 100, 10000} {
		for _, legacy := range []bool{false, true} {
			rig := newAuthRig(b, n, legacy)
			a := authenticator{rig.r}
			share, _ := ecdh.X25519().GenerateKey(rand.Reader)
			sealed, err := quiccarrier.NewSealedRandom(rig.keys[n-1], time.Now(), share, rig.r.authKey.PublicKey())
			if err != nil {
				b.Fatal(err)
			}
			if _, err := a.Authenticate(quiccarrier.RandomProof(sealed, share.PublicKey().Bytes())); err != nil {
				b.Fatalf("keys=%d legacy=%v: sealed random: %v", n, legacy, err)
			}
			probeShare, _ := ecdh.X25519().GenerateKey(rand.Reader)
			var junk [32]byte
			rand.Read(junk[:])
			probe := quiccarrier.RandomProof(junk, probeShare.PublicKey().Bytes())
			b.Run(fmt.Sprintf("keys=%d/legacy=%v/probe", n, legacy), func(b *testing.B) {
				for b.Loop() {
					a.Authenticate(probe)
				}
			})
			b.Run(fmt.Sprintf("keys=%d/legacy=%v/sealed", n, legacy), func(b *testing.B) {
				// The replay cache refuses the random checked above, once
				// its key is found: the cost measured is the same.
				for b.Loop() {
					a.Authenticate(quiccarrier.RandomProof(sealed, share.PublicKey().Bytes()))
				}
			})
		}
	}
}

// BenchmarkMTProxyCheck measures what a hello costs the relay in MTProxy
// mode, where apps build their hello with no hint of their secret: one
// HMAC over the hello per secret, for a prober's hello (no secret
// matches) with 1, 100 and 1000 secrets.
func BenchmarkMTProxyCheck(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		rig := newAuthRig(b, n, false)
		rec := mtproxytest.HelloRecord(b, "cover.example.org")
		mtproxytest.SignClientHello(rec, mtproxy.NewKey(), time.Now())
		h, err := mtproxy.ParseClientHello(rec)
		if err != nil {
			b.Fatal(err)
		}
		a := authenticator{rig.r}
		b.Run(fmt.Sprintf("secrets=%d/probe", n), func(b *testing.B) {
			for b.Loop() {
				a.AuthenticateMTProxy(h, time.Now())
			}
		})
	}
}

// TestSealedQUICRandom: a QUIC hello's random sealed under its key share
// gets its key in, once; the same random with another key share does
// not (an attacker who holds back a user's Initial and sends one of its
// own with the user's random).
func TestSealedQUICRandom(t *testing.T) {
	rig := newAuthRig(t, 50, false)
	a := authenticator{rig.r}
	share, _ := ecdh.X25519().GenerateKey(rand.Reader)
	userKey := rig.keys[49]
	random, err := quiccarrier.NewSealedRandom(userKey, time.Now(), share, rig.r.authKey.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	if _, err := a.Authenticate(quiccarrier.RandomProof(random, other.PublicKey().Bytes())); err == nil {
		t.Error("the random with another key share was accepted")
	}
	if k, err := a.Authenticate(quiccarrier.RandomProof(random, share.PublicKey().Bytes())); err != nil || k.Name() != "k49" {
		t.Errorf("sealed random: %v, %v", k, err)
	}
	if _, err := a.Authenticate(quiccarrier.RandomProof(random, share.PublicKey().Bytes())); err == nil {
		t.Error("a replayed sealed random was accepted")
	}
}
