package auth

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// A sealed token lets the relay find the key that made a hello at once,
// whatever the number of keys, where [Match] tries every key. It is what
// REALITY does: the hello's own X25519 key share and the relay's static
// X25519 key (whose public half share links carry) agree on a secret
// that only the client and the relay can compute; under it the session
// id carries, encrypted and authenticated,
//
//	keyID(4) || first 16 bytes of Token(key, slot, digest)
//
// with keyID = [KeyID](key). The relay opens it with one X25519 and one
// AES-GCM operation, looks the key up by its id and checks the token
// with that key alone. To anyone else, a link holder included, the
// session id is 32 random bytes: opening it takes the client's ephemeral
// key or the relay's private one.
const (
	sealLabel   = "merpati tls sealed token v2"
	sealTagSize = 12
	// SealedPlainSize is what a sealed session id carries.
	sealedPlainSize = 4 + ShortTokenSize
)

// ErrSealed means a sealed token did not open.
var ErrSealed = errors.New("auth: sealed token does not open")

// KeyID returns the identifier of key that sealed tokens carry: the first
// 4 bytes of a hash of it. Ids of different keys may collide; the relay
// then tries each.
func KeyID(key Key) uint32 {
	h := sha256.New()
	h.Write([]byte("merpati key id"))
	h.Write(key[:])
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// RelayAuthKey derives the relay's static X25519 key from its TLS private
// key, so that it needs no file of its own and changes only with it.
func RelayAuthKey(priv crypto.PrivateKey) (*ecdh.PrivateKey, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("auth: relay key: %w", err)
	}
	seed, err := hkdf.Key(sha256.New, der, nil, "merpati relay x25519 v1", 32)
	if err != nil {
		return nil, err
	}
	return ecdh.X25519().NewPrivateKey(seed)
}

// sealAEAD returns the AEAD of one hello: its key derives from the X25519
// secret and the hello's random, unique per hello, so a zero nonce is
// safe.
func sealAEAD(shared, random []byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, shared, random, sealLabel, 16)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithTagSize(block, sealTagSize)
}

// Seal returns the session id that proves key at time now for a hello
// with the given digest (its session id zeroed) and client random, whose
// X25519 key share is client's, to the relay whose static key is relay.
func Seal(key Key, now time.Time, digest [32]byte, random []byte, client *ecdh.PrivateKey, relay *ecdh.PublicKey) ([TokenSize]byte, error) {
	var sid [TokenSize]byte
	shared, err := client.ECDH(relay)
	if err != nil {
		return sid, fmt.Errorf("auth: seal: %w", err)
	}
	aead, err := sealAEAD(shared, random)
	if err != nil {
		return sid, err
	}
	plain := make([]byte, 4, sealedPlainSize)
	binary.BigEndian.PutUint32(plain, KeyID(key))
	tok := Token(key, Slot(now), digest)
	plain = append(plain, tok[:ShortTokenSize]...)
	out := aead.Seal(sid[:0], make([]byte, aead.NonceSize()), plain, nil)
	if len(out) != TokenSize {
		return sid, fmt.Errorf("auth: seal: %d bytes, want %d", len(out), TokenSize)
	}
	return sid, nil
}

// Open opens the sealed session id sid of a hello whose X25519 key share
// is clientShare and whose random is random, with the relay's static key,
// and returns the key id and the short token it carries. It fails with
// [ErrSealed] for anything else: a hello without a sealed token costs the
// same one X25519 and one AES-GCM operation.
func Open(relay *ecdh.PrivateKey, clientShare, random, sid []byte) (id uint32, token []byte, err error) {
	if len(sid) != TokenSize {
		return 0, nil, ErrSealed
	}
	pub, err := ecdh.X25519().NewPublicKey(clientShare)
	if err != nil {
		return 0, nil, ErrSealed
	}
	shared, err := relay.ECDH(pub)
	if err != nil {
		return 0, nil, ErrSealed // a low-order point
	}
	aead, err := sealAEAD(shared, random)
	if err != nil {
		return 0, nil, err
	}
	plain, err := aead.Open(nil, make([]byte, aead.NonceSize()), sid, nil)
	if err != nil || len(plain) != sealedPlainSize {
		return 0, nil, ErrSealed
	}
	return binary.BigEndian.Uint32(plain), plain[4:], nil
}
