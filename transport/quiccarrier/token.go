package quiccarrier

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
)

// NonceSize is the length of the per-connection nonce in bytes.
const NonceSize = 16

// tokenLabel separates QUIC token digests from TLS hello digests: a
// digest here is the hash of this label and a nonce, never of a
// ClientHello.
const tokenLabel = "merpati quic auth v1"

// authScheme prefixes the Authorization header value.
const authScheme = "Bearer "

// ErrToken means an Authorization header does not hold a token in our form.
var ErrToken = errors.New("quiccarrier: malformed token")

// Digest returns the value the token of a connection with nonce signs, in
// the place of a hello digest for [auth.Token] and [auth.Match].
func Digest(nonce []byte) [32]byte {
	return labelDigest(tokenLabel, nonce)
}

// labelDigest returns SHA-256(label || b): the digests of different
// kinds of token never collide.
func labelDigest(label string, b []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(label))
	h.Write(b)
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// newAuthorization returns a fresh Authorization header value for key at
// time now.
func newAuthorization(key auth.Key, now time.Time) (string, error) {
	var nonce [NonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", err
	}
	tok := auth.Token(key, auth.Slot(now), Digest(nonce[:]))
	raw := append(nonce[:], tok[:]...)
	return authScheme + base64.RawURLEncoding.EncodeToString(raw), nil
}

// ParseAuthorization splits an Authorization header value into the
// connection's nonce and token.
func ParseAuthorization(v string) (nonce, token []byte, err error) {
	s, ok := strings.CutPrefix(v, authScheme)
	if !ok || len(s) != base64.RawURLEncoding.EncodedLen(NonceSize+auth.TokenSize) {
		return nil, nil, ErrToken
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	// The decoder skips CR and LF, so the length must be checked again.
	if err != nil || len(raw) != NonceSize+auth.TokenSize {
		return nil, nil, ErrToken
	}
	return raw[:NonceSize], raw[NonceSize:], nil
}

// tagHeader carries the relay's takeover tag in its response to a stream
// it takes over. Only a client whose token the relay accepted ever sees
// that response, inside QUIC's encryption; an entity tag is what a 200
// response commonly carries.
const tagHeader = "Etag"

// takeoverTag is the tag the relay answers a taken-over stream with, for
// the connection's nonce: it tells the relay's answer from a cover site's
// "200 OK" to the same request, which the cover site cannot forge without
// knowing this construction and the nonce, and has no reason to.
func takeoverTag(nonce []byte) string {
	h := sha256.Sum256(append([]byte("merpati quic takeover "), nonce...))
	return `"` + hex.EncodeToString(h[:12]) + `"`
}

// initialLabel separates the digests of client randoms from those of
// Authorization nonces and TLS hellos.
const initialLabel = "merpati quic initial v1"

// RandomNonceSize is the length of the nonce that starts a client random;
// the rest, [auth.ShortTokenSize] bytes, is the short token.
const RandomNonceSize = 32 - auth.ShortTokenSize

// InitialDigest returns the value a client random's short token signs, for
// the random's nonce.
func InitialDigest(nonce []byte) [32]byte {
	return labelDigest(initialLabel, nonce)
}

// NewRandom returns a ClientHello random that proves key at time now: a
// fresh nonce, then the first [auth.ShortTokenSize] bytes of the token for
// its [InitialDigest]. Both halves look uniformly random to anyone without
// the key. The relay's front door reads it from the client's first
// Initial, before any server packet is sent.
func NewRandom(key auth.Key, now time.Time) ([32]byte, error) {
	var r [32]byte
	if _, err := rand.Read(r[:RandomNonceSize]); err != nil {
		return r, err
	}
	tok := auth.Token(key, auth.Slot(now), InitialDigest(r[:RandomNonceSize]))
	copy(r[RandomNonceSize:], tok[:auth.ShortTokenSize])
	return r, nil
}

// sealLabel separates the digests QUIC sealed tokens cover.
const sealLabel = "merpati quic sealed v2"

// SealDigest returns what a QUIC sealed token covers: the hello's X25519
// key share, which the seal's secret is agreed with (so that a hello with
// another key share and the same random does not open), under a label.
func SealDigest(share []byte) [32]byte {
	return labelDigest(sealLabel, share)
}

// NewSealedRandom returns a ClientHello random that proves key at time now
// to the relay whose static key is relay, for a hello whose X25519 key
// share is share: a token sealed (see [auth.Seal]) under the secret that
// share and the relay's key agree on. The relay finds the key at once,
// whatever the number of keys; to anyone else, a link holder included,
// the random is 32 random bytes.
func NewSealedRandom(key auth.Key, now time.Time, share *ecdh.PrivateKey, relay *ecdh.PublicKey) ([32]byte, error) {
	return auth.Seal(key, now, SealDigest(share.PublicKey().Bytes()), nil, share, relay)
}

// RandomProof returns what a client random proves, for the relay's
// [transport.Authenticator], given the hello's X25519 key share (nil if
// it has none): a sealed token, or, from a link without the relay's key,
// a nonce and a short plain token.
func RandomProof(random [32]byte, share []byte) transport.Proof {
	p := transport.Proof{
		Carrier: "quic",
		Digest:  InitialDigest(random[:RandomNonceSize]),
		Token:   random[RandomNonceSize:],
	}
	if share != nil {
		p.KeyShare = share
		p.Sealed = random[:]
		p.SealDigest = SealDigest(share)
	}
	return p
}
