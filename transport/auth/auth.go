// Package auth is the cryptography of merpati's access keys: the per-person
// secret carried in a share link, and the token a client hides in its TLS
// ClientHello to prove it holds one.
//
// The token fills the 32-byte legacy_session_id that Chrome always sends
// (RFC 8446 section 4.1.2, middlebox compatibility mode), so an
// authenticated hello has the same size and shape as a browser's and costs
// no extra round trip. It is
//
//	HMAC-SHA256(key, "merpati tls auth v1" || be64(slot) || SHA-256(hello'))
//
// where hello' is the ClientHello handshake message with the session id
// bytes zeroed and slot is the Unix time divided by [SlotDuration]. Hashing
// the whole hello binds the token to the client's random and key shares, so
// an observer cannot move a captured token onto a hello of its own; the
// slot bounds how long a captured hello stays valid, and the relay's replay
// cache covers that window.
//
// What this does not hide: anyone who holds a valid key (for example from a
// link shared in public) can confirm that a server is a merpati relay.
// Per-person keys make such a key revocable without disturbing anyone else.
package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// KeySize is the length of an access key in bytes.
const KeySize = 32

// TokenSize is the length of a hello token in bytes (the size of Chrome's
// legacy_session_id).
const TokenSize = 32

// SlotDuration is the granularity of the time in a token.
const SlotDuration = time.Minute

// Window is how many slots either side of the relay's clock a token may be
// from: clients whose clocks are up to about two minutes off still work.
const Window = 2

// MaxAge is the longest time a token is accepted after its slot began; a
// replay cache must remember tokens at least this long.
const MaxAge = (Window + 1) * SlotDuration

const label = "merpati tls auth v1"

// A Key is a person's access key. The zero Key is not a valid key.
type Key [KeySize]byte

// ErrKey means a text form does not hold a valid key.
var ErrKey = errors.New("auth: malformed access key")

// NewKey returns a fresh random key.
func NewKey() Key {
	var k Key
	rand.Read(k[:]) // never fails (crypto/rand, Go ≥1.24)
	return k
}

// IsZero reports whether k is the zero Key.
func (k Key) IsZero() bool { return k == Key{} }

// String returns the key in unpadded base64url, as links carry it.
func (k Key) String() string { return base64.RawURLEncoding.EncodeToString(k[:]) }

// MarshalText implements encoding.TextMarshaler.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; it accepts unpadded
// or padded base64url.
func (k *Key) UnmarshalText(b []byte) error {
	enc := base64.RawURLEncoding
	if len(b) > 0 && b[len(b)-1] == '=' {
		enc = base64.URLEncoding
	}
	var buf [KeySize + 3]byte
	n, err := enc.Decode(buf[:], b)
	if err != nil || n != KeySize || enc.EncodedLen(KeySize) != len(b) {
		return ErrKey
	}
	copy(k[:], buf[:n])
	if k.IsZero() {
		return ErrKey
	}
	return nil
}

// Slot returns the time slot of t.
func Slot(t time.Time) int64 { return t.Unix() / int64(SlotDuration/time.Second) }

// HelloDigest returns SHA-256 of the ClientHello handshake message raw with
// the TokenSize bytes at sidOffset zeroed. raw is not modified.
func HelloDigest(raw []byte, sidOffset int) ([32]byte, error) {
	if sidOffset < 0 || sidOffset+TokenSize > len(raw) {
		return [32]byte{}, fmt.Errorf("auth: session id offset %d outside %d-byte hello", sidOffset, len(raw))
	}
	var zero [TokenSize]byte
	h := sha256.New()
	h.Write(raw[:sidOffset])
	h.Write(zero[:])
	h.Write(raw[sidOffset+TokenSize:])
	var d [32]byte
	h.Sum(d[:0])
	return d, nil
}

// Token returns the hello token for key, slot and the hello's digest.
func Token(key Key, slot int64, digest [32]byte) [TokenSize]byte {
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte(label))
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], uint64(slot))
	m.Write(s[:])
	m.Write(digest[:])
	var t [TokenSize]byte
	m.Sum(t[:0])
	return t
}

// ShortTokenSize is the length of a short token: the first bytes of a
// [Token], where a carrier has room for no more (the QUIC carrier's client
// random holds a 16-byte nonce and a short token). 128 bits still make a
// forgery as unlikely as guessing a key.
const ShortTokenSize = 16

// Match returns the index in keys of the key that made token for a hello
// with the given digest at a slot within [Window] of now, or -1. token is
// a whole [Token] or its first [ShortTokenSize] bytes. It tries
// every key and slot, so its cost grows with len(keys) (about 5 HMACs per
// key); comparisons are constant-time.
func Match(keys []Key, digest [32]byte, token []byte, now time.Time) int {
	if len(token) != TokenSize && len(token) != ShortTokenSize {
		return -1
	}
	base := Slot(now)
	found := -1
	for i := range keys {
		for d := int64(-Window); d <= Window; d++ {
			t := Token(keys[i], base+d, digest)
			if hmac.Equal(t[:len(token)], token) && found < 0 {
				found = i
			}
		}
	}
	return found
}

// ErrPin means a relay's certificate does not match the pin in the link:
// something other than the relay answered.
var ErrPin = errors.New("auth: relay certificate does not match the pinned key")

// CheckPin checks that the leaf of rawCerts (as a TLS handshake presents
// them) has the public key whose SHA-256 is pin. Carriers call it from
// VerifyPeerCertificate, in place of a CA check: a relay's certificate is
// its own, trusted only through the link.
func CheckPin(rawCerts [][]byte, pin [32]byte) error {
	if len(rawCerts) == 0 {
		return ErrPin
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return fmt.Errorf("relay certificate: %w", err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	if subtle.ConstantTimeCompare(sum[:], pin[:]) != 1 {
		return ErrPin
	}
	return nil
}
