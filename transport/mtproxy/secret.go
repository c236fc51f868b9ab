package mtproxy

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// keyLen is the length of an MTProxy secret's key.
const keyLen = 16

// fakeTLSTag is the first byte of a FakeTLS ("ee") secret.
const fakeTLSTag = 0xee

// maxHostLen bounds the cover host name in a secret (a DNS name).
const maxHostLen = 253

// A Key is the 16-byte key of an MTProxy secret. Its text form is 32 hex
// digits; [Key.UnmarshalText] also accepts base64url (padded or not) and
// standard base64.
type Key [keyLen]byte

// NewKey returns a random key.
func NewKey() Key {
	var k Key
	rand.Read(k[:]) // never fails (crypto/rand, Go 1.24+)
	return k
}

// IsZero reports whether k is all zero, which means "no key".
func (k Key) IsZero() bool { return k == Key{} }

// String returns k in hex.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// MarshalText implements encoding.TextMarshaler (hex).
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: hex or base64.
func (k *Key) UnmarshalText(b []byte) error {
	raw, err := decodeText(string(b))
	if err != nil {
		return fmt.Errorf("mtproxy key: %w", err)
	}
	if len(raw) != keyLen {
		return fmt.Errorf("mtproxy key: %w: %d bytes, want %d", ErrSecret, len(raw), keyLen)
	}
	copy(k[:], raw)
	return nil
}

// A Secret is a FakeTLS MTProxy secret: a key and the host name the app
// sends as SNI and that the proxy pretends to be. On the wire of a link it
// is 0xee, the key, then the host name's bytes.
//
// The zero Secret is not usable; make one with [NewSecret] or parse one
// with [ParseSecret].
type Secret struct {
	// Key keys the hello HMACs and the obfuscated2 ciphers.
	Key Key
	// Host is the cover host name, 1 to 253 bytes.
	Host string
}

// ErrSecret means a secret or key is not valid: not hex or base64, not a
// FakeTLS ("ee") secret, or with a bad length or host name.
var ErrSecret = errors.New("invalid MTProxy secret")

// NewSecret returns a secret with a random key for host.
func NewSecret(host string) (Secret, error) {
	s := Secret{Key: NewKey(), Host: host}
	return s, s.validate()
}

func (s Secret) validate() error {
	if s.Host == "" || len(s.Host) > maxHostLen {
		return fmt.Errorf("%w: host name of %d bytes", ErrSecret, len(s.Host))
	}
	for i := 0; i < len(s.Host); i++ {
		if c := s.Host[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: host name %q", ErrSecret, s.Host)
		}
	}
	return nil
}

// Bytes returns the binary secret: 0xee, the key, the host name.
func (s Secret) Bytes() []byte {
	b := make([]byte, 0, 1+keyLen+len(s.Host))
	b = append(b, fakeTLSTag)
	b = append(b, s.Key[:]...)
	return append(b, s.Host...)
}

// String returns the secret in hex, as tg://proxy links carry it
// ("ee" + 32 hex digits + the hex of the host name).
func (s Secret) String() string { return hex.EncodeToString(s.Bytes()) }

// MarshalText implements encoding.TextMarshaler (hex).
func (s Secret) MarshalText() ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	return []byte(s.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler; see [ParseSecret].
func (s *Secret) UnmarshalText(b []byte) error {
	v, err := ParseSecret(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ParseSecret parses a FakeTLS secret in hex or base64 (base64url or
// standard, padded or not). Surrounding space is ignored. Only "ee"
// secrets are accepted: plain and "dd" secrets are easy for a censor to
// spot and are not served.
func ParseSecret(text string) (Secret, error) {
	raw, err := decodeText(strings.TrimSpace(text))
	if err != nil {
		return Secret{}, err
	}
	if len(raw) < 1+keyLen+1 || raw[0] != fakeTLSTag {
		return Secret{}, fmt.Errorf("%w: not a FakeTLS (ee) secret", ErrSecret)
	}
	s := Secret{Host: string(raw[1+keyLen:])}
	copy(s.Key[:], raw[1:1+keyLen])
	if err := s.validate(); err != nil {
		return Secret{}, err
	}
	return s, nil
}

// decodeText decodes hex, or failing that any of the base64 alphabets.
func decodeText(s string) ([]byte, error) {
	if len(s)%2 == 0 {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	t := strings.TrimRight(s, "=")
	if b, err := base64.RawURLEncoding.DecodeString(t); err == nil {
		return b, nil
	}
	if b, err := base64.RawStdEncoding.DecodeString(t); err == nil {
		return b, nil
	}
	return nil, fmt.Errorf("%w: neither hex nor base64", ErrSecret)
}
