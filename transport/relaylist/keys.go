package relaylist

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/merpati/merpati/transport/link"
)

// pemType is the PEM block type of a list key file (PKCS #8).
const pemType = "PRIVATE KEY"

// MarshalPrivateKey encodes a list key as a PKCS #8 PEM block, the format
// of `merpati-relay list keygen` files.
func MarshalPrivateKey(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("relaylist: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), nil
}

// ParsePrivateKey decodes a list key written by [MarshalPrivateKey].
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != pemType {
		return nil, errors.New("relaylist: key file: no PRIVATE KEY PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("relaylist: key file: %w", err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("relaylist: key file: %T, want an ed25519 key", k)
	}
	return ek, nil
}

// PEM block types of the operator's bootstrap files.
const (
	// pemBootstrapKey holds an audience's bootstrap key (32 bytes).
	pemBootstrapKey = "MERPATI BOOTSTRAP KEY"
	// pemList holds a signed relay list.
	pemList = "MERPATI RELAY LIST"
)

// MarshalBootstrapKey encodes an audience's bootstrap key as a PEM block,
// the format of `merpati-relay list audience` files.
func MarshalBootstrapKey(key [link.BootstrapKeySize]byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemBootstrapKey, Bytes: key[:]})
}

// A Bundle is what the DNS server publishes for one audience bucket: the
// audience's bootstrap key and a signed list. Its file (written by
// `merpati-relay list sign`) holds a secret: keep it mode 0600.
type Bundle struct {
	// Key is the audience's bootstrap key.
	Key [link.BootstrapKeySize]byte
	// List is the signed list, as made by [Sign].
	List []byte
}

// Marshal encodes b as two PEM blocks, the key's and the list's.
func (b Bundle) Marshal() []byte {
	return append(MarshalBootstrapKey(b.Key), pem.EncodeToMemory(&pem.Block{Type: pemList, Bytes: b.List})...)
}

// ErrOldList is returned by [ParseBundle] for a bare signed list (a file
// of the old, unencrypted DNS publication).
var ErrOldList = errors.New("relaylist: a bare signed list without bootstrap key (old format): " +
	"sign it again with --audience (see \"merpati-relay list audience\")")

// ParseBootstrapKey decodes a file written by [MarshalBootstrapKey] (or
// the key of a bundle).
func ParseBootstrapKey(data []byte) ([link.BootstrapKeySize]byte, error) {
	var key [link.BootstrapKeySize]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return key, errors.New("relaylist: no MERPATI BOOTSTRAP KEY PEM block")
		}
		if b.Type != pemBootstrapKey {
			continue
		}
		if len(b.Bytes) != len(key) || [link.BootstrapKeySize]byte(b.Bytes) == key {
			return key, fmt.Errorf("relaylist: bootstrap key: %d bytes, want %d non-zero", len(b.Bytes), len(key))
		}
		return [link.BootstrapKeySize]byte(b.Bytes), nil
	}
}

// ParseBundle decodes a file written by [Bundle.Marshal]. The list is
// parsed but its signature is not checked. A bare signed list fails with
// [ErrOldList].
func ParseBundle(data []byte) (Bundle, error) {
	if len(data) >= len(Magic) && string(data[:len(Magic)]) == Magic {
		return Bundle{}, ErrOldList
	}
	key, err := ParseBootstrapKey(data)
	if err != nil {
		return Bundle{}, err
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return Bundle{}, errors.New("relaylist: no MERPATI RELAY LIST PEM block")
		}
		if b.Type != pemList {
			continue
		}
		if _, err := ParseUnverified(b.Bytes); err != nil {
			return Bundle{}, err
		}
		return Bundle{Key: key, List: b.Bytes}, nil
	}
}
