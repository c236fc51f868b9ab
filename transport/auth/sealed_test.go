package auth

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
	"time"
)

func TestSealOpen(t *testing.T) {
	relay, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	client, _ := ecdh.X25519().GenerateKey(rand.Reader)
	key := NewKey()
	now := time.Unix(1_800_000_000, 0)
	var digest [32]byte
	rand.Read(digest[:])
	random := make([]byte, 32)
	rand.Read(random)
	sid, err := Seal(key, now, digest, random, client, relay.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	id, tok, err := Open(relay, client.PublicKey().Bytes(), random, sid[:])
	if err != nil {
		t.Fatal(err)
	}
	if id != KeyID(key) {
		t.Errorf("key id %#x, want %#x", id, KeyID(key))
	}
	if Match([]Key{NewKey(), key}, digest, tok, now) != 1 {
		t.Error("the opened token does not match its key")
	}
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	flipped := sid
	flipped[3] ^= 1
	otherRandom := bytes.Clone(random)
	otherRandom[0] ^= 1
	for name, tc := range map[string]struct {
		relay      *ecdh.PrivateKey
		share, rnd []byte
		sid        []byte
	}{
		"other relay":  {other, client.PublicKey().Bytes(), random, sid[:]},
		"other share":  {relay, other.PublicKey().Bytes(), random, sid[:]},
		"other random": {relay, client.PublicKey().Bytes(), otherRandom, sid[:]},
		"tampered":     {relay, client.PublicKey().Bytes(), random, flipped[:]},
		"short":        {relay, client.PublicKey().Bytes(), random, sid[:31]},
		"short share":  {relay, client.PublicKey().Bytes()[:31], random, sid[:]},
		"low-order":    {relay, make([]byte, 32), random, sid[:]},
		"random bytes": {relay, client.PublicKey().Bytes(), random, bytes.Repeat([]byte{7}, 32)},
	} {
		if _, _, err := Open(tc.relay, tc.share, tc.rnd, tc.sid); !errors.Is(err, ErrSealed) {
			t.Errorf("%s: %v, want ErrSealed", name, err)
		}
	}
}

func TestRelayAuthKey(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a, err := RelayAuthKey(k)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := RelayAuthKey(k)
	if !a.Equal(b) {
		t.Error("two derivations from one key differ")
	}
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if c, _ := RelayAuthKey(k2); a.Equal(c) {
		t.Error("two keys derive one auth key")
	}
}

func BenchmarkOpen(b *testing.B) {
	relay, _ := ecdh.X25519().GenerateKey(rand.Reader)
	client, _ := ecdh.X25519().GenerateKey(rand.Reader)
	random := make([]byte, 32)
	sid, _ := Seal(NewKey(), time.Now(), [32]byte{}, random, client, relay.PublicKey())
	share := client.PublicKey().Bytes()
	for b.Loop() {
		Open(relay, share, random, sid[:])
	}
}
